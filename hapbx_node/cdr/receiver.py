"""The CDR receiver: FreeSWITCH mod_json_cdr -> validation -> Redis list, 200 only once the record
is safe on two machines.

Posts are coalesced: while one LPUSH is in flight the next records gather, and go in one
LPUSH of many values (one round trip for a whole burst), each poster answered when the push
that carried its record was acknowledged. Redis endpoints are tried in order; an endpoint that
answers READONLY (a replica) or does not answer is left for the next, so a receiver on either
node always writes to the current master. A record that cannot be pushed within
HAPBX_CDR_REDIS_TIMEOUT gets a 503 (mod_json_cdr retries, then keeps it in its error log dir).

Safe on two machines (HAPBX_CDR_WAIT_REPLICA_MS > 0): each push is followed by WAIT for the Redis
replica; when the replica did not confirm in time the push's records are committed to
PostgreSQL before they are acknowledged (ingest.py says why not min-replicas-to-write). The
answer says where: ``"stored": "queue"`` (master and replica) or ``"postgres"`` (with why).

Senders authenticate (auth.py: HTTP basic, a credential per node) whenever credentials are set,
which they must be when the receiver listens beyond loopback; there it serves HTTPS only
(HAPBX_HTTPS_CERT/KEY: common.http_sites), plain HTTP on loopback.

Answers: 200 safe (where, in the body); 400 not a JSON CDR; 401 no valid sender credential; 413 body too large; 422 a CDR the
table would refuse (reason in the body); 503 Redis unavailable, the queue full (maxmemory), or
the replica silent and PostgreSQL unavailable too (the poster retries; a record queued twice is
stored once).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from . import auth, records
from .common import RateLimitedLog, http_sites, listeners, setup_logging, until_stopped
from .ingest import STORED, DirectUnavailable, DirectWriter
from .resp import Connection, ConnectionLost, RespError, open_first
from .settings import ReceiverSettings

RETRYABLE = ("READONLY", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")


class Unavailable(Exception):
    """The record could not be queued (the poster gets a 503 and retries)."""


class Refused(Exception):
    """PostgreSQL refused the record for its data on the direct path (the poster gets a 422)."""


@dataclass
class Stats:
    accepted: int = 0
    rejected: int = 0
    too_large: int = 0
    unauthorized: int = 0
    unavailable: int = 0
    pushes: int = 0
    replica_acks: int = 0
    direct_to_postgres: int = 0     # records acknowledged once in PostgreSQL (the replica did not confirm)
    started: float = field(default_factory=time.time)


class Pusher:
    """Coalescing LPUSH to whichever endpoint is the master."""

    def __init__(self, settings: ReceiverSettings, log: logging.Logger, stats: Stats):
        self.s, self.log, self.stats = settings, log, stats
        self.pending: list[tuple[bytes, asyncio.Future, float]] = []
        self.wake = asyncio.Event()
        self.conn: Connection | None = None
        self.avoid: str | None = None
        self.wait_ms = settings.wait_replica_ms
        self.limited = RateLimitedLog(log, 2)
        self.task: asyncio.Task | None = None
        self.direct = (DirectWriter(settings.pg_dsn, settings.pg_password, settings.node, settings.redis_timeout)
                       if settings.pg_dsn and settings.wait_replica_ms else None)
        self.direct_tasks: set[asyncio.Task] = set()

    @property
    def endpoint(self) -> str | None:
        return self.conn.label if self.conn and self.conn.connected else None

    async def push(self, payload: bytes) -> str:
        """Where the record is safe: 'queue' (Redis master and replica, or the master alone when
        WAIT is off) or 'postgres'; Unavailable or Refused otherwise."""
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((payload, fut, time.monotonic() + self.s.redis_timeout))
        self.wake.set()
        return await fut

    def _fail(self, batch, exc: Exception) -> None:
        for _, fut, _ in batch:
            if not fut.done():
                fut.set_exception(exc)

    def _expire(self) -> None:
        now = time.monotonic()
        if not self.pending or self.pending[0][2] > now:
            return
        keep = []
        for item in self.pending:
            if item[2] <= now:
                self._fail([item], Unavailable("Redis did not accept the record in time"))
            else:
                keep.append(item)
        self.pending = keep

    async def _connection(self) -> Connection:
        if self.conn is None or not self.conn.connected:
            r = self.s.redis
            self.conn = await open_first(r.endpoints, r.user, r.password, timeout=min(2.0, self.s.redis_timeout),
                                         exclude=self.avoid)
            self.log.info("queue: connected to Redis %s", self.conn.label)
        return self.conn

    async def run(self) -> None:
        backoff = 0.02
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
            self._expire()
            if not self.pending:
                continue
            batch = self.pending[:self.s.max_batch]
            del self.pending[:len(batch)]
            try:
                conn = await self._connection()
                cmds: list[tuple] = [("LPUSH", self.s.redis.keys.queue, *[p for p, _, _ in batch])]
                if self.wait_ms:
                    cmds.append(("WAIT", 1, self.wait_ms))
                replies = await conn.pipeline(cmds)
            except (ConnectionLost, RespError, OSError, asyncio.TimeoutError) as err:
                self.avoid = self.conn.label if self.conn else None
                if self.conn:
                    self.conn.close()
                self.pending[:0] = batch
                self.limited(logging.WARNING, "queue: Redis unavailable (%s); retrying", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            reply = replies[0]
            if isinstance(reply, RespError):
                if reply.kind in RETRYABLE:
                    # a replica (after a failover) or a master still loading: try the other endpoint
                    self.avoid = conn.label
                    conn.close()
                    self.pending[:0] = batch
                    self.limited(logging.WARNING, "queue: %s answered %s; trying the next endpoint",
                                 conn.label, reply.kind)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                    continue
                # OOM (queue full: maxmemory, noeviction), NOPERM (ACL): not retryable here
                self.limited(logging.ERROR, "queue: Redis refused the push: %s", reply)
                self._fail(batch, Unavailable(f"Redis refused the push: {reply.kind}"))
                continue
            backoff = 0.02
            self.avoid = None
            self.stats.pushes += 1
            if self.wait_ms:
                acks = replies[1]
                if isinstance(acks, RespError):
                    self.log.warning("queue: WAIT refused (%s): not waiting for the replica any more", acks)
                    self.wait_ms = 0
                elif isinstance(acks, int) and acks > 0:
                    self.stats.replica_acks += 1
                elif self.direct is not None:
                    # only on the master so far: safe once PostgreSQL has it (in its own task, so the
                    # next pushes do not wait for this commit)
                    task = asyncio.get_running_loop().create_task(self._store_direct(batch))
                    self.direct_tasks.add(task)
                    task.add_done_callback(self.direct_tasks.discard)
                    continue
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_result("queue")

    async def _store_direct(self, batch) -> None:
        self.limited(logging.WARNING, "queue: the Redis replica did not confirm within %d ms: committing the "
                     "records to PostgreSQL before acknowledging them", self.wait_ms)
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self.direct.pool, self.direct.store, [p for p, _, _ in batch])
        except DirectUnavailable as err:
            self.limited(logging.ERROR, "queue: replica silent and %s: answering 503", err)
            self._fail(batch, Unavailable(f"the Redis replica did not confirm and {err}"))
            return
        for (_, fut, _), outcome in zip(batch, outcomes):
            if fut.done():
                continue
            if outcome in STORED:
                self.stats.direct_to_postgres += 1
                fut.set_result("postgres")
            else:
                fut.set_exception(Refused("PostgreSQL refused the record for its data"))


def _json(status: int, body: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def make_app(settings: ReceiverSettings, log: logging.Logger | None = None) -> web.Application:
    log = log or logging.getLogger("hapbx-cdr-receiver")
    stats = Stats()
    rejected_log = RateLimitedLog(log, 5)
    app = web.Application(client_max_size=settings.max_body)
    pusher = Pusher(settings, log, stats)
    app["pusher"], app["stats"] = pusher, stats

    async def post_cdr(request: web.Request) -> web.Response:
        if settings.senders and auth.authenticated(request.headers.get("Authorization"), settings.senders) is None:
            stats.unauthorized += 1
            rejected_log(logging.WARNING, "refused a CDR post without valid sender credentials from %s",
                         request.remote)
            return web.Response(status=401, text=json.dumps({"error": "sender credentials required (HTTP basic)"}),
                                content_type="application/json", headers={"WWW-Authenticate": 'Basic realm="hapbx-cdr"'})
        if request.content_length is not None and request.content_length > settings.max_body:
            stats.too_large += 1
            rejected_log(logging.WARNING, "refused a %d-byte body from %s (limit %d)", request.content_length,
                         request.remote, settings.max_body)
            return _json(413, {"error": f"body larger than {settings.max_body} bytes"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            stats.too_large += 1
            rejected_log(logging.WARNING, "refused a body over %d bytes from %s", settings.max_body, request.remote)
            return _json(413, {"error": f"body larger than {settings.max_body} bytes"})
        try:
            record = records.decode_body(body, request.headers.get("Content-Type", ""))
        except records.Invalid as err:
            stats.rejected += 1
            rejected_log(logging.WARNING, "refused a malformed CDR from %s: %s", request.remote, err)
            return _json(400, {"error": str(err)})
        try:
            row = records.normalize(record, settings.node)
        except records.Invalid as err:
            stats.rejected += 1
            rejected_log(logging.WARNING, "refused an invalid CDR from %s: %s", request.remote, err)
            return _json(422, {"error": str(err)})
        try:
            where = await pusher.push(records.envelope(row, time.time()).encode())
        except Unavailable as err:
            stats.unavailable += 1
            return _json(503, {"error": str(err)})
        except Refused as err:
            stats.rejected += 1
            return _json(422, {"error": str(err)})
        stats.accepted += 1
        body = {"ok": True, "call_uuid": row["call_uuid"], "stored": where}
        if where == "postgres":
            body["why"] = "the Redis replica did not confirm the queued copy in time"
        return _json(200, body)

    async def health(request: web.Request) -> web.Response:
        endpoint = pusher.endpoint
        body = {"node": settings.node, "redis": endpoint, "pending": len(pusher.pending),
                **{k: v for k, v in vars(stats).items()}}
        return _json(200, body)

    async def start(app):
        pusher.task = asyncio.get_running_loop().create_task(pusher.run())

    async def stop(app):
        if pusher.task:
            pusher.task.cancel()
            try:
                await pusher.task
            except asyncio.CancelledError:
                pass
        if pusher.conn:
            pusher.conn.close()
        if pusher.direct is not None:
            if pusher.direct_tasks:     # commits in flight: their posters are still waiting
                await asyncio.wait(pusher.direct_tasks, timeout=settings.redis_timeout + 1)
            pusher.direct.pool.shutdown(wait=False)
            pusher.direct.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/cdr", post_cdr)
    app.router.add_post("/", post_cdr)
    app.router.add_get("/health", health)
    return app


async def serve(settings: ReceiverSettings, log: logging.Logger) -> None:
    tls = settings.https.context if settings.https else None
    async with http_sites(make_app(settings, log), settings.listen, settings.port, settings.redis_timeout + 2, tls):
        log.info("listening on %s port %d (max body %d bytes)", listeners(settings.listen, tls), settings.port,
                 settings.max_body)
        await until_stopped()
        log.info("stopping: finishing the posts in flight")


def main() -> int:
    log = setup_logging("hapbx-cdr-receiver")
    settings = ReceiverSettings.from_env()
    log.info("receiver on %s", settings.node)
    asyncio.run(serve(settings, log))
    return 0
