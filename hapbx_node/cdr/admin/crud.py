"""The tables behind one generic CRUD each: /api/v1/trunks[/{name}] (carriers: targets of routes
and trunk policies), /api/v1/recording-policies[/{id}], /api/v1/routes/inbound[/{id}] (DID ->
extension), /api/v1/routes/outbound[/{id}] (prefix -> trunk)."""
from __future__ import annotations

import re
from typing import Callable

import psycopg2.extras
from aiohttp import web

from .. import validate as v
from .api import API, Api, ApiError, body_of, checked, id_of, int_param, reply, update_sql


# --- the generic CRUD ----------------------------------------------------------------------------------------

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


def crud(app: web.Application, api: Api, path: str, table: str, select: str, key: str, fields: dict,
         patch_fields: dict, to_row: Callable, out: Callable, key_pattern: str | None = None) -> None:
    """list, create, get, patch and delete of one table at path (by id, or by a name key)."""
    db, log = api.db, api.log
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
        limit = int_param(request, "limit", 100, 1, v.PAGE_LIMIT)
        offset = int_param(request, "offset", 0, 0, v.MAX_OFFSET)

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


# --- the resources: a row from the checked body (to_row) and a row out (out) each -------------------------

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


def add_routes(app: web.Application, api: Api) -> None:
    crud(app, api, f"{API}/trunks", "pbx.trunks", "SELECT t.* FROM pbx.trunks t", "name", v.TRUNK, v.TRUNK_PATCH,
         plain, trunk_out, key_pattern=v.TRUNK_NAME)
    crud(app, api, f"{API}/recording-policies", "pbx.recording_policies",
         "SELECT t.*, e.number AS ext_number, k.name AS trunk_name FROM pbx.recording_policies t "
         "LEFT JOIN pbx.extensions e ON e.id = t.extension_id LEFT JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.RECORDING_POLICY, v.RECORDING_POLICY_PATCH, policy_row, policy_out)
    crud(app, api, f"{API}/routes/inbound", "pbx.inbound_routes",
         "SELECT t.*, e.number AS ext_number, k.name AS trunk_name FROM pbx.inbound_routes t "
         "JOIN pbx.extensions e ON e.id = t.extension_id LEFT JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.INBOUND_ROUTE, v.INBOUND_ROUTE_PATCH, inbound_row, inbound_out)
    crud(app, api, f"{API}/routes/outbound", "pbx.outbound_routes",
         "SELECT t.*, k.name AS trunk_name FROM pbx.outbound_routes t JOIN pbx.trunks k ON k.id = t.trunk_id",
         "id", v.OUTBOUND_ROUTE, v.OUTBOUND_ROUTE_PATCH, outbound_row, outbound_out)

