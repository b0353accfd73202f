"""The admin API's OpenAPI 3 document (/openapi.json)."""
from __future__ import annotations

from typing import Any

from .. import __version__
from .. import validate as v
from ..records import MAX_DEPTH
from ..settings import AdminSettings
from .api import API


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
    ext_read = {**stamp, "sip": {"type": "object", "readOnly": True, "description": "users: digest username, domain"}}
    schemas = {
        "Extension": {**v.object_schema(v.EXTENSION, read_only=ext_read),
            "description": "sip_password, class_of_service, max_calls and calls_per_minute belong to user "
                           "extensions only (422 for any other type). Every user has calling limits (GET shows "
                           "them; defaults national, 2, 10), which Kamailio enforces for the authenticated caller."},
        "ExtensionCreated": {**v.object_schema(v.EXTENSION, read_only={
            **ext_read,
            # the one answer that has it: a generated password, shown once (the schema of Extension
            # marks it writeOnly, which a validator reads as never in a response)
            "sip_password": {"type": "string", "description": "The generated SIP password of a user created "
                                                              "without one: shown this once, stored only as hashes."}}),
            "description": "The extension as created; sip_password only when it was generated."},
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

    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": v.PAGE_LIMIT}}
    paging = [limit, {"name": "offset", "in": "query",
                      "schema": {"type": "integer", "minimum": 0, "maximum": v.MAX_OFFSET}}]
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness and this node's roles (PostgreSQL and Redis probed at most once a "
                                       "second)", "security": [],
                            "responses": ok(ref("Health"))}},
        "/ready": {"get": {"summary": "200 when this node takes writes (PostgreSQL primary), else 503", "security": [],
                           "responses": {**ok(ref("Health")), "503": {"description": "not the writer"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": ok({"type": "object"})}},
        f"{API}/cdrs": {"get": {
            "summary": "Search CDRs, newest first",
            "parameters": [
                {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "start_time >= from (default: to - 24 h); not before 1970-01-01T00:00:00Z"},
                {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"},
                 "description": "start_time < to (default: now); at most 366 days after from; not before "
                                "1970-01-01T00:00:00Z"},
                {"name": "extension", "in": "query", "schema": {"type": "string"},
                 "description": "caller or callee number"},
                {"name": "direction", "in": "query", "schema": {"type": "string", "enum": ["inbound", "outbound", "internal"]}},
                limit,
                {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"}],
            "responses": {**ok({"type": "object", "properties": {"items": {"type": "array", "items": ref("Cdr")},
                                                                 "next_cursor": {"type": "string", "nullable": True}}}),
                          **{c: errors[c] for c in ("401", "422", "503")}}}},
        f"{API}/cdrs/{{call_uuid}}": {"get": {"summary": "One CDR with its raw record",
                                              "parameters": [{"name": "call_uuid", "in": "path", "required": True,
                                                              "schema": {"type": "string", "format": "uuid"}}],
                                              "responses": {**ok(ref("Cdr")), **{c: errors[c] for c in ("401", "404")}}}},
        f"{API}/cdr/dead-letters": {"get": {"summary": "Records the worker could not store, with the reason",
                                            "parameters": [limit],
                                            "responses": {**ok({"type": "object"}), "401": errors["401"],
                                                          "422": errors["422"],
                                                          "503": {"description": "Redis unavailable",
                                                                  "content": {"application/json": {
                                                                      "schema": ref("Error")}}}}}},
        f"{API}/extensions": {
            "get": {"summary": "List extensions", "parameters": [
                {"name": "type", "in": "query", "schema": {"type": "string", "enum": list(v.EXTENSION_TYPES)}},
                {"name": "enabled", "in": "query", "schema": {"type": "boolean"}}, *paging],
                "responses": {**ok(page("Extension")), "401": errors["401"], "422": errors["422"]}},
            "post": {"summary": "Create an extension (users: SIP credentials and calling limits, effective at once)",
                     "requestBody": body(ref("Extension")),
                     "responses": {**ok(ref("ExtensionCreated"), "201", "Created (sip_password once, if generated)"),
                                   **{c: errors[c] for c in ("400", "401", "409", "415", "422", "503")}}}},
        f"{API}/extensions/{{number}}": {
            "parameters": [{"name": "number", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": v.anchored(v.NUMBER)}}],
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
                    "responses": {**ok(page(name)), "401": errors["401"], "422": errors["422"]}},
            "post": {"summary": f"Create a {name}", "requestBody": body(ref(name)),
                     "responses": {**ok(ref(name), "201", "Created"), **{c: errors[c] for c in errors}}}}
        paths[f"{path}/{{{key}}}"] = {
            "parameters": [{"name": key, "in": "path", "required": True,
                            "schema": {"type": "integer"} if key == "id" else
                            {"type": "string", "pattern": v.anchored(v.TRUNK_NAME)}}],
            "get": {"summary": f"One {name}", "responses": {**ok(ref(name)), "401": errors["401"], "404": errors["404"]}},
            "patch": {"summary": f"Change a {name}", "requestBody": body(ref(f"{name}Patch")),
                      "responses": {**ok(ref(name)), **{c: errors[c] for c in errors}}},
            "delete": {"summary": f"Delete a {name}",
                       "responses": {"204": {"description": "Deleted"}, **{c: errors[c] for c in ("401", "404", "409")}}}}
    descriptions = {"400": "Malformed JSON, or JSON the database cannot store: NaN or Infinity, a number "
                           "beyond a float, a NUL character or a lone surrogate in a string or key, nesting "
                           f"deeper than {MAX_DEPTH} levels", "401": "Missing or bad bearer token", "404": "Not found",
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
