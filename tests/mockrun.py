"""This repository's program under harness.mocks' recording mocks, for the tests.

The mocks runner is harness/mocks.py (the same one the live harness drives); this module binds
it to the repository: its root, its project and its stack files. Every resource is recorded
with its type, inputs, parent and explicit dependencies, so tests can assert on the graph
without a Pulumi engine.
"""
from __future__ import annotations

import os
import runpy
from typing import Any, Callable

from components.config import PROJECT, read_stack_file
from harness import mocks
from harness.mocks import Graph, Recorded, RecordingMocks, ancestors

__all__ = ["ROOT", "Graph", "Recorded", "RecordingMocks", "ancestors", "run_function", "run_ok",
           "run_program", "stack_config"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stack_config(stack: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    raw, _ = read_stack_file(os.path.join(ROOT, f"Pulumi.{stack}.yaml"))
    raw = {k: v for k, v in raw.items()}
    raw.update(overrides or {})
    return raw


def run_program(raw_config: dict[str, Any], secret_keys: list[str] | None = None,
                stack: str = "test", preview: bool = False) -> tuple[Graph, dict[str, str]]:
    """Run __main__.py under mocks with the given config (keys without project prefix);
    ``preview``: as `pulumi preview` runs it (pulumi.runtime.is_dry_run() is true)."""
    return run_function(lambda: runpy.run_path(os.path.join(ROOT, "__main__.py"), run_name="__main__"),
                        raw_config, secret_keys, stack, preview)


def run_function(program: Callable[[], Any], raw_config: dict[str, Any] | None = None,
                 secret_keys: list[str] | None = None, stack: str = "test",
                 preview: bool = False) -> tuple[Graph, dict[str, str]]:
    """Run ``program()`` as the Pulumi program under the recording mocks, from the repository root.
    ``Graph.outputs``: the stack's exports as the engine receives them (secrets as rpc secret values)."""
    return mocks.run_function(program, raw_config, secret_keys, stack, preview, project=PROJECT, cwd=ROOT)


def run_ok(raw_config: dict[str, Any], secret_keys=(), preview: bool = False) -> tuple[Graph, dict[str, str]]:
    """run_program that must succeed."""
    graph, generated = run_program(raw_config, list(secret_keys), preview=preview)
    assert graph.error is None, repr(graph.error)
    return graph, generated
