-- 004 policies: trunks, DB-driven recording policies, inbound and outbound routing.
--
-- Recording: one policy per target (global / extension / queue / trunk), mode always, never or
-- on-demand, with a retention. The most specific enabled policy wins: extension, then queue,
-- then trunk, then global; none at all means never (pbx.recording_policy_for).
-- Routing: inbound numbers (DIDs) to an extension; outbound prefixes to trunks, longest prefix
-- first, then priority (pbx.outbound_routes_for).

CREATE TABLE pbx.trunks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CONSTRAINT trunks_name_key UNIQUE
                    CONSTRAINT trunks_name_format CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    host       text NOT NULL CONSTRAINT trunks_host_format CHECK (host ~ '^[A-Za-z0-9][A-Za-z0-9.:-]{0,253}$'),
    port       integer NOT NULL DEFAULT 5060 CONSTRAINT trunks_port_range CHECK (port BETWEEN 1 AND 65535),
    transport  text NOT NULL DEFAULT 'udp' CONSTRAINT trunks_transport_known CHECK (transport IN ('udp', 'tcp', 'tls')),
    enabled    boolean NOT NULL DEFAULT true,
    settings   jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT trunks_settings_object CHECK (jsonb_typeof(settings) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pbx.recording_policies (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope          text NOT NULL CONSTRAINT recording_policies_scope_known
                        CHECK (scope IN ('global', 'extension', 'queue', 'trunk')),
    extension_id   bigint,
    extension_type text,
    trunk_id       bigint REFERENCES pbx.trunks (id) ON DELETE CASCADE,
    mode           text NOT NULL CONSTRAINT recording_policies_mode_known CHECK (mode IN ('always', 'never', 'on-demand')),
    retention_days integer NOT NULL DEFAULT 90 CONSTRAINT recording_policies_retention_range
                        CHECK (retention_days BETWEEN 1 AND 3650),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recording_policies_extension_fkey FOREIGN KEY (extension_id, extension_type)
        REFERENCES pbx.extensions (id, type) ON DELETE CASCADE ON UPDATE CASCADE,
    -- the target matches the scope: nothing for global, a non-queue extension, a queue, a trunk
    CONSTRAINT recording_policies_target_matches_scope CHECK (CASE scope
        WHEN 'global'    THEN extension_id IS NULL AND extension_type IS NULL AND trunk_id IS NULL
        WHEN 'extension' THEN extension_id IS NOT NULL AND extension_type IS NOT NULL AND extension_type <> 'queue'
                              AND trunk_id IS NULL
        WHEN 'queue'     THEN extension_id IS NOT NULL AND extension_type IS NOT DISTINCT FROM 'queue' AND trunk_id IS NULL
        WHEN 'trunk'     THEN extension_id IS NULL AND extension_type IS NULL AND trunk_id IS NOT NULL
        ELSE false
    END)
);
-- one policy per target, one global policy
CREATE UNIQUE INDEX recording_policies_one_global ON pbx.recording_policies ((true)) WHERE scope = 'global';
CREATE UNIQUE INDEX recording_policies_one_per_extension ON pbx.recording_policies (extension_id) WHERE extension_id IS NOT NULL;
CREATE UNIQUE INDEX recording_policies_one_per_trunk ON pbx.recording_policies (trunk_id) WHERE trunk_id IS NOT NULL;

CREATE TABLE pbx.inbound_routes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    did          text NOT NULL CONSTRAINT inbound_routes_did_key UNIQUE
                      CONSTRAINT inbound_routes_did_format CHECK (did ~ '^\+?[0-9]{3,20}$'),
    extension_id bigint NOT NULL REFERENCES pbx.extensions (id) ON DELETE RESTRICT,
    trunk_id     bigint REFERENCES pbx.trunks (id) ON DELETE CASCADE,   -- NULL: from any trunk
    enabled      boolean NOT NULL DEFAULT true,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pbx.outbound_routes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix       text NOT NULL CONSTRAINT outbound_routes_prefix_format CHECK (prefix ~ '^\+?[0-9*#]{0,20}$'),  -- '' = default
    trunk_id     bigint NOT NULL REFERENCES pbx.trunks (id) ON DELETE RESTRICT,
    priority     integer NOT NULL DEFAULT 100 CONSTRAINT outbound_routes_priority_range CHECK (priority BETWEEN 0 AND 1000),
    strip_digits integer NOT NULL DEFAULT 0 CONSTRAINT outbound_routes_strip_range CHECK (strip_digits BETWEEN 0 AND 20),
    prepend      text NOT NULL DEFAULT '' CONSTRAINT outbound_routes_prepend_format CHECK (prepend ~ '^\+?[0-9*#]{0,20}$'),
    enabled      boolean NOT NULL DEFAULT true,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbound_routes_prefix_trunk_key UNIQUE (prefix, trunk_id),
    CONSTRAINT outbound_routes_strip_within_prefix CHECK (strip_digits <= length(prefix) OR prefix = '')
);

CREATE TRIGGER trunks_touch BEFORE UPDATE ON pbx.trunks FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();
CREATE TRIGGER recording_policies_touch BEFORE UPDATE ON pbx.recording_policies
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();
CREATE TRIGGER inbound_routes_touch BEFORE UPDATE ON pbx.inbound_routes
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();
CREATE TRIGGER outbound_routes_touch BEFORE UPDATE ON pbx.outbound_routes
    FOR EACH ROW EXECUTE FUNCTION pbx.touch_updated_at();

-- The recording decision for a call: the most specific enabled policy among the parties.
CREATE FUNCTION pbx.recording_policy_for(p_extension text, p_queue text DEFAULT NULL, p_trunk text DEFAULT NULL)
    RETURNS TABLE (scope text, mode text, retention_days integer)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog
AS $$
    SELECT p.scope, p.mode, p.retention_days
      FROM pbx.recording_policies p
      LEFT JOIN pbx.extensions e ON e.id = p.extension_id
      LEFT JOIN pbx.trunks t ON t.id = p.trunk_id
     WHERE p.enabled
       AND (   (p.scope = 'extension' AND e.number = p_extension)
            OR (p.scope = 'queue' AND e.number = p_queue)
            OR (p.scope = 'trunk' AND t.name = p_trunk)
            OR p.scope = 'global')
     ORDER BY CASE p.scope WHEN 'extension' THEN 1 WHEN 'queue' THEN 2 WHEN 'trunk' THEN 3 ELSE 4 END
     LIMIT 1
$$;

-- Outbound candidates for a dialled number: longest matching prefix first, then priority.
CREATE FUNCTION pbx.outbound_routes_for(p_number text)
    RETURNS TABLE (trunk text, host text, port integer, transport text, dial text, prefix text, priority integer)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog
AS $$
    SELECT t.name, t.host, t.port, t.transport, r.prepend || substr(p_number, r.strip_digits + 1), r.prefix, r.priority
      FROM pbx.outbound_routes r
      JOIN pbx.trunks t ON t.id = r.trunk_id
     WHERE r.enabled AND t.enabled AND starts_with(p_number, r.prefix)
     ORDER BY length(r.prefix) DESC, r.priority, t.name
$$;

REVOKE ALL ON FUNCTION pbx.recording_policy_for(text, text, text), pbx.outbound_routes_for(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pbx.recording_policy_for(text, text, text), pbx.outbound_routes_for(text)
    TO pbx_admin, pbx_readonly;
GRANT SELECT, INSERT, UPDATE, DELETE ON pbx.trunks, pbx.recording_policies, pbx.inbound_routes, pbx.outbound_routes
    TO pbx_admin;
GRANT SELECT ON pbx.trunks, pbx.recording_policies, pbx.inbound_routes, pbx.outbound_routes TO pbx_readonly;
