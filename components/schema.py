"""A small declarative schema for stack configuration.

Dataclass fields carry their config key, documentation and checks in
``metadata``; one generic parser walks them, so the README table, the
``Pulumi.yaml`` config block and the validation can never disagree.
Every problem is collected (never the first one only) as ``key: message``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

MISSING = dataclasses.MISSING


def setting(key: str, doc: str, default: Any = MISSING, *, choices: tuple | None = None,
            minimum: float | None = None, maximum: float | None = None,
            check: Callable[[Any], str | None] | None = None, secret: bool = False) -> Any:
    """Declare one config setting on a dataclass field."""
    meta = {"key": key, "doc": doc, "choices": choices, "min": minimum, "max": maximum,
            "check": check, "secret": secret}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: typing.cast(Any, type(value)(value)), metadata=meta)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Problems:
    """Collects validation problems; each names the key and the value."""
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def add(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}")


class ConfigError(ValueError):
    """Raised with every problem of a stack's configuration at once."""

    def __init__(self, errors: list[str], source: str = "configuration"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{source} has {len(self.errors)} problem(s):\n{lines}")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_label(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        label = f"list of {type_label(item)}"
    elif dataclasses.is_dataclass(tp):
        label = "object"
    else:
        label = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))
    return label


def _coerce_scalar(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    """Scalars from YAML arrive typed; from `pulumi config set` they arrive as strings."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    problems.add(key, f"{value!r} is not a {type_label(tp)}")
    return None


def parse_value(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if not optional:
            problems.add(key, f"is required ({type_label(tp)})")
        return None
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.add(key, f"{value!r} is not a list")
            return []
        return [parse_value(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return parse_object(tp, value, key, problems)
    return _coerce_scalar(tp, value, key, problems)


def _check_field(f: dataclasses.Field, value: Any, key: str, problems: Problems) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        problems.add(key, f"{value!r} is not allowed (allowed: {allowed})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            problems.add(key, f"{value!r} is out of range (allowed: {lo} to {hi})")
    if meta.get("check"):
        message = meta["check"](value)
        if message:
            problems.add(key, f"{value!r} {message}")


def parse_object(cls: type, raw: Any, path: str, problems: Problems) -> Any:
    """Build dataclass ``cls`` from a mapping, reporting unknown and bad keys."""
    if not isinstance(raw, dict):
        problems.add(path, f"{raw!r} is not an object (expected keys: {', '.join(keys_of(cls))})")
        raw = {}
    known = {f.metadata["key"]: f for f in dataclasses.fields(cls)}
    for unknown in sorted(set(raw) - set(known)):
        problems.add(_join(path, unknown), f"unknown key (allowed: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, f in known.items():
        full = _join(path, key)
        if key in raw:
            value = parse_value(hints[f.name], raw[key], full, problems)
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            value = parse_value(hints[f.name], None, full, problems)
        _check_field(f, value, full, problems)
        values[f.name] = value
    return cls(**values)


def keys_of(cls: type) -> list[str]:
    return [f.metadata["key"] for f in dataclasses.fields(cls)]


def _join(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}.{key}" if not path.endswith(":") else f"{path}{key}"


def describe(cls: type, prefix: str = "") -> list[dict]:
    """Flatten a schema into rows (key, type, default, doc) for docs and Pulumi.yaml."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.metadata['key']}"
        tp, optional = _strip_optional(hints[f.name])
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = MISSING
        if dataclasses.is_dataclass(default):
            default = {}  # each key its own default, documented field by field below
        doc = f.metadata["doc"]
        if f.metadata.get("choices"):
            doc += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        rows.append({"key": key, "type": type_label(hints[f.name]), "default": default,
                     "optional": optional, "doc": doc, "secret": f.metadata.get("secret", False)})
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(inner):
            sub = f"{key}[]." if typing.get_origin(tp) is list else f"{key}."
            rows.extend(describe(inner, sub))
    return rows
