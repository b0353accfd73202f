-- 003 extensions: the unified extension model and SIP credentials, and Kamailio's auth view.
--
-- Every dialable thing (user, queue, IVR, conference, voicemail, ring group) is one row of
-- pbx.extensions: a unique number, a known type, a display name, enabled, per-type settings.
-- Only user extensions have SIP credentials, stored as HA1 hashes (never the password).
-- kamailio.subscriber is a view over both, so Kamailio's auth_db reads exactly the enabled
-- users, always in step, and the kamailio role sees nothing else of the pbx schema.

-- Deployment-wide settings (sip.domain: the default SIP domain/realm of credentials).
CREATE TABLE pbx.settings (
    key        text PRIMARY KEY CONSTRAINT settings_key_format CHECK (key ~ '^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$'),
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pbx.extension_types (
    type        text PRIMARY KEY CONSTRAINT extension_types_type_format CHECK (type ~ '^[a-z][a-z_]{1,30}$'),
    description text NOT NULL
);

INSERT INTO pbx.extension_types (type, description) VALUES
    ('user',       'A phone or softphone; the only type with SIP credentials'),
    ('queue',      'Call queue (agents are user extensions)'),
    ('ivr',        'Interactive voice response menu'),
    ('conference', 'Conference room'),
    ('voicemail',  'Voicemail box access'),
    ('ring_group', 'Rings several extensions at once or in turn');

-- Per-type settings must be a JSON object; a few keys are checked where a wrong value would
-- only show up as a broken call later.
CREATE FUNCTION pbx.extension_settings_ok(p_type text, p_settings jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog
AS $$
    SELECT jsonb_typeof(p_settings) = 'object'
       AND CASE p_type
           WHEN 'queue' THEN
                (NOT p_settings ? 'strategy' OR p_settings->>'strategy' IN
                    ('ring-all', 'longest-idle-agent', 'round-robin', 'top-down', 'agent-with-least-talk-time',
                     'agent-with-fewest-calls', 'sequentially-by-agent-order', 'random', 'ring-progressively'))
            AND (NOT p_settings ? 'max_wait_seconds' OR (jsonb_typeof(p_settings->'max_wait_seconds') = 'number'
                                                        AND (p_settings->>'max_wait_seconds')::numeric > 0))
           WHEN 'ring_group' THEN
                NOT p_settings ? 'members' OR jsonb_typeof(p_settings->'members') = 'array'
           WHEN 'user' THEN
                NOT p_settings ? 'voicemail' OR jsonb_typeof(p_settings->'voicemail') = 'boolean'
           ELSE true
       END
$$;

CREATE TABLE pbx.extensions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number       text NOT NULL,
    type         text NOT NULL,
    display_name text NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT extensions_number_key UNIQUE (number),
    CONSTRAINT extensions_number_format CHECK (number ~ '^[0-9]{2,15}$'),
    CONSTRAINT extensions_type_fkey FOREIGN KEY (type) REFERENCES pbx.extension_types (type),
    CONSTRAINT extensions_display_name_format CHECK (length(btrim(display_name)) BETWEEN 1 AND 128),
    CONSTRAINT extensions_settings_valid CHECK (pbx.extension_settings_ok(type, settings)),
    -- target of (id, type) foreign keys: a row that needs "an extension of type X" says so
    CONSTRAINT extensions_id_type_key UNIQUE (id, type)
);
COMMENT ON TABLE pbx.extensions IS 'Every dialable thing: users, queues, IVRs, conferences, voicemail, ring groups';

CREATE TABLE pbx.sip_credentials (
    extension_id   bigint PRIMARY KEY,
    extension_type text NOT NULL DEFAULT 'user' CONSTRAINT sip_credentials_user_only CHECK (extension_type = 'user'),
    domain         text NOT NULL CONSTRAINT sip_credentials_domain_format CHECK (domain ~ '^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$'),
    ha1            text NOT NULL CONSTRAINT sip_credentials_ha1_format CHECK (ha1 ~ '^[0-9a-f]{32}$'),
    ha1b           text NOT NULL CONSTRAINT sip_credentials_ha1b_format CHECK (ha1b ~ '^[0-9a-f]{32}$'),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sip_credentials_extension_fkey FOREIGN KEY (extension_id, extension_type)
        REFERENCES pbx.extensions (id, type) ON DELETE CASCADE
);
COMMENT ON TABLE pbx.sip_credentials IS
    'Digest credentials of user extensions: ha1 = md5(number:domain:password), ha1b = md5(number@domain:domain:password)';

CREATE FUNCTION pbx.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- HA1 hashes the number: renumbering a user with credentials would silently lock the phone out.
CREATE FUNCTION pbx.extensions_guard_renumber() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
BEGIN
    IF NEW.number IS DISTINCT FROM OLD.number
       AND EXISTS (SELECT 1 FROM pbx.sip_credentials WHERE extension_id = OLD.id) THEN
        RAISE EXCEPTION 'extension % has SIP credentials hashed with its number', OLD.number
            USING ERRCODE = 'check_violation',
                  HINT = 'delete its pbx.sip_credentials row, renumber, then call pbx.set_sip_password again';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER extensions_guard_renumber BEFORE UPDATE OF number ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.extensions_guard_renumber();
CREATE TRIGGER extensions_touch BEFORE UPDATE ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();
CREATE TRIGGER sip_credentials_touch BEFORE UPDATE ON pbx.sip_credentials
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();
CREATE TRIGGER settings_touch BEFORE UPDATE ON pbx.settings
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();

-- Set (or replace) a user's SIP password: only its HA1 hashes are stored.
CREATE FUNCTION pbx.set_sip_password(p_number text, p_password text, p_domain text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    ext pbx.extensions;
    dom text := coalesce(p_domain, (SELECT value FROM pbx.settings WHERE key = 'sip.domain'));
BEGIN
    SELECT * INTO ext FROM pbx.extensions WHERE number = p_number;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no extension %', p_number USING ERRCODE = 'no_data_found';
    END IF;
    IF ext.type <> 'user' THEN
        RAISE EXCEPTION 'extension % is a %: only user extensions have SIP credentials', p_number, ext.type
            USING ERRCODE = 'check_violation';
    END IF;
    IF dom IS NULL THEN
        RAISE EXCEPTION 'no SIP domain: pass one or set pbx.settings key sip.domain' USING ERRCODE = 'not_null_violation';
    END IF;
    IF p_password IS NULL OR length(p_password) < 12 THEN
        RAISE EXCEPTION 'SIP password of % is shorter than 12 characters', p_number USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO pbx.sip_credentials AS c (extension_id, domain, ha1, ha1b)
    VALUES (ext.id, dom, md5(ext.number || ':' || dom || ':' || p_password),
            md5(ext.number || '@' || dom || ':' || dom || ':' || p_password))
    ON CONFLICT (extension_id) DO UPDATE SET domain = EXCLUDED.domain, ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b;
END
$$;

-- What Kamailio's auth_db reads (www_authorize/auth_check with table "subscriber",
-- calculate_ha1 0, password_column "ha1"): enabled users only; "password" is always empty.
CREATE VIEW kamailio.subscriber AS
    SELECT c.extension_id::integer AS id,
           e.number::varchar(64)   AS username,
           c.domain::varchar(64)   AS domain,
           ''::varchar(64)         AS password,
           c.ha1::varchar(128)     AS ha1,
           c.ha1b::varchar(128)    AS ha1b
      FROM pbx.sip_credentials c
      JOIN pbx.extensions e ON e.id = c.extension_id
     WHERE e.enabled;
INSERT INTO kamailio.version (table_name, table_version) VALUES ('subscriber', 7);

REVOKE ALL ON FUNCTION pbx.set_sip_password(text, text, text), pbx.extension_settings_ok(text, jsonb),
    pbx.touch_updated_at(), pbx.extensions_guard_renumber() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pbx.extension_settings_ok(text, jsonb) TO pbx_admin, pbx_readonly;
GRANT EXECUTE ON FUNCTION pbx.set_sip_password(text, text, text) TO pbx_admin;
GRANT SELECT ON kamailio.subscriber TO kamailio;
GRANT SELECT ON pbx.extension_types TO pbx_admin, pbx_readonly;
GRANT SELECT, INSERT, UPDATE, DELETE ON pbx.settings, pbx.extensions, pbx.sip_credentials TO pbx_admin;
GRANT SELECT ON pbx.settings, pbx.extensions TO pbx_readonly;
