"""Run the real program under Pulumi mocks and collect the resource graph.

Records every resource with its type, inputs, parent and explicit
dependencies, so tests can assert on the graph without a Pulumi engine.
"""
from __future__ import annotations

import asyncio
import json
import os
import runpy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks, rpc, settings

from components.config import PROJECT, read_stack_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Recorded:
    name: str
    type: str
    inputs: dict = field(default_factory=dict)
    parent: str | None = None
    depends_on: list[str] = field(default_factory=list)


@dataclass
class Graph:
    resources: dict[str, Recorded] = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    error: BaseException | None = None

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources.values() if r.type == typ]

    def commands(self) -> list[Recorded]:
        return self.of_type("command:remote:Command")


class RecordingMocks(pulumi.runtime.Mocks):
    """Returns inputs as outputs; RandomPassword results are wrapped secret as the real engine marks them;
    tls:index/* resources get real keys and certificates (the live harness's emulation of pulumi-tls),
    their secret outputs wrapped secret, a PrivateKey's PEM recorded in secret_values."""

    def __init__(self, graph: Graph, secret_values: dict[str, str]):
        self.graph = graph
        self.secret_values = secret_values
        self.lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outputs = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ == "random:index/randomPassword:RandomPassword":
            value = f"generated-{args.name}-Zq8"
            self.secret_values[args.name] = value
            outputs["result"] = rpc.wrap_rpc_secret(value) if hasattr(rpc, "wrap_rpc_secret") else value
        elif args.typ.startswith("tls:index/"):
            resource_id, generated = _tls_outputs(args.typ, args.name, args.inputs)
            outputs.update(generated)
            if "privateKeyPem" in generated and args.typ == "tls:index/privateKey:PrivateKey":
                self.secret_values[args.name] = rpc.unwrap_rpc_secret(generated["privateKeyPem"])
        with self.lock:
            rec = self.graph.resources.setdefault(args.name, Recorded(args.name, args.typ))
            rec.type, rec.inputs = args.typ, dict(args.inputs)
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


#: what the mocks made, by type, name and inputs: a program run twice in one test session gets
#: the same keys and certificates, as a stack keeps them in its state between updates
_TLS_MADE: dict[tuple[str, str, str], tuple[str, dict]] = {}


def _tls_outputs(typ: str, name: str, inputs: dict) -> tuple[str, dict]:
    """(id, outputs) as pulumi-tls creates them, secret outputs wrapped secret."""
    from harness import engine as harness  # only programs with TLS resources pay for its imports

    plain = harness._unwrap(inputs)
    made = (typ, name, json.dumps(plain, sort_keys=True, default=str))
    if made not in _TLS_MADE:
        _TLS_MADE[made] = harness.tls_generate(typ, plain)
    resource_id, outputs = _TLS_MADE[made]
    secret = harness.TLS_TYPES[typ].secret_outputs
    return resource_id, {k: rpc.wrap_rpc_secret(v) if k in secret else v for k, v in outputs.items()}


def _record_options(graph: Graph, args: pulumi.ResourceTransformationArgs):
    """Parents and explicit dependencies are not passed to mocks: take them from the options."""
    opts = args.opts or pulumi.ResourceOptions()
    rec = graph.resources.setdefault(args.name, Recorded(args.name, args.type_))
    rec.parent = getattr(opts.parent, "_name", None)
    deps = opts.depends_on or []
    rec.depends_on = [d._name for d in (deps if isinstance(deps, list) else [deps])]
    return None


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
    graph, secret_values = Graph(), {}
    cfg = {f"{PROJECT}:{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in (raw_config or {}).items()}
    loop = asyncio.new_event_loop()  # before set_mocks: the mocks bind to the current loop
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_all_config(cfg, [f"{PROJECT}:{k}" for k in (secret_keys or [])])
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(RecordingMocks(graph, secret_values), project=PROJECT, stack=stack, preview=preview)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        from pulumi.runtime.stack import run_pulumi_func
        from pulumi.runtime.sync_await import _sync_await
        def main():
            pulumi.runtime.register_stack_transformation(lambda a: _record_options(graph, a))
            program()
        _sync_await(run_pulumi_func(main))
        root = settings.get_root_resource()
        if root is not None and root.outputs:
            graph.outputs = rpc.deserialize_properties(_sync_await(rpc.serialize_properties(dict(root.outputs), {})))
    except BaseException as err:  # surfaced to the test
        graph.error = err
    finally:
        os.chdir(cwd)
        loop.close()
    return graph, secret_values


def run_ok(raw_config: dict[str, Any], secret_keys=(), preview: bool = False) -> tuple[Graph, dict[str, str]]:
    """run_program that must succeed."""
    graph, generated = run_program(raw_config, list(secret_keys), preview=preview)
    assert graph.error is None, repr(graph.error)
    return graph, generated


def ancestors(graph: Graph, name: str, seen: set[str] | None = None) -> set[str]:
    """Every resource `name` waits for, transitively: explicit dependencies, and a component
    as a dependency stands for all its children."""
    seen = set() if seen is None else seen
    for dep in graph.resources[name].depends_on if name in graph.resources else ():
        if dep not in seen:
            seen.add(dep)
            ancestors(graph, dep, seen)
            for child in (c.name for c in graph.resources.values() if c.parent == dep):
                if child not in seen:
                    seen.add(child)
                    ancestors(graph, child, seen)
    return seen
