"""/health, /ready and /openapi.json (open: monitoring, load balancers, clients): this node's roles
(PostgreSQL, Redis and its CDR queue, the VIP, the HA writer) and the API's description.
PostgreSQL and Redis are probed at most once a PROBE_TTL, whatever the rate of requests."""
from __future__ import annotations

import asyncio
import socket
import time

import psycopg2
from aiohttp import web

from ...layout import parse_status
from .. import __version__
from ..resp import Connection, ConnectionLost, RespError, open_first
from .api import Api, reply
from .openapi import openapi_document


def vip_here(vip: str) -> bool:
    """The VIP is a local address (bind without IP_FREEBIND succeeds only then)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((vip, 0))
        return True
    except OSError:
        return False


def ha_status(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            pairs = parse_status(fh.read())
    except OSError:
        return None
    return {"writer": pairs.get("writer") == "1", "lease_holder": pairs.get("hold") == "1",
            "holder": pairs.get("holder"), "vrrp": pairs.get("vrrp")}


#: seconds a probe of PostgreSQL and Redis answers for: /health and /ready are open to anyone, and
#: a request each must not cost a query (a thread of the API's database pool) and a Redis round trip
PROBE_TTL = 1.0


class Probe:
    """PostgreSQL's role and Redis's role and queue lengths, probed at most once a PROBE_TTL:
    callers within it (and those waiting while a probe runs) share the result. Redis is asked
    over one connection kept between probes (reopened after an error)."""

    def __init__(self, api: Api):
        self.s, self.db = api.s, api.db
        self.lock = asyncio.Lock()
        self.at = float("-inf")
        self.result: dict = {}
        self.redis: Connection | None = None

    async def roles(self) -> dict:
        async with self.lock:
            if time.monotonic() - self.at >= PROBE_TTL:
                self.result = {"postgres": await self._postgres(), **await self._redis()}
                self.at = time.monotonic()
            return self.result

    async def _postgres(self) -> str:
        def pg_role(cur):
            cur.execute("SELECT pg_is_in_recovery() AS r")
            return "standby" if cur.fetchone()["r"] else "primary"
        try:
            return await asyncio.wait_for(self.db(pg_role, readonly=True), 3)
        except (psycopg2.Error, asyncio.TimeoutError, OSError):
            return "down"

    async def _redis(self) -> dict:
        s = self.s
        role, depth, dead = "down", None, None
        try:
            if self.redis is None or not self.redis.connected:
                self.redis = await open_first(s.redis.endpoints[:1], s.redis.user, s.redis.password, timeout=1.0)
            # a failed pipeline closes the connection: the next probe opens a new one
            hello, depth, dead = await self.redis.pipeline([("HELLO", "2"), ("LLEN", s.redis.keys.queue),
                                                            ("LLEN", s.redis.keys.dead)])
            if isinstance(hello, list):
                info = dict(zip(hello[::2], hello[1::2]))
                role = {b"master": "master", b"replica": "replica", b"slave": "replica"}.get(info.get(b"role"), "?")
        except (ConnectionLost, RespError, OSError, asyncio.TimeoutError):
            pass
        return {"redis": role, "cdr_queue": depth if isinstance(depth, int) else None,
                "cdr_dead_letters": dead if isinstance(dead, int) else None}

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def add_routes(app: web.Application, api: Api) -> None:
    s = api.s
    probe = Probe(api)

    async def close_probe(app):
        probe.close()
    app.on_cleanup.append(close_probe)

    async def roles() -> dict:
        # the VIP and the HA status file are local and cheap: read each time (they change first)
        probed = await probe.roles()
        return {"postgres": probed["postgres"], "redis": probed["redis"], "vip": vip_here(s.vip),
                "ha": ha_status(s.ha_status), "cdr_queue": probed["cdr_queue"],
                "cdr_dead_letters": probed["cdr_dead_letters"]}

    async def health(request):
        return reply({"status": "ok", "node": s.node, "version": __version__, "roles": await roles()})

    async def ready(request):
        r = await roles()
        writable = r["postgres"] == "primary"
        return reply({"ready": writable, "node": s.node, "roles": r}, 200 if writable else 503)

    async def openapi(request):
        return reply(openapi_document(s))

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/openapi.json", openapi)
