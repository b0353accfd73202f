"""What every resource of the admin API shares: errors and JSON replies, the database pool,
request parsing, and :class:`Api` (settings, database, log) handed to each resource's routes."""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import psycopg2
import psycopg2.errors
import psycopg2.extras
from aiohttp import web

from .. import records
from .. import validate as v
from ..settings import AdminSettings

API = "/api/v1"


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


# --- requests -------------------------------------------------------------------------------------------

async def body_of(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "send application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body too large") from None
    try:
        return records.loads(raw)
    except records.Invalid as err:
        # JSON the database cannot store (NaN, a NUL, deep nesting): the same refusal as the receiver's
        raise ApiError(400, str(err)) from None
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
    # ASCII digits only: str.isdigit() passes '²', which int() refuses
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise ApiError(404, "not found")
    return int(raw)


def update_sql(table: str, values: dict, where: str) -> tuple[str, list]:
    cols = list(values)
    sql = f"UPDATE {table} SET " + ", ".join(f"{c} = %s" for c in cols) + f" WHERE {where}"
    return sql, [psycopg2.extras.Json(values[c]) if isinstance(values[c], (dict, list)) else values[c] for c in cols]


@dataclass(frozen=True)
class Api:
    """What the handlers of every resource use: the settings, the database pool, the log."""
    s: AdminSettings
    db: Db
    log: logging.Logger
