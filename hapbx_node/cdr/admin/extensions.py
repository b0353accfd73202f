"""/api/v1/extensions[/{number}]: unified extensions; users get SIP credentials (HA1 only, computed
here: the password never reaches the database) and calling limits (class_of_service, max_calls,
calls_per_minute), which Kamailio reads at digest auth."""
from __future__ import annotations

import hashlib
import re
import secrets

import psycopg2.extras
from aiohttp import web

from .. import validate as v
from .api import API, Api, ApiError, body_of, bool_param, checked, int_param, reply, update_sql


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


def add_routes(app: web.Application, api: Api) -> None:
    db, log = api.db, api.log

    async def list_extensions(request):
        typ = request.query.get("type")
        if typ is not None and typ not in v.EXTENSION_TYPES:
            raise ApiError(422, "validation failed", {"type": "must be one of " + ", ".join(v.EXTENSION_TYPES)})
        enabled = bool_param(request, "enabled")
        limit = int_param(request, "limit", 100, 1, v.PAGE_LIMIT)
        offset = int_param(request, "offset", 0, 0, v.MAX_OFFSET)

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

    app.router.add_get(f"{API}/extensions", list_extensions)
    app.router.add_post(f"{API}/extensions", create_extension)
    app.router.add_get(f"{API}/extensions/{{number}}", get_extension)
    app.router.add_patch(f"{API}/extensions/{{number}}", patch_extension)
    app.router.add_delete(f"{API}/extensions/{{number}}", delete_extension)
