-- 010 monitoring: the login role of prometheus-postgres-exporter.
--
--   hapbx_monitor  pg_monitor only (pg_stat_* views, replication and slot state, settings):
--                  no table of pbx, cdr or kamailio, no write anywhere

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hapbx_monitor') THEN
        CREATE ROLE hapbx_monitor LOGIN;
    END IF;
    ALTER ROLE hapbx_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT
        CONNECTION LIMIT 5;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO hapbx_monitor', current_database());
END
$$;

GRANT pg_monitor TO hapbx_monitor;
