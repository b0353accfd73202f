"""The rendered HA scripts and their env files, both stacks: shellcheck on every script
(as rendered, lib.sh beside them), bash parses the env files, secrets only in the 0600
file, and the timings that make hand-overs converge are ordered."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from components.config import build, load_stack_file, read_stack_file  # noqa: E402
from components.render import RenderContext, masked_secrets, render_cluster  # noqa: E402
from components.render import failover  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACKS = ["lab", "prod"]


def cluster_of(stack, **overrides):
    if not overrides:
        return load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)[0]
    raw, _ = read_stack_file(f"{ROOT}/Pulumi.{stack}.yaml")
    raw.update(overrides)
    raw.setdefault("vendorRepoToken", "x")
    return build(raw)[0]


def test_every_rendered_script_passes_shellcheck():
    # the scripts are the same for every stack and node (only the env files differ)
    per_stack = {}
    for stack in STACKS:
        c = cluster_of(stack)
        for node in c.nodes:
            per_stack[(stack, node.name)] = {f.path: f.content for f in failover.files(
                RenderContext(c, node, masked_secrets())) if f.path.startswith(failover.HA_BIN + "/")}
    assert len({tuple(sorted(v.items())) for v in per_stack.values()}) == 1
    cluster = cluster_of("prod")
    files = failover.files(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
    programs = [f for f in files if f.path.startswith(failover.HA_BIN + "/") or f.path == failover.HA_CLI]
    assert {os.path.basename(f.path) for f in programs} >= set(failover.SCRIPTS) | set(failover.PY_ENTRY_POINTS)
    # the HA core and its entry points: Python, compiled on the node before it is installed
    python = [f for f in programs if f.path.endswith(".py")
              or os.path.basename(f.path) in failover.PY_ENTRY_POINTS and os.path.dirname(f.path) == failover.HA_BIN]
    assert {os.path.relpath(f.path, f"{failover.HA_BIN}/hapbx_node") for f in python if f.path.endswith(".py")} \
        == set(failover.PY_MODULES)
    for f in python:
        assert f.validate == "python3 -m py_compile {path}"
        compile(f.content, f.path, "exec")
    scripts = [f for f in programs if f not in python]
    with tempfile.TemporaryDirectory() as d:
        for f in scripts:
            with open(os.path.join(d, os.path.basename(f.path)), "w", encoding="utf-8") as fh:
                fh.write(f.content)
            assert f.validate == "bash -n {path}"
            assert f.mode == ("0644" if f.path.endswith(".sh") else "0755")
        names = sorted(os.listdir(d))
        out = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", "-s", "bash", *names], cwd=d,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
        for name in names:
            assert subprocess.run(["bash", "-n", name], cwd=d).returncode == 0, name


@pytest.mark.parametrize("stack", STACKS)
def test_env_files_parse_and_hold_no_secret(stack):
    cluster = cluster_of(stack)
    for host, files in render_cluster(cluster, masked_secrets()).items():
        by_path = {f.path: f for f in files}
        if cluster.witness and host == cluster.witness.name:
            assert failover.HA_ENV not in by_path
            continue
        env, sec = by_path[failover.HA_ENV], by_path[failover.HA_SECRETS_ENV]
        assert "@@SECRET" not in env.content and not env.secrets
        assert sec.mode == "0600" and sec.owner == "root" and "redis_ha" in sec.secrets   # hapbx-ha's, not default's
        if cluster.witness:
            assert "ETCDCTL_USER=hapbx" in sec.content and "@@SECRET:etcd_node@@" in sec.content
            assert "etcd_node" in sec.secrets
        with tempfile.NamedTemporaryFile("w", suffix=".env") as fh:
            fh.write(env.content)
            fh.flush()
            out = subprocess.run(["bash", "-c", f"set -eu; . {fh.name}; echo \"$HAPBX_NODE $HAPBX_PEER $PG_SLOT\""],
                                 capture_output=True, text=True)
        node = next(n for n in cluster.nodes if n.name == host)
        peer = cluster.peer_of(node)
        assert out.stdout.split() == [node.name, peer.name, node.name.replace("-", "_")], out.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_env_matches_the_data_tier_layout(stack):
    cluster = cluster_of(stack)
    node = cluster.nodes[1]
    env = failover.env_values(RenderContext(cluster, node, masked_secrets()))
    v = cluster.postgres.version
    assert env["PG_DATA"] == f"/var/lib/postgresql/{v}/main"
    assert env["PG_CONFIG_FILE"] == f"/etc/postgresql/{v}/main/postgresql.conf"
    assert f"postgresql@{v}-main.service" in env["PG_START_CMD"]
    assert env["PG_PEER_HOST"] == cluster.peer_of(node).address
    assert env["REDIS_ROLE_FILE"] == "/etc/redis/role.conf"
    assert (env["REDIS_USER"], env["REDIS_TLS_CA"]) == ("hapbx-ha", "/etc/hapbx/tls/ca.crt")  # over TLS, not default
    # the CDR worker runs on the writer only; the archive check proves a new writer's WAL is archived
    assert env["OWNER_SERVICES"] == "hapbx-cdr-worker.service hapbx-archive-check.service"
    assert env["ETCD_ENDPOINTS"].count("https://") == 3 and "http://" not in env["ETCD_ENDPOINTS"]
    # tried in this order (one at a time): its own member, the witness, the peer (a cut link's side) last
    port = cluster.etcd.client_port
    assert env["ETCD_ENDPOINTS"].split(",") == [f"https://{h.address}:{port}" for h in
                                                (node, cluster.witness, cluster.peer_of(node))]
    assert env["ETCDCTL_CACERT"] == "/etc/hapbx/tls/ca.crt" and env["ETCDCTL_CERT"] == "/etc/hapbx/tls/etcd.crt"
    assert env["LEASE_TTL"] == str(cluster.etcd.lease_ttl_seconds)


def test_no_witness_stacks_carry_their_policy():
    for policy in ("manual-promotion", "promote-after-timeout"):
        cluster = cluster_of("lab", witness=None, noWitnessPolicy=policy)
        env = failover.env_values(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
        assert env["WITNESS"] == "0" and env["NO_WITNESS_POLICY"] == policy and env["ETCD_ENDPOINTS"] == ""
        assert env["PG_SYNC_NAMES"] == ""   # no lease holder to relax it: asynchronous
        sec = failover.secrets_env(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
        assert "ETCDCTL" not in sec


@pytest.mark.parametrize("stack", STACKS)
def test_timings_are_ordered_so_handovers_converge(stack):
    cluster = cluster_of(stack)
    t = failover.Timings.of(cluster)
    ttl = cluster.etcd.lease_ttl_seconds
    master_down = 3 * cluster.vip.advert_interval
    # a hung keepalived's node resigns before the peer gives up the VIP it took,
    # a dead holder's lease expires before the peer yields,
    # and the holder waits for the yield (plus the VRRP master-down time) before resigning
    assert t.hung_after + 1 < t.yield_after
    assert ttl + 1 < t.yield_after
    assert t.yield_after + master_down < t.resign_grace
    # fence margin: renewals every renewInterval, the fence lands before the TTL can run out
    env = failover.env_values(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
    assert 0 < float(env["FENCE_MARGIN"]) < ttl
    assert float(env["ETCD_TIMEOUT"]) < ttl - float(env["FENCE_MARGIN"])


def test_units_and_guard():
    cluster = cluster_of("lab")
    by_path = {f.path: f for f in failover.files(RenderContext(cluster, cluster.nodes[0], masked_secrets()))}
    unit = by_path[f"/etc/systemd/system/{failover.LEADER_UNIT}"].content
    assert "Restart=always" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert f"ExecStopPost={failover.HA_BIN}/leader stopped" in unit
    guard = by_path["/etc/systemd/system/postgresql@15-main.service.d/hapbx-guard.conf"]
    assert f"ExecStartPre={failover.HA_BIN}/pg-guard" in guard.content
    assert guard.service is None and guard.action == "systemctl daemon-reload"  # never restarts PostgreSQL


@pytest.mark.parametrize("stack", STACKS)
def test_step_scripts_pass_shellcheck(stack):
    """The remote steps of Witness and VirtualIp, as components.remote.script wraps them."""
    from components.remote import script
    from components.render import etcd
    cluster = cluster_of(stack)
    ctx = RenderContext(cluster, cluster.nodes[0], masked_secrets())
    bodies = {"etcd start": etcd.start_script(ctx), "etcd quorum": etcd.wait_quorum_script(ctx),
              "etcd auth": etcd.bootstrap_auth_script(ctx), "settle": failover.settle_script(ctx)}
    for title, body in bodies.items():
        out = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script("n", title, body),
                             capture_output=True, text=True)
        assert out.returncode == 0, (title, out.stdout)
    assert "ETCD_PRE_VOTE=\"true\"" in etcd.default_file(ctx)
    assert 'ETCD_HEARTBEAT_INTERVAL="100"' in etcd.default_file(ctx)
    assert 'ETCD_ELECTION_TIMEOUT="500"' in etcd.default_file(ctx)


@pytest.mark.parametrize("stack", STACKS)
def test_etcd_members_speak_tls_only_and_require_client_certificates(stack):
    """Every member (the witness too): https on both ports, client and peer certificates required,
    its own certificate and key from the cluster CA installed for the etcd user, nothing on http but the
    metrics listener."""
    from components.render import etcd
    cluster = cluster_of(stack)
    for host in [*cluster.nodes, cluster.witness]:
        files = {f.path: f for f in etcd.files(RenderContext(cluster, host, masked_secrets()))}
        conf = files[etcd.DEFAULT_FILE].content
        settings = dict(line.split("=", 1) for line in conf.splitlines() if line.startswith("ETCD_"))
        # plain http only for the metrics listener (/metrics and /health, no key: test_etcd_bootstrap)
        plain = [line for line in conf.splitlines() if "http://" in line and not line.startswith("#")]
        assert plain == [f'ETCD_LISTEN_METRICS_URLS="http://{host.address}:{cluster.monitoring.etcd_metrics_port}"'], plain
        for key in ("LISTEN_PEER_URLS", "LISTEN_CLIENT_URLS", "ADVERTISE_CLIENT_URLS", "INITIAL_ADVERTISE_PEER_URLS"):
            assert all(u.startswith("https://") for u in settings[f"ETCD_{key}"].strip('"').split(",")), key
        assert settings["ETCD_CLIENT_CERT_AUTH"] == settings["ETCD_PEER_CLIENT_CERT_AUTH"] == '"true"'
        assert settings["ETCD_TRUSTED_CA_FILE"] == settings["ETCD_PEER_TRUSTED_CA_FILE"] == '"/etc/hapbx/tls/ca.crt"'
        key = files[etcd.KEY]
        assert (key.owner, key.mode, key.action) == ("etcd", "0600", files[etcd.DEFAULT_FILE].action)
        assert key.secrets and key.secrets[0].startswith("tls_etcd_key_"), key.secrets
