"""The engine: one apply or destroy, bringing state, plan, providers, SSH and masking together."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable

from pulumi.runtime import mocks as _mocks

from harness.planner import Registration, canonical, delete_order, ignore_changes, plan
from harness.providers import HANDLERS, PASSIVE, Handler
from harness.result import ApplyError, ApplyResult, Skipped
from harness.runner import run_program
from harness.secrets import Masker, entry_secrets, present_outputs, program_outputs, unwrap
from harness.ssh_pool import Dialer
from harness.state import StateFile


def engine_parallelism() -> int:
    """The engine's default ``--parallel``: PULUMI_PARALLEL if set, else 4 x CPUs."""
    try:
        wanted = int(os.environ.get("PULUMI_PARALLEL", "0"))
    except ValueError:
        wanted = 0
    return wanted if wanted > 0 else 4 * (os.cpu_count() or 1)


def apply(program_dir: str, project: str, stack: str, config: dict[str, object],
          secret_keys: list[str], state_path: str, *, force: bool = False, parallel: int | None = None,
          log: Callable[[str], None] = print, reveal: bool = False) -> ApplyResult:
    """Run the program like ``pulumi up`` would, executing remote commands for real.

    ``force=True`` runs the ``create`` of every command again on its current
    inputs, as if each were replaced without running its ``delete`` (random
    values are kept): the caller uses it to prove that re-running every command
    changes no file and restarts no service. Exported secrets stay ``[secret]``
    unless ``reveal``.
    """
    program_dir = os.path.realpath(program_dir)
    parallel = parallel or engine_parallelism()
    _refuse_state_inside(program_dir, state_path)
    masker = Masker()
    masker.add_config(config, secret_keys)
    with _running("apply", state_path, log, masker, force, project, stack) as run:
        # Old halves of replacements left by a failed apply go first (pulumi/pulumi#9979).
        run.delete_entries(run.state.pending(), report=False)
        exports = run_program(program_dir, project, stack, config, secret_keys, run, parallel)
        run.delete_entries(run.state.pending() + run.state.absent(run.seen))
        run.result.outputs = present_outputs(exports, reveal)
    return run.result


def destroy(state_path: str, log: Callable[[str], None] = print) -> ApplyResult:
    """Run the ``delete`` of everything in state, dependants first."""
    with _running("destroy", state_path, log, Masker()) as run:
        run.delete_entries(run.state.pending() + run.state.absent(set()))
    return run.result


@contextlib.contextmanager
def _running(what: str, state_path: str, log: Callable[[str], None], masker: Masker,
             force: bool = False, project: str | None = None, stack: str | None = None):
    """One apply or destroy: state open, SSH pool closed after, summary logged.

    A failure carries what was done before it as ``ApplyError.partial``.
    """
    started = time.monotonic()
    with StateFile.open(state_path, project, stack) as state:
        run = Run(state, masker, log, force)
        try:
            yield run
        except ApplyError as exc:
            exc.partial = run.result
            raise
        finally:
            run.close()
            run.result.seconds = time.monotonic() - started
            run.result.dials = run.ssh.report()
            run.log(_summary(what, run.result))


def _summary(what: str, result: ApplyResult) -> str:
    counts = ", ".join(f"{len(getattr(result, k))} {k}" for k in
                       ("created", "updated", "replaced", "deleted", "unchanged"))
    dials = "; ".join(f"{host}: {d['max_concurrent']} at once, {d['dials']} dials, {d['retried']} refused and "
                      "retried" for host, d in sorted(result.dials.items()))
    return (f"harness: {what}: {counts}; {len(result.executed)} commands in {result.seconds:.2f} s"
            + (f"; ssh {dials}" if dials else ""))


def _refuse_state_inside(program_dir: str, state_path: str) -> None:
    state_dir = os.path.dirname(os.path.realpath(state_path))
    if os.path.commonpath([program_dir, state_dir]) == program_dir:
        raise ApplyError(f"state file {state_path} is inside the program directory; it holds "
                         "secrets, keep it outside the repository")


class Run:
    """One apply or destroy: state, masking, SSH connections and the result."""

    def __init__(self, state: StateFile, masker: Masker, log: Callable[[str], None], force: bool):
        self.state, self.masker, self._log, self.force = state, masker, log, force
        self.ssh = Dialer()
        self.result = ApplyResult()
        self.seen: set[str] = set()
        self.first_error: ApplyError | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.ssh.close()

    def log(self, line: str) -> None:
        self._log(self.masker.mask(line))

    def error(self, message: str, **details: Any) -> ApplyError:
        if details.get("stderr") is not None:
            details["stderr"] = self.masker.mask(details["stderr"])
        return ApplyError(self.masker.mask(message), **details)

    def warn(self, message: str, provider: str = "pulumi-command") -> None:
        with self._lock:
            self.result.warnings.append(message)
        self.log(f"harness: warning (as {provider}): {message}")

    def executed(self, name: str, host: str, step: str, seconds: float) -> None:
        with self._lock:
            self.result.executed.append(name)
        self.log(f"harness: {step:<6} {name} @ {host} ({seconds:.2f} s)")

    def _record(self, category: str, name: str) -> None:
        with self._lock:
            getattr(self.result, category).append(name)

    def _fail(self, exc: ApplyError) -> None:
        with self._lock:
            if self.first_error is None:
                self.first_error = exc

    # registration (executor threads)
    def register(self, args: _mocks.MockResourceArgs, reg: Registration) -> tuple[str, dict]:
        if self.first_error is not None:
            raise Skipped(f"{args.name}: not run after an earlier failure")
        handler = HANDLERS.get(args.typ, PASSIVE)
        if handler is PASSIVE and not args.typ.startswith("pulumi:providers:"):
            self.log(f"harness: warning: {args.typ} {args.name} is not emulated (outputs = inputs)")
        with self._lock:
            self.seen.add(reg.urn)
        try:
            entry = self._converge(args, reg, handler)
        except ApplyError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # a harness or input problem still names the resource
            error = self.error(f"{args.name}: {type(exc).__name__}: {exc}", resource=args.name)
            self._fail(error)
            raise error from exc
        return entry["id"], program_outputs(args.inputs, entry["outputs"], reg, handler)

    def _converge(self, args: _mocks.MockResourceArgs, reg: Registration, handler: Handler) -> dict:
        inputs = canonical(unwrap(args.inputs))
        old = self.state.get(reg.urn)
        ignore_changes(old, inputs, reg)
        action = plan(old, inputs, reg, handler, self.force)
        entry = {"urn": reg.urn, "name": args.name, "type": args.typ, "inputs": inputs,
                 "deps": reg.dependencies, "replacementTrigger": reg.replacement_trigger}
        if action == "same":
            self.state.keep({**old, **entry})
            self._record("unchanged", args.name)
            return {**old, **entry}
        if action == "replace" and reg.delete_before_replace:
            handler.delete(self, old)
            self.state.forget(old)
        if action == "update":
            outputs = handler.update(self, args.name, old, inputs)
        else:
            outputs = handler.create(self, args.name, inputs)
        kept_id = action in ("update", "force")
        entry.update(outputs=outputs, id=old["id"] if kept_id else handler.new_id(args.name, outputs),
                     secrets=entry_secrets(args.inputs, outputs, handler))
        cbd_old = old if action == "replace" and not reg.delete_before_replace else None
        self.state.put(entry, pending_old=cbd_old)
        self._record({"create": "created", "update": "updated"}.get(action, "replaced"), args.name)
        return entry

    # deletes (main thread, after the program or from destroy)
    def delete_entries(self, entries: list[dict], *, report: bool = True) -> None:
        """Run deletes; a resource absent from this run's program is reported as deleted."""
        for entry in delete_order(entries):
            handler = HANDLERS.get(entry["type"], PASSIVE)
            try:
                handler.delete(self, entry)
            except ApplyError as exc:
                self._fail(exc)
                raise
            self.state.forget(entry)
            if report and entry["urn"] not in self.seen:
                self._record("deleted", entry["name"])
