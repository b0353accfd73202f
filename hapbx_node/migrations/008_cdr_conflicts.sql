-- 008 CDR conflicts: the first record of a call wins only over the same record.
--
-- cdr.ingest() took the first CDR of a call UUID and called every later one a re-delivery. A
-- re-delivery (FreeSWITCH retrying, the replay timer, the worker after a crash, the receiver's
-- direct write) says the same thing; a record that says something else under the same UUID is
-- a forgery or a bug, and dropping it silently could lose the real 600-second call behind a
-- forged 1-second one. cdr.ingest_outcome() tells the three cases apart; a conflicting record
-- is kept in cdr.conflicts for review (once per distinct content), never stored over the first.
--
-- "The same" compares every column the record sets except node (the receiving node stands in
-- when the record names none, so a retry through the peer's receiver differs there) and
-- received_at.

CREATE TABLE cdr.conflicts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_uuid   uuid NOT NULL,
    record      jsonb NOT NULL,
    record_md5  text GENERATED ALWAYS AS (md5(record::text)) STORED,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conflicts_once UNIQUE (call_uuid, record_md5)
);
COMMENT ON TABLE cdr.conflicts IS
    'CDRs refused because a different record of the same call UUID was stored first: to review';
CREATE INDEX conflicts_received_idx ON cdr.conflicts (received_at);

-- 'stored' (new), 'duplicate' (this UUID is there with the same content, or its row is gone),
-- 'conflict' (there with other content: kept in cdr.conflicts).
CREATE FUNCTION cdr.ingest_outcome(p jsonb) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog
AS $$
DECLARE
    r cdr.calls;
    e cdr.calls;
    first_start timestamptz;
BEGIN
    r := jsonb_populate_record(NULL::cdr.calls, p);
    IF r.call_uuid IS NULL THEN
        RAISE EXCEPTION 'CDR without call_uuid' USING ERRCODE = 'not_null_violation';
    END IF;
    r.direction := coalesce(r.direction, 'internal');
    r.caller_number := coalesce(r.caller_number, '');
    r.caller_name := coalesce(r.caller_name, '');
    r.billsec := coalesce(r.billsec, 0);
    r.raw := coalesce(r.raw, '{}'::jsonb);
    SELECT start_time INTO first_start FROM cdr.call_uuids WHERE call_uuid = r.call_uuid;
    IF NOT FOUND THEN
        BEGIN
            INSERT INTO cdr.calls (call_uuid, bleg_uuid, direction, caller_number, caller_name, callee_number, queue,
                                   trunk, start_time, answer_time, end_time, duration, billsec, hangup_cause,
                                   hangup_cause_q850, sip_hangup_disposition, recording_path, node, raw)
            VALUES (r.call_uuid, r.bleg_uuid, r.direction, r.caller_number, r.caller_name, r.callee_number, r.queue,
                    r.trunk, r.start_time, r.answer_time, r.end_time, r.duration, r.billsec, r.hangup_cause,
                    r.hangup_cause_q850, r.sip_hangup_disposition, r.recording_path, r.node, r.raw);
            RETURN 'stored';
        EXCEPTION WHEN unique_violation THEN
            -- a concurrent writer stored the same call between the check and the insert
            SELECT start_time INTO first_start FROM cdr.call_uuids WHERE call_uuid = r.call_uuid;
        END;
    END IF;
    SELECT * INTO e FROM cdr.calls WHERE call_uuid = r.call_uuid AND start_time = first_start;
    IF NOT FOUND OR (e.bleg_uuid, e.direction, e.caller_number, e.caller_name, e.callee_number, e.queue, e.trunk,
                     e.start_time, e.answer_time, e.end_time, e.duration, e.billsec, e.hangup_cause,
                     e.hangup_cause_q850, e.sip_hangup_disposition, e.recording_path, e.raw)
                    IS NOT DISTINCT FROM
                    (r.bleg_uuid, r.direction, r.caller_number, r.caller_name, r.callee_number, r.queue, r.trunk,
                     r.start_time, r.answer_time, r.end_time, r.duration, r.billsec, r.hangup_cause,
                     r.hangup_cause_q850, r.sip_hangup_disposition, r.recording_path, r.raw) THEN
        RETURN 'duplicate';
    END IF;
    INSERT INTO cdr.conflicts (call_uuid, record) VALUES (r.call_uuid, p)
        ON CONFLICT ON CONSTRAINT conflicts_once DO NOTHING;
    RETURN 'conflict';
END
$$;

-- The old entry point, for callers that only need "stored or not".
CREATE OR REPLACE FUNCTION cdr.ingest(p jsonb) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog
AS $$ SELECT cdr.ingest_outcome(p) = 'stored' $$;

REVOKE ALL ON FUNCTION cdr.ingest_outcome(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cdr.ingest_outcome(jsonb) TO cdr_writer;
GRANT SELECT ON cdr.conflicts TO pbx_admin, pbx_readonly;
