"""Secret masking as the engine does it: which values are secret, and masking them in text and exports."""
from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from pulumi.runtime import rpc

if TYPE_CHECKING:
    from harness.planner import Registration
    from harness.providers import Handler

MASK = "[secret]"
# Shorter "secrets" would blank out ordinary words of every log line.
_MIN_MASKED_LEN = 4
# Connection fields the provider marks secret; host/user/port/hostKey are not
# secrets even though the SDK wraps the whole connection in Output.secret.
_SENSITIVE_CONNECTION_FIELDS = ("password", "privateKey", "privateKeyPassword")


def unwrap(value: Any, on_secret: Callable[[Any], None] | None = None) -> Any:
    """Plain copy of value without secret markers; on_secret sees each secret subtree."""
    if rpc.is_rpc_secret(value):
        inner = unwrap(rpc.unwrap_rpc_secret(value), on_secret)
        if on_secret:
            on_secret(inner)
        return inner
    if isinstance(value, dict):
        return {k: unwrap(v, on_secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v, on_secret) for v in value]
    return value


def string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from string_leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from string_leaves(v)


def secret_inputs(raw_inputs: dict) -> list[str]:
    """Every secret string among a resource's inputs (connection: only its real secrets)."""
    found: list[Any] = []
    for key, value in raw_inputs.items():
        if key == "connection":
            found.extend(_connection_secrets(unwrap(value)))
        else:
            unwrap(value, found.append)
    return [leaf for item in found for leaf in string_leaves(item)]


def _connection_secrets(conn: Any) -> list[str]:
    if not isinstance(conn, dict):
        return []
    own = [conn[k] for k in _SENSITIVE_CONNECTION_FIELDS if isinstance(conn.get(k), str)]
    return own + _connection_secrets(conn.get("proxy"))


class Masker:
    """Replaces every known secret value in text, longest first."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def add_all(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= _MIN_MASKED_LEN}
        with self._lock:
            if fresh - self._values:
                self._values |= fresh
                self._ordered = sorted(self._values, key=len, reverse=True)

    def add_config(self, config: dict[str, object], secret_keys: list[str]) -> None:
        for key in secret_keys:
            if key in config:
                value = config[key]
                self.add_all([config_string(value), *string_leaves(value)])

    def mask(self, text: str) -> str:
        for value in self._ordered:
            text = text.replace(value, MASK)
        return text


def config_string(value: object) -> str:
    # Pulumi hands config to programs as strings; structured values as JSON.
    return value if isinstance(value, str) else json.dumps(value)


def present_outputs(exports: dict, reveal: bool) -> dict:
    def show(value: Any) -> Any:
        if rpc.is_rpc_secret(value):
            return show(rpc.unwrap_rpc_secret(value)) if reveal else MASK
        if isinstance(value, dict):
            return {k: show(v) for k, v in value.items()}
        if isinstance(value, list):
            return [show(v) for v in value]
        return value
    return show(exports)


def entry_secrets(raw_inputs: dict, outputs: dict, handler: Handler) -> list[str]:
    """The secrets a state entry holds: its secret inputs and its handler's secret outputs."""
    secret_outputs = [v for k, v in outputs.items() if k in handler.secret_outputs]
    found = set(secret_inputs(raw_inputs)) | set(string_leaves(secret_outputs))
    return sorted(s for s in found if s)  # an empty output (a P-224 key's OpenSSH form) hides nothing


def program_outputs(raw_inputs: dict, outputs: dict, reg: Registration, handler: Handler) -> dict:
    """Inputs echoed (secret markers kept) plus the resource's outputs, secrets marked."""
    secret = set(reg.additional_secret_outputs) | handler.secret_outputs
    merged = {**raw_inputs, **outputs}
    return {key: rpc.wrap_rpc_secret(value) if key in secret and not rpc.is_rpc_secret(value) else value
            for key, value in merged.items()}
