"""The Monitoring component under Pulumi mocks: exporters, Prometheus and Alertmanager on both PBX
nodes (none on the witness), each checked by its own tool before install, and every monitoring
credential a Pulumi secret that appears in no command."""
from pulumi.runtime import rpc

from components.render import monitoring as mon
from components.render import prometheus_rules
from tests.mockrun import run_ok

SMTP_PASSWORD = "smtp-Pw-83kQ-not-real"
WEBHOOK_TOKEN = "hook-Tk-61zR-not-real"


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "-")


def test_exporters_prometheus_and_alertmanager_on_both_nodes(stack):
    graph, _, raw = stack
    wanted = [mon.defaults_file(u) for u in mon.UNITS] + [mon.PROMETHEUS_CONF, mon.ALERTMANAGER_CONF,
                                                          prometheus_rules.RULES_PATH]
    for node in [n["name"] for n in raw["nodes"]]:
        for path in wanted:
            r = graph.resources[f"monitoring-{node}-file-{_slug(path)}"]
            assert r.parent == "monitoring", (r.name, r.parent)
        for unit in mon.UNITS:
            assert f"monitoring-{node}-svc-{unit.removesuffix('.service')}" in graph.resources, unit
    witness = raw["witness"]["name"]
    assert not [n for n in graph.resources if n.startswith(f"monitoring-{witness}-")]
    assert graph.resources["monitoring"].type == "hapbx:index:Monitoring"


def test_each_file_is_checked_by_its_own_tool_before_install(stack):
    graph, _, raw = stack
    node = raw["nodes"][0]["name"]
    checks = {mon.PROMETHEUS_CONF: "promtool check config", prometheus_rules.RULES_PATH: "promtool check rules",
              mon.ALERTMANAGER_CONF: "amtool check-config"}
    for path, tool in checks.items():
        create = str(rpc.unwrap_rpc_secret(graph.resources[f"monitoring-{node}-file-{_slug(path)}"].inputs["create"]))
        assert tool in create, (path, create[:300])


def test_every_monitoring_credential_is_a_secret(prod_config):
    prod_config["monitoring"] = {"webhookUrls": ["https://alerts.example.org/hook"],
                                 "email": {"to": ["oncall@example.org"], "from": "pbx@example.org",
                                           "smarthost": "smtp.example.org:587", "username": "pbx"}}
    prod_config["alertSmtpPassword"] = SMTP_PASSWORD
    prod_config["alertWebhookToken"] = WEBHOOK_TOKEN
    graph, generated = run_ok(prod_config, ["vendorRepoToken", "alertSmtpPassword", "alertWebhookToken"])
    assert {"secret-postgres-monitor", "secret-redis-monitor"} <= set(generated)
    node = prod_config["nodes"][0]["name"]
    holders = {mon.defaults_file(mon.POSTGRES_EXPORTER): generated["secret-postgres-monitor"],
               mon.defaults_file(mon.REDIS_EXPORTER): generated["secret-redis-monitor"],
               mon.ALERTMANAGER_CONF: SMTP_PASSWORD}
    for path, value in holders.items():
        r = graph.resources[f"monitoring-{node}-file-{_slug(path)}"]
        assert rpc.is_rpc_secret(r.inputs["stdin"]), f"{path} holds a credential: it must travel as a secret"
        assert value in rpc.unwrap_rpc_secret(r.inputs["stdin"]), path
        assert r.inputs["logging"] == "none", path
    am = rpc.unwrap_rpc_secret(graph.resources[f"monitoring-{node}-file-{_slug(mon.ALERTMANAGER_CONF)}"].inputs["stdin"])
    assert WEBHOOK_TOKEN in am
    secrets = [generated["secret-postgres-monitor"], generated["secret-redis-monitor"], SMTP_PASSWORD, WEBHOOK_TOKEN]
    for r in graph.commands():
        for field in ("create", "update", "delete"):
            text = str(rpc.unwrap_rpc_secret(r.inputs.get(field, "")))
            assert not any(s in text for s in secrets), (r.name, field)
