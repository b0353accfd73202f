-- 011 kamailio.subscriber becomes a table kept by triggers (it was a view over three pbx tables).
--
-- auth_db sends its lookup as a plain query on every authenticated request (no prepared
-- statement), so PostgreSQL planned the view's three-table join each time: 0.27 ms of planning
-- against microseconds of execution. At 2,000 REGISTER/s on the lab PostgreSQL used 0.5 core,
-- more than Kamailio (kamcmd core.psx and /proc per process; `hapbx bench sip`). The table has the
-- view's columns, one row per enabled user extension with credentials, looked up by its
-- (username, domain) key; pbx.subscriber_source is the one definition of a row, and triggers on
-- the three tables rewrite the rows of the extensions a change touches, in the same transaction.

ALTER VIEW kamailio.subscriber SET SCHEMA pbx;
ALTER VIEW pbx.subscriber RENAME TO subscriber_source;
REVOKE ALL ON pbx.subscriber_source FROM kamailio;
COMMENT ON VIEW pbx.subscriber_source IS
    'What kamailio.subscriber holds: one row per enabled user extension with digest credentials';

CREATE TABLE kamailio.subscriber AS SELECT * FROM pbx.subscriber_source WITH NO DATA;
ALTER TABLE kamailio.subscriber ADD CONSTRAINT subscriber_pkey PRIMARY KEY (id);
ALTER TABLE kamailio.subscriber ADD CONSTRAINT subscriber_account UNIQUE (username, domain);
INSERT INTO kamailio.subscriber SELECT * FROM pbx.subscriber_source;
COMMENT ON TABLE kamailio.subscriber IS
    'auth_db''s credentials: kept from pbx.subscriber_source by triggers (pbx.subscriber_refresh); never written directly';

-- the extension ids a row change touches -> their rows again, from the source
CREATE FUNCTION pbx.subscriber_refresh() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_TABLE_NAME = 'extensions' THEN
        ids := ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.id END, CASE WHEN TG_OP <> 'DELETE' THEN NEW.id END];
    ELSE
        ids := ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.extension_id END,
                     CASE WHEN TG_OP <> 'DELETE' THEN NEW.extension_id END];
    END IF;
    DELETE FROM kamailio.subscriber WHERE id = ANY (ids);
    INSERT INTO kamailio.subscriber SELECT * FROM pbx.subscriber_source WHERE id = ANY (ids);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pbx.subscriber_refresh() FROM PUBLIC;

CREATE TRIGGER sip_credentials_subscriber AFTER INSERT OR UPDATE OR DELETE ON pbx.sip_credentials
    FOR EACH ROW EXECUTE FUNCTION pbx.subscriber_refresh();
CREATE TRIGGER extensions_subscriber AFTER UPDATE OF id, number, enabled OR DELETE ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.subscriber_refresh();
CREATE TRIGGER calling_limits_subscriber AFTER INSERT OR UPDATE OR DELETE ON pbx.calling_limits
    FOR EACH ROW EXECUTE FUNCTION pbx.subscriber_refresh();

GRANT SELECT ON kamailio.subscriber TO kamailio;
