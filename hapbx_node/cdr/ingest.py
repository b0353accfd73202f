"""Storing CDR envelopes in PostgreSQL: the SQL the worker and the receiver's direct path share,
and the receiver's direct writer.

The receiver acknowledges a record once it is safe on two machines: in the Redis queue on the
master and its replica (WAIT), or, when the replica did not confirm in time (it is down, cut
off or behind), in PostgreSQL itself (committed: synchronous replication when the standby is
there, the primary's own fsync otherwise). min-replicas-to-write is not used for that: with one
Redis node left it would refuse every push and the worker's every move, so a pair down to one
node could not queue a single CDR. The queue copy of a record stored directly is stored again
by the worker as a duplicate (cdr.ingest_outcome: same content), never twice.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

# one row per queue item, in order; an item that is not a version-1 envelope makes ingest(NULL)
# fail (no call_uuid: class 23), which sends the batch to the item-by-item path
INGEST_SQL = ("SELECT cdr.ingest_outcome(CASE WHEN e->>'v' = '1' AND jsonb_typeof(e->'c') = 'object' THEN e->'c' END) "
              "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(e, i) ORDER BY i")
INGEST_ONE_SQL = "SELECT cdr.ingest_outcome(%s::jsonb)"
POISON_CLASSES = ("22", "23")   # data exception, integrity constraint violation
#: outcomes of cdr.ingest_outcome() that mean the record is in PostgreSQL (or its first version is)
STORED = ("stored", "duplicate", "conflict")


def pg_error(err) -> str:
    """A PostgreSQL error in one line: its SQLSTATE and the first line of its message."""
    text = str(err).strip()
    return " ".join(filter(None, [getattr(err, "pgcode", None), text.splitlines()[0] if text else type(err).__name__]))


def is_poison(err) -> bool:
    """PostgreSQL refused the record for its data (it will never take it as it is)."""
    return (getattr(err, "pgcode", None) or "")[:2] in POISON_CLASSES


def one_by_one(cur, rows: list[str]) -> list[tuple[str | None, str]]:
    """A batch PostgreSQL refused: each row (JSON) in its own savepoint; per row (outcome, "") or
    (None, why PostgreSQL refused it for its data). Other errors propagate (retry the batch)."""
    import psycopg2
    out: list[tuple[str | None, str]] = []
    for row in rows:
        cur.execute("SAVEPOINT one")
        try:
            cur.execute(INGEST_ONE_SQL, (row,))
            out.append((cur.fetchone()[0], ""))
            cur.execute("RELEASE SAVEPOINT one")
        except psycopg2.Error as err:
            if not is_poison(err):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT one")
            out.append((None, f"PostgreSQL refused it: {pg_error(err)}"))
    return out


class DirectUnavailable(Exception):
    """PostgreSQL could not take the records now (down, unreachable, read-only, timeout)."""


class DirectWriter:
    """The receiver's direct path: envelopes committed to the primary, one transaction per batch,
    on one connection in one thread (the event loop never waits on libpq). The DSN may list both
    nodes with target_session_attrs=read-write: libpq finds the primary."""

    def __init__(self, dsn: str, password: str, node: str, timeout_s: float):
        self.dsn, self.password, self.node, self.timeout_s = dsn, password, node, timeout_s
        self.conn = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cdr-direct")

    def _connect(self):
        import psycopg2     # only where the direct path is configured
        if self.conn is None or self.conn.closed:
            ms = int(self.timeout_s * 1000)
            self.conn = psycopg2.connect(self.dsn, password=self.password, connect_timeout=max(1, int(self.timeout_s)),
                                         application_name=f"hapbx-cdr-receiver-{self.node}",
                                         options=f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}")
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self.conn = None

    def store(self, envelopes: list[bytes]) -> list[str | None]:
        """Outcome per envelope ('stored' | 'duplicate' | 'conflict', or None: PostgreSQL refused
        that record for its data), committed; DirectUnavailable when nothing could be stored."""
        import psycopg2
        try:
            conn = self._connect()
            with conn.cursor() as cur:
                try:
                    cur.execute(INGEST_SQL, ((b"[" + b",".join(envelopes) + b"]").decode("utf-8"),))
                    outcomes: list[str | None] = [row[0] for row in cur.fetchall()]
                except psycopg2.Error as err:
                    if not is_poison(err):
                        raise
                    conn.rollback()
                    outcomes = [o for o, _ in one_by_one(cur, [json.dumps(json.loads(e)["c"]) for e in envelopes])]
            conn.commit()
            return outcomes
        except psycopg2.Error as err:
            self.close()
            raise DirectUnavailable(f"PostgreSQL: {pg_error(err)}") from None
