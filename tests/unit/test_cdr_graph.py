"""The CDR pipeline and admin API under Pulumi mocks: files, units and handlers on both PBX nodes
(never the witness), everything after the schema, Redis and the HA layer, the worker placed by
its own step (never through the generic enable-and-start handler), credentials as secrets."""
from __future__ import annotations

from pulumi.runtime import rpc

from components.render import cdr
from tests.mockrun import run_ok
from tests.mockrun import ancestors

CMD = "command:remote:Command"


def test_component_children_on_both_nodes_only(stack):
    graph, _, raw = stack
    assert graph.resources["cdr"].type == "hapbx:index:CdrPipeline"
    children = {r.name for r in graph.resources.values() if r.parent == "cdr"}
    nodes = [n["name"] for n in raw["nodes"]]
    # every rendered file (code, env files, units, tools; with FreeSWITCH the replay service and
    # timer), 2 rolling handlers (first and final pass each) + the worker's step; the timer's handler
    freeswitch = raw.get("media", {}).get("engine", "freeswitch") == "freeswitch"
    for node in nodes:
        mine = {c for c in children if c.startswith(f"cdr-{node}-")}
        files = {c for c in mine if c.startswith(f"cdr-{node}-file-")}
        assert len(files) >= len(cdr.package_files()) + 4 + len(cdr.UNITS) + (2 if freeswitch else 0)
        assert len(mine) == len(files) + 5 + (1 if freeswitch else 0)
    assert len(children) == len({c for c in children if any(c.startswith(f"cdr-{n}-") for n in nodes)})
    for node in nodes:
        assert f"cdr-{node}-file-etc-hapbx-admin.env" in children
        assert f"cdr-{node}-file-usr-local-lib-hapbx-cdr-hapbx-node-cdr-worker.py" in children
        assert {f"cdr-{node}-svc-hapbx-cdr-receiver", f"cdr-{node}-svc-hapbx-admin", f"cdr-{node}-worker",
                f"cdr-{node}-svc-hapbx-cdr-receiver-last", f"cdr-{node}-svc-hapbx-admin-last"} <= children
        # the worker is never enabled by a generic handler: only placed by its step
        assert f"cdr-{node}-svc-hapbx-cdr-worker" not in children
    assert not any(raw["witness"]["name"] in c for c in children)


def test_replay_timer_only_with_freeswitch(stack):
    graph, _, raw = stack
    freeswitch = raw.get("media", {}).get("engine", "freeswitch") == "freeswitch"
    for node in (n["name"] for n in raw["nodes"]):
        name = f"cdr-{node}-svc-{cdr.REPLAY_TIMER}"
        if not freeswitch:
            assert name not in graph.resources
            assert not any("system-hapbx-cdr-replay" in r or r.endswith(cdr.REPLAY_TIMER) for r in graph.resources
                           if r.startswith(f"cdr-{node}-"))
            continue
        handler = graph.resources[name]
        assert f"systemctl enable -q {cdr.REPLAY_TIMER}" in handler.inputs["create"]
        before = ancestors(graph, name)
        for f in (cdr.REPLAY_UNIT, cdr.REPLAY_TIMER, "replay.py"):
            assert any(b.startswith(f"cdr-{node}-file-") and b.endswith(f) for b in before), f
        assert f"{node}-packages" in before, "FreeSWITCH's user exists first"
        # restarted when one of its two units changes (their content hashes)
        assert len(handler.inputs["triggers"]) == 2


def test_everything_waits_for_schema_redis_and_ha(stack):
    graph, _, raw = stack
    primary = raw["postgres"]["initialPrimary"]
    for node in (n["name"] for n in raw["nodes"]):
        for step in (f"cdr-{node}-worker", f"cdr-{node}-svc-hapbx-admin", f"cdr-{node}-svc-hapbx-cdr-receiver"):
            before = ancestors(graph, step)
            assert f"postgres-{primary}-migrate" in before and f"postgres-{primary}-roles" in before
            assert f"redis-{node}-handler" in before
            assert any(b.startswith("vip-") and b.endswith("-settled") for b in before), step
            assert f"{node}-packages" in before
        worker = ancestors(graph, f"cdr-{node}-worker")
        assert f"cdr-{node}-file-etc-systemd-system-hapbx-cdr-worker.service" in worker
        assert f"cdr-{node}-file-etc-hapbx-cdr-worker.env" in worker


def test_credentials_travel_as_secrets_and_never_in_commands(stack):
    graph, generated, raw = stack
    values = [v for k, v in generated.items() if any(s in k for s in ("admin-api-token", "postgres-cdr",
                                                                       "postgres-admin", "redis-cdr"))]
    assert len(values) == 4
    for node in (n["name"] for n in raw["nodes"]):
        for env in ("cdr-receiver.env", "cdr-worker.env", "admin.env"):
            r = graph.resources[f"cdr-{node}-file-etc-hapbx-{env}"]
            assert rpc.is_rpc_secret(r.inputs["stdin"]), env
            assert r.inputs.get("logging") == "none"
            content = rpc.unwrap_rpc_secret(r.inputs["stdin"])
            assert any(v in content for v in values)
    for r in graph.commands():
        if r.name.startswith("cdr-"):
            for key in ("create", "delete"):
                text = r.inputs.get(key) or ""
                assert not any(v in text for v in values), (r.name, key)


def test_worker_step_reruns_when_its_files_change(stack):
    graph, _, raw = stack
    node = raw["nodes"][0]["name"]
    step = graph.resources[f"cdr-{node}-worker"]
    assert "writer=1" in step.inputs["create"] and "hapbx-cdr-worker.service" in step.inputs["create"]
    # code, the worker's env file and unit: one content hash each
    triggers = step.inputs["triggers"]
    triggers = rpc.unwrap_rpc_secret(triggers) if rpc.is_rpc_secret(triggers) else triggers   # env digests: secret
    assert len(triggers) == len(cdr.package_files()) + 2
