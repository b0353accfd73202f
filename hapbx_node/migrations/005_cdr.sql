-- 005 cdr: call detail records, partitioned by month on the call start, unique on the call UUID.
--
-- Uniqueness across partitions: PostgreSQL only allows a unique constraint on a partitioned
-- table if it contains the partition key, so (call_uuid, start_time) is the primary key of
-- cdr.calls but would let the same call in twice with two start times (a re-sent CDR whose
-- start was rounded differently, or that lands in another month). The call UUID is therefore
-- also registered in cdr.call_uuids, an ordinary table whose primary key is the UUID alone: a
-- BEFORE INSERT trigger on cdr.calls inserts the UUID there, so a second CDR with the same UUID
-- fails with a unique violation whatever its start time, and cdr.ingest(jsonb) is the
-- idempotent path the CDR worker uses (at-least-once delivery: a duplicate returns false).
--
-- Partitions: cdr.calls_YYYY_MM (UTC months) are created ahead by cdr.ensure_partitions(n)
-- (the migration runner on every apply and a daily timer on the primary); cdr.calls_default
-- catches anything outside them (a wrong clock) so no CDR is ever refused for its date, and
-- ensure_partitions moves such rows into the month's partition when it creates it.

CREATE TABLE cdr.calls (
    call_uuid              uuid NOT NULL,
    bleg_uuid              uuid,
    direction              text NOT NULL DEFAULT 'internal'
                                CONSTRAINT calls_direction_known CHECK (direction IN ('inbound', 'outbound', 'internal')),
    caller_number          text NOT NULL DEFAULT '',
    caller_name            text NOT NULL DEFAULT '',
    callee_number          text NOT NULL,
    queue                  text,
    trunk                  text,
    start_time             timestamptz NOT NULL,
    answer_time            timestamptz,
    end_time               timestamptz NOT NULL,
    duration               integer NOT NULL CONSTRAINT calls_duration_positive CHECK (duration >= 0),
    billsec                integer NOT NULL DEFAULT 0
                                CONSTRAINT calls_billsec_within_duration CHECK (billsec >= 0 AND billsec <= duration),
    hangup_cause           text NOT NULL CONSTRAINT calls_hangup_cause_format CHECK (hangup_cause ~ '^[A-Z0-9_]{1,64}$'),
    hangup_cause_q850      integer CONSTRAINT calls_q850_range CHECK (hangup_cause_q850 BETWEEN 0 AND 127),
    sip_hangup_disposition text,
    recording_path         text CONSTRAINT calls_recording_path_absolute CHECK (recording_path ~ '^/'),
    node                   text NOT NULL CONSTRAINT calls_node_format CHECK (node ~ '^[a-z][a-z0-9-]{0,30}$'),
    raw                    jsonb NOT NULL DEFAULT '{}'::jsonb CONSTRAINT calls_raw_object CHECK (jsonb_typeof(raw) = 'object'),
    received_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT calls_pkey PRIMARY KEY (call_uuid, start_time),
    CONSTRAINT calls_end_after_start CHECK (end_time >= start_time),
    CONSTRAINT calls_answer_within_call CHECK (answer_time IS NULL OR answer_time BETWEEN start_time AND end_time),
    CONSTRAINT calls_billsec_needs_answer CHECK (answer_time IS NOT NULL OR billsec = 0)
) PARTITION BY RANGE (start_time);
COMMENT ON TABLE cdr.calls IS 'CDRs from FreeSWITCH JSON CDR; insert through cdr.ingest(jsonb) for idempotence';

-- time-range queries (partition pruning + this), and per-extension queries on either side
CREATE INDEX calls_start_time_idx ON cdr.calls (start_time);
CREATE INDEX calls_caller_time_idx ON cdr.calls (caller_number, start_time);
CREATE INDEX calls_callee_time_idx ON cdr.calls (callee_number, start_time);

CREATE TABLE cdr.calls_default PARTITION OF cdr.calls DEFAULT;

CREATE TABLE cdr.call_uuids (
    call_uuid   uuid PRIMARY KEY,
    start_time  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cdr.call_uuids IS 'Every call UUID ever stored in cdr.calls: the cross-partition unique key';

CREATE FUNCTION cdr.register_call_uuid() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog
AS $$
BEGIN
    INSERT INTO cdr.call_uuids (call_uuid, start_time) VALUES (NEW.call_uuid, NEW.start_time);
    RETURN NEW;
END
$$;
CREATE TRIGGER calls_register_uuid BEFORE INSERT ON cdr.calls
    FOR EACH ROW EXECUTE FUNCTION cdr.register_call_uuid();

-- The key of a CDR is immutable (the registry would no longer describe it).
CREATE FUNCTION cdr.calls_key_immutable() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
BEGIN
    IF NEW.call_uuid IS DISTINCT FROM OLD.call_uuid OR NEW.start_time IS DISTINCT FROM OLD.start_time THEN
        RAISE EXCEPTION 'the call_uuid and start_time of a CDR cannot change' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER calls_key_immutable BEFORE UPDATE ON cdr.calls
    FOR EACH ROW EXECUTE FUNCTION cdr.calls_key_immutable();

-- Idempotent insert: true when stored, false when this call UUID is already there.
-- Keys of p are the column names of cdr.calls; missing optional keys take their defaults.
CREATE FUNCTION cdr.ingest(p jsonb) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog
AS $$
DECLARE
    r cdr.calls;
BEGIN
    r := jsonb_populate_record(NULL::cdr.calls, p);
    IF r.call_uuid IS NULL THEN
        RAISE EXCEPTION 'CDR without call_uuid' USING ERRCODE = 'not_null_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM cdr.call_uuids WHERE call_uuid = r.call_uuid) THEN
        RETURN false;
    END IF;
    BEGIN
        INSERT INTO cdr.calls (call_uuid, bleg_uuid, direction, caller_number, caller_name, callee_number, queue,
                               trunk, start_time, answer_time, end_time, duration, billsec, hangup_cause,
                               hangup_cause_q850, sip_hangup_disposition, recording_path, node, raw)
        VALUES (r.call_uuid, r.bleg_uuid, coalesce(r.direction, 'internal'), coalesce(r.caller_number, ''),
                coalesce(r.caller_name, ''), r.callee_number, r.queue, r.trunk, r.start_time, r.answer_time,
                r.end_time, r.duration, coalesce(r.billsec, 0), r.hangup_cause, r.hangup_cause_q850,
                r.sip_hangup_disposition, r.recording_path, r.node, coalesce(r.raw, '{}'::jsonb));
    EXCEPTION WHEN unique_violation THEN
        -- a concurrent worker stored the same call between the check and the insert
        RETURN false;
    END;
    RETURN true;
END
$$;

-- Create the monthly partitions from last month to months_ahead months ahead (UTC months);
-- returns how many were created. Rows already in the default partition for a new month are
-- moved into it first (ATTACH would refuse them otherwise).
CREATE FUNCTION cdr.ensure_partitions(months_ahead integer DEFAULT 3) RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    first_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month';
    m timestamp;
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 36 THEN
        RAISE EXCEPTION 'months_ahead % is out of range 0..36', months_ahead USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0 .. months_ahead + 1 LOOP
        m := first_month + make_interval(months => i);
        lo := m AT TIME ZONE 'UTC';
        hi := (m + interval '1 month') AT TIME ZONE 'UTC';
        part := 'calls_' || to_char(m, 'YYYY_MM');
        CONTINUE WHEN to_regclass(format('cdr.%I', part)) IS NOT NULL;
        EXECUTE format('CREATE TABLE cdr.%I (LIKE cdr.calls INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('WITH moved AS (DELETE FROM cdr.calls_default WHERE start_time >= %L AND start_time < %L '
                       'RETURNING *) INSERT INTO cdr.%I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE cdr.calls ATTACH PARTITION cdr.%I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

REVOKE ALL ON FUNCTION cdr.register_call_uuid(), cdr.calls_key_immutable(), cdr.ingest(jsonb),
    cdr.ensure_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cdr.ingest(jsonb) TO cdr_writer;
GRANT INSERT ON cdr.calls TO cdr_writer;
GRANT SELECT ON cdr.calls TO pbx_admin, pbx_readonly;

SELECT cdr.ensure_partitions(3);
