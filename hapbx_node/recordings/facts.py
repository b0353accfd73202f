"""What the database knows of the recordings' calls: cdr.calls (the retention recorded with the
call in raw.variables, its end) and the recording policy that applies to its parties now, read in
one read-only transaction as the read-only role (pbx_readonly) from this node's PostgreSQL (a
standby answers as well as the primary)."""
from __future__ import annotations

from typing import Iterable

from .plan import Call, retention_value

#: UUIDs (or paths) asked per query
CHUNK = 2000

# The call's parties as hapbx_recording.lua counts them: the callee (an extension) unless the call
# went to a queue or out to a trunk, where the caller is the extension when it is one of ours.
_COLUMNS = """
SELECT c.call_uuid::text, c.recording_path, extract(epoch FROM c.end_time)::float8,
       c.raw #>> '{variables,hapbx_recording_retention_days}',
       c.raw #>> '{variables,hapbx_recording_mode}',
       p.retention_days, p.scope
  FROM cdr.calls c
  LEFT JOIN LATERAL pbx.recording_policy_for(
         CASE WHEN c.queue IS NULL AND c.direction <> 'outbound' THEN c.callee_number
              WHEN c.caller_number ~ '^[0-9]+$' THEN c.caller_number END,
         c.queue, c.trunk) p ON true
"""
BY_UUID = _COLUMNS + " WHERE c.call_uuid = ANY(%s::uuid[])"
# recording_path has no index: asked only for files whose name carries no UUID (rare)
BY_PATH = _COLUMNS + " WHERE c.recording_path = ANY(%s::text[])"
GLOBAL = "SELECT retention_days FROM pbx.recording_policies WHERE scope = 'global' AND enabled"


def _call(row) -> Call:
    uuid, path, end, recorded, mode, days, scope = row
    return Call(uuid=uuid, recording_path=path, end_time=float(end), recorded_days=retention_value(recorded),
                current_days=days, current_scope=scope, mode=mode)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def read(conn, uuids: Iterable[str], paths: Iterable[str] = ()) -> tuple[list[Call], int | None]:
    """(the calls of these UUIDs and recording paths, the global policy's retention or None)."""
    calls: dict[str, Call] = {}
    with conn.cursor() as cur:
        for query, items in ((BY_UUID, sorted(set(uuids))), (BY_PATH, sorted(set(paths)))):
            for chunk in _chunks(items):
                cur.execute(query, (chunk,))
                for row in cur.fetchall():
                    call = _call(row)
                    calls[call.uuid] = call
        cur.execute(GLOBAL)
        row = cur.fetchone()
    return list(calls.values()), (row[0] if row else None)


def connect(dsn: str, password: str | None):
    """A read-only session (psycopg2: Debian's python3-psycopg2 on the nodes); the password is
    passed to libpq directly, never in a DSN string or argv."""
    import psycopg2
    kw = {"password": password} if password else {}
    conn = psycopg2.connect(dsn, application_name="hapbx-recordings-retention", **kw)
    conn.set_session(readonly=True, autocommit=False)
    return conn
