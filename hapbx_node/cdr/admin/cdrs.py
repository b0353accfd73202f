"""/api/v1/cdrs[/{call_uuid}] (CDR search by time range, extension, direction; one CDR with its raw
record) and /api/v1/cdr/dead-letters (records the worker could not store, with the reason)."""
from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

from aiohttp import web

from .. import validate as v
from ..records import EPOCH
from ..resp import ConnectionLost, open_first
from .api import API, Api, ApiError, int_param, reply

MAX_CDR_SPAN = timedelta(days=366)
CDR_COLUMNS = ("call_uuid, bleg_uuid, direction, caller_number, caller_name, callee_number, queue, trunk, "
               "start_time, answer_time, end_time, duration, billsec, hangup_cause, hangup_cause_q850, "
               "sip_hangup_disposition, recording_path, node, received_at")


def when(request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "validation failed", {name: "must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z"}) \
            from None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    if t < EPOCH:
        # no call starts before the epoch (the receiver refuses it), and 'to' minus a day must be a
        # date (to=0001-01-01 raised OverflowError: a 500)
        raise ApiError(422, "validation failed", {name: f"must not be before {EPOCH.isoformat()}"})
    return t


def page_cursor(raw: str) -> tuple[datetime, str]:
    """(start_time, call_uuid) of a next_cursor; ValueError if it is none (psycopg2 raised
    ValueError, a 500, on a NUL in the UUID part)."""
    c_time, c_uuid = base64.urlsafe_b64decode(raw.encode()).decode().split("|")
    return datetime.fromisoformat(c_time), str(uuid.UUID(c_uuid))


def add_routes(app: web.Application, api: Api) -> None:
    s, db = api.s, api.db

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
                c_time, c_uuid = page_cursor(cursor)
            except ValueError:   # binascii.Error and UnicodeError are ValueErrors
                problems["cursor"] = "is not a cursor from a previous page"
        limit = int_param(request, "limit", 100, 1, v.PAGE_LIMIT)
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
        try:
            # a UUID or nothing here (PostgreSQL's cast of '-' * 36 failed: a 422 the API does not document)
            call_uuid = str(uuid.UUID(request.match_info["uuid"]))
        except ValueError:
            raise ApiError(404, "not found") from None

        def run(cur):
            cur.execute(f"SELECT {CDR_COLUMNS}, raw FROM cdr.calls WHERE call_uuid = %s::uuid", (call_uuid,))
            row = cur.fetchone()
            if row is None:
                raise ApiError(404, "not found")
            return row
        return reply(await db(run, readonly=True))

    async def dead_letters(request):
        limit = int_param(request, "limit", 100, 1, v.PAGE_LIMIT)
        try:
            conn = await open_first(s.redis.endpoints[:1], s.redis.user, s.redis.password, timeout=2.0)
            try:
                total, items = await conn.pipeline([("LLEN", s.redis.keys.dead),
                                                    ("LRANGE", s.redis.keys.dead, 0, limit - 1)])
            finally:
                conn.close()
        except ConnectionLost:   # at connect or mid-reply (a Redis restart): the same 503
            raise ApiError(503, "Redis unavailable") from None
        parsed = []
        for item in items if isinstance(items, list) else []:
            try:
                parsed.append(json.loads(item))
            except ValueError:
                parsed.append({"item": item.decode(errors="replace")})
        return reply({"total": total if isinstance(total, int) else None, "items": parsed})

    app.router.add_get(f"{API}/cdrs", search_cdrs)
    app.router.add_get(f"{API}/cdrs/{{uuid}}", get_cdr)
    app.router.add_get(f"{API}/cdr/dead-letters", dead_letters)
