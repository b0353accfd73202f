-- 001 foundation: login roles, the three schemas, database-level privileges.
--
-- Roles are cluster-wide and least-privileged; their passwords are never here: the deployment
-- sets them as SCRAM verifiers computed from the Pulumi secrets (the cleartext never reaches
-- the node). The objects of every schema are owned by the role running the migrations
-- (postgres); the application roles get only the grants below and in later migrations.
--
--   kamailio      reads kamailio.* (auth view, dispatcher), writes kamailio.location*
--   cdr_writer    inserts CDRs (cdr.calls / cdr.ingest) and nothing else
--   pbx_admin     manages pbx.* (extensions, credentials, policies, routes), reads cdr.*
--   pbx_readonly  reads pbx.* except SIP credentials, and cdr.*
--   replicator    streaming replication, pg_basebackup and pg_rewind source (see the deployment)

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['kamailio', 'cdr_writer', 'pbx_admin', 'pbx_readonly'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
        EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT', r);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'replicator') THEN
        CREATE ROLE replicator LOGIN REPLICATION;
    END IF;
    ALTER ROLE replicator LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;

    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO kamailio, cdr_writer, pbx_admin, pbx_readonly',
                   current_database());
    -- Kamailio's SQL names its tables without a schema: each role finds its own first.
    EXECUTE format('ALTER ROLE kamailio IN DATABASE %I SET search_path = kamailio', current_database());
    EXECUTE format('ALTER ROLE cdr_writer IN DATABASE %I SET search_path = cdr', current_database());
    EXECUTE format('ALTER ROLE pbx_admin IN DATABASE %I SET search_path = pbx, cdr, kamailio', current_database());
    EXECUTE format('ALTER ROLE pbx_readonly IN DATABASE %I SET search_path = pbx, cdr', current_database());
END
$$;

-- Nobody but the owner creates objects; public holds only schema_migrations.
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA kamailio;
COMMENT ON SCHEMA kamailio IS 'Kamailio''s own tables (kamdbctl layout for the installed version) and the auth view';
CREATE SCHEMA pbx;
COMMENT ON SCHEMA pbx IS 'Unified extensions, SIP credentials (HA1 only), recording and routing policies';
CREATE SCHEMA cdr;
COMMENT ON SCHEMA cdr IS 'Call detail records, partitioned by month, unique on the call UUID';

GRANT USAGE ON SCHEMA kamailio TO kamailio, pbx_admin;
GRANT USAGE ON SCHEMA pbx TO pbx_admin, pbx_readonly;
GRANT USAGE ON SCHEMA cdr TO cdr_writer, pbx_admin, pbx_readonly;
