-- 007 calling limits: class of service and per-extension call limits (toll-fraud controls).
--
-- A stolen SIP password must not turn into a night of premium-rate or international calls.
-- Every user extension gets a class of service and two limits, which Kamailio enforces for
-- the authenticated caller: auth_db's load_credentials reads them from kamailio.subscriber
-- (extra view columns -> AVPs) in the same query that fetches the HA1, so there is no second
-- lookup per call and the kamailio role still sees nothing of the pbx schema itself.
--
-- Classes are ordered by rank: an extension of class X may dial every class of rank <= X's.
-- The defaults (national, 2 concurrent calls, 10 attempts a minute) leave international and
-- premium off until an administrator opens them for an extension.

CREATE TABLE pbx.call_classes (
    class       text PRIMARY KEY CONSTRAINT call_classes_class_format CHECK (class ~ '^[a-z][a-z_]{1,30}$'),
    rank        smallint NOT NULL CONSTRAINT call_classes_rank_key UNIQUE
                         CONSTRAINT call_classes_rank_range CHECK (rank >= 0),
    description text NOT NULL
);
COMMENT ON TABLE pbx.call_classes IS
    'Classes of service, ordered: an extension of class X may dial every class of rank <= rank of X';

INSERT INTO pbx.call_classes (class, rank, description) VALUES
    ('internal',      0, 'Calls to extensions of this PBX'),
    ('national',      1, 'Calls to national numbers'),
    ('international', 2, 'Calls to international numbers'),
    ('premium',       3, 'Calls to premium-rate and special numbers');

CREATE TABLE pbx.calling_limits (
    extension_id     bigint PRIMARY KEY,
    extension_type   text NOT NULL DEFAULT 'user' CONSTRAINT calling_limits_user_only CHECK (extension_type = 'user'),
    class            text NOT NULL DEFAULT 'national',
    max_calls        integer NOT NULL DEFAULT 2
                         CONSTRAINT calling_limits_max_calls_range CHECK (max_calls BETWEEN 1 AND 100),
    calls_per_minute integer NOT NULL DEFAULT 10
                         CONSTRAINT calling_limits_calls_per_minute_range CHECK (calls_per_minute BETWEEN 1 AND 600),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT calling_limits_extension_fkey FOREIGN KEY (extension_id, extension_type)
        REFERENCES pbx.extensions (id, type) ON DELETE CASCADE,
    CONSTRAINT calling_limits_class_fkey FOREIGN KEY (class) REFERENCES pbx.call_classes (class)
);
COMMENT ON TABLE pbx.calling_limits IS
    'Per user extension: class of service, concurrent outgoing calls (max_calls), call attempts a minute';

CREATE TRIGGER calling_limits_touch BEFORE UPDATE ON pbx.calling_limits
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();

-- Every user extension always has its row, created (with the defaults) by the insert of the
-- extension itself. SECURITY DEFINER rather than an INSERT grant: pbx_admin creates extensions
-- (admin API) but must not be able to insert, nor delete, limit rows of its own; the row lives
-- and dies with its extension. search_path is pinned and every name below is schema-qualified,
-- so nothing a caller puts in its path (or in pg_temp, searched last) can stand in for them.
CREATE FUNCTION pbx.calling_limits_create() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO pbx.calling_limits (extension_id) VALUES (NEW.id) ON CONFLICT (extension_id) DO NOTHING;
    RETURN NULL;
END
$$;

-- A user retyped into something else (possible by SQL, only without SIP credentials) drops
-- its limits first, else the foreign key would make every user forever a user; retyped into a
-- user, it gets the default row like a new one (the AFTER trigger below).
CREATE FUNCTION pbx.calling_limits_drop() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM pbx.calling_limits WHERE extension_id = OLD.id;
    RETURN NEW;
END
$$;

CREATE TRIGGER extensions_calling_limits_create AFTER INSERT OR UPDATE OF type ON pbx.extensions
    FOR EACH ROW WHEN (NEW.type = 'user') EXECUTE FUNCTION pbx.calling_limits_create();
CREATE TRIGGER extensions_calling_limits_drop BEFORE UPDATE OF type ON pbx.extensions
    FOR EACH ROW WHEN (OLD.type = 'user' AND NEW.type <> 'user') EXECUTE FUNCTION pbx.calling_limits_drop();

-- the users that exist already
INSERT INTO pbx.calling_limits (extension_id)
    SELECT id FROM pbx.extensions WHERE type = 'user'
    ON CONFLICT (extension_id) DO NOTHING;

-- The auth view of 006 with the limits of the user. A missing row (only a superuser can delete
-- one) falls back to the most restrictive values rather than to none. Same rule as 006: plain
-- ::varchar casts, no lengths, so the lookup by username keeps using extensions_number_key.
DROP VIEW kamailio.subscriber;
CREATE VIEW kamailio.subscriber AS
    SELECT c.extension_id::integer                  AS id,
           e.number::varchar                        AS username,
           c.domain::varchar                        AS domain,
           ''::varchar                              AS password,
           c.ha1::varchar                           AS ha1,
           c.ha1b::varchar                          AS ha1b,
           coalesce(l.class, 'internal')::varchar   AS cos,
           coalesce(l.max_calls, 1)                 AS max_calls,
           coalesce(l.calls_per_minute, 1)          AS calls_per_minute
      FROM pbx.sip_credentials c
      JOIN pbx.extensions e ON e.id = c.extension_id
      LEFT JOIN pbx.calling_limits l ON l.extension_id = c.extension_id
     WHERE e.enabled;

REVOKE ALL ON FUNCTION pbx.calling_limits_create(), pbx.calling_limits_drop() FROM PUBLIC;
-- the view reads pbx.calling_limits with its owner's rights: kamailio gets the view only
GRANT SELECT ON kamailio.subscriber TO kamailio;
GRANT SELECT ON pbx.call_classes TO pbx_admin, pbx_readonly;
-- only the limits themselves are editable: the row's extension and type are not
GRANT SELECT, UPDATE (class, max_calls, calls_per_minute) ON pbx.calling_limits TO pbx_admin;
GRANT SELECT ON pbx.calling_limits TO pbx_readonly;
