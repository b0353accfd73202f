"""Monitoring on each PBX node: the exporters, a Prometheus that scrapes both nodes (and the three
etcd members), and an Alertmanager clustered with the peer's, all from Debian's packages.

Every daemon binds the node address only; the firewall lets the peer in (baseline.peer_ports,
"monitoring") and the UIs from monitoring.allowFrom. Exporter credentials (a PostgreSQL role with
pg_monitor only, a Redis user with INFO and PING only) sit in the units' environment files, mode
0640 root:prometheus, never on a command line. Debian's units run everything as ``prometheus``
and read ``ARGS`` from /etc/default/<unit>.
"""
from __future__ import annotations

import os

import yaml

from hapbx_node.layout import TLS_CA

from . import RenderContext, RenderedFile, header, secret_refs
from . import hapbx_exporter, prometheus_rules
from .postgres import MONITOR_ROLE
from .redis import MONITOR_USER

GROUP = "prometheus"   # Debian's units run every monitoring daemon as this user
NODE_EXPORTER = "prometheus-node-exporter.service"
POSTGRES_EXPORTER = "prometheus-postgres-exporter.service"
REDIS_EXPORTER = "prometheus-redis-exporter.service"
PROMETHEUS = "prometheus.service"
ALERTMANAGER = "prometheus-alertmanager.service"
UNITS = (NODE_EXPORTER, POSTGRES_EXPORTER, REDIS_EXPORTER, PROMETHEUS, ALERTMANAGER)
PROMETHEUS_CONF = "/etc/prometheus/prometheus.yml"
ALERTMANAGER_CONF = "/etc/prometheus/alertmanager.yml"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"     # Debian's default for the textfile collector
#: postgres_exporter releases with no standby lag metric of their own (0.17 has pg_replication_lag_seconds):
#: given the query that makes it (prometheus_rules.POSTGRES_LAG_QUERY_YAML), as the rules expect it
LAG_QUERY_FOR = ("0.11",)
LAG_QUERY = "/etc/prometheus/postgres-exporter-queries.yml"
#: a scrape gives up after this: an exporter answers a node's peer within milliseconds, and a dead
#: node's scrape fails after it, so the sooner it gives up the sooner NodeDown knows
SCRAPE_TIMEOUT_S = 3
#: Alertmanager gossip: a peer silent this long is not waited for. The second instance sends what
#: the first did not within this (default 15 s), so it bounds a notification's delay when a node dies.
PEER_TIMEOUT = "5s"


def defaults_file(unit: str) -> str:
    return f"/etc/default/{unit.removesuffix('.service')}"


def _env(values: dict[str, str]) -> str:
    lines = [header()] + [f'{k}="{v}"' for k, v in values.items()]
    return "\n".join(lines) + "\n"


#: Kamailio stamps every sample with its own clock: honoured, the series would outlive a dead
#: Kamailio by five minutes (staleness does not apply to stamped samples); the scrape's time instead
KEEP_OWN_TIMESTAMPS = {"kamailio": {"honor_timestamps": False}}


def scrape_jobs(ctx: RenderContext) -> dict[str, list[tuple[str, str]]]:
    """job -> [(node name, host:port)]: every exporter of both PBX nodes, etcd on every member."""
    c, m = ctx.cluster, ctx.cluster.monitoring
    ports = {"node": m.node_exporter_port, "postgres": m.postgres_exporter_port, "redis": m.redis_exporter_port,
             "kamailio": m.kamailio_port, "hapbx": m.hapbx_exporter_port, "prometheus": m.prometheus_port,
             "alertmanager": m.alertmanager_port}
    jobs = {job: [(n.name, f"{n.address}:{port}") for n in c.nodes] for job, port in ports.items()}
    # the media nodes (mediaNodes) run the node exporter only (their engine's units: its systemd collector)
    jobs["node"] += [(n.name, f"{n.address}:{m.node_exporter_port}") for n in c.media_nodes]
    members = [*c.nodes, *([c.witness] if c.witness else [])]
    jobs["etcd"] = [(n.name, f"{n.address}:{m.etcd_metrics_port}") for n in members]
    return jobs


def prometheus_yml(ctx: RenderContext) -> str:
    c, m = ctx.cluster, ctx.cluster.monitoring
    interval = f"{m.scrape_interval_seconds}s"
    conf = {
        # identical on both servers: the two Alertmanagers then see one alert, not two
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": f"{min(m.scrape_interval_seconds, SCRAPE_TIMEOUT_S)}s",
                   "external_labels": {"cluster": m.cluster_label}},
        # a glob: `promtool check config` on the staged file passes before the rules are installed
        # (each file is checked and installed on its own) and checks them once they are
        "rule_files": [f"{os.path.dirname(prometheus_rules.RULES_PATH)}/*.yml"],
        "alerting": {"alertmanagers": [{"api_version": "v2", "static_configs": [
            {"targets": [f"{n.address}:{m.alertmanager_port}" for n in c.nodes]}]}]},
        "scrape_configs": [
            {"job_name": job, **KEEP_OWN_TIMESTAMPS.get(job, {}), "static_configs": [{"targets": [target], "labels": {"node": node}}
                                                 for node, target in targets]}
            for job, targets in scrape_jobs(ctx).items()],
    }
    return f"{header()}\n" + yaml.safe_dump(conf, sort_keys=False)


def alertmanager_yml(ctx: RenderContext) -> str:
    c, m = ctx.cluster, ctx.cluster.monitoring
    receiver: dict = {"name": "operators"}
    if m.webhook_urls:
        http = ({"http_config": {"authorization": {"type": "Bearer", "credentials": ctx.secret("alert_webhook_token")}}}
                if c.alert_webhook_token else {})
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True, "max_alerts": 0, **http}
                                       for url in m.webhook_urls]
    glob: dict = {"resolve_timeout": "5m"}
    if m.email.to:
        glob.update({"smtp_smarthost": m.email.smarthost, "smtp_from": m.email.sender, "smtp_require_tls": True})
        if m.email.username:
            glob.update({"smtp_auth_username": m.email.username,
                         "smtp_auth_password": ctx.secret("alert_smtp_password")})
        receiver["email_configs"] = [{"to": ", ".join(m.email.to), "send_resolved": True}]
    conf = {
        "global": glob,
        # grouped by cluster, then per alert and node: a new alert in a group that exists waits for
        # the group's next tick (up to group_interval), a new group only group_wait (alert drill 5:
        # NodeDown of one node waited for the tick of another node's resolved NodeDown)
        "route": {"receiver": "operators", "group_by": ["cluster", "alertname", "node"],
                  # the first notification of a group 5 s after its first alert; changes and the
                  # resolution a minute apart at most; a standing alert is repeated every 4 h
                  "group_wait": "5s", "group_interval": "1m", "repeat_interval": "4h"},
        # a node down explains everything else about that node: only NodeDown is sent
        "inhibit_rules": [{"source_matchers": ['alertname="NodeDown"'],
                           "target_matchers": ['alertname!="NodeDown"'], "equal": ["cluster", "node"]}],
        "receivers": [receiver],
    }
    return f"{header()}\n" + yaml.safe_dump(conf, sort_keys=False)


def needs_lag_query(cluster) -> bool:
    return cluster.release.versions["postgres_exporter"].rsplit(".", 1)[0] in LAG_QUERY_FOR


def _listen(ctx: RenderContext, port: int) -> str:
    return f"{ctx.host.address}:{port}"


def ui_urls(cluster) -> dict[str, list[str]]:
    """The Prometheus and Alertmanager UIs of both nodes (none while monitoring is off)."""
    m = cluster.monitoring
    if not m.enabled:
        return {"prometheus": [], "alertmanager": []}
    return {ui: [f"http://{n.address}:{port}" for n in cluster.nodes]
            for ui, port in (("prometheus", m.prometheus_port), ("alertmanager", m.alertmanager_port))}


def node_exporter_env(ctx: RenderContext) -> str:
    m = ctx.cluster.monitoring
    return _env({"ARGS": f"--web.listen-address={_listen(ctx, m.node_exporter_port)} --collector.systemd "
                         f"--collector.systemd.unit-include={prometheus_rules.WATCHED_UNITS} "
                         f"--collector.textfile.directory={TEXTFILE_DIR}"})


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness or not ctx.cluster.monitoring.enabled:
        return []
    if ctx.is_media_node:
        return [RenderedFile(defaults_file(NODE_EXPORTER), node_exporter_env(ctx), service=NODE_EXPORTER,
                             action="restart")]
    c, m, host, peer = ctx.cluster, ctx.cluster.monitoring, ctx.host, ctx.peer
    env = dict(owner="root", group=GROUP, mode="0640")
    pg_env = _env({
        # the local socket (pg_hba: scram-sha-256); pg_monitor from any database
        "DATA_SOURCE_NAME": f"host=/var/run/postgresql port={c.postgres.port} user={MONITOR_ROLE} "
                            f"password={ctx.secret('postgres_monitor')} dbname=postgres sslmode=disable",
        "ARGS": f"--web.listen-address={_listen(ctx, m.postgres_exporter_port)}"
                + (f" --extend.query-path={LAG_QUERY}" if needs_lag_query(c) else "")})
    redis_env = _env({
        "REDIS_ADDR": f"rediss://127.0.0.1:{c.redis.port}", "REDIS_USER": MONITOR_USER,
        "REDIS_PASSWORD": ctx.secret("redis_monitor"), "REDIS_EXPORTER_TLS_CA_CERT_FILE": TLS_CA,
        "REDIS_EXPORTER_WEB_LISTEN_ADDRESS": _listen(ctx, m.redis_exporter_port), "ARGS": ""})
    node_env = node_exporter_env(ctx)
    prom_env = _env({"ARGS": f"--config.file={PROMETHEUS_CONF} "
                                  f"--web.listen-address={_listen(ctx, m.prometheus_port)} "
                                  f"--web.external-url=http://{_listen(ctx, m.prometheus_port)}/ "
                                  f"--storage.tsdb.retention.time={m.retention_days}d"})
    am_env = _env({"ARGS": f"--config.file={ALERTMANAGER_CONF} "
                                f"--web.listen-address={_listen(ctx, m.alertmanager_port)} "
                                f"--web.external-url=http://{_listen(ctx, m.alertmanager_port)}/ "
                                f"--cluster.listen-address={_listen(ctx, m.alertmanager_cluster_port)} "
                                f"--cluster.peer={peer.address}:{m.alertmanager_cluster_port} "
                                f"--cluster.peer-timeout={PEER_TIMEOUT}"})
    rules = prometheus_rules.rules(c)
    am = alertmanager_yml(ctx)
    out = [
        RenderedFile(defaults_file(NODE_EXPORTER), node_env, service=NODE_EXPORTER, action="restart"),
        RenderedFile(defaults_file(POSTGRES_EXPORTER), pg_env, service=POSTGRES_EXPORTER, action="restart",
                     secrets=secret_refs(ctx, pg_env), **env),
        RenderedFile(defaults_file(REDIS_EXPORTER), redis_env, service=REDIS_EXPORTER, action="restart",
                     secrets=secret_refs(ctx, redis_env), **env),
        RenderedFile(prometheus_rules.RULES_PATH, rules, service=PROMETHEUS, action="reload",
                     validate="promtool check rules {path}"),
        RenderedFile(PROMETHEUS_CONF, prometheus_yml(ctx), service=PROMETHEUS, action="reload",
                     validate="promtool check config {path}"),
        RenderedFile(defaults_file(PROMETHEUS), prom_env, service=PROMETHEUS, action="restart"),
        RenderedFile(ALERTMANAGER_CONF, am, service=ALERTMANAGER, action="reload",
                     validate="amtool check-config {path}", secrets=secret_refs(ctx, am), **env),
        RenderedFile(defaults_file(ALERTMANAGER), am_env, service=ALERTMANAGER, action="restart"),
    ]
    if needs_lag_query(c):
        out.insert(1, RenderedFile(LAG_QUERY, f"{header()}\n{prometheus_rules.POSTGRES_LAG_QUERY_YAML}",
                                   service=POSTGRES_EXPORTER, action="restart"))
    return out + hapbx_exporter.files(ctx)
