"""The alert rules (components/render/prometheus_rules.py), rendered from the lab stack, against both
Debian releases' Prometheus tools and exporters.

- `promtool check rules` and `promtool test rules` (tests/promtool/*.yml) with Debian 12's promtool
  (2.42, the host's) and Debian 13's (2.53);
- every alert has a promtool case that fires it and one where it stays silent, a severity, a summary
  and an action;
- the metric names (and the labels the rules match on) are the exporters' own: each Debian release's
  node, postgres and redis exporter and etcd are run against a real PostgreSQL primary + standby,
  a Redis master + replica and an etcd member on loopback, and scraped.

Debian 13's binaries come from the trixie node image (tests/daemons/monitoring_tools.py).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from components.config import load_stack_file
from components.render import prometheus_rules
from tests.helpers import free_port
from tests.mockrun import ROOT
from tests.daemons.monitoring_tools import binary

PROMTOOL_TESTS = Path(ROOT) / "tests/promtool"
#: the alerts the README names (Monitoring and alerting)
CONTRACT_ALERTS = {
    "NodeDown", "TargetDown", "ServiceDown", "VipNoOwner", "VipTwoOwners", "Failover", "HaCoreStale",
    "LeaseRenewalSlow", "PostgresDown", "PostgresNotReplicating", "PostgresReplicationLagBytes",
    "PostgresReplicationLagSeconds", "PostgresSlotRetainingWal", "RedisDown", "RedisReplicaLinkDown",
    "CdrQueueGrowing", "CdrDeadLetters", "CdrIngestStalled", "KamailioDown", "DispatcherNoMediaDestination",
    "RegistrationsDropped", "SipAuthFailureBurst", "SipBanBurst", "SipRelayRefusalBurst", "PremiumCallRefused",
    "DiskAlmostFull", "DiskFillingUp", "EtcdMemberDown", "EtcdNoLeader", "EtcdQuorumAtRisk", "MediaDown",
} | {  # backup.enabled (the lab's default; issue 23)
    "BackupTooOld", "BackupFailed", "WalArchiveFailing", "RecordingsRetentionFailed",
}
BACKUP_ALERTS = {"BackupTooOld", "BackupFailed", "WalArchiveFailing", "RecordingsRetentionFailed"}
HAPBX_NAMES = Path(ROOT) / "tests/fixtures/metric_names/hapbx.txt"
#: labels the rules select or group on, per metric: they must be on the exporter's series too
LABELS = {"pg_stat_replication_pg_wal_lsn_diff": {"state"}, "pg_replication_slots_pg_wal_lsn_diff": {"slot_name"},
          "redis_instance_info": {"role"}, "node_filesystem_avail_bytes": {"fstype", "mountpoint"},
          "node_filesystem_size_bytes": {"fstype", "mountpoint"}, "node_filesystem_readonly": {"fstype", "mountpoint"}}
PGBIN = "/usr/lib/postgresql/15/bin"


def lab():
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.lab.yaml", assume_secrets=True)
    return cluster


@pytest.fixture(scope="module")
def rendered() -> str:
    return prometheus_rules.rules(lab())


def alerts(text: str) -> list[dict]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r]


def used_metrics(text: str, prefix: str) -> set[str]:
    return {m for r in alerts(text) for m in re.findall(rf"\b{prefix}_[a-z_]+\b", r["expr"])}


# --- the rules themselves -----------------------------------------------------------------------

def test_the_rules_name_the_contracts_alerts_each_with_severity_summary_and_action(rendered):
    found = alerts(rendered)
    names = [a["alert"] for a in found]
    assert sorted(names) == sorted(set(names)), "an alert name twice"
    assert set(names) == CONTRACT_ALERTS
    for a in found:
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a
        assert set(a["labels"]) == {"severity"}, f"{a['alert']}: labels must come from the series alone"
        assert a["annotations"]["summary"].strip() and a["annotations"]["action"].strip(), a
    assert next(a for a in found if a["alert"] == "Failover")["labels"]["severity"] == "info"
    for a in found:
        if a["alert"] in BACKUP_ALERTS:
            assert len(a["annotations"]["description"]) > 60, a


def test_backup_alerts_only_with_backups_and_their_age_from_the_stack():
    import dataclasses
    c = lab()
    assert c.backup.enabled
    off = dataclasses.replace(c, backup=dataclasses.replace(c.backup, enabled=False))
    assert {a["alert"] for a in alerts(prometheus_rules.rules(off))} == CONTRACT_ALERTS - BACKUP_ALERTS
    other = {a["alert"]: a for a in alerts(prometheus_rules.rules(
        dataclasses.replace(c, backup=dataclasses.replace(c.backup, max_age_hours=30))))}
    expr = other["BackupTooOld"]["expr"]
    assert expr.count(f"{30 * 3600}") == 2 and "max(hapbx_backup_last_success_timestamp_seconds)" in expr
    assert "over 30h" in other["BackupTooOld"]["annotations"]["summary"]


def test_the_hapbx_names_the_rules_use_are_the_exporters(rendered):
    """hapbx_* in the rules are listed in the exporter's names (tests/fixtures/metric_names/hapbx.txt,
    which tests/daemons/test_hapbx_exporter.py checks against the running exporter)."""
    listed = {x.strip() for x in HAPBX_NAMES.read_text().splitlines() if x.strip() and not x.startswith("#")}
    used = used_metrics(rendered, "hapbx")
    assert {"hapbx_backup_last_success_timestamp_seconds", "hapbx_backup_last_outcome",
            "hapbx_recordings_retention_last_outcome"} <= used
    assert used - listed == set(), used - listed


def test_thresholds_come_from_the_stack(rendered):
    import dataclasses
    c = lab()
    changed = dataclasses.replace(c, monitoring=dataclasses.replace(
        c.monitoring, node_down_seconds=42, replication_lag_bytes=123456, disk_full_hours=7, cdr_queue_max=777))
    other = {a["alert"]: a for a in alerts(prometheus_rules.rules(changed))}
    assert other["TargetDown"]["for"] == "42s" and other["KamailioDown"]["for"] == "42s"
    assert other["NodeDown"]["for"] == f"{c.monitoring.scrape_interval_seconds}s"   # one interval (prometheus_rules)
    assert "> 123456" in other["PostgresReplicationLagBytes"]["expr"]
    assert f"{7 * 3600})" in other["DiskFillingUp"]["expr"]
    assert "> 777" in other["CdrQueueGrowing"]["expr"]
    mine = {a["alert"]: a for a in alerts(rendered)}
    assert mine["TargetDown"]["for"] == f"{c.monitoring.node_down_seconds}s"
    assert mine["Failover"]["for"] == "0s"   # the drill wants it within 30 s


def test_every_alert_has_a_firing_and_a_silent_promtool_case(rendered):
    fires, silent = set(), set()
    for f in sorted(PROMTOOL_TESTS.glob("*.yml")):
        doc = yaml.safe_load(f.read_text())
        assert doc["rule_files"] == ["hapbx.yml"], f
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {a["alert"] for a in alerts(rendered)}
    assert names - fires == set(), "alerts no promtool case fires"
    assert names - silent == set(), "alerts with no promtool case where they stay silent"
    assert (fires | silent) - names == set(), "promtool cases of alerts that do not exist"


@pytest.fixture
def rules_dir(rendered, tmp_path) -> Path:
    """The rendered rules as hapbx.yml beside the promtool tests, each expected alert given its rule's
    action and description (fixed text; the summaries, which are templates, are written out in the tests)."""
    (tmp_path / "hapbx.yml").write_text(rendered)
    action = {a["alert"]: a["annotations"]["action"] for a in alerts(rendered)}
    description = {a["alert"]: a["annotations"].get("description") for a in alerts(rendered)}
    for f in sorted(PROMTOOL_TESTS.glob("*.yml")):
        doc = yaml.safe_load(f.read_text())
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    exp.setdefault("exp_annotations", {}).setdefault("action", action[case["alertname"]])
                    if description.get(case["alertname"]):
                        exp["exp_annotations"].setdefault("description", description[case["alertname"]])
        (tmp_path / f.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_promtool_checks_and_unit_tests_pass(request, release, rules_dir):
    promtool = binary(request, release, "promtool")
    out = subprocess.run([promtool, "check", "rules", "hapbx.yml"], cwd=rules_dir, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and f"SUCCESS: {len(CONTRACT_ALERTS)} rules found" in out.stdout + out.stderr, \
        out.stdout + out.stderr
    tests = sorted(p.name for p in rules_dir.glob("*.yml") if p.name != "hapbx.yml")
    assert len(tests) >= 4
    out = subprocess.run([promtool, "test", "rules", *tests], cwd=rules_dir, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out.stdout + out.stderr).count("SUCCESS") == len(tests), out.stdout + out.stderr


def test_a_broken_expectation_fails_promtool(rules_dir):
    """The unit tests can fail: a wrong summary is caught."""
    f = rules_dir / "ha.yml"
    f.write_text(f.read_text().replace("pbx2 took over the lease", "pbx1 took over the lease", 1))
    out = subprocess.run(["promtool", "test", "rules", "ha.yml"], cwd=rules_dir, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "Failover" in out.stdout + out.stderr, out.stdout + out.stderr


# --- the exporters' real names ------------------------------------------------------------------

def pg(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120,
                         cwd="/")
    if check and out.returncode != 0:
        raise AssertionError(f"{argv}: {out.stdout}{out.stderr}")
    return out


@pytest.fixture(scope="module")
def pg_pair():
    """A PostgreSQL 15 primary with a physical slot and a streaming standby on it, on loopback (trust
    over the socket directory, which only root and postgres reach). The primary archives its WAL (to
    a directory: pg_stat_archiver as with pgBackRest) with a timeout, and has archived a segment."""
    if not os.path.exists(f"{PGBIN}/postgres"):
        pytest.fail("needs postgresql-15 (the host's, Debian 12)")
    base = Path(tempfile.mkdtemp(prefix="hapbx-rules-pg-", dir="/tmp"))
    shutil.chown(base, "postgres")
    ports = {"primary": free_port(), "standby": free_port()}
    opts = lambda port: f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base}"
    try:
        pg(f"{PGBIN}/initdb", "-D", f"{base}/primary", "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        (base / "archive").mkdir()
        shutil.chown(base / "archive", "postgres")
        archiving = f" -c archive_mode=on -c archive_timeout=60 -c archive_command='cp %p {base}/archive/%f'"
        pg(f"{PGBIN}/pg_ctl", "start", "-w", "-D", f"{base}/primary", "-l", f"{base}/primary.log",
           "-o", opts(ports["primary"]) + archiving)
        pg(f"{PGBIN}/psql", "-h", str(base), "-p", str(ports["primary"]), "-c",
           "SELECT pg_create_physical_replication_slot('pbx2')")
        pg(f"{PGBIN}/pg_basebackup", "-h", str(base), "-p", str(ports["primary"]), "-D", f"{base}/standby", "-R",
           "-S", "pbx2")
        pg(f"{PGBIN}/pg_ctl", "start", "-w", "-D", f"{base}/standby", "-l", f"{base}/standby.log",
           "-o", opts(ports["standby"]))
        deadline = time.monotonic() + 30
        while "streaming" not in pg(f"{PGBIN}/psql", "-h", str(base), "-p", str(ports["primary"]), "-Atc",
                                    "SELECT state FROM pg_stat_replication").stdout:
            assert time.monotonic() < deadline, (base / "standby.log").read_text()[-2000:]
            time.sleep(0.2)
        pg(f"{PGBIN}/psql", "-h", str(base), "-p", str(ports["primary"]), "-c",
           "CREATE TABLE written(x int); INSERT INTO written VALUES (1); SELECT pg_switch_wal()")
        while pg(f"{PGBIN}/psql", "-h", str(base), "-p", str(ports["primary"]), "-Atc",
                 "SELECT archived_count FROM pg_stat_archiver").stdout.strip() in ("", "0"):
            assert time.monotonic() < deadline, (base / "primary.log").read_text()[-2000:]
            time.sleep(0.2)
        yield base, ports
    finally:
        for node in ("standby", "primary"):
            if (base / node / "postmaster.pid").exists():
                pg(f"{PGBIN}/pg_ctl", "stop", "-w", "-m", "fast", "-D", f"{base}/{node}", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_pair():
    """A Redis master and a replica of it on loopback (plain TCP: only the exporter's names matter here)."""
    base = Path(tempfile.mkdtemp(prefix="hapbx-rules-redis-"))
    ports = {"master": free_port(), "replica": free_port()}
    procs = []
    try:
        for role, port in ports.items():
            (base / role).mkdir()
            extra = ["--replicaof", "127.0.0.1", str(ports["master"])] if role == "replica" else []
            procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                           str(base / role), "--save", "", "--appendonly", "no", *extra],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while "master_link_status:up" not in subprocess.run(
                ["redis-cli", "-p", str(ports["replica"]), "info", "replication"], capture_output=True,
                text=True).stdout:
            assert time.monotonic() < deadline, "the replica never linked"
            time.sleep(0.1)
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(base, ignore_errors=True)


class Exporters:
    """Exporters started for one test, each on a free loopback port; all stopped at the end."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []

    def start(self, argv: list[str], port: int, env: dict | None = None, path: str = "/metrics") -> str:
        log = open(self.tmp / f"exporter-{port}.log", "w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **(env or {})}))
        return f"http://127.0.0.1:{port}{path}"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def scrape(url: str, until: str, timeout: float = 30) -> dict[str, set[str]]:
    """metric name -> its label names, once `until` is among the names with value > 0... or time runs out."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            text = ""
        found = parse(text)
        if until in found and re.search(rf"^{until}(\{{.*\}})? [1-9]", text, re.M):
            return found
        time.sleep(0.3)
    raise AssertionError(f"{url}: no {until} > 0 in {timeout} s:\n{text[-3000:]}")


def parse(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if m:
            out.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
    return out


def assert_names(used: set[str], scraped: dict[str, set[str]], what: str) -> None:
    missing = sorted(used - set(scraped))
    assert not missing, f"{what} exports none of {missing}"
    for name in used:
        assert LABELS.get(name, set()) <= scraped[name], f"{what}: {name} lacks labels {LABELS[name]}"


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_the_exporters_export_every_name_the_rules_use(request, release, rendered, pg_pair, redis_pair, tmp_path):
    run = Exporters(tmp_path)
    try:
        # PostgreSQL: the primary's replication and slot series, the standby's lag; 0.11 gets the
        # lag query that 0.13 and later have built in (prometheus_rules.POSTGRES_LAG_QUERY_YAML)
        exporter = binary(request, release, "prometheus-postgres-exporter")
        base, ports = pg_pair
        queries = tmp_path / "queries.yaml"
        queries.write_text(prometheus_rules.POSTGRES_LAG_QUERY_YAML)
        extra = [f"--extend.query-path={queries}"] if release == "bookworm" else []
        urls = {}
        for node, pg_port in ports.items():
            port = free_port()
            urls[node] = run.start([exporter, f"--web.listen-address=127.0.0.1:{port}", *extra], port, env={
                "DATA_SOURCE_NAME": f"host={base} port={pg_port} user=postgres dbname=postgres sslmode=disable"})
        primary = scrape(urls["primary"], "pg_replication_slots_active")
        primary.update(scrape(urls["primary"], "pg_stat_archiver_archived_count"))
        standby = scrape(urls["standby"], "pg_up")
        used = used_metrics(rendered, "pg")
        archiver = {"pg_stat_archiver_archived_count", "pg_stat_archiver_failed_count",
                    "pg_stat_archiver_last_archive_age", "pg_settings_archive_timeout_seconds",
                    "pg_stat_database_tup_inserted", "pg_stat_database_tup_updated", "pg_stat_database_tup_deleted"}
        assert used == {"pg_up", "pg_stat_replication_pg_wal_lsn_diff", "pg_replication_lag_seconds",
                        "pg_replication_slots_pg_wal_lsn_diff"} | archiver, used   # a new name needs checking here
        age = re.search(r"^pg_stat_archiver_last_archive_age(\{.*\})? (\S+)$",
                        urllib.request.urlopen(urls["primary"], timeout=5).read().decode(), re.M)
        assert age and 0 <= float(age.group(2)) < 600, "the archiver's age: a number of seconds"
        assert_names(used - {"pg_replication_lag_seconds"}, primary, f"postgres exporter {release} (primary)")
        assert_names({"pg_up", "pg_replication_lag_seconds"}, standby, f"postgres exporter {release} (standby)")

        # Redis: master and replica
        exporter = binary(request, release, "prometheus-redis-exporter")
        for role, redis_port in redis_pair.items():
            port = free_port()
            urls[role] = run.start([exporter, f"--redis.addr=redis://127.0.0.1:{redis_port}",
                                    f"--web.listen-address=127.0.0.1:{port}"], port)
        master = scrape(urls["master"], "redis_connected_slaves")
        replica = scrape(urls["replica"], "redis_master_link_up")
        used = used_metrics(rendered, "redis")
        assert used == {"redis_up", "redis_master_link_up", "redis_connected_slaves", "redis_instance_info"}, used
        assert_names(used - {"redis_master_link_up"}, master, f"redis exporter {release} (master)")
        assert_names({"redis_up", "redis_master_link_up", "redis_instance_info"}, replica,
                     f"redis exporter {release} (replica)")

        # node exporter: the filesystem collector here; the systemd collector needs a running systemd
        # (this host has none): its metric's name is checked in the binary
        exporter = binary(request, release, "prometheus-node-exporter")
        port = free_port()
        url = run.start([exporter, f"--web.listen-address=127.0.0.1:{port}"], port)
        node = scrape(url, "node_filesystem_size_bytes")
        used = used_metrics(rendered, "node")
        assert used == {"node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly",
                        "node_systemd_unit_state"}, used
        assert_names(used - {"node_systemd_unit_state"}, node, f"node exporter {release}")
        program = Path(exporter).read_bytes()
        assert b"unit_state" in program and b"Systemd unit" in program

        # etcd: a single member with its metrics listener
        etcd = binary(request, release, "etcd")
        client, peer, metrics = free_port(), free_port(), free_port()
        url = run.start([etcd, "--name", "m1", "--data-dir", str(tmp_path / "etcd"),
                         "--listen-client-urls", f"http://127.0.0.1:{client}",
                         "--advertise-client-urls", f"http://127.0.0.1:{client}",
                         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                         "--initial-cluster", f"m1=http://127.0.0.1:{peer}",
                         "--listen-metrics-urls", f"http://127.0.0.1:{metrics}"], metrics)
        member = scrape(url, "etcd_server_has_leader")
        used = used_metrics(rendered, "etcd")
        assert used == {"etcd_server_has_leader"}, used
        assert_names(used, member, f"etcd {release}")
    finally:
        run.stop()
