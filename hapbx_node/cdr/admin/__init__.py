"""The admin API: a JSON HTTP API on the VIP (aiohttp; PostgreSQL through psycopg2 in a small
thread pool). Token authentication (``Authorization: Bearer <token>``) on everything under
/api/; /health, /ready and /openapi.json are open (monitoring, load balancers, clients).

  /api/v1/extensions[/{number}]            unified extensions; users get SIP credentials (HA1
                                           only, computed here: the password never reaches the
                                           database), which Kamailio's auth view serves at once,
                                           and toll-fraud controls: class_of_service (internal <
                                           national < international < premium: a class dials its
                                           own and every lower one), max_calls (concurrent calls
                                           out) and calls_per_minute (call attempts); defaults
                                           national, 2, 10; Kamailio reads them at digest auth
  /api/v1/trunks[/{name}]                  carriers (targets of routes and trunk policies)
  /api/v1/recording-policies[/{id}]        DB-driven recording policies
  /api/v1/routes/inbound[/{id}]            DID -> extension
  /api/v1/routes/outbound[/{id}]           prefix -> trunk
  /api/v1/cdrs[/{call_uuid}]               CDR search by time range, extension, direction
  /api/v1/cdr/dead-letters                 records the worker could not store, with the reason
  /health  200 while the process runs: the node's roles (PostgreSQL, Redis, VIP, HA writer)
  /ready   200 when this node takes writes (PostgreSQL primary here), else 503

Errors: 400 malformed JSON, 401 no/bad token, 404, 409 conflict (duplicate, still referenced),
413 body too large, 415 not JSON, 422 validation (every bad field listed), 503 this node is a
standby (use the VIP) or the database is unavailable.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import queue
import re
import secrets
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import psycopg2
import psycopg2.errors
import psycopg2.extras
from aiohttp import web

from ..layout import parse_status
from . import __version__
from . import validate as v
from .common import listening_socket, setup_logging
from .resp import ConnectionLost, RespError, open_first
from .settings import AdminSettings

API = "/api/v1"
MAX_CDR_SPAN = timedelta(days=366)


class ApiError(Exception):
    def __init__(self, status: int, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields


def _default(obj):
    if isinstance(obj, datetime):
        return obj.isoformat()
    return str(obj)


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, default=_default), content_type="application/json")


def error(status: int, message: str, fields: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    resp = reply(body, status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hapbx-admin"'
    return resp


# --- database ---------------------------------------------------------------------------------------

class Db:
    """psycopg2 connections in a pool; each call runs ``fn(cursor)`` in one transaction on a thread."""

    def __init__(self, s: AdminSettings):
        self.s = s
        self.pool: queue.SimpleQueue = queue.SimpleQueue()
        self.executor = ThreadPoolExecutor(max_workers=s.db_pool, thread_name_prefix="db")

    def _connect(self):
        conn = psycopg2.connect(self.s.pg_dsn, password=self.s.pg_password, connect_timeout=3,
                                application_name=f"hapbx-admin-{self.s.node}",
                                options="-c statement_timeout=15000")
        return conn

    def _run(self, fn: Callable, readonly: bool):
        try:
            conn = self.pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            conn.set_session(readonly=True if readonly else "default")
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                result = fn(cur)
            conn.commit()
        except BaseException:
            try:
                if not conn.closed:
                    conn.rollback()
                    self.pool.put(conn)
            except psycopg2.Error:
                conn.close()
            raise
        self.pool.put(conn)
        return result

    async def __call__(self, fn: Callable, readonly: bool = False):
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._run, fn, readonly)

    def close(self) -> None:
        while True:
            try:
                self.pool.get_nowait().close()
            except queue.Empty:
                break
        self.executor.shutdown(wait=False)


def pg_error(err: psycopg2.Error) -> ApiError:
    code = err.pgcode or ""
    diag = getattr(err, "diag", None)
    constraint = getattr(diag, "constraint_name", None) if diag else None
    lines = str(err).strip().splitlines()
    detail = (getattr(diag, "message_primary", None) if diag else None) or (lines[0] if lines else type(err).__name__)
    if code == "25006":
        return ApiError(503, "this node's database is a standby: send writes to the VIP")
    if code == "23505":
        return ApiError(409, f"already exists ({constraint or 'unique'})")
    if code == "23503":
        return ApiError(409, f"still referenced or refers to something missing ({constraint or 'foreign key'})")
    if code in ("23514", "23502", "22P02", "22001", "22003", "22007", "22008", "22023"):
        return ApiError(422, f"refused by the database: {detail}" + (f" ({constraint})" if constraint else ""))
    if isinstance(err, (psycopg2.OperationalError, psycopg2.InterfaceError)) or code.startswith("08") or code == "57P01":
        return ApiError(503, "database unavailable")
    return ApiError(500, "database error")


# --- helpers ------------------------------------------------------------------------------------------

async def body_of(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "send application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body too large") from None
    try:
        return json.loads(raw)
    except ValueError as err:
        raise ApiError(400, f"malformed JSON: {err}") from None


def checked(fields: dict, body: Any, partial: bool = False) -> dict:
    try:
        return v.check(fields, body, partial)
    except v.Problems as p:
        raise ApiError(422, "validation failed", p.fields) from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "validation failed", {name: "must be an integer"}) from None
    if not lo <= value <= hi:
        raise ApiError(422, "validation failed", {name: f"must be within {lo}..{hi}"})
    return value


def bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(422, "validation failed", {name: "must be true or false"})


def id_of(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "not found")
    return int(raw)


def ha1(user: str, domain: str, password: str) -> tuple[str, str]:
    """Kamailio's digest hashes, as pbx.set_sip_password computes them (calculate_ha1 0)."""
    a = hashlib.md5(f"{user}:{domain}:{password}".encode()).hexdigest()
    b = hashlib.md5(f"{user}@{domain}:{domain}:{password}".encode()).hexdigest()
    return a, b


def set_credentials(cur, ext_id: int, number: str, password: str) -> str:
    cur.execute("SELECT value FROM pbx.settings WHERE key = 'sip.domain'")
    row = cur.fetchone()
    if row is None:
        raise ApiError(409, "no SIP domain configured (pbx.settings key sip.domain)")
    domain = row["value"]
    a, b = ha1(number, domain, password)
    cur.execute("INSERT INTO pbx.sip_credentials (extension_id, domain, ha1, ha1b) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (extension_id) DO UPDATE SET domain = EXCLUDED.domain, ha1 = EXCLUDED.ha1, "
                "ha1b = EXCLUDED.ha1b", (ext_id, domain, a, b))
    return domain


# The limits as kamailio.subscriber serves them to Kamailio: a user without its pbx.calling_limits
# row (never, unless a superuser deleted it) gets the most restrictive values there, and here.
EXT_SELECT = """
SELECT e.id, e.number, e.type, e.display_name, e.enabled, e.settings, e.created_at, e.updated_at,
       c.domain AS sip_domain, coalesce(l.class, 'internal') AS class_of_service,
       coalesce(l.max_calls, 1) AS max_calls, coalesce(l.calls_per_minute, 1) AS calls_per_minute
  FROM pbx.extensions e LEFT JOIN pbx.sip_credentials c ON c.extension_id = e.id
  LEFT JOIN pbx.calling_limits l ON l.extension_id = e.id"""


def ext_out(row: dict) -> dict:
    out = {k: row[k] for k in ("number", "type", "display_name", "enabled", "settings", "created_at", "updated_at")}
    if row["type"] == "user":
        out["sip"] = {"username": row["number"], "domain": row["sip_domain"], "has_password": row["sip_domain"] is not None}
        out.update({k: row[k] for k in v.CALLING_LIMITS})
    return out


def user_only_problems(typ: str, given) -> dict:
    """A message for every user-only field in ``given`` when the extension is of another type."""
    if typ == "user":
        return {}
    problems = {k: "only user extensions have calling limits" for k in v.CALLING_LIMITS if k in given}
    if "sip_password" in given:
        problems["sip_password"] = "only user extensions have SIP credentials"
    return problems


def set_limits(cur, ext_id: int, number: str, limits: dict) -> None:
    """Change a user's calling limits (its pbx.calling_limits row exists from its creation on)."""
    if not limits:
        return
    sql, args = update_sql("pbx.calling_limits", {v.CALLING_LIMITS[k]: value for k, value in limits.items()},
                           "extension_id = %s")
    cur.execute(sql, [*args, ext_id])
    if cur.rowcount == 0:
        raise ApiError(409, f"extension {number} has no pbx.calling_limits row (it is created with the user)")


def lookup_extension(cur, number: str | None, field: str = "extension") -> tuple[int, str]:
    cur.execute("SELECT id, type FROM pbx.extensions WHERE number = %s", (number,))
    row = cur.fetchone()
    if row is None:
        raise ApiError(422, "validation failed", {field: f"no extension {number}"})
    return row["id"], row["type"]


def lookup_trunk(cur, name: str | None, field: str = "trunk") -> int | None:
    if name is None:
        return None
    cur.execute("SELECT id FROM pbx.trunks WHERE name = %s", (name,))
    row = cur.fetchone()
    if row is None:
        raise ApiError(422, "validation failed", {field: f"no trunk {name}"})
    return row["id"]


def update_sql(table: str, values: dict, where: str) -> tuple[str, list]:
    cols = list(values)
    sql = f"UPDATE {table} SET " + ", ".join(f"{c} = %s" for c in cols) + f" WHERE {where}"
    return sql, [psycopg2.extras.Json(values[c]) if isinstance(values[c], (dict, list)) else values[c] for c in cols]


# --- node roles -----------------------------------------------------------------------------------------

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


# --- the application ---------------------------------------------------------------------------------------

def make_app(s: AdminSettings, log: logging.Logger | None = None) -> web.Application:
    log = log or logging.getLogger("hapbx-admin")
    db = Db(s)
    token = s.token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path.startswith("/api/"):
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not given:
                return error(401, "missing bearer token")
            if not hmac.compare_digest(given.strip().encode(), token):
                log.warning("refused a bad token from %s", request.remote)
                return error(401, "bad token")
        try:
            return await handler(request)
        except ApiError as err:
            return error(err.status, err.message, err.fields)
        except psycopg2.Error as err:
            mapped = pg_error(err)
            if mapped.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, str(err).strip()[:200])
            return error(mapped.status, mapped.message)
        except web.HTTPException as err:
            if err.status >= 400:
                return error(err.status, err.reason)
            raise

    app = web.Application(client_max_size=s.max_body, middlewares=[middleware])
    app["db"] = db

    # --- health ---------------------------------------------------------------------------------------
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

    # --- extensions -------------------------------------------------------------------------------------
    async def list_extensions(request):
        typ = request.query.get("type")
        if typ is not None and typ not in v.EXTENSION_TYPES:
            raise ApiError(422, "validation failed", {"type": "must be one of " + ", ".join(v.EXTENSION_TYPES)})
        enabled = bool_param(request, "enabled")
        limit, offset = int_param(request, "limit", 100, 1, 1000), int_param(request, "offset", 0, 0, 10**9)

        def run(cur):
            cur.execute(EXT_SELECT + " WHERE (%(t)s::text IS NULL OR e.type = %(t)s) AND "
                        "(%(e)s::boolean IS NULL OR e.enabled = %(e)s) ORDER BY e.number LIMIT %(l)s OFFSET %(o)s",
                        {"t": typ, "e": enabled, "l": limit, "o": offset})
            rows = cur.fetchall()
            cur.execute("SELECT count(*) AS n FROM pbx.extensions e WHERE (%(t)s::text IS NULL OR e.type = %(t)s) "
                        "AND (%(e)s::boolean IS NULL OR e.enabled = %(e)s)", {"t": typ, "e": enabled})
            return {"items": [ext_out(r) for r in rows], "total": cur.fetchone()["n"], "limit": limit, "offset": offset}
        return reply(await db(run, readonly=True))

    async def create_extension(request):
        body = await body_of(request)
        # fields a non-user may not have are listed with every other bad field
        typ = body.get("type") if isinstance(body, dict) else None
        not_user = user_only_problems(typ, body) if typ in v.EXTENSION_TYPES else {}
        try:
            data = v.check(v.EXTENSION, body)
        except v.Problems as p:
            raise ApiError(422, "validation failed", {**p.fields, **not_user}) from None
        if not_user:
            raise ApiError(422, "validation failed", not_user)
        password = data.pop("sip_password", None)
        generated = False
        limits = {k: data.pop(k) for k in v.CALLING_LIMITS if k in data}
        if data["type"] == "user" and password is None:
            password, generated = secrets.token_urlsafe(18), True

        def run(cur):
            cur.execute("INSERT INTO pbx.extensions (number, type, display_name, enabled, settings) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        (data["number"], data["type"], data["display_name"], data.get("enabled", True),
                         psycopg2.extras.Json(data.get("settings", {}))))
            ext_id = cur.fetchone()["id"]
            if password is not None:
                set_credentials(cur, ext_id, data["number"], password)
            set_limits(cur, ext_id, data["number"], limits)   # the row itself: made by the insert's trigger
            cur.execute(EXT_SELECT + " WHERE e.id = %s", (ext_id,))
            return ext_out(cur.fetchone())
        out = await db(run)
        if generated:
            out["sip_password"] = password   # shown once; only its hashes are stored
        log.info("extension %s (%s) created", out["number"], out["type"])
        return reply(out, 201)

    def ext_number(request) -> str:
        number = request.match_info["number"]
        if not re.fullmatch(v.NUMBER, number):
            raise ApiError(404, "not found")
        return number

    async def get_extension(request):
        number = ext_number(request)

        def run(cur):
            cur.execute(EXT_SELECT + " WHERE e.number = %s", (number,))
            row = cur.fetchone()
            if row is None:
                raise ApiError(404, f"no extension {number}")
            return ext_out(row)
        return reply(await db(run, readonly=True))

    async def patch_extension(request):
        number = ext_number(request)
        data = checked(v.EXTENSION_PATCH, await body_of(request), partial=True)
        password = data.pop("sip_password", None)
        limits = {k: data.pop(k) for k in v.CALLING_LIMITS if k in data}

        def run(cur):
            cur.execute("SELECT id, type FROM pbx.extensions WHERE number = %s FOR UPDATE", (number,))
            row = cur.fetchone()
            if row is None:
                raise ApiError(404, f"no extension {number}")
            not_user = user_only_problems(row["type"], [*limits, *(["sip_password"] if password is not None else [])])
            if not_user:
                raise ApiError(422, "validation failed", not_user)
            if data:
                sql, args = update_sql("pbx.extensions", data, "id = %s")
                cur.execute(sql, [*args, row["id"]])
            if password is not None:
                set_credentials(cur, row["id"], number, password)
            set_limits(cur, row["id"], number, limits)
            cur.execute(EXT_SELECT + " WHERE e.id = %s", (row["id"],))
            return ext_out(cur.fetchone())
        out = await db(run)
        log.info("extension %s changed (%s)", number,
                 ", ".join([*data, *limits, *(["sip_password"] if password else [])]))
        return reply(out)

    async def delete_extension(request):
        number = ext_number(request)

        def run(cur):
            cur.execute("DELETE FROM pbx.extensions WHERE number = %s", (number,))
            if cur.rowcount == 0:
                raise ApiError(404, f"no extension {number}")
        await db(run)
        log.info("extension %s deleted", number)
        return web.Response(status=204)

    # --- generic CRUD for trunks, policies, routes --------------------------------------------------------
    def crud(path: str, table: str, select: str, key: str, fields: dict, patch_fields: dict,
             to_row: Callable, out: Callable, key_pattern: str | None = None):
        by_name = key != "id"

        def key_of(request):
            if by_name:
                raw = request.match_info["key"]
                if key_pattern and not re.fullmatch(key_pattern, raw):
                    raise ApiError(404, "not found")
                return raw
            return id_of(request)

        where = f"t.{key} = %s"

        async def list_(request):
            limit, offset = int_param(request, "limit", 100, 1, 1000), int_param(request, "offset", 0, 0, 10**9)

            def run(cur):
                cur.execute(select + f" ORDER BY t.{key} LIMIT %s OFFSET %s", (limit, offset))
                items = [out(r) for r in cur.fetchall()]
                cur.execute(f"SELECT count(*) AS n FROM {table}")
                return {"items": items, "total": cur.fetchone()["n"], "limit": limit, "offset": offset}
            return reply(await db(run, readonly=True))

        async def create(request):
            data = checked(fields, await body_of(request))

            def run(cur):
                row = to_row(cur, data, None)
                cols = list(row)
                cur.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
                            "RETURNING id", [psycopg2.extras.Json(row[c]) if isinstance(row[c], dict) else row[c]
                                             for c in cols])
                new_id = cur.fetchone()["id"]
                cur.execute(select + " WHERE t.id = %s", (new_id,))
                return out(cur.fetchone())
            created = await db(run)
            log.info("%s: created %s", path, created.get(key))
            return reply(created, 201)

        async def get(request):
            k = key_of(request)

            def run(cur):
                cur.execute(select + " WHERE " + where, (k,))
                row = cur.fetchone()
                if row is None:
                    raise ApiError(404, "not found")
                return out(row)
            return reply(await db(run, readonly=True))

        async def patch(request):
            k = key_of(request)
            data = checked(patch_fields, await body_of(request), partial=True)

            def run(cur):
                cur.execute(f"SELECT t.id FROM {table} t WHERE {where} FOR UPDATE", (k,))
                row = cur.fetchone()
                if row is None:
                    raise ApiError(404, "not found")
                values = to_row(cur, data, row["id"])
                sql, args = update_sql(table, values, "id = %s")
                cur.execute(sql, [*args, row["id"]])
                cur.execute(select + " WHERE t.id = %s", (row["id"],))
                return out(cur.fetchone())
            changed = await db(run)
            log.info("%s: changed %s", path, k)
            return reply(changed)

        async def delete(request):
            k = key_of(request)

            def run(cur):
                cur.execute(f"DELETE FROM {table} t WHERE {where}", (k,))
                if cur.rowcount == 0:
                    raise ApiError(404, "not found")
            await db(run)
            log.info("%s: deleted %s", path, k)
            return web.Response(status=204)

        app.router.add_get(path, list_)
        app.router.add_post(path, create)
        app.router.add_get(path + "/{key}" if by_name else path + "/{id}", get)
        app.router.add_patch(path + "/{key}" if by_name else path + "/{id}", patch)
        app.router.add_delete(path + "/{key}" if by_name else path + "/{id}", delete)

    def plain(cur, data, _id):
        return dict(data)

    def trunk_out(r):
        return {k: r[k] for k in ("name", "host", "port", "transport", "enabled", "settings", "created_at", "updated_at")}

    def policy_row(cur, data, _id):
        row = {k: data[k] for k in ("scope", "mode", "retention_days", "enabled") if k in data}
        if _id is None:
            scope = data["scope"]
            problems = {}
            if scope in ("extension", "queue") and not data.get("extension"):
                problems["extension"] = f"is required with scope {scope}"
            if scope == "trunk" and not data.get("trunk"):
                problems["trunk"] = "is required with scope trunk"
            if scope != "trunk" and data.get("trunk"):
                problems["trunk"] = f"not allowed with scope {scope}"
            if scope not in ("extension", "queue") and data.get("extension"):
                problems["extension"] = f"not allowed with scope {scope}"
            if problems:
                raise ApiError(422, "validation failed", problems)
            if scope in ("extension", "queue"):
                ext_id, ext_type = lookup_extension(cur, data["extension"])
                if (scope == "queue") != (ext_type == "queue"):
                    raise ApiError(422, "validation failed", {
                        "extension": f"{data['extension']} is a {ext_type}: scope {scope} needs "
                                     f"{'a queue' if scope == 'queue' else 'an extension that is not a queue'}"})
                row.update(extension_id=ext_id, extension_type=ext_type)
            if scope == "trunk":
                row["trunk_id"] = lookup_trunk(cur, data["trunk"])
        return row

    def policy_out(r):
        return {"id": r["id"], "scope": r["scope"], "extension": r["ext_number"], "trunk": r["trunk_name"],
                "mode": r["mode"], "retention_days": r["retention_days"], "enabled": r["enabled"],
                "created_at": r["created_at"], "updated_at": r["updated_at"]}

    def inbound_row(cur, data, _id):
        row = {k: data[k] for k in ("did", "enabled", "description") if k in data}
        if "extension" in data:
            row["extension_id"] = lookup_extension(cur, data["extension"])[0]
        if "trunk" in data:
            row["trunk_id"] = lookup_trunk(cur, data["trunk"])
        return row

    def inbound_out(r):
        return {"id": r["id"], "did": r["did"], "extension": r["ext_number"], "trunk": r["trunk_name"],
                "enabled": r["enabled"], "description": r["description"], "created_at": r["created_at"],
                "updated_at": r["updated_at"]}

    def outbound_row(cur, data, _id):
        row = {k: data[k] for k in ("prefix", "priority", "strip_digits", "prepend", "enabled", "description")
               if k in data}
        if "trunk" in data:
            row["trunk_id"] = lookup_trunk(cur, data["trunk"])
        if _id is None and row.get("strip_digits", 0) > len(row["prefix"]) and row["prefix"] != "":
            raise ApiError(422, "validation failed", {"strip_digits": "is longer than the prefix"})
        return row

    def outbound_out(r):
        return {"id": r["id"], "prefix": r["prefix"], "trunk": r["trunk_name"], "priority": r["priority"],
                "strip_digits": r["strip_digits"], "prepend": r["prepend"], "enabled": r["enabled"],
                "description": r["description"], "created_at": r["created_at"], "updated_at": r["updated_at"]}

    crud(f"{API}/trunks", "pbx.trunks", "SELECT t.* FROM pbx.trunks t", "name", v.TRUNK, v.TRUNK_PATCH, plain,
         trunk_out, key_pattern=r"[a-z][a-z0-9_-]{0,62}")
    crud(f"{API}/recording-policies", "pbx.recording_policies",
         "SELECT t.*, e.number AS ext_number, k.name AS trunk_name FROM pbx.recording_policies t "
         "LEFT JOIN pbx.extensions e ON e.id = t.extension_id LEFT JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.RECORDING_POLICY, v.RECORDING_POLICY_PATCH, policy_row, policy_out)
    crud(f"{API}/routes/inbound", "pbx.inbound_routes",
         "SELECT t.*, e.number AS ext_number, k.name AS trunk_name FROM pbx.inbound_routes t "
         "JOIN pbx.extensions e ON e.id = t.extension_id LEFT JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.INBOUND_ROUTE, v.INBOUND_ROUTE_PATCH, inbound_row, inbound_out)
    crud(f"{API}/routes/outbound", "pbx.outbound_routes",
         "SELECT t.*, k.name AS trunk_name FROM pbx.outbound_routes t JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.OUTBOUND_ROUTE, v.OUTBOUND_ROUTE_PATCH, outbound_row, outbound_out)

    # --- CDRs ---------------------------------------------------------------------------------------------
    def when(request, name: str, default: datetime) -> datetime:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(422, "validation failed", {name: "must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z"}) \
                from None
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

    CDR_COLUMNS = ("call_uuid, bleg_uuid, direction, caller_number, caller_name, callee_number, queue, trunk, "
                   "start_time, answer_time, end_time, duration, billsec, hangup_cause, hangup_cause_q850, "
                   "sip_hangup_disposition, recording_path, node, received_at")

    async def search_cdrs(request):
        now = datetime.now(timezone.utc)
        to = when(request, "to", now)
        frm = when(request, "from", to - timedelta(days=1))
        problems = {}
        if frm >= to:
            problems["from"] = "must be before to"
        elif to - frm > MAX_CDR_SPAN:
            problems["to"] = f"range longer than {MAX_CDR_SPAN.days} days"
        ext = request.query.get("extension")
        if ext is not None and not re.fullmatch(r"[0-9A-Za-z+*#._-]{1,64}", ext):
            problems["extension"] = "must be a number or user name (1-64 characters)"
        direction = request.query.get("direction")
        if direction is not None and direction not in ("inbound", "outbound", "internal"):
            problems["direction"] = "must be one of inbound, outbound, internal"
        cursor = request.query.get("cursor")
        c_time = c_uuid = None
        if cursor:
            try:
                c_time_s, c_uuid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
                c_time = datetime.fromisoformat(c_time_s)
            except (ValueError, UnicodeDecodeError):
                problems["cursor"] = "is not a cursor from a previous page"
        limit = int_param(request, "limit", 100, 1, 1000)
        if problems:
            raise ApiError(422, "validation failed", problems)

        def run(cur):
            cur.execute(
                f"SELECT {CDR_COLUMNS} FROM cdr.calls WHERE start_time >= %(f)s AND start_time < %(t)s "
                "AND (%(x)s::text IS NULL OR caller_number = %(x)s OR callee_number = %(x)s) "
                "AND (%(d)s::text IS NULL OR direction = %(d)s) "
                "AND (%(ct)s::timestamptz IS NULL OR (start_time, call_uuid) < (%(ct)s, %(cu)s::uuid)) "
                "ORDER BY start_time DESC, call_uuid DESC LIMIT %(l)s",
                {"f": frm, "t": to, "x": ext, "d": direction, "ct": c_time, "cu": c_uuid, "l": limit + 1})
            return cur.fetchall()
        rows = await db(run, readonly=True)
        nxt = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            nxt = base64.urlsafe_b64encode(f"{last['start_time'].isoformat()}|{last['call_uuid']}".encode()).decode()
        return reply({"items": rows, "next_cursor": nxt, "from": frm, "to": to})

    async def get_cdr(request):
        raw = request.match_info["uuid"]
        if not re.fullmatch(r"[0-9a-fA-F-]{32,36}", raw):
            raise ApiError(404, "not found")

        def run(cur):
            cur.execute(f"SELECT {CDR_COLUMNS}, raw FROM cdr.calls WHERE call_uuid = %s::uuid", (raw,))
            row = cur.fetchone()
            if row is None:
                raise ApiError(404, "not found")
            return row
        return reply(await db(run, readonly=True))

    async def dead_letters(request):
        limit = int_param(request, "limit", 100, 1, 1000)
        try:
            conn = await open_first(s.redis.endpoints[:1], s.redis.user, s.redis.password, timeout=2.0)
        except ConnectionLost:
            raise ApiError(503, "Redis unavailable") from None
        try:
            total, items = await conn.pipeline([("LLEN", s.redis.keys.dead), ("LRANGE", s.redis.keys.dead, 0, limit - 1)])
        finally:
            conn.close()
        parsed = []
        for item in items if isinstance(items, list) else []:
            try:
                parsed.append(json.loads(item))
            except ValueError:
                parsed.append({"item": item.decode(errors="replace")})
        return reply({"total": total if isinstance(total, int) else None, "items": parsed})

    async def stop(app):
        db.close()

    app.on_cleanup.append(stop)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get(f"{API}/extensions", list_extensions)
    app.router.add_post(f"{API}/extensions", create_extension)
    app.router.add_get(f"{API}/extensions/{{number}}", get_extension)
    app.router.add_patch(f"{API}/extensions/{{number}}", patch_extension)
    app.router.add_delete(f"{API}/extensions/{{number}}", delete_extension)
    app.router.add_get(f"{API}/cdrs", search_cdrs)
    app.router.add_get(f"{API}/cdrs/{{uuid}}", get_cdr)
    app.router.add_get(f"{API}/cdr/dead-letters", dead_letters)
    return app


# --- OpenAPI ----------------------------------------------------------------------------------------------

def openapi_document(s: AdminSettings | None = None) -> dict:
    def ref(name):
        return {"$ref": f"#/components/schemas/{name}"}

    def body(schema):
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def ok(schema, code="200", text="OK"):
        return {code: {"description": text, "content": {"application/json": {"schema": schema}}}}

    errors = {c: {"$ref": f"#/components/responses/E{c}"} for c in ("400", "401", "404", "409", "415", "422", "503")}
    stamp = {"created_at": {"type": "string", "format": "date-time", "readOnly": True},
             "updated_at": {"type": "string", "format": "date-time", "readOnly": True}}
    ident = {"id": {"type": "integer", "readOnly": True}, **stamp}
    schemas = {
        "Extension": {**v.object_schema(v.EXTENSION, read_only={
            **stamp, "sip": {"type": "object", "readOnly": True, "description": "users: digest username, domain"}}),
            "description": "sip_password, class_of_service, max_calls and calls_per_minute belong to user "
                           "extensions only (422 for any other type). Every user has calling limits (GET shows "
                           "them; defaults national, 2, 10), which Kamailio enforces for the authenticated caller."},
        "ExtensionPatch": v.object_schema(v.EXTENSION_PATCH, partial=True),
        "Trunk": v.object_schema(v.TRUNK, read_only=stamp),
        "TrunkPatch": v.object_schema(v.TRUNK_PATCH, partial=True),
        "RecordingPolicy": v.object_schema(v.RECORDING_POLICY, read_only=ident),
        "RecordingPolicyPatch": v.object_schema(v.RECORDING_POLICY_PATCH, partial=True),
        "InboundRoute": v.object_schema(v.INBOUND_ROUTE, read_only=ident),
        "InboundRoutePatch": v.object_schema(v.INBOUND_ROUTE_PATCH, partial=True),
        "OutboundRoute": v.object_schema(v.OUTBOUND_ROUTE, read_only=ident),
        "OutboundRoutePatch": v.object_schema(v.OUTBOUND_ROUTE_PATCH, partial=True),
        "Cdr": {"type": "object", "description": "One call (columns of cdr.calls)."},
        "Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                   "fields": {"type": "object", "additionalProperties": {"type": "string"}}},
                  "required": ["error"]},
        "Health": {"type": "object", "properties": {"node": {"type": "string"}, "roles": {"type": "object"}}},
    }

    def page(item):
        return {"type": "object", "properties": {"items": {"type": "array", "items": ref(item)},
                                                 "total": {"type": "integer"}}}

    paging = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
              {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}]
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness and this node's roles", "security": [],
                            "responses": ok(ref("Health"))}},
        "/ready": {"get": {"summary": "200 when this node takes writes (PostgreSQL primary), else 503", "security": [],
                           "responses": {**ok(ref("Health")), "503": {"description": "not the writer"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": ok({"type": "object"})}},
        f"{API}/cdrs": {"get": {
            "summary": "Search CDRs, newest first",
            "parameters": [
                {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "start_time >= from (default: to - 24 h)"},
                {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "start_time < to (default: now); at most 366 days after from"},
                {"name": "extension", "in": "query", "schema": {"type": "string"},
                 "description": "caller or callee number"},
                {"name": "direction", "in": "query", "schema": {"type": "string", "enum": ["inbound", "outbound", "internal"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"}],
            "responses": {**ok({"type": "object", "properties": {"items": {"type": "array", "items": ref("Cdr")},
                                                                 "next_cursor": {"type": "string", "nullable": True}}}),
                          **{c: errors[c] for c in ("401", "422", "503")}}}},
        f"{API}/cdrs/{{call_uuid}}": {"get": {"summary": "One CDR with its raw record",
                                              "parameters": [{"name": "call_uuid", "in": "path", "required": True,
                                                              "schema": {"type": "string", "format": "uuid"}}],
                                              "responses": {**ok(ref("Cdr")), **{c: errors[c] for c in ("401", "404")}}}},
        f"{API}/cdr/dead-letters": {"get": {"summary": "Records the worker could not store, with the reason",
                                            "responses": {**ok({"type": "object"}), "401": errors["401"]}}},
        f"{API}/extensions": {
            "get": {"summary": "List extensions", "parameters": [
                {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(v.EXTENSION_TYPES)}},
                {"name": "enabled", "in": "query", "schema": {"type": "boolean"}}, *paging],
                "responses": {**ok(page("Extension")), "401": errors["401"], "422": errors["422"]}},
            "post": {"summary": "Create an extension (users: SIP credentials and calling limits, effective at once)",
                     "requestBody": body(ref("Extension")),
                     "responses": {**ok(ref("Extension"), "201", "Created (sip_password once, if generated)"),
                                   **{c: errors[c] for c in ("400", "401", "409", "415", "422", "503")}}}},
        f"{API}/extensions/{{number}}": {
            "parameters": [{"name": "number", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "One extension", "responses": {**ok(ref("Extension")), "401": errors["401"],
                                                               "404": errors["404"]}},
            "patch": {"summary": "Change (display_name, enabled: disable, settings; users: sip_password, "
                                 "class_of_service, max_calls, calls_per_minute)",
                      "requestBody": body(ref("ExtensionPatch")),
                      "responses": {**ok(ref("Extension")), **{c: errors[c] for c in errors}}},
            "delete": {"summary": "Delete (409 while routes point at it)",
                       "responses": {"204": {"description": "Deleted"}, **{c: errors[c] for c in ("401", "404", "409")}}}},
    }
    for path, name, key in ((f"{API}/trunks", "Trunk", "name"), (f"{API}/recording-policies", "RecordingPolicy", "id"),
                            (f"{API}/routes/inbound", "InboundRoute", "id"),
                            (f"{API}/routes/outbound", "OutboundRoute", "id")):
        paths[path] = {
            "get": {"summary": f"List {name}s", "parameters": paging,
                    "responses": {**ok(page(name)), "401": errors["401"]}},
            "post": {"summary": f"Create a {name}", "requestBody": body(ref(name)),
                     "responses": {**ok(ref(name), "201", "Created"), **{c: errors[c] for c in errors}}}}
        paths[f"{path}/{{{key}}}"] = {
            "parameters": [{"name": key, "in": "path", "required": True,
                            "schema": {"type": "integer" if key == "id" else "string"}}],
            "get": {"summary": f"One {name}", "responses": {**ok(ref(name)), "401": errors["401"], "404": errors["404"]}},
            "patch": {"summary": f"Change a {name}", "requestBody": body(ref(f"{name}Patch")),
                      "responses": {**ok(ref(name)), **{c: errors[c] for c in errors}}},
            "delete": {"summary": f"Delete a {name}",
                       "responses": {"204": {"description": "Deleted"}, **{c: errors[c] for c in ("401", "404", "409")}}}}
    descriptions = {"400": "Malformed JSON", "401": "Missing or bad bearer token", "404": "Not found",
                    "409": "Conflict: already exists or still referenced", "415": "Not application/json",
                    "422": "Validation failed: every bad field in `fields`",
                    "503": "This node is a standby (use the VIP) or the database is unavailable"}
    servers = [{"url": f"http://{s.vip}:{s.port}"}] if s else []
    return {
        "openapi": "3.0.3",
        "info": {"title": "high-cc-pbx admin API", "version": __version__,
                 "description": "Extensions (unified model), SIP credentials, calling limits of users (class of "
                                "service, concurrent calls, call attempts a minute), recording policies, routes, "
                                "CDRs."},
        "servers": servers,
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {f"E{c}": {"description": d, "content": {"application/json": {"schema": ref("Error")}}}
                          for c, d in descriptions.items()},
        },
    }


async def serve(s: AdminSettings, log: logging.Logger) -> None:
    app = make_app(s, log)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    for host in s.listen:
        await web.SockSite(runner, listening_socket(host, s.port), shutdown_timeout=5).start()
    log.info("admin API on %s port %d", ", ".join(s.listen), s.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    log = setup_logging("hapbx-admin")
    s = AdminSettings.from_env()
    started = time.monotonic()
    asyncio.run(serve(s, log))
    log.info("stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
