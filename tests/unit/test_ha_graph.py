"""The HA layer under Pulumi mocks: keepalived, the scripts and the etcd quorum land on the
right hosts, keepalived starts only after PostgreSQL and Redis are configured (and after the
quorum authenticates), and credentials travel as secrets."""
from __future__ import annotations

from pulumi.runtime import rpc

from tests.mockrun import ancestors, run_ok

CMD = "command:remote:Command"


def test_components_and_their_outputs(stack):
    graph, _, raw = stack
    assert graph.resources["vip"].type == "hapbx:index:VirtualIp"
    assert graph.resources["etcd"].type == "hapbx:index:Witness"
    nodes = [n["name"] for n in raw["nodes"]]
    for node in nodes:
        names = {r.name for r in graph.resources.values() if r.parent == "vip"}
        assert f"vip-{node}-file-etc-keepalived-keepalived.conf" in names
        assert f"vip-{node}-file-etc-systemd-system-keepalived.service.d-hapbx.conf" in names
        assert f"vip-{node}-file-usr-local-lib-hapbx-ha-leader" in names
        assert f"vip-{node}-svc-keepalived" in names and f"vip-{node}-svc-hapbx-leader" in names
        assert f"vip-{node}-settled" in names
    for host in nodes + [raw["witness"]["name"]]:
        assert f"etcd-{host}-file-etc-default-etcd" in graph.resources
        assert f"etcd-{host}-start" in graph.resources
    assert {"etcd-quorum", "etcd-auth"} <= set(graph.resources)


def test_keepalived_starts_after_postgres_redis_and_the_quorum(stack):
    graph, _, raw = stack
    for node in (n["name"] for n in raw["nodes"]):
        before = ancestors(graph, f"vip-{node}-svc-keepalived")
        assert f"vip-{node}-svc-hapbx-leader" in before
        # the isolation watcher runs before keepalived tracks its file
        assert f"vip-{node}-svc-hapbx-reach" in before
        assert f"vip-{node}-file-etc-keepalived-keepalived.conf" in before
        assert "etcd-auth" in before and "etcd-quorum" in before
        for other in (n["name"] for n in raw["nodes"]):
            # the data tier on both nodes is configured (PostgresPair.ready, RedisPair.ready)
            assert f"postgres-{other}-replication" in before
            assert f"redis-{other}-handler" in before
        assert f"redis-{raw['nodes'][1]['name']}-verify" in before
        # the leader daemon itself also waits for the data tier and the quorum
        leader = ancestors(graph, f"vip-{node}-svc-hapbx-leader")
        assert "etcd-auth" in leader and f"postgres-{node}-replication" in leader
    # the standby's keepalived waits until the primary settled as leader
    primary, standby = raw["postgres"]["initialPrimary"], next(
        n["name"] for n in raw["nodes"] if n["name"] != raw["postgres"]["initialPrimary"])
    assert f"vip-{primary}-settled" in ancestors(graph, f"vip-{standby}-svc-keepalived")


def test_etcd_members_start_one_after_the_other(stack):
    graph, _, raw = stack
    order = [raw["witness"]["name"]] + [n["name"] for n in raw["nodes"]]
    for a, b in zip(order, order[1:]):
        assert f"etcd-{a}-start" in graph.resources[f"etcd-{b}-start"].depends_on
    assert set(graph.resources["etcd-quorum"].depends_on) == {f"etcd-{h}-start" for h in order}


def test_credentials_are_secret(stack):
    graph, generated, raw = stack
    auth = graph.resources["etcd-auth"]
    assert rpc.is_rpc_secret(auth.inputs["stdin"]) and auth.inputs.get("logging") == "none"
    for node in (n["name"] for n in raw["nodes"]):
        f = graph.resources[f"vip-{node}-file-etc-hapbx-ha-secrets.env"]
        assert rpc.is_rpc_secret(f.inputs["stdin"]) and f.inputs.get("logging") == "none"
        env = graph.resources[f"vip-{node}-file-etc-hapbx-ha.env"]
        assert not rpc.is_rpc_secret(env.inputs["stdin"])
    # no generated password appears in any command line or non-secret stdin
    for r in graph.commands():
        for key in ("create", "delete", "update"):
            text = r.inputs.get(key) or ""
            assert not any(v in text for v in generated.values()), (r.name, key)
        stdin = r.inputs.get("stdin")
        if isinstance(stdin, str):
            assert not any(v in stdin for v in generated.values()), r.name


def test_no_witness_stack_has_no_quorum(lab_config):
    raw = {**lab_config, "noWitnessPolicy": "manual-promotion"}
    raw.pop("witness")
    graph, _ = run_ok(raw)
    assert "etcd" not in graph.resources and not any(r.name.startswith("etcd-") for r in graph.commands())
    env = graph.resources["vip-pbx1-file-etc-hapbx-ha.env"].inputs["stdin"]
    assert "WITNESS=0" in env and "NO_WITNESS_POLICY=manual-promotion" in env
    assert "vip-pbx2-svc-keepalived" in graph.resources
