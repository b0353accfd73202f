"""Preview: what `pulumi preview` would print for the live harness's state, running nothing.

The program runs exactly as under ``harness.apply`` (same mocks, monitor,
program context and event loop) but with ``set_mocks(preview=True)``, so
``pulumi.runtime.is_dry_run()`` is True in it as under ``pulumi preview``. Each
custom resource is compared with its state entry by the harness's own rules
(``planner.plan``), which are pulumi-command's diff: every changed input is an update,
except ``triggers``, which replaces; replace_on_changes, a changed replacement
trigger and any change of a random resource replace too; ignore_changes keeps the
old value. State entries the program no longer registers (and old halves of
replacements a failed apply left behind) are deletes.

Read-only: the state file is read without the apply lock and never written, no
host is dialled, no command runs and no random value is generated (a random
resource missing from state gets a placeholder). Resources in state give the
program their stored outputs; new ones echo their inputs, and what they would
compute (a command's stdout) is unknown, as in a real preview.

Secrets: an input that arrives secret, or whose old value was one of the state
entry's secrets, is shown as ``[secret]``; every known secret (secret config,
secret inputs, every state entry's ``secrets``) is masked in the whole report.
"""
from __future__ import annotations

import difflib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from pulumi.output import Unknown

from harness.planner import canonical, delete_order, ignore_changes, plan
from harness.providers import HANDLERS, PASSIVE
from harness.result import ApplyError
from harness.runner import run_program
from harness.secrets import MASK, Masker, entry_secrets, program_outputs, secret_inputs, string_leaves, unwrap
from harness.state import load_state

UNKNOWN_TEXT = "[unknown]"  # an input computed from an output only an apply would know
MAX_DIFF_LINES = 40  # per resource
# Output names of the random types the harness emulates (placeholders: nothing is generated).
RANDOM_OUTPUTS = {
    "random:index/randomPassword:RandomPassword": ("result", "bcryptHash"),
    "random:index/randomString:RandomString": ("result",),
    "random:index/randomBytes:RandomBytes": ("base64", "hex"),
    "random:index/randomId:RandomId": ("b64Std", "b64Url", "hex", "dec"),
}
_SYMBOLS = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}


@dataclass
class PreviewResult:
    create: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)  # update/replace: changed input names
    text: str = ""  # the report, secrets masked
    # urn -> the entry an apply would start from (inputs unmasked, outputs as the program saw them)
    planned: dict[str, dict] = field(default_factory=dict, repr=False)


def preview(program_dir: str, project: str, stack: str, config: dict[str, object], secret_keys: list[str],
            state_path: str, *, log: Callable[[str], None] = print) -> PreviewResult:
    """Decide create/same/update/replace/delete for every resource; ``log`` gets warnings only.

    A missing state file is an empty stack (everything is a create).
    """
    program_dir = os.path.realpath(program_dir)
    state = load_state(state_path)
    for key, wanted in (("project", project), ("stack", stack)):
        if state.get(key, wanted) != wanted:
            raise ApplyError(f"state {state_path} belongs to {key} {state[key]!r}, not {wanted!r}")
    masker = Masker()
    masker.add_config(config, secret_keys)
    masker.add_all(s for e in [*state["resources"].values(), *state["pending"]] for s in e.get("secrets", []))
    run = _Preview(state["resources"], masker, log)
    # one worker thread: the report lists resources in program order
    run_program(program_dir, project, stack, config, secret_keys, run, parallel=1, preview=True)
    gone = [e for urn, e in state["resources"].items() if urn not in run.seen]
    for entry in delete_order(state["pending"] + gone):
        note = " (old half of a replacement)" if entry in state["pending"] else ""
        run.step("delete", entry["type"], entry["name"] + note, [], [])
        run.result.delete.append(entry["name"])
    run.result.text = masker.mask(run.report())
    return run.result


class _Preview:
    """The mocks' side of a preview: decides each registration, runs nothing."""

    def __init__(self, resources: dict[str, dict], masker: Masker, log: Callable[[str], None]):
        self.resources, self.masker, self._log = resources, masker, log
        self.result = PreviewResult()
        self.seen: set[str] = set()
        self.steps: list[tuple[str, str, str, list[str], list[str]]] = []  # action, type, name, label, diff
        self.first_error: ApplyError | None = None
        self._lock = threading.Lock()

    def log(self, line: str) -> None:
        self._log(self.masker.mask(line))

    def error(self, message: str, **details: Any) -> ApplyError:
        return ApplyError(self.masker.mask(message), **details)

    def step(self, action: str, typ: str, name: str, label: list[str], diff: list[str]) -> None:
        with self._lock:
            self.steps.append((action, typ, name, label, diff))

    def register(self, args, reg) -> tuple[str, dict]:  # called by harness.mocks.LiveMocks
        handler = HANDLERS.get(args.typ, PASSIVE)
        if handler is PASSIVE and not args.typ.startswith("pulumi:providers:"):
            self.log(f"preview: warning: {args.typ} {args.name} is not emulated (outputs = inputs)")
        self.masker.add_all(secret_inputs(args.inputs))
        try:
            return self._decide(args, reg, handler)
        except Exception as exc:
            error = self.error(f"{args.name}: {type(exc).__name__}: {exc}", resource=args.name)
            with self._lock:
                self.first_error = self.first_error or error
            raise error from exc

    def _decide(self, args, reg, handler) -> tuple[str, dict]:
        inputs = canonical(_known(unwrap(args.inputs)))
        old = self.resources.get(reg.urn)
        ignore_changes(old, inputs, reg)
        action = plan(old, inputs, reg, handler, False)
        if old is None:
            resource_id, outputs = "", _placeholders(args.typ, args.name)  # "": unknown id, as in a preview
        else:
            resource_id, outputs = old["id"], old["outputs"]
        with self._lock:
            self.seen.add(reg.urn)
            getattr(self.result, action).append(args.name)
            self.result.planned[reg.urn] = {
                "urn": reg.urn, "name": args.name, "type": args.typ, "inputs": inputs, "deps": reg.dependencies,
                "replacementTrigger": reg.replacement_trigger, "id": resource_id or None, "outputs": outputs,
                "secrets": entry_secrets(args.inputs, outputs, handler)}
        if action in ("update", "replace"):
            changed = sorted(k for k in set(old["inputs"]) | set(inputs) if old["inputs"].get(k) != inputs.get(k))
            trigger = ["replacement trigger"] if reg.replacement_trigger != old.get("replacementTrigger") else []
            diff = [line for key in changed
                    for line in _show_change(key, old, inputs.get(key), args.inputs.get(key))]
            self.step(action, args.typ, args.name, changed + trigger, diff)
            with self._lock:
                self.result.changes[args.name] = changed
        elif action == "create":
            self.step(action, args.typ, args.name, [], [])
        return resource_id, program_outputs(args.inputs, outputs, reg, handler)

    def report(self) -> str:
        lines = []
        for action, typ, name, label, _ in self.steps:
            changed = f" [changed: {', '.join(label)}]" if label else ""
            lines.append(f"{_SYMBOLS[action]} {action:<7} {typ} {name}{changed}")
        for action, typ, name, _, diff in self.steps:
            if diff:
                if len(diff) > MAX_DIFF_LINES:
                    diff = diff[:MAX_DIFF_LINES] + [f"    ... {len(diff) - MAX_DIFF_LINES} more lines not shown"]
                lines += ["", f"{_SYMBOLS[action]} {typ} {name}", *diff]
        r = self.result
        summary = (f"Resources: + {len(r.create)} to create, ~ {len(r.update)} to update, +- {len(r.replace)} "
                   f"to replace, - {len(r.delete)} to delete, {len(r.same)} unchanged")
        return "\n".join([*lines, "", summary] if lines else [summary])


def _known(value: Any) -> Any:
    if isinstance(value, Unknown):
        return UNKNOWN_TEXT
    if isinstance(value, dict):
        return {k: _known(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_known(v) for v in value]
    return value


def _placeholders(typ: str, name: str) -> dict:
    return {key: f"[{name}.{key}: known after apply]" for key in RANDOM_OUTPUTS.get(typ, ())}


def _holds_secret(raw: Any) -> bool:
    found: list[Any] = []
    unwrap(raw, found.append)
    return bool(found)


def _show_change(key: str, old_entry: dict, new: Any, raw_new: Any) -> list[str]:
    """One changed input: [secret] if either side is (or holds) a secret, else a unified diff old -> new."""
    old = old_entry["inputs"].get(key)
    old_secrets = set(old_entry.get("secrets", []))
    if _holds_secret(raw_new) or any(leaf in old_secrets for leaf in string_leaves(old)):
        return [f"    {key}: {MASK}"]
    body = list(difflib.unified_diff(_lines(old), _lines(new), lineterm="", n=1))[2:]  # no ---/+++ header
    return [f"    {key}:", *(f"      {line}" for line in body)]


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    return (value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)).splitlines()
