"""The CDR worker's stats file (layout.CDR_STATS): what hapbx-exporter reports of the pipeline
(hapbx_cdr_*), so the exporter needs no Redis or PostgreSQL credential of its own.

Rewritten atomically (a new file renamed over the old one, mode 0644) at most every
``every`` seconds from the worker's loop: one Redis round trip (the lengths of the queue, this
node's processing list and the dead-letter list; the oldest item of the queue and of the
processing list) and, every REVIEW_EVERY seconds, cdr.review_count() on the worker's own
PostgreSQL connection (the conflicting records awaiting review). What cannot be read this time
is written empty (the exporter leaves that metric out); the file's age says how fresh it is.
"""
from __future__ import annotations

import os
import time

from .. import layout
from . import records

#: seconds between counts of cdr.conflicts (a count over a small table; the value changes rarely)
REVIEW_EVERY = 10.0
REVIEW_SQL = "SELECT cdr.review_count()"


def queued_at(item) -> float:
    """When the receiver accepted a queue item (its envelope's q), 0 when unknown."""
    if item is None:
        return 0.0
    try:
        return records.open_envelope(item)[1]
    except records.Invalid:
        return 0.0


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class StatsFile:
    def __init__(self, path: str, every: float, log):
        self.path, self.every, self.log = path, every, log
        self.written = -1e9           # monotonic time of the last write
        self.review: int | None = None
        self.review_read = -1e9
        self.failing: set[str] = set()    # what failed last time: logged once, until it works again

    def _failed(self, what: str, err) -> None:
        if what not in self.failing:
            self.failing.add(what)
            self.log.warning("stats: %s: %s (logged once until it works again)", what, err)

    def _ok(self, what: str) -> None:
        if what in self.failing:
            self.failing.discard(what)
            self.log.info("stats: %s works again", what)

    def due(self) -> bool:
        return bool(self.path) and time.monotonic() - self.written >= self.every

    def redis_facts(self, worker) -> dict:
        keys = worker.keys
        try:
            pipe = worker.redis.pipeline(transaction=False)
            pipe.llen(keys.queue)
            pipe.llen(worker.processing)
            pipe.llen(keys.dead)
            pipe.lindex(keys.queue, -1)          # the consuming end: the oldest queued record
            pipe.lindex(worker.processing, -1)   # the batch in flight's oldest
            queue, processing, dead, oldest_queue, oldest_batch = pipe.execute()
        except Exception as err:  # noqa: BLE001 - Redis down or refusing: report the rest
            self._failed("Redis", err)
            return {}
        self._ok("Redis")
        oldest = [t for t in (queued_at(oldest_queue), queued_at(oldest_batch)) if t > 0]
        return {"queue": queue, "processing": processing, "dead": dead,
                "oldest_queued_at": f"{min(oldest):.3f}" if oldest else 0}

    def review_count(self, worker) -> int | None:
        if time.monotonic() - self.review_read < REVIEW_EVERY:
            return self.review
        self.review_read = time.monotonic()
        conn = None
        try:
            conn = worker._pg()
            with conn.cursor() as cur:
                cur.execute(REVIEW_SQL)
                self.review = int(cur.fetchone()[0])
            conn.commit()
            self._ok("PostgreSQL")
        except Exception as err:  # noqa: BLE001 - PostgreSQL down or read-only: the last count stands
            self._failed("PostgreSQL", err)
            worker._pg_reset()
        return self.review

    def write(self, worker) -> None:
        """Write the stats now if it is time (from the worker's loop; never raises)."""
        if not self.due():
            return
        self.written = time.monotonic()
        values = {"node": worker.s.node, "at": f"{time.time():.3f}", **self.redis_facts(worker),
                  "last_ingest_at": f"{worker.c.last_ingest:.3f}" if worker.c.last_ingest else 0}
        review = self.review_count(worker)
        if review is not None:
            values["review"] = review
        try:
            write_atomic(self.path, layout.format_stats(values))
            self._ok(f"writing {self.path}")
        except OSError as err:
            self._failed(f"writing {self.path}", err)
