"""Pulumi programs under the SDK's mocks: the live engine's monitor and mocks, and the tests' recording mocks.

The one place that drives the SDK's runtime under mocks (its private parts included): the engine's
runner (harness/runner.py) and the tests (tests/mockrun.py) both run programs through it.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import pulumi
from google.protobuf import json_format
from pulumi.runtime import config as _config
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from harness.planner import Registration, canonical

if TYPE_CHECKING:
    from harness.engine import Run


# ------------------------------------------------------------------- the SDK's runtime

def install(mocks: _mocks.Mocks, project: str, stack: str, config: dict[str, str], secret_keys: list[str],
            preview: bool, monitor: _mocks.MockMonitor | None = None) -> None:
    """Config, no root resource yet, and the mocks (``preview``: ``pulumi.runtime.is_dry_run()`` is True).
    The mocks bind to the current event loop."""
    _config.set_all_config(config, secret_keys)
    _settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project, stack, preview=preview, monitor=monitor)


def run(program: Callable[[], Any]) -> None:
    """Run ``program()`` as the Pulumi program, until every registration has been answered."""
    _sync_await(run_pulumi_func(program))


def stack_exports() -> dict:
    """The stack's exports as the engine receives them (secret markers kept)."""
    root = _settings.get_root_resource()
    if root is None or not root.outputs:
        return {}
    serialized = _sync_await(rpc.serialize_properties(dict(root.outputs), {}))
    return rpc.deserialize_properties(serialized)


def reset() -> None:
    """Nothing of the last program left in the process: no config (secret config included), no root
    resource, no project or stack."""
    _config.set_all_config({}, [])
    _settings.ROOT.set(None)
    _settings.configure(_settings.Settings(project=None, stack=None))


# ----------------------------------------------------------------------- the live engine

_current = threading.local()


class LiveMonitor(_mocks.MockMonitor):
    """MockMonitor that hands the engine-only parts of a registration to new_resource."""

    def RegisterResource(self, request):
        trigger = (json_format.MessageToDict(request.replacement_trigger)
                   if request.HasField("replacement_trigger") else None)
        _current.registration = Registration(
            urn=self.make_urn(request.parent, request.type, request.name),
            dependencies=sorted(set(request.dependencies)),
            delete_before_replace=request.deleteBeforeReplace,
            ignore_changes=list(request.ignoreChanges),
            replace_on_changes=list(request.replaceOnChanges),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            replacement_trigger=canonical(trigger))
        try:
            return super().RegisterResource(request)
        finally:
            _current.registration = None


class LiveMocks(_mocks.Mocks):
    def __init__(self, run: Run) -> None:
        self._run = run

    def new_resource(self, args: _mocks.MockResourceArgs) -> tuple[Optional[str], dict]:
        registration = getattr(_current, "registration", None)
        if not args.custom or registration is None:  # components, reads
            return args.name, args.inputs
        return self._run.register(args, registration)

    def call(self, args: _mocks.MockCallArgs) -> tuple[dict, None]:
        return {}, None


# ---------------------------------------------------------------- the tests' recording mocks

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
    from harness import providers, secrets  # only programs with TLS resources pay for their imports

    plain = secrets.unwrap(inputs)
    made = (typ, name, json.dumps(plain, sort_keys=True, default=str))
    if made not in _TLS_MADE:
        _TLS_MADE[made] = providers.tls_generate(typ, plain)
    resource_id, outputs = _TLS_MADE[made]
    secret = providers.TLS_TYPES[typ].secret_outputs
    return resource_id, {k: rpc.wrap_rpc_secret(v) if k in secret else v for k, v in outputs.items()}


def _record_options(graph: Graph, args: pulumi.ResourceTransformationArgs):
    """Parents and explicit dependencies are not passed to mocks: take them from the options."""
    opts = args.opts or pulumi.ResourceOptions()
    rec = graph.resources.setdefault(args.name, Recorded(args.name, args.type_))
    rec.parent = getattr(opts.parent, "_name", None)
    deps = opts.depends_on or []
    rec.depends_on = [d._name for d in (deps if isinstance(deps, list) else [deps])]
    return None


def run_function(program: Callable[[], Any], raw_config: dict[str, Any] | None = None,
                 secret_keys: list[str] | None = None, stack: str = "test", preview: bool = False, *,
                 project: str, cwd: str) -> tuple[Graph, dict[str, str]]:
    """Run ``program()`` as the Pulumi program of ``project`` under the recording mocks, from ``cwd``;
    config keys without the project prefix. ``Graph.outputs``: the stack's exports as the engine
    receives them (secrets as rpc secret values)."""
    graph, secret_values = Graph(), {}
    cfg = {f"{project}:{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in (raw_config or {}).items()}
    loop = asyncio.new_event_loop()  # before set_mocks: the mocks bind to the current loop
    asyncio.set_event_loop(loop)
    install(RecordingMocks(graph, secret_values), project, stack, cfg,
            [f"{project}:{k}" for k in (secret_keys or [])], preview)
    previous_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        def main():
            pulumi.runtime.register_stack_transformation(lambda a: _record_options(graph, a))
            program()
        run(main)
        graph.outputs = stack_exports()
    except BaseException as err:  # surfaced to the test
        graph.error = err
    finally:
        os.chdir(previous_cwd)
        loop.close()
    return graph, secret_values


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
