"""Every rendered baseline file of both stacks, checked by the tool that reads it."""
import functools
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.remote import handler_script, install_script, delete_script, script, Handler
from components.render import CERTIFICATE_SECRETS, RenderContext, baseline, masked_secrets, render_cluster, MANAGED_BY
from lab.scratch_ca import ScratchCa
from tests.mockrun import ROOT
from tests.daemons.validators import run_validator

STACKS = ["lab", "prod"]


@functools.cache
def ca_pem() -> str:
    """A real CA certificate, standing for the cluster CA's (its file is checked by openssl)."""
    with tempfile.TemporaryDirectory() as d:
        return ScratchCa.make(Path(d)).cert.read_text()


def rendered(stack):
    """The baseline files of every host (other daemons' files have their own tests)."""
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    hosts = [*cluster.nodes, *([cluster.witness] if cluster.witness else [])]
    secrets = {**masked_secrets(), "tls_ca_certificate": ca_pem()}
    return cluster, {h.name: baseline.files(RenderContext(cluster, h, secrets)) for h in hosts}


@pytest.mark.parametrize("stack", STACKS)
def test_every_file_passes_its_validator(stack):
    _, hosts = rendered(stack)
    checked = 0
    for host, files in hosts.items():
        for f in files:
            if f.validate:
                out = run_validator(f)
                assert out.returncode == 0, (host, f.path, out.stdout, out.stderr)
                checked += 1
    assert checked >= 3 * len(hosts) - 1  # nftables, chrony and the tmpfs mount (nodes only)


def test_validators_reject_broken_files():
    cluster, hosts = rendered("lab")
    by_path = {f.path: f for f in hosts["pbx1"]}
    for path, damage in [("/etc/nftables.conf", "\ntable inet hapbx { chain x { bogus } }\n"),
                         ("/etc/chrony/chrony.conf", "\nnot_a_directive 1\n")]:
        f = by_path[path]
        broken = type(f)(**{**f.__dict__, "content": f.content + damage})
        assert run_validator(broken).returncode != 0, path
    unit = next(f for f in hosts["pbx1"] if f.path.endswith(".mount"))
    bad_unit = type(unit)(**{**unit.__dict__, "content": unit.content.replace("Type=tmpfs", "Tpye=tmpfs")})
    assert run_validator(bad_unit).returncode != 0


@pytest.mark.parametrize("stack", STACKS)
def test_files_carry_the_managed_by_header(stack):
    _, hosts = rendered(stack)
    for files in hosts.values():
        for f in files:
            # a certificate is the PEM it is, as pulumi-tls made it
            if f.path != "/etc/hostname" and not (f.secrets and set(f.secrets) <= set(CERTIFICATE_SECRETS)):
                assert MANAGED_BY in f.content, f.path


def test_firewall_opens_peer_ports_to_the_peer_only():
    cluster, hosts = rendered("lab")
    nft = next(f for f in hosts["pbx1"] if f.path == "/etc/nftables.conf").content
    assert "elements = { 10.77.0.12, 10.77.0.10 }" in nft  # the peer and the VIP
    assert 'th dport { 5432 } ip saddr @node_peer accept' in nft
    assert f'th dport {{ {cluster.backup.tls_port} }} ip saddr @node_peer accept comment "pgbackrest"' in nft
    assert 'th dport { 2379, 2380, 2381 } ip saddr @cluster_peers accept' in nft   # 2381: etcd's metrics
    m = cluster.monitoring   # the peer's Prometheus scrapes every exporter and sends to this Alertmanager
    ports = [m.node_exporter_port, m.postgres_exporter_port, m.redis_exporter_port, m.kamailio_port,
             m.hapbx_exporter_port, m.prometheus_port, m.alertmanager_port, m.alertmanager_cluster_port]
    assert f'th dport {{ {", ".join(map(str, ports))} }} ip saddr @node_peer accept comment "monitoring"' in nft
    # the UIs from the operators' networks (the lab host)
    assert (f'tcp dport {{ {m.prometheus_port}, {m.alertmanager_port} }} ip saddr {{ {", ".join(m.allow_from)} }} '
            "accept") in nft
    assert "policy drop" in nft and "flush ruleset" not in nft  # only our own table is touched


def test_firewall_opens_sip_tls_and_the_trunk_port_to_the_trunks_only():
    cluster, hosts = rendered("prod")
    nft = next(f for f in hosts[cluster.nodes[0].name] if f.path == "/etc/nftables.conf").content
    assert f"tcp dport {cluster.kamailio.tls_port} accept" in nft
    port = cluster.dialplan.trunk_sip_port
    assert f'meta l4proto {{ tcp, udp }} th dport {port} ip saddr {{ 198.51.100.20 }} accept comment "trunks"' in nft
    assert nft.count(f" {port} ") == 1   # no other rule lets anyone else in on it
    witness = next(f for f in hosts[cluster.witness.name] if f.path == "/etc/nftables.conf").content
    assert str(port) not in witness
    _, lab = rendered("lab")   # the SIPp stand-in takes no trunk calls: the port stays shut
    assert '"trunks"' not in next(f for f in lab["pbx1"] if f.path == "/etc/nftables.conf").content


def test_tmpfs_is_sized_from_config():
    cluster, hosts = rendered("lab")
    unit = next(f for f in hosts["pbx1"] if f.path.endswith(".mount"))
    assert f"size={cluster.recordings.tmpfs_mb}m" in unit.content
    assert unit.path == "/etc/systemd/system/var-spool-hapbx-live.mount"
    escaped = subprocess.run(["systemd-escape", "--path", cluster.recordings.tmpfs_dir], capture_output=True,
                             text=True).stdout.strip()
    assert unit.path.endswith(f"/{escaped}.mount")


def test_secrets_are_masked_and_tracked():
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.prod.yaml", assume_secrets=True)
    real = {**masked_secrets(), "vendor_repo_token": "tok-real-98Zx"}
    files = baseline.files(RenderContext(cluster, cluster.nodes[0], real))
    auth = next(f for f in files if "auth.conf.d" in f.path)
    assert auth.secrets == ("vendor_repo_token",) and auth.mode == "0600"
    assert "tok-real-98Zx" in auth.content
    assert all("tok-real-98Zx" not in f.content for f in files if f is not auth)


@pytest.mark.parametrize("stack", STACKS)
def test_render_cli_writes_files_and_manifest_without_secrets(stack, tmp_path):
    out = subprocess.run([f"{ROOT}/hapbx", "render", "--stack", stack, "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    assert len(manifest) == sum(len(v) for v in render_cluster(cluster, masked_secrets()).values())
    for entry in manifest:
        path = tmp_path / entry["host"] / entry["path"].lstrip("/")
        assert path.read_text()
        assert {"owner", "mode", "validate", "action", "service"} <= set(entry)
    # files holding secrets are flagged (their content holds placeholders, or hashes of them)
    assert any(e["secrets"] for e in manifest)


@pytest.mark.parametrize("stack", STACKS)
def test_remote_install_scripts_of_every_file_pass_shellcheck(stack):
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    files = render_cluster(cluster, masked_secrets())[cluster.nodes[0].name]
    scripts = []
    for f in files:
        scripts.append(script("n", f"install {f.path}", install_script(f, f.sha256)))
        scripts.append(script("n", f"remove {f.path}", delete_script(f, f.sha256)))
    scripts.append(script("n", "reload nftables", handler_script(Handler("nftables.service", "reload"))))
    # a rolling handler's first pass (defers on the VIP holder) with a health wait: Kamailio's
    from components.remote import defer_on_vip
    from components.sip_layer import kamailio_handler
    scripts.append(script("n", "restart kamailio", handler_script(kamailio_handler(cluster.nodes[1].address),
                                                                  defer_on_vip(cluster.vip.address, "restart"))))
    for text in scripts:
        assert subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True).returncode == 0, text
        # warnings inside a daemon's own checker are that daemon's tests' business: errors only here
        out = subprocess.run(["shellcheck", "-s", "bash", "-S", "error", "-"], input=text, capture_output=True,
                             text=True)
        assert out.returncode == 0, (out.stdout, text)


def test_entry_scripts_pass_shellcheck():
    out = subprocess.run(["shellcheck", f"{ROOT}/hapbx", f"{ROOT}/.ci/run"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
