"""Request validation for the admin API, and the JSON Schema (OpenAPI) of the same rules.

A resource is a dict of Field; ``check(fields, body, partial)`` returns the clean values or
raises Problems with one message per bad field, so a 422 lists everything wrong at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable


class Problems(Exception):
    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class Field:
    kind: str                       # string | integer | boolean | object | array
    doc: str
    required: bool = False
    pattern: str | None = None
    choices: tuple | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    nullable: bool = False
    write_only: bool = False
    check: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else "must not be null"
        kind_ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
        }[self.kind]
        if not kind_ok:
            return f"must be {'an' if self.kind[0] in 'aeio' else 'a'} {self.kind}"
        if self.kind == "string":
            if self.min_length is not None and len(value) < self.min_length:
                return f"must be at least {self.min_length} characters"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            if self.pattern and not re.fullmatch(self.pattern, value):
                return f"must match {self.pattern}"
        if self.choices is not None and value not in self.choices:
            return "must be one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "integer":
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        if self.check:
            return self.check(value)
        return None

    def schema(self) -> dict:
        s: dict[str, Any] = {"type": self.kind, "description": self.doc}
        # anchored: JSON Schema's pattern matches anywhere in the string, check() the whole of it
        for key, value in (("pattern", anchored(self.pattern) if self.pattern else None),
                           ("enum", list(self.choices) if self.choices else None), ("minimum", self.minimum),
                           ("maximum", self.maximum), ("minLength", self.min_length), ("maxLength", self.max_length)):
            if value is not None:
                s[key] = value
        if self.nullable:
            s["nullable"] = True
        if self.write_only:
            s["writeOnly"] = True
        return s


def anchored(pattern: str) -> str:
    """A re.fullmatch pattern as a JSON Schema (ECMA 262, search) pattern of the same strings."""
    return f"^(?:{pattern})$"


def check(fields: dict[str, Field], body: Any, partial: bool = False) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Problems({"(body)": "must be a JSON object"})
    problems: dict[str, str] = {}
    for key in body:
        if key not in fields:
            problems[key] = f"unknown field (allowed: {', '.join(sorted(fields))})"
    clean = {}
    for key, f in fields.items():
        if key not in body:
            if f.required and not partial:
                problems[key] = "is required"
            continue
        message = f.problem(body[key])
        if message:
            problems[key] = message
        else:
            clean[key] = body[key]
    if partial and not clean and not problems:
        problems["(body)"] = "names no field to change"
    if problems:
        raise Problems(problems)
    return clean


def object_schema(fields: dict[str, Field], partial: bool = False, read_only: dict[str, dict] | None = None) -> dict:
    props = {k: f.schema() for k, f in fields.items()}
    props.update(read_only or {})
    s: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [k for k, f in fields.items() if f.required]
    if required and not partial:
        s["required"] = required
    return s


# --- the resources ------------------------------------------------------------------------------

NUMBER = r"[0-9]{2,15}"
TRUNK_NAME = r"[a-z][a-z0-9_-]{0,62}"
#: a page of a list: at most PAGE_LIMIT items, from an offset up to MAX_OFFSET
PAGE_LIMIT = 1000
MAX_OFFSET = 10**9
EXTENSION_TYPES = ("user", "queue", "ivr", "conference", "voicemail", "ring_group")


def _printable(value: str) -> str | None:
    return None if value.isprintable() else "must hold printable characters only"


#: the classes of service of pbx.call_classes (migration 007), by rank: a class may dial every
#: class up to its own
CALL_CLASSES = ("internal", "national", "international", "premium")
#: toll-fraud controls of user extensions (pbx.calling_limits, read by Kamailio through
#: kamailio.subscriber): API field -> column
CALLING_LIMITS = {"class_of_service": "class", "max_calls": "max_calls", "calls_per_minute": "calls_per_minute"}
LIMIT_FIELDS = {
    "class_of_service": Field("string", "Users: what they may dial, each class including those before it: internal "
                                        "(extensions of this PBX), national, international, premium (premium-rate "
                                        "and special numbers). Default national.", choices=CALL_CLASSES),
    "max_calls": Field("integer", "Users: calls the extension may have going out at once. Default 2.",
                       minimum=1, maximum=100),
    "calls_per_minute": Field("integer", "Users: call attempts the extension may make in a minute. Default 10.",
                              minimum=1, maximum=600),
}

EXTENSION = {
    "number": Field("string", "Dialable number, unique (2-15 digits).", required=True, pattern=NUMBER),
    "type": Field("string", "Kind of extension; only `user` has SIP credentials.", required=True,
                  choices=EXTENSION_TYPES),
    "display_name": Field("string", "Name shown to callers.", required=True, min_length=1, max_length=128,
                          check=lambda v: None if v.strip() else "must not be blank"),
    "enabled": Field("boolean", "Disabled extensions cannot register or be dialled."),
    "settings": Field("object", "Per-type settings (queue: strategy, max_wait_seconds; ring_group: members; "
                                "user: voicemail)."),
    "sip_password": Field("string", "SIP digest password of a user (12-128 printable characters); stored only "
                                    "as HA1 hashes. Omitted on create: one is generated and returned once.",
                          min_length=12, max_length=128, write_only=True, check=_printable),
    **LIMIT_FIELDS,
}
EXTENSION_PATCH = {k: v for k, v in EXTENSION.items() if k not in ("number", "type")}

TRUNK = {
    "name": Field("string", "Trunk name.", required=True, pattern=TRUNK_NAME),
    "host": Field("string", "Host name or address of the carrier.", required=True,
                  pattern=r"[A-Za-z0-9][A-Za-z0-9.:-]{0,253}"),
    "port": Field("integer", "SIP port.", minimum=1, maximum=65535),
    "transport": Field("string", "SIP transport.", choices=("udp", "tcp", "tls")),
    "enabled": Field("boolean", "Disabled trunks carry no calls."),
    "settings": Field("object", "Carrier-specific settings."),
}
TRUNK_PATCH = {k: v for k, v in TRUNK.items() if k != "name"}

RECORDING_POLICY = {
    "scope": Field("string", "What the policy applies to.", required=True,
                   choices=("global", "extension", "queue", "trunk")),
    "extension": Field("string", "Extension number (scope extension or queue).", pattern=NUMBER, nullable=True),
    "trunk": Field("string", "Trunk name (scope trunk).", nullable=True),
    "mode": Field("string", "Record always, never, or on demand.", required=True,
                  choices=("always", "never", "on-demand")),
    "retention_days": Field("integer", "Days recordings are kept.", minimum=1, maximum=3650),
    "enabled": Field("boolean", "Disabled policies are ignored."),
}
RECORDING_POLICY_PATCH = {k: v for k, v in RECORDING_POLICY.items() if k not in ("scope", "extension", "trunk")}

INBOUND_ROUTE = {
    "did": Field("string", "Dialled number (DID) as the carrier sends it.", required=True, pattern=r"\+?[0-9]{3,20}"),
    "extension": Field("string", "Extension number the DID rings.", required=True, pattern=NUMBER),
    "trunk": Field("string", "Only from this trunk (null: any).", nullable=True),
    "enabled": Field("boolean", "Disabled routes are ignored."),
    "description": Field("string", "Free text.", max_length=256),
}
INBOUND_ROUTE_PATCH = {k: v for k, v in INBOUND_ROUTE.items() if k != "did"}

OUTBOUND_ROUTE = {
    "prefix": Field("string", "Dialled prefix ('' = default route).", required=True, pattern=r"\+?[0-9*#]{0,20}"),
    "trunk": Field("string", "Trunk the calls go out on.", required=True),
    "priority": Field("integer", "Lower first among routes of the same prefix length.", minimum=0, maximum=1000),
    "strip_digits": Field("integer", "Digits removed from the front.", minimum=0, maximum=20),
    "prepend": Field("string", "Digits added in front after stripping.", pattern=r"\+?[0-9*#]{0,20}"),
    "enabled": Field("boolean", "Disabled routes are ignored."),
    "description": Field("string", "Free text.", max_length=256),
}
OUTBOUND_ROUTE_PATCH = {k: v for k, v in OUTBOUND_ROUTE.items() if k not in ("prefix", "trunk")}
