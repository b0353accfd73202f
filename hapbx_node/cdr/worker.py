"""The CDR worker: Redis queue -> PostgreSQL, at-least-once, idempotent on the call UUID.

Runs on the VIP owner only (the failover scripts start and stop it) and talks to the local
Redis master and the local PostgreSQL primary. Elsewhere it would only wait: a replica refuses
the moves (READONLY) and a standby the inserts (read-only transaction).

One cycle (a reliable queue with the list commands the Redis ``cdr`` user is allowed):
  1. take: items left in this node's processing list (a previous run died mid-batch) first;
     else BLMOVE one item queue -> processing (waits up to HAPBX_CDR_BLOCK_SECONDS), then
     LMOVE up to batch-1 more in one pipeline. The processing list's right end holds the batch.
  2. store: one transaction, ``SELECT cdr.ingest_outcome(x)`` per record ('stored'; 'duplicate':
     already there with the same content, a re-delivery; 'conflict': there with other content,
     kept in cdr.conflicts for review and counted, never stored over the first); commit.
  3. release: RPOP the batch's count from the processing list (with the dead letters pushed in
     the same MULTI/EXEC).
A crash between 2 and 3 re-delivers the batch: ingest_outcome() finds every UUID and stores nothing
twice. Redis or PostgreSQL down: the batch stays where it is, retried with backoff (up to
HAPBX_CDR_BACKOFF_MAX). A record PostgreSQL refuses for its data (SQLSTATE class 22 or 23), or
a queue item that is not an envelope, goes to the dead-letter list with the reason; the rest
of its batch is stored. Processing lists of the other nodes (left by a worker that ran there
before a failover, replicated here) are moved back onto the queue at start.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import time
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extras
import redis

from . import records
from .ingest import INGEST_SQL, is_poison, one_by_one, pg_error
from .common import RateLimitedLog, setup_logging
from .settings import WorkerSettings
from .stats import StatsFile



@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead: int = 0
    batches: int = 0
    recovered: int = 0
    retries: int = 0
    last_lag: float = 0.0
    last_ingest: float = 0.0     # wall time the last batch was stored and released (0: none yet)
    started: float = field(default_factory=time.time)


class Transient(Exception):
    """Redis or PostgreSQL unavailable (or read-only here): retry the same batch later."""


class Worker:
    def __init__(self, s: WorkerSettings, log: logging.Logger, peers: list[str] | None = None):
        self.s, self.log = s, log
        self.keys = s.redis.keys
        self.processing = f"{self.keys.processing}:{s.node}"
        self.peers = [p for p in (peers or []) if p != s.node]
        self.redis = redis.Redis(**s.redis.redis_py(),   # TLS, the server checked against the cluster CA
                                 socket_timeout=max(5.0, s.block_seconds + 3), socket_connect_timeout=2,
                                 client_name=f"hapbx-cdr-worker-{s.node}")
        self.pg = None
        self.c = Counters()
        self.stopping = False
        self.limited = RateLimitedLog(log, 1)
        self.recovered_peers = False
        self.stats = StatsFile(s.stats_path, s.stats_every, log)

    # --- PostgreSQL ---------------------------------------------------------------------------
    def _pg(self):
        if self.pg is None or self.pg.closed:
            self.pg = psycopg2.connect(self.s.pg_dsn, password=self.s.pg_password, connect_timeout=3,
                                       application_name=f"hapbx-cdr-worker-{self.s.node}",
                                       options="-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000",
                                       keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        return self.pg

    def _pg_reset(self) -> None:
        if self.pg is not None:
            try:
                self.pg.close()
            except psycopg2.Error:
                pass
        self.pg = None

    # --- the cycle ------------------------------------------------------------------------------
    def recover_peers(self) -> int:
        """Move other nodes' processing lists back onto the queue (one atomic LMOVE per item)."""
        moved = 0
        for peer in self.peers:
            key = f"{self.keys.processing}:{peer}"
            while self.redis.lmove(key, self.keys.queue, "RIGHT", "RIGHT") is not None:
                moved += 1
        if moved:
            self.log.info("moved %d record(s) left in other nodes' processing lists back to the queue", moved)
        self.c.recovered += moved
        return moved

    def take(self) -> list[bytes]:
        left = self.redis.llen(self.processing)
        if left:
            items = self.redis.lrange(self.processing, -min(left, self.s.batch), -1)
            items.reverse()   # oldest first
            self.limited(logging.INFO, "re-processing %d record(s) left in %s", len(items), self.processing)
            return items
        first = self.redis.blmove(self.keys.queue, self.processing, self.s.block_seconds, "RIGHT", "LEFT")
        if first is None:
            return []
        items = [first]
        more = min(self.redis.llen(self.keys.queue), self.s.batch - 1)
        if more > 0:
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(more):
                pipe.lmove(self.keys.queue, self.processing, "RIGHT", "LEFT")
            items += [x for x in pipe.execute() if x is not None]
        return items

    def store(self, items: list[bytes]) -> list[tuple[bytes, str]]:
        """Store the batch in one transaction; returns the dead letters (item, reason).

        Fast path: the queue items go to PostgreSQL as they are (one JSON array; PostgreSQL takes
        each envelope's row), no JSON work here. When PostgreSQL refuses that (an item is not
        JSON, not a version-1 envelope, or a row breaks a constraint), the batch is checked item
        by item here and stored record by record, the refused ones becoming dead letters."""
        conn = None
        dead: list[tuple[bytes, str]] = []
        try:
            conn = self._pg()
            with conn.cursor() as cur:
                try:
                    array = b"[" + b",".join(items) + b"]"
                    cur.execute(INGEST_SQL, (array.decode("utf-8"),))
                    results = [row[0] for row in cur.fetchall()]
                    queued = [self._queued(items[0])]
                except (psycopg2.Error, UnicodeDecodeError) as err:
                    if isinstance(err, psycopg2.Error) and not is_poison(err):
                        raise
                    conn.rollback()
                    good: list[tuple[bytes, dict, float]] = []
                    for raw in items:
                        try:
                            row, q = records.open_envelope(raw)
                            good.append((raw, row, q))
                        except records.Invalid as bad:
                            dead.append((raw, str(bad)))
                    results = self._one_by_one(cur, good, dead)
                    queued = [q for _, _, q in good]
            conn.commit()
        except psycopg2.Error as err:
            if conn is None or isinstance(err, (psycopg2.OperationalError, psycopg2.InterfaceError)) or conn.closed:
                self._pg_reset()
            else:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    self._pg_reset()
            raise Transient(f"PostgreSQL: {pg_error(err)}") from None
        self.c.stored += results.count("stored")
        self.c.duplicates += results.count("duplicate")
        conflicts = results.count("conflict")
        if conflicts:
            self.c.conflicts += conflicts
            self.log.warning("%d CDR(s) conflict with the record stored first under the same call UUID: kept in "
                             "cdr.conflicts for review", conflicts)
        self.c.last_lag = max(0.0, time.time() - min(queued)) if queued else 0.0
        return dead

    @staticmethod
    def _queued(item: bytes) -> float:
        try:
            return records.open_envelope(item)[1]
        except records.Invalid:
            return time.time()

    @staticmethod
    def _one_by_one(cur, good, dead) -> list:
        """A batch with a record PostgreSQL refuses: each record on its own; the refused ones dead letters."""
        results = []
        for (raw, _, _), (outcome, reason) in zip(good, one_by_one(cur, [json.dumps(row) for _, row, _ in good])):
            if reason:
                dead.append((raw, reason))
            results.append(outcome)
        return results

    def release(self, count: int, dead: list[tuple[bytes, str]]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for raw, reason in dead:
            item = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            pipe.lpush(self.keys.dead, json.dumps({"reason": reason, "node": self.s.node, "at": now, "item": item}))
        pipe.rpop(self.processing, count)
        pipe.execute()
        for _, reason in dead:
            self.log.error("dead letter (%s): %s", self.keys.dead, reason)
        self.c.dead += len(dead)

    def cycle(self) -> int:
        """One batch; returns the number of records handled (0 when the queue stayed empty)."""
        try:
            if not self.recovered_peers:
                self.recover_peers()
                self.recovered_peers = True
            items = self.take()
            if not items:
                return 0
            dead = self.store(items)
            self.release(len(items), dead)
            self.c.batches += 1
            self.c.last_ingest = time.time()
            return len(items)
        except redis.exceptions.ResponseError as err:
            raise Transient(f"Redis: {err}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            raise Transient(f"Redis: {type(err).__name__} {err}") from None

    def run(self) -> None:
        backoff = 0.05
        last_report = time.monotonic()
        reported = (0, 0, 0)
        while not self.stopping:
            try:
                self.cycle()
                backoff = 0.05
            except Exception as err:  # noqa: BLE001 - never die on one bad cycle: back off and retry
                self.c.retries += 1
                if isinstance(err, Transient):
                    self.limited(logging.WARNING, "%s; retrying in %.2fs", err, backoff)
                else:
                    self.log.exception("unexpected error; retrying in %.2fs", backoff)
                    self._pg_reset()
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(min(0.05, backoff))
                backoff = min(backoff * 2, self.s.backoff_max)
            self.stats.write(self)
            now = time.monotonic()
            if now - last_report >= 10:
                current = (self.c.stored, self.c.duplicates, self.c.conflicts, self.c.dead)
                if current != reported:
                    self.log.info("stored %d, re-deliveries %d, conflicts %d, dead letters %d, lag %.3fs", *current,
                                  self.c.last_lag)
                    reported = current
                last_report = now
        self._pg_reset()
        self.redis.close()


def main() -> int:
    import os
    log = setup_logging("hapbx-cdr-worker")
    settings = WorkerSettings.from_env()
    peers = [p for p in os.environ.get("HAPBX_CDR_NODES", "").split(",") if p]
    worker = Worker(settings, log, peers)

    def stop(signum, frame):
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker on %s (%s): queue %s, batch %d", settings.node, socket.gethostname(), settings.redis.keys.queue,
             settings.batch)
    worker.run()
    log.info("stopped: stored %d, re-deliveries %d, conflicts %d, dead letters %d", worker.c.stored,
             worker.c.duplicates, worker.c.conflicts, worker.c.dead)
    return 0
