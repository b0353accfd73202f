"""The monitoring files of both lab stacks and prod, checked by the daemons' own tools of both Debian
releases, as the node checks them before install (render/monitoring.py validate commands):
`promtool check config` (with the rules beside it) and `amtool check-config`, a receiver set of
each kind included; and a broken file refused by the same command."""
from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest
import yaml

from components.config import load_stack_file
from components.render import RenderContext, masked_secrets, monitoring, prometheus_rules
from tests.daemons.monitoring_tools import binary
from tests.mockrun import ROOT

STACKS = ["lab", "lab-trixie", "prod"]


def cluster_of(stack: str, **monitoring_changes):
    c, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    if monitoring_changes:
        c = dataclasses.replace(c, monitoring=dataclasses.replace(c.monitoring, **monitoring_changes))
    return c


def files_of(cluster, node: int = 0) -> dict[str, str]:
    return {f.path: f.content for f in monitoring.files(RenderContext(cluster, cluster.nodes[node], masked_secrets()))}


def check(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def staged_prometheus(tmp_path, files: dict[str, str]) -> str:
    """prometheus.yml staged with its rule glob pointing at the rendered rules beside it."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "hapbx.yml").write_text(files[prometheus_rules.RULES_PATH])
    conf = yaml.safe_load(files[monitoring.PROMETHEUS_CONF])
    assert conf["rule_files"] == [f"{os.path.dirname(prometheus_rules.RULES_PATH)}/*.yml"]
    conf["rule_files"] = [f"{rules}/*.yml"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
@pytest.mark.parametrize("stack", STACKS)
def test_prometheus_config_passes_promtool(request, release, stack, tmp_path):
    promtool = binary(request, release, "promtool")
    files = files_of(cluster_of(stack))
    out = check([promtool, "check", "config", staged_prometheus(tmp_path, files)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr and "rules found" in out.stdout + out.stderr, out.stdout


def test_every_exporter_of_both_nodes_is_scraped_with_its_node_label():
    c = cluster_of("lab")
    conf = yaml.safe_load(files_of(c)[monitoring.PROMETHEUS_CONF])
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert set(jobs) == {"node", "postgres", "redis", "kamailio", "hapbx", "prometheus", "alertmanager", "etcd"}
    for name, job in jobs.items():
        nodes = {sc["labels"]["node"] for sc in job["static_configs"]}
        members = {n.name for n in c.nodes} | ({c.witness.name} if name == "etcd" else set())
        assert nodes == members, (name, nodes)
    assert conf["global"]["external_labels"] == {"cluster": c.monitoring.cluster_label}
    # the same file on both nodes: one alert, not two, reaches the Alertmanagers
    assert files_of(c, 0)[monitoring.PROMETHEUS_CONF] == files_of(c, 1)[monitoring.PROMETHEUS_CONF]


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
@pytest.mark.parametrize("receivers", ["none", "webhook", "email"])
def test_alertmanager_config_passes_amtool(request, release, receivers, tmp_path):
    amtool = binary(request, release, "amtool")
    changes = {"none": {"webhook_urls": []},
               "webhook": {"webhook_urls": ["https://alerts.example.org/hook"]},
               "email": {"email": dataclasses.replace(cluster_of("prod").monitoring.email, to=["oncall@example.org"],
                                                      sender="pbx@example.org", smarthost="smtp.example.org:587",
                                                      username="pbx")}}[receivers]
    c = cluster_of("prod", **changes)
    if receivers != "none":
        c = dataclasses.replace(c, alert_smtp_password="x", alert_webhook_token="y")
    text = files_of(c)[monitoring.ALERTMANAGER_CONF]
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    out = check([amtool, "check-config", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    conf = yaml.safe_load(text)
    receiver = conf["receivers"][0]
    assert bool(receiver.get("webhook_configs")) == (receivers == "webhook")
    assert bool(receiver.get("email_configs")) == (receivers == "email")
    assert conf["route"]["group_by"][0] == "cluster"
    assert conf["inhibit_rules"][0]["equal"] == ["cluster", "node"]


def test_a_broken_file_is_refused_by_the_same_check(request, tmp_path):
    files = files_of(cluster_of("lab"))
    broken = files[monitoring.ALERTMANAGER_CONF].replace("receiver: operators", "receiver: nobody")
    path = tmp_path / "alertmanager.yml"
    path.write_text(broken)
    out = check([binary(request, "bookworm", "amtool"), "check-config", str(path)])
    assert out.returncode != 0 and "nobody" in out.stdout + out.stderr, out.stdout + out.stderr
    conf = yaml.safe_load(files[monitoring.PROMETHEUS_CONF])
    conf["scrape_configs"][0]["scrape_interval"] = "often"
    bad = tmp_path / "prometheus.yml"
    bad.write_text(yaml.safe_dump(conf))
    out = check([binary(request, "bookworm", "promtool"), "check", "config", str(bad)])
    assert out.returncode != 0 and "often" in out.stdout + out.stderr, out.stdout + out.stderr


def test_credentials_are_in_environment_files_for_prometheus_only():
    c = cluster_of("lab")
    rendered = {f.path: f for f in monitoring.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    for unit, secret in ((monitoring.POSTGRES_EXPORTER, "postgres_monitor"), (monitoring.REDIS_EXPORTER, "redis_monitor")):
        f = rendered[monitoring.defaults_file(unit)]
        assert secret in f.secrets and (f.owner, f.group, f.mode) == ("root", "prometheus", "0640"), f
        args = next(line for line in f.content.splitlines() if line.startswith("ARGS="))
        assert "@@SECRET" not in args, args   # never on a command line
