"""A stack with a media node (mediaNodes), rendered and checked by the daemons' own tools: every file
of the media node by its validator (nft, chronyd, systemd-analyze, xmllint, luac, lsyncd's loader in
a private mount namespace); the PBX nodes' files that change with it (kamailio -c, nft -c, pg_hba's
check, promtool); the recordings key steps run in a sandbox; and promtool's rule tests: a media node
never counts towards the quorum NodeDown asks for."""
from __future__ import annotations

import dataclasses
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from components.config import MediaNodeSettings, load_stack_file
from components.remote import script
from components.render import (MaskedSecrets, RenderContext, kamailio, lsyncd, masked_secrets, monitoring,
                               postgres, prometheus_rules, render_host)
from lab.scratch_ca import ScratchCa
from tests.daemons.monitoring_tools import binary
from tests.daemons.test_lsyncd_render import sandboxed, shell_quote, validate as lsyncd_validate
from tests.daemons.validators import run_validator
from tests.mockrun import ROOT

MEDIA = {"lab": "10.77.0.21", "prod": "192.168.1.121"}
ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"


@functools.cache
def ca_pem() -> str:
    with tempfile.TemporaryDirectory() as d:
        return ScratchCa.make(Path(d)).cert.read_text()


def cluster(stack: str):
    c, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    return dataclasses.replace(c, media_nodes=[MediaNodeSettings(name="media1", address=MEDIA[stack])])


def host_files(c, host) -> dict:
    secrets = MaskedSecrets({**masked_secrets(), "tls_ca_certificate": ca_pem()})
    return {f.path: f for f in render_host(RenderContext(c, host, secrets))}


@pytest.mark.parametrize("stack", ["lab", "prod"])
def test_every_media_node_file_passes_its_validator(stack):
    c = cluster(stack)
    files = host_files(c, c.media_nodes[0])
    engine = "/etc/systemd/system/hapbx-media-uas.service" if stack == "lab" else "/etc/freeswitch/freeswitch.xml"
    assert engine in files and lsyncd.CONF in files and "/etc/default/prometheus-node-exporter" in files
    assert not [p for p in files if "kamailio" in p or "postgresql" in p or "redis" in p or "keepalived" in p]
    checked = 0
    for f in files.values():
        if not f.validate:
            continue
        if f.path == lsyncd.CONF:   # lsyncd's loader needs the source directory: a private mount namespace
            out = lsyncd_validate(f, lsyncd.own_dir(RenderContext(c, c.media_nodes[0], {})))
            assert "lsyncd accepted the configuration" in out.stdout, out.stdout + out.stderr
        else:
            out = run_validator(f)
        assert out.returncode == 0, (f.path, out.stdout[-2000:], out.stderr[-2000:])
        checked += 1
    assert checked >= (10 if stack == "lab" else 30)


def test_the_media_nodes_own_firewall_and_time():
    c = cluster("lab")
    files = host_files(c, c.media_nodes[0])
    nft = files["/etc/nftables.conf"].content
    assert "elements = { 10.77.0.11, 10.77.0.12, 10.77.0.10 }" in nft
    assert 'th dport { 5080 } ip saddr @media_peers accept comment "media-sip"' in nft
    assert 'th dport { 9100 } ip saddr @media_peers accept comment "monitoring"' in nft
    assert "udp dport 20000-20999 accept" in nft                           # RTP from the phones
    assert "dport 5060" not in nft and "ip protocol 112" not in nft
    chrony = files["/etc/chrony/chrony.conf"].content
    # the lab is isolated (orphan mode): the media node follows both PBX nodes and votes in nothing
    assert "server 10.77.0.11 iburst" in chrony and "server 10.77.0.12 iburst" in chrony
    assert "peer " not in chrony and "local stratum" not in chrony and "allow " not in chrony


@pytest.mark.parametrize("stack", ["lab", "prod"])
def test_pbx_node_files_that_change_with_a_media_node_pass_their_checks(stack):
    c = cluster(stack)
    addr = MEDIA[stack]
    files = host_files(c, c.nodes[0])
    nft = files["/etc/nftables.conf"]
    assert f"elements = {{ {addr} }}" in nft.content
    for f in (nft, files[kamailio.CFG], files[f"{postgres.paths(c).conf_dir}/pg_hba.conf"]):
        out = run_validator(f)
        assert out.returncode == 0, (f.path, out.stdout[-2000:], out.stderr[-2000:])
    assert f'$si == "{addr}")' in files[kamailio.CFG].content
    hba = files[f"{postgres.paths(c).conf_dir}/pg_hba.conf"].content
    assert (f"pbx_readonly    {addr}/32" in hba) == (c.media.engine == "freeswitch")
    seed = files[f"{postgres.LIB_DIR}/seed.sql"].content
    assert f"'sip:{addr}:{c.media.sip_port}', 0, 0, 'duid=media1', 'hapbx:media1'" in seed


@pytest.mark.parametrize("stack", ["lab", "prod"])
def test_prometheus_with_a_media_node_passes_promtool(request, stack, tmp_path):
    c = cluster(stack)
    files = {f.path: f.content for f in monitoring.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "hapbx.yml").write_text(files[prometheus_rules.RULES_PATH])
    conf = yaml.safe_load(files[monitoring.PROMETHEUS_CONF])
    conf["rule_files"] = [f"{rules}/*.yml"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    out = subprocess.run([binary(request, "bookworm", "promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr
    node_job = next(j for j in conf["scrape_configs"] if j["job_name"] == "node")
    assert {"targets": [f"{MEDIA[stack]}:9100"], "labels": {"node": "media1"}} in node_job["static_configs"]


def test_a_media_node_never_makes_an_isolated_node_see_a_quorum(request, tmp_path):
    """pbx1 cut off from pbx2 and the witness but still reaching media1: without a majority of the
    three members it sends no NodeDown; with the witness it does, for pbx2 only."""
    c = cluster("lab")
    rendered = prometheus_rules.rules(c)
    (tmp_path / "hapbx.yml").write_text(rendered)
    node_down = next(r for g in yaml.safe_load(rendered)["groups"] for r in g["rules"] if r.get("alert") == "NodeDown")
    annotations = {k: v for k, v in node_down["annotations"].items() if k != "summary"}

    def series(name, job, addr, values):
        return {"series": f'up{{job="{job}",instance="{addr}",node="{name}"}}', "values": values}

    def case(witness_values):
        return {"interval": "5s", "input_series": [
            series("pbx1", "node", "10.77.0.11:9100", "1x20"),
            series("media1", "node", "10.77.0.21:9100", "1x20"),
            series("pbx2", "node", "10.77.0.12:9100", "1 1 0x18"),
            series("witness", "etcd", "10.77.0.13:2381", witness_values)]}
    isolated = {**case("1 1 0x18"), "alert_rule_test": [{"eval_time": "60s", "alertname": "NodeDown", "exp_alerts": []}]}
    majority = {**case("1x20"), "alert_rule_test": [{"eval_time": "60s", "alertname": "NodeDown", "exp_alerts": [
        {"exp_labels": {"severity": "critical", "node": "pbx2"},
         "exp_annotations": {"summary": "pbx2: no exporter on it answers (down or unreachable)", **annotations}}]}]}
    (tmp_path / "quorum.yml").write_text(yaml.safe_dump(
        {"rule_files": ["hapbx.yml"], "evaluation_interval": "5s", "tests": [isolated, majority]}))
    promtool = binary(request, "bookworm", "promtool")
    out = subprocess.run([promtool, "test", "rules", "quorum.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # the same case against the rule as it was (every scraped host counted) fires for the isolated node
    (tmp_path / "hapbx.yml").write_text(rendered.replace('up{node=~"pbx1|pbx2|witness"}', "up"))
    out = subprocess.run([promtool, "test", "rules", "quorum.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "pbx2" in out.stdout + out.stderr, out.stdout + out.stderr


needs_root_lsyncd = pytest.mark.skipif(shutil.which("lsyncd") is None or shutil.which("shellcheck") is None,
                                       reason="needs lsyncd and shellcheck")


@needs_root_lsyncd
def test_recordings_key_steps_pass_shellcheck():
    c = cluster("lab")
    for host in (c.nodes[0], c.media_nodes[0]):
        ctx = RenderContext(c, host, {})
        for body in (lsyncd.keys_script(ctx), lsyncd.authorize_script(ctx)):
            full = script(host.name, "test", body)
            out = subprocess.run(["shellcheck", "-s", "bash", "-"], input="#!/bin/bash\n" + full, capture_output=True,
                                 text=True)
            assert out.returncode == 0, out.stdout


@needs_root_lsyncd
def test_a_pbx_node_authorizes_the_media_nodes_key_for_its_directory_only():
    c = cluster("lab")
    body = script("pbx1", "authorize", lsyncd.authorize_script(RenderContext(c, c.nodes[0], {})))
    keys = (f"user-key {ED}PeerUserKeyZ\nhost-key {ED}PeerHostKeyZ\n"
            f"{lsyncd.media_key_line('media1')}{ED}MediaUserKeyZ\n")
    setup = f"mkdir -p {lsyncd.HOME}/.ssh {lsyncd.KEY_DIR}"
    run = f"bash -c {shell_quote(body)} <<'EOF'\n{keys}EOF\n"
    out = sandboxed(run + run + f"cat {lsyncd.HOME}/.ssh/authorized_keys", setup)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["changed", "unchanged"]
    assert (f'restrict,from="10.77.0.21",command="/usr/bin/rrsync -wo -no-del {c.recordings.directory}/media1" '
            f"{ED}MediaUserKeyZ hapbx-recsync@media1") in lines
    assert any(line.endswith(f"{ED}PeerUserKeyZ hapbx-recsync@pbx2") for line in lines)
    missing = sandboxed(f"bash -c {shell_quote(body)} <<'EOF'\nuser-key {ED}P\nhost-key {ED}H\nEOF", setup)
    assert missing.returncode != 0 and "no ed25519 public key from media1" in missing.stderr


@needs_root_lsyncd
def test_a_media_node_pins_both_pbx_nodes_host_keys():
    c = cluster("lab")
    body = script("media1", "authorize", lsyncd.authorize_script(RenderContext(c, c.media_nodes[0], {})))
    keys = "".join(f"{lsyncd.pbx_key_line(n)}user-key {ED}{n}UserZ\n{lsyncd.pbx_key_line(n)}host-key {ED}{n}HostZ\n"
                   for n in ("pbx1", "pbx2"))
    setup = f"mkdir -p {lsyncd.KEY_DIR}"
    run = f"bash -c {shell_quote(body)} <<'EOF'\n{keys}EOF\n"
    out = sandboxed(run + run + f"cat {lsyncd.KNOWN_HOSTS}; ls {lsyncd.HOME}/.ssh 2>&1 || true", setup)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["changed", "unchanged"]
    assert f"10.77.0.11 {ED}pbx1HostZ" in lines and f"10.77.0.12 {ED}pbx2HostZ" in lines
    assert not any("UserZ" in line for line in lines)
    bad = sandboxed(f"bash -c {shell_quote(body)} <<'EOF'\npbx1 host-key ssh-rsa AAAA\nEOF", setup)
    assert bad.returncode != 0 and "no ed25519 host key from pbx1" in bad.stderr
