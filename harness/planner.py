"""The engine's plan: create, same, update or replace for each registration, and the order of deletes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.providers import Handler


@dataclass
class Registration:
    """What the engine knows of a registration beyond MockResourceArgs."""
    urn: str
    dependencies: list[str]
    delete_before_replace: bool
    ignore_changes: list[str]
    replace_on_changes: list[str]
    additional_secret_outputs: list[str]
    replacement_trigger: Any


def canonical(value: Any) -> Any:
    """JSON-shaped copy for diffing and storing (assets and references by description)."""
    def opaque(obj: Any) -> str:
        detail = next((getattr(obj, a) for a in ("path", "uri", "text") if getattr(obj, a, None)), "")
        return f"<{type(obj).__name__} {detail}>".strip()
    plain = json.loads(json.dumps(value, sort_keys=True, default=opaque))
    return {k: v for k, v in plain.items() if v is not None} if isinstance(plain, dict) else plain


def plan(old: dict | None, inputs: dict, reg: Registration, handler: Handler, force: bool) -> str:
    """One of create / same / update / replace / force, as the engine would decide.

    The provider's diff (pulumi-go-provider infer, Diff) compares old and new
    inputs: any change is an update, except schema replaceOnChanges fields; the
    engine adds the resource's replace_on_changes and replacement trigger. A
    handler may compare inputs its own way (defaults, write-only inputs) and ask
    for a replacement of its own (pulumi-tls: a PEM input, a certificate due for
    renewal).
    """
    if old is None:
        return "create"
    if force and handler.runs_commands:
        return "force"
    changed = handler.changed(old["inputs"], inputs)
    if reg.replacement_trigger != old.get("replacementTrigger"):
        return "replace"
    if handler.provider_replaces(old, inputs, changed):
        return "replace"
    if not changed:
        return "same"
    if handler.replace_on_any_change or any(_forces_replace(k, reg, handler) for k in changed):
        return "replace"
    return "update"


def ignore_changes(old: dict | None, inputs: dict, reg: Registration) -> None:
    """ignoreChanges: the engine keeps the old value (top-level names only here)."""
    for key in reg.ignore_changes if old else ():
        if key in old["inputs"]:
            inputs[key] = old["inputs"][key]


def _forces_replace(key: str, reg: Registration, handler: Handler) -> bool:
    if key in handler.schema_replace_keys:
        return True
    return any(p == "*" or p == key or p.startswith((key + "[", key + ".")) for p in reg.replace_on_changes)


def delete_order(entries: list[dict]) -> list[dict]:
    """Dependants before what they depend on; among the rest, the newest first."""
    remaining = sorted(entries, key=lambda e: e.get("seq", 0), reverse=True)
    ordered = []
    while remaining:
        depended_on = {dep for e in remaining for dep in e.get("deps", [])}
        ready = next((e for e in remaining if e["urn"] not in depended_on), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered
