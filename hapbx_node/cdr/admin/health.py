"""/health, /ready and /openapi.json (open: monitoring, load balancers, clients): this node's roles
(PostgreSQL, Redis and its CDR queue, the VIP, the HA writer) and the API's description."""
from __future__ import annotations

import asyncio
import socket

import psycopg2
from aiohttp import web

from ...layout import parse_status
from .. import __version__
from ..resp import ConnectionLost, RespError, open_first
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


def add_routes(app: web.Application, api: Api) -> None:
    s, db = api.s, api.db

    async def roles() -> dict:
        def pg_role(cur):
            cur.execute("SELECT pg_is_in_recovery() AS r")
            return "standby" if cur.fetchone()["r"] else "primary"
        try:
            postgres = await asyncio.wait_for(db(pg_role, readonly=True), 3)
        except (psycopg2.Error, asyncio.TimeoutError, OSError):
            postgres = "down"
        redis_role, depth, dead = "down", None, None
        try:
            conn = await open_first(s.redis.endpoints[:1], s.redis.user, s.redis.password, timeout=1.0)
            try:
                hello, depth, dead = await conn.pipeline([("HELLO", "2"), ("LLEN", s.redis.keys.queue),
                                                          ("LLEN", s.redis.keys.dead)])
                if isinstance(hello, list):
                    info = dict(zip(hello[::2], hello[1::2]))
                    role = info.get(b"role", b"?")
                    redis_role = {b"master": "master", b"replica": "replica", b"slave": "replica"}.get(role, "?")
            finally:
                conn.close()
        except (ConnectionLost, RespError, OSError, asyncio.TimeoutError):
            pass
        return {"postgres": postgres, "redis": redis_role, "vip": vip_here(s.vip), "ha": ha_status(s.ha_status),
                "cdr_queue": depth if isinstance(depth, int) else None,
                "cdr_dead_letters": dead if isinstance(dead, int) else None}

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
