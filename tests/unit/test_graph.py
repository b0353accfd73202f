"""The resource graph of both stacks under Pulumi mocks: what lands where, in which order, secret."""
import pytest
from pulumi.runtime import rpc

from tests.conftest import FAKE_TOKEN
from tests.mockrun import run_ok, run_program

CMD = "command:remote:Command"


def test_every_host_gets_a_node_with_baseline_children(stack):
    graph, _, raw = stack
    hosts = [n["name"] for n in raw["nodes"]] + [raw["witness"]["name"]]
    for host in hosts:
        node = graph.resources[host]
        assert node.type == "hapbx:index:Node"
        children = [r for r in graph.resources.values() if r.parent == host]
        names = {c.name for c in children}
        assert f"{host}-packages" in names
        assert f"{host}-file-etc-nftables.conf" in names and f"{host}-svc-nftables" in names
        assert all(c.name.startswith(f"{host}-") for c in children)
        # every command connects to this host only, with a pinned host key and bounded dialing
        for c in children:
            conn = rpc.unwrap_rpc_secret(c.inputs["connection"])
            assert conn["host"] in [n["address"] for n in raw["nodes"]] + [raw["witness"]["address"]]
            assert conn["hostKey"].startswith("ssh-ed25519 ")
            assert conn["dialErrorLimit"] == raw["ssh"].get("dialErrorLimit", 10)


def test_order_packages_then_files_then_handlers(stack):
    graph, _, raw = stack
    host = raw["nodes"][0]["name"]
    files = [r for r in graph.commands() if r.name.startswith(f"{host}-file-")]
    apt = [f for f in files if "-etc-apt-" in f.name or "-etc-ssh-sshd" in f.name]  # before the packages
    keys = {r.name for r in graph.commands() if r.name.startswith(f"{host}-repo-key-")}
    for f in files:
        if f in apt:
            assert set(f.depends_on) == {f"{host}-release"} | keys, f.name   # nothing before the release check
        else:
            assert f.depends_on == [f"{host}-packages"], f.name
    for key in keys:
        assert graph.resources[key].depends_on == [f"{host}-release"]
    assert set(graph.resources[f"{host}-packages"].depends_on) == {a.name for a in apt} | keys | {
        f"{host}-svc-ssh", f"{host}-release"}
    assert graph.resources[f"{host}-release"].depends_on == []
    handler = graph.resources[f"{host}-svc-chrony"]
    assert set(handler.depends_on) == {f"{host}-file-etc-chrony-chrony.conf", f"{host}-file-etc-default-chrony",
                                       f"{host}-file-etc-systemd-system-chrony.service.d-hapbx.conf"}


def test_lab_has_no_sysctl_and_prod_has_repositories(lab_config, prod_config):
    lab, _ = run_ok(lab_config)
    prod, _ = run_ok(prod_config, ["vendorRepoToken"])
    assert not [n for n in lab.resources if "sysctl" in n]
    assert "node1-file-etc-sysctl.d-60-hapbx.conf" in prod.resources
    # Debian 13 packages PostgreSQL 17 and Kamailio 6.0: FreeSWITCH's is the one vendor repository
    assert {n for n in prod.resources if "repo-key" in n} == {f"{h}-repo-key-freeswitch" for h in ("node1", "node2", "witness")}
    assert not [n for n in lab.resources if "repo-key" in n]


def test_secrets_are_secret_and_in_no_command_string(prod_config):
    graph, generated = run_ok(prod_config, ["vendorRepoToken"])
    secrets = list(generated.values()) + [FAKE_TOKEN, "AAAAfakekeyZk2"]
    assert len(generated) >= 10
    for r in graph.commands():
        for field in ("create", "update", "delete"):
            text = str(rpc.unwrap_rpc_secret(r.inputs.get(field, "")))
            assert not any(s in text for s in secrets), (r.name, field)
        assert rpc.is_rpc_secret(r.inputs["connection"]), r.name  # holds the private key
    auth = graph.resources["node1-file-etc-apt-auth.conf.d-freeswitch.conf"]
    assert rpc.is_rpc_secret(auth.inputs["stdin"]), "a file holding the token must travel as a secret"
    assert FAKE_TOKEN in rpc.unwrap_rpc_secret(auth.inputs["stdin"])
    assert auth.inputs["logging"] == "none"
    for r in graph.of_type("random:index/randomPassword:RandomPassword"):
        assert r.inputs["length"] >= 32


def test_bad_config_fails_before_any_resource(lab_config):
    lab_config["vip"] = {**lab_config["vip"], "address": "10.77.0.11"}
    graph, _ = run_program(lab_config)
    assert graph.error is not None and "vip.address" in str(graph.error)
    assert not graph.commands()


def test_unpinned_host_fails_before_any_resource(lab_config, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    lab_config["ssh"] = {**lab_config["ssh"], "knownHostsFile": str(empty)}
    graph, _ = run_program(lab_config)
    assert graph.error is not None and "refusing to connect unpinned" in str(graph.error)
    assert not graph.commands()
