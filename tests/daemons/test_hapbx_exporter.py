"""hapbx-exporter (hapbx_node/metrics) as a real process on loopback, under Debian's python3 as on
a node, scraped over HTTP; every answer through `promtool check metrics` and then read back.

Its sources are real: the HA status written by the layout's own format_status, the CDR worker's
stats written by the real worker against the CDR stack (Redis with the deployment's ACL,
PostgreSQL with the migrations: tests/daemons/cdr_stack.py), and SIPp's statistics written by a
real SIPp UAS running the stand-in's scenario while a call is held. FreeSWITCH is not packaged:
its event socket is a stand-in speaking the inbound protocol, checked for the password it gets.
Plus the rendered unit through systemd-analyze verify, its least-privilege settings and the
worker's and SIPp's units giving it readable runtime directories.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from bench import devstack
from bench.devstack import NODE_PATH, SYSTEM_PYTHON, http
from bench.loadgen import fs_cdr
from components.config import load_stack_file
from components.render import RenderContext, masked_secrets
from components.render import cdr as cdr_render
from components.render import freeswitch, hapbx_exporter, sipp_uas
from hapbx_node import layout
from lab import sipp
from tests.daemons import cdr_stack
from tests.daemons.cdr_stack import clean  # noqa: F401  (fixture)
from tests.daemons.validators import run_validator
from tests.helpers import free_port
from tests.mockrun import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool"),
    pytest.mark.timeout(120),
]

CONTRACT = {  # the README (Monitoring and alerting), job hapbx
    "hapbx_ha_status_age_seconds", "hapbx_vip_owner", "hapbx_lease_holder", "hapbx_postgres_primary",
    "hapbx_ha_role_info", "hapbx_ha_role_since_timestamp_seconds", "hapbx_ha_renew_max_gap_seconds",
    "hapbx_ha_last_fence_timestamp_seconds", "hapbx_cdr_queue_depth", "hapbx_cdr_dead_letters", "hapbx_cdr_review",
    "hapbx_cdr_oldest_queued_age_seconds", "hapbx_cdr_last_ingest_timestamp_seconds", "hapbx_cdr_stats_age_seconds",
    "hapbx_media_up", "hapbx_media_active_calls"}
BACKUP = {  # backup.enabled (issue 23): the backup runner's and the recordings retention's status files
    "hapbx_backup_status_present", "hapbx_backup_status_error", "hapbx_backup_last_outcome",
    "hapbx_backup_last_attempt_timestamp_seconds", "hapbx_backup_last_duration_seconds",
    "hapbx_backup_last_size_bytes", "hapbx_backup_repository_size_bytes",
    "hapbx_backup_last_success_timestamp_seconds", "hapbx_backup_successes_total", "hapbx_backup_failures_total",
    "hapbx_recordings_status_present", "hapbx_recordings_status_error", "hapbx_recordings_retention_last_outcome",
    "hapbx_recordings_retention_last_run_timestamp_seconds",
    "hapbx_recordings_retention_last_success_timestamp_seconds", "hapbx_recordings_retention_dry_run",
    "hapbx_recordings_deleted", "hapbx_recordings_deleted_bytes", "hapbx_recordings_kept", "hapbx_recordings_copied",
    "hapbx_recordings_copied_bytes", "hapbx_recordings_retention_failures_total"}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ------------------------------------------------------------------ the exporter and its scrapes

class Exporter:
    def __init__(self, base: str, user: str | None = None, **env: str):
        self.port = free_port()
        self.log_path = os.path.join(base, f"exporter-{self.port}.log")
        self.env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1",
                    "HAPBX_EXPORTER_LISTEN": "127.0.0.1", "HAPBX_EXPORTER_PORT": str(self.port),
                    "HAPBX_VIP": "127.0.0.1", "HAPBX_HA_STATUS": os.path.join(base, "status"),
                    "HAPBX_CDR_STATS": os.path.join(base, "cdr-stats"), "HAPBX_MEDIA_ENGINE": "none", **env}
        with open(self.log_path, "ab") as log:
            as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
            self.proc = subprocess.Popen([*as_user, SYSTEM_PYTHON, "-m", "hapbx_node.metrics"], env=self.env, cwd=base,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        devstack._wait(self._listening, 10, "the exporter")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def output(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            return r.read().decode()

    def scrape(self) -> dict[str, list[tuple[dict, float]]]:
        """The answer checked by promtool, then as {name: [(labels, value)]}."""
        return parse(self.text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def parse(text: str) -> dict[str, list[tuple[dict, float]]]:
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), \
        (check.stdout, check.stderr, text)
    out: dict[str, list[tuple[dict, float]]] = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                      for k, v in LABEL.findall(m.group(3) or "")}
            out.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    assert set(out) <= CONTRACT | BACKUP, set(out) - CONTRACT - BACKUP
    # counts that only grow are counters (promtool wants _total on them and on nothing else)
    assert all(types[n] == ("counter" if n.endswith("_total") else "gauge") for n in out), types
    return out


def value(metrics, name: str) -> float:
    assert name in metrics, (name, sorted(metrics))
    (labels, v), = metrics[name]
    return v


def write_status(path: str, **values) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(layout.format_status(values))
    os.replace(tmp, path)


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="hapbx-exporter-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def exporters(base):
    started: list[Exporter] = []

    def start(user: str | None = None, **env) -> Exporter:
        started.append(Exporter(base, user, **env))
        return started[-1]
    yield start
    for e in started:
        e.stop()


# ------------------------------------------------------------------ HA core

def test_ha_status_as_the_leader_daemon_publishes_it(base, exporters):
    now_ms = int(time.time() * 1000)
    write_status(os.path.join(base, "status"), node="pbx1", role="leader", reason='lease held, "pbx2" streams\\ok',
                 hold=1, holder="pbx1", vrrp="MASTER", hung=0, writer=1, renew_max_gap_ms=1250,
                 last_fence_at_ms=now_ms - 60_000, role_since_ms=now_ms - 30_000)
    e = exporters()
    m = e.scrape()
    assert 0 <= value(m, "hapbx_ha_status_age_seconds") < 5
    assert value(m, "hapbx_vip_owner") == 1          # 127.0.0.1 is on lo
    assert value(m, "hapbx_lease_holder") == 1 and value(m, "hapbx_postgres_primary") == 1
    assert m["hapbx_ha_role_info"] == [({"role": "leader", "reason": 'lease held, "pbx2" streams\\ok'}, 1.0)]
    assert value(m, "hapbx_ha_role_since_timestamp_seconds") == (now_ms - 30_000) / 1000
    assert value(m, "hapbx_ha_renew_max_gap_seconds") == 1.25
    assert value(m, "hapbx_ha_last_fence_timestamp_seconds") == (now_ms - 60_000) / 1000
    # the worker does not run here, the engine is none: no CDR or media series at all
    assert not [n for n in m if n.startswith(("hapbx_cdr_", "hapbx_media_"))]

    # the durations of a reason change every cycle: one series per kind of reason, not per scrape
    write_status(os.path.join(base, "status"), node="pbx1", role="leader", hold=1, writer=1,
                 reason="holds the lease (fence in 2464ms); postgres is the writer")
    assert e.scrape()["hapbx_ha_role_info"] == [
        ({"role": "leader", "reason": "holds the lease (fence in Nms); postgres is the writer"}, 1.0)]

    write_status(os.path.join(base, "status"), node="pbx1", role="follower", reason="pbx2 leads", hold=0, writer=0,
                 renew_max_gap_ms=0, last_fence_at_ms=0, role_since_ms=now_ms)
    os.utime(os.path.join(base, "status"), (time.time() - 42, time.time() - 42))
    m = e.scrape()
    assert 42 <= value(m, "hapbx_ha_status_age_seconds") < 47
    assert value(m, "hapbx_lease_holder") == 0 and value(m, "hapbx_postgres_primary") == 0
    assert m["hapbx_ha_role_info"] == [({"role": "follower", "reason": "pbx2 leads"}, 1.0)]
    assert value(m, "hapbx_ha_last_fence_timestamp_seconds") == 0


def test_missing_or_garbled_sources_leave_out_what_they_would_give(base, exporters):
    e = exporters(HAPBX_VIP="192.0.2.77", HAPBX_MEDIA_ENGINE="sipp-uas",
                  HAPBX_SIPP_STATS=os.path.join(base, "none.csv"))
    m = e.scrape()
    assert value(m, "hapbx_ha_status_age_seconds") == float("inf")    # no HA core: HaCoreStale fires
    assert value(m, "hapbx_vip_owner") == 0
    assert value(m, "hapbx_media_up") == 0 and "hapbx_media_active_calls" not in m
    assert not [n for n in m if n.startswith(("hapbx_lease", "hapbx_postgres", "hapbx_ha_role", "hapbx_cdr_"))]
    with open(os.path.join(base, "status"), "wb") as fh:
        fh.write(b"\xff\xfe garbage\nhold=maybe\nrenew_max_gap_ms=NaN\nrole_since_ms=inf\nlast_fence_at_ms=-5\n")
    with open(os.path.join(base, "cdr-stats"), "w") as fh:
        fh.write("queue=a lot\ndead=3\n")
    with open(os.path.join(base, "none.csv"), "w") as fh:
        fh.write("StartTime;CurrentCall\n")             # a header and no dump yet
    m = e.scrape()
    assert 0 <= value(m, "hapbx_ha_status_age_seconds") < 5
    assert not [n for n in m if n.startswith(("hapbx_lease", "hapbx_postgres", "hapbx_ha_r", "hapbx_ha_last"))]
    assert 0 <= value(m, "hapbx_cdr_stats_age_seconds") < 5 and value(m, "hapbx_cdr_dead_letters") == 3
    assert "hapbx_cdr_queue_depth" not in m
    assert value(m, "hapbx_media_up") == 0
    # other paths: 404; the process still serves
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{e.port}/", timeout=5)
    assert err.value.code == 404
    assert e.proc.poll() is None and e.stop() == 0


def test_a_bad_setting_stops_it_with_ex_config(base):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "HAPBX_EXPORTER_LISTEN": "127.0.0.1",
           "HAPBX_MEDIA_ENGINE": "asterisk"}
    out = subprocess.run([SYSTEM_PYTHON, "-m", "hapbx_node.metrics"], env=env, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 78 and "HAPBX_MEDIA_ENGINE" in out.stderr


# ------------------------------------------------------------------ backups and recordings retention

#: an unprivileged user, as the unit's dynamic one: it reads the status files through their modes only
NOBODY = "65534"


def write_json(path: str, doc: dict, mode: int = 0o644) -> None:
    """As the writers must (hapbx_node/status_file.py): a temporary file, then a rename; mode
    0644 so that the exporter's dynamic user may read it."""
    import json
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def series(metrics, name: str) -> list[tuple[dict, float]]:
    return metrics.get(name, [])


@pytest.fixture
def status_dir(base) -> str:
    """The status directory as the writers keep it: 0755 under a traversable parent."""
    os.chmod(base, 0o755)
    d = os.path.join(base, "backup")
    os.mkdir(d, 0o755)
    return d


def test_backup_and_recordings_status_from_their_files(base, status_dir, exporters):
    e = exporters(NOBODY, HAPBX_BACKUP_STATUS_DIR=status_dir)
    # no file yet (no run on this node): the presence gauges alone
    m = e.scrape()
    assert value(m, "hapbx_backup_status_present") == 0 and value(m, "hapbx_recordings_status_present") == 0
    assert {n for n in m if n.startswith(("hapbx_backup_", "hapbx_recordings_"))} == {
        "hapbx_backup_status_present", "hapbx_recordings_status_present"}

    now = int(time.time())
    write_json(os.path.join(status_dir, "pgbackrest.json"), {
        "type": "full", "outcome": "success", "reason": "", "started": now - 95, "finished": now - 5,
        "duration_seconds": 90.5, "size_bytes": 7340032, "repo_size_bytes": 52428800, "label": "20261207-031400F",
        "last_success": now - 5, "last_success_type": "full", "successes": 3, "failures": 1})
    write_json(os.path.join(status_dir, "recordings.json"), {
        "finished": now - 60, "outcome": "success", "reason": "", "dry_run": False, "deleted": 12,
        "deleted_bytes": 4096000, "kept": 340, "copied": 25, "copied_bytes": 9000000, "last_success": now - 60,
        "failures": 0})
    m = e.scrape()
    assert value(m, "hapbx_backup_status_present") == 1 and value(m, "hapbx_backup_status_error") == 0
    assert m["hapbx_backup_last_outcome"] == [({"type": "full", "outcome": "success"}, 1.0)]
    assert value(m, "hapbx_backup_last_attempt_timestamp_seconds") == now - 5
    assert value(m, "hapbx_backup_last_success_timestamp_seconds") == now - 5
    assert value(m, "hapbx_backup_last_duration_seconds") == 90.5
    assert value(m, "hapbx_backup_last_size_bytes") == 7340032
    assert value(m, "hapbx_backup_repository_size_bytes") == 52428800
    assert value(m, "hapbx_backup_successes_total") == 3 and value(m, "hapbx_backup_failures_total") == 1
    assert value(m, "hapbx_recordings_status_present") == 1 and value(m, "hapbx_recordings_status_error") == 0
    assert m["hapbx_recordings_retention_last_outcome"] == [({"outcome": "success"}, 1.0)]
    assert value(m, "hapbx_recordings_retention_last_run_timestamp_seconds") == now - 60
    assert value(m, "hapbx_recordings_retention_last_success_timestamp_seconds") == now - 60
    assert value(m, "hapbx_recordings_retention_dry_run") == 0
    assert [value(m, f"hapbx_recordings_{k}") for k in ("deleted", "deleted_bytes", "kept", "copied",
                                                        "copied_bytes")] == [12, 4096000, 340, 25, 9000000]
    assert value(m, "hapbx_recordings_retention_failures_total") == 0
    assert {n for n in m if n.startswith(("hapbx_backup_", "hapbx_recordings_"))} == BACKUP

    # the next attempt fails: the last success stays, the failure counts, no backup size
    write_json(os.path.join(status_dir, "pgbackrest.json"), {
        "type": "diff", "outcome": "failed", "reason": "repository unreachable: connection refused",
        "started": now - 2, "finished": now - 1, "duration_seconds": 1.25, "size_bytes": 0,
        "repo_size_bytes": 52428800, "label": "", "last_success": now - 5, "last_success_type": "full",
        "successes": 3, "failures": 2})
    write_json(os.path.join(status_dir, "recordings.json"), {
        "finished": now, "outcome": "failed", "reason": "copy: no space", "dry_run": True, "deleted": 0,
        "deleted_bytes": 0, "kept": 352, "copied": 0, "copied_bytes": 0, "last_success": now - 60, "failures": 1})
    m = e.scrape()
    assert m["hapbx_backup_last_outcome"] == [({"type": "diff", "outcome": "failed"}, 1.0)]
    assert value(m, "hapbx_backup_last_success_timestamp_seconds") == now - 5
    assert value(m, "hapbx_backup_last_attempt_timestamp_seconds") == now - 1
    assert value(m, "hapbx_backup_failures_total") == 2 and "hapbx_backup_last_size_bytes" not in m
    assert m["hapbx_recordings_retention_last_outcome"] == [({"outcome": "failed"}, 1.0)]
    assert value(m, "hapbx_recordings_retention_dry_run") == 1
    assert value(m, "hapbx_recordings_retention_failures_total") == 1

    # the primary's turn is skipped; a node that never succeeded has no last success
    write_json(os.path.join(status_dir, "pgbackrest.json"), {
        "type": "diff", "outcome": "skipped", "reason": "pbx2 backs up (standby)", "started": now, "finished": now,
        "duration_seconds": 0.01, "size_bytes": 0, "repo_size_bytes": 0, "label": "", "last_success": None,
        "last_success_type": None, "successes": 0, "failures": 0})
    m = e.scrape()
    assert m["hapbx_backup_last_outcome"] == [({"type": "diff", "outcome": "skipped"}, 1.0)]
    assert "hapbx_backup_last_success_timestamp_seconds" not in m and "hapbx_backup_last_size_bytes" not in m
    assert value(m, "hapbx_backup_successes_total") == 0


def test_unreadable_or_garbled_status_is_an_error_never_a_crash(base, status_dir, exporters):
    e = exporters(NOBODY, HAPBX_BACKUP_STATUS_DIR=status_dir)
    backup, recordings = (os.path.join(status_dir, f) for f in ("pgbackrest.json", "recordings.json"))
    good = {"type": "full", "outcome": "success", "finished": 1, "last_success": 1}
    bad = [
        (lambda p: write_json(p, good, mode=0o600), "a mode its reader cannot read (0600 root)"),
        (lambda p: open(p, "w").write('{"type": "full", "outcome": "succ'), "cut short"),
        (lambda p: open(p, "wb").write(b"\xff\xfe\x00garbage"), "not UTF-8"),
        (lambda p: open(p, "w").write("[1, 2]"), "JSON, not an object"),
        (lambda p: write_json(p, {**good, "outcome": "maybe"}), "an unknown outcome"),
        (lambda p: write_json(p, {**good, "outcome": ["success"]}), "an outcome of the wrong kind"),
        (lambda p: open(p, "w").write("x" * 70000), "too big to be its"),
    ]
    for spoil, why in bad:
        for p in (backup, recordings):
            if os.path.exists(p):
                os.unlink(p)
            spoil(p)
        m = e.scrape()
        assert value(m, "hapbx_backup_status_present") == 1, why
        assert value(m, "hapbx_backup_status_error") == 1, why
        assert value(m, "hapbx_recordings_status_present") == 1 and value(m, "hapbx_recordings_status_error") == 1, \
            why
        assert {n for n in m if n.startswith(("hapbx_backup_", "hapbx_recordings_"))} == {
            "hapbx_backup_status_present", "hapbx_backup_status_error", "hapbx_recordings_status_present",
            "hapbx_recordings_status_error"}, why
    os.unlink(backup)
    write_json(backup, {**good, "type": 7})
    assert value(e.scrape(), "hapbx_backup_status_error") == 1      # a backup of no known type
    # a field of the wrong kind is left out, the rest stays; a directory in the file's place is unreadable
    os.unlink(backup)
    write_json(backup, {**good, "duration_seconds": "long", "repo_size_bytes": True, "successes": -1})
    os.unlink(recordings)
    os.mkdir(recordings)
    m = e.scrape()
    assert value(m, "hapbx_backup_status_error") == 0 and value(m, "hapbx_backup_last_success_timestamp_seconds") == 1
    assert not {"hapbx_backup_last_duration_seconds", "hapbx_backup_repository_size_bytes",
                "hapbx_backup_successes_total"} & set(m)
    assert value(m, "hapbx_recordings_status_error") == 1
    assert e.proc.poll() is None and "Traceback" not in e.output()


def test_the_backup_runners_own_writer_gives_files_it_can_read(base, status_dir, exporters):
    """hapbx_node.backup.status (the runner's writer: mkstemp, chmod 0644, rename) in the directory the
    exporter is told of by default, read by an unprivileged user."""
    from hapbx_node.backup import status
    from hapbx_node.metrics import settings
    assert settings.BACKUP_STATUS_DIR == status.STATUS_DIR
    e = exporters(NOBODY, HAPBX_BACKUP_STATUS_DIR=status_dir)
    path = os.path.join(status_dir, "pgbackrest.json")
    now = time.time()
    first = status.backup_record({}, kind="full", outcome="success", reason="", started=now - 30, finished=now - 10,
                                 size_bytes=1234, repo_size_bytes=5678, label="F")
    status.write_atomic(path, first)
    status.write_atomic(path, status.backup_record(first, kind="diff", outcome="failed", reason="boom",
                                                   started=now - 5, finished=now - 1))
    m = e.scrape()
    assert value(m, "hapbx_backup_status_error") == 0
    assert m["hapbx_backup_last_outcome"] == [({"type": "diff", "outcome": "failed"}, 1.0)]
    assert value(m, "hapbx_backup_last_success_timestamp_seconds") == int(now - 10)
    assert value(m, "hapbx_backup_repository_size_bytes") == 5678
    assert value(m, "hapbx_backup_successes_total") == 1 and value(m, "hapbx_backup_failures_total") == 1


def test_without_backups_no_backup_series(base, status_dir, exporters):
    write_json(os.path.join(status_dir, "pgbackrest.json"), {"type": "full", "outcome": "failed", "finished": 1})
    m = exporters().scrape()      # HAPBX_BACKUP_STATUS_DIR unset: backup.enabled false
    assert not [n for n in m if n.startswith(("hapbx_backup_", "hapbx_recordings_"))]


def test_the_fixture_of_names_lists_what_it_exports():
    """tests/fixtures/metric_names/hapbx.txt (the dashboards' and rules' name check) is this exporter's."""
    with open(os.path.join(ROOT, "tests/fixtures/metric_names/hapbx.txt")) as fh:
        listed = {x.strip() for x in fh if x.strip() and not x.startswith("#")}
    assert listed == CONTRACT | BACKUP


# ------------------------------------------------------------------ CDR pipeline (the real worker's stats)

@pytest.fixture(scope="module")
def stats_dir():
    d = tempfile.mkdtemp(prefix="hapbx-cdr-stats-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(stats_dir):
    yield from cdr_stack.started(worker_env={"HAPBX_CDR_STATS": os.path.join(stats_dir, "stats"),
                                             "HAPBX_CDR_STATS_EVERY": "0.2", "HAPBX_CDR_BACKOFF_MAX": "0.3"})


def post(st, record) -> int:
    import json
    return http("POST", st.receiver_url, json.dumps(record).encode(), {"Content-Type": "application/json"})[0]


def wait_metric(e: Exporter, name: str, want, timeout: float = 20):
    last = {}

    def ok():
        nonlocal last
        last = e.scrape()
        return name in last and want(value(last, name))
    devstack._wait(ok, timeout, f"{name} as expected (last scrape: {last.get(name)})", interval=0.2)
    return last


def test_cdr_pipeline_from_the_real_workers_stats(clean, stats_dir, base, exporters):
    st = clean
    stats = os.path.join(stats_dir, "stats")
    if os.path.exists(stats):
        os.unlink(stats)
    e = exporters(HAPBX_CDR_STATS=stats)
    assert not [n for n in e.scrape() if n.startswith("hapbx_cdr_")]     # no worker here (yet)
    st.start_worker()
    started = time.time()
    # a stored call, a conflicting record for review and a poison item for the dead letters
    u = str(uuid.uuid4())
    first = time.time() - 700
    assert post(st, fs_cdr(u, first, duration=1, answered=False)) == 200
    st.wait_stored(1)
    assert post(st, fs_cdr(u, first, duration=600)) == 200
    st.redis.cli("LPUSH", "cdr:queue", "not an envelope")
    m = wait_metric(e, "hapbx_cdr_review", lambda v: v == 1)
    m = wait_metric(e, "hapbx_cdr_dead_letters", lambda v: v == 1)
    assert value(m, "hapbx_cdr_queue_depth") == 0 and value(m, "hapbx_cdr_oldest_queued_age_seconds") == 0
    assert started - 1 <= value(m, "hapbx_cdr_last_ingest_timestamp_seconds") <= time.time() + 1
    assert 0 <= value(m, "hapbx_cdr_stats_age_seconds") < 3

    # PostgreSQL gone: the records wait in Redis, their age grows, the stats still come (Redis)
    st.pg.stop()
    try:
        accepted = time.time()
        for _ in range(3):
            assert post(st, fs_cdr(str(uuid.uuid4()), time.time() - 60, duration=30)) == 200
        m = wait_metric(e, "hapbx_cdr_queue_depth", lambda v: v == 3)
        time.sleep(1.5)
        m = e.scrape()
        assert value(m, "hapbx_cdr_queue_depth") == 3
        assert 1.2 <= value(m, "hapbx_cdr_oldest_queued_age_seconds") <= time.time() - accepted + 1
        assert value(m, "hapbx_cdr_review") == 1          # the last count stands
        assert value(m, "hapbx_cdr_stats_age_seconds") < 3
    finally:
        st.pg.start()
    m = wait_metric(e, "hapbx_cdr_queue_depth", lambda v: v == 0, timeout=30)
    assert value(m, "hapbx_cdr_last_ingest_timestamp_seconds") >= accepted
    assert st.stored() == 4

    # the worker hung: its stats age; stopped (systemd removes its runtime directory): no series
    st.worker.signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        assert value(e.scrape(), "hapbx_cdr_stats_age_seconds") >= 2
    finally:
        st.worker.signal(signal.SIGCONT)
    st.worker.stop()
    st.worker = None
    os.unlink(stats)
    assert not [n for n in e.scrape() if n.startswith("hapbx_cdr_")]


def test_the_worker_may_count_the_conflicts_but_not_read_them(stack):
    assert stack.pg.psql("SET ROLE cdr_writer; SELECT cdr.review_count()") == \
        stack.pg.psql("SELECT count(*) FROM cdr.conflicts")
    with pytest.raises(RuntimeError, match="permission denied"):
        stack.pg.psql("SET ROLE cdr_writer; SELECT count(*) FROM cdr.conflicts")


# ------------------------------------------------------------------ media

def test_sipp_stand_in_calls_from_its_statistics_file(base, exporters):
    stats = os.path.join(base, "stat.csv")
    port = sipp_free_port()
    uas = sipp.Uas("127.0.0.1", port, extra=("-trace_stat", "-stf", stats, "-fd", "1"))
    try:
        e = exporters(HAPBX_MEDIA_ENGINE="sipp-uas", HAPBX_SIPP_STATS=stats, HAPBX_SIPP_STATS_MAX_AGE="3")
        m = wait_metric(e, "hapbx_media_up", lambda v: v == 1)
        assert value(m, "hapbx_media_active_calls") == 0
        result = {}
        caller = threading.Thread(target=lambda: result.update(r=sipp.run(
            CALLER, f"127.0.0.1:{port}", "127.0.0.1", service="8000", keys={"from_hdr": "<sip:1001@127.0.0.1>"},
            extra=("-d", "4000"), timeout=30)))
        caller.start()
        try:
            wait_metric(e, "hapbx_media_active_calls", lambda v: v == 1, timeout=10)
        finally:
            caller.join(40)
        assert result["r"].ok == 1, result["r"]
        wait_metric(e, "hapbx_media_active_calls", lambda v: v == 0, timeout=10)
    finally:
        uas.stop()
    # SIPp gone: its last dump ages out
    m = wait_metric(e, "hapbx_media_up", lambda v: v == 0, timeout=10)
    assert "hapbx_media_active_calls" not in m


def sipp_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: a phone calling the stand-in directly (From from -key from_hdr)
CALLER = sipp.scenario("direct-call.xml")


class FakeEsl:
    """FreeSWITCH's event socket (inbound, mod_event_socket) for what the exporter sends: auth, then
    ``api show calls count``; records the commands."""

    def __init__(self, password: str, calls: int):
        self.password, self.calls, self.commands = password, calls, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"Content-Type: auth/request\n\n")
                buf = b""
                while True:
                    while b"\n\n" not in buf:
                        data = conn.recv(4096)
                        if not data:
                            break
                        buf += data
                    if b"\n\n" not in buf:
                        break
                    cmd, buf = buf.split(b"\n\n", 1)
                    cmd = cmd.decode()
                    self.commands.append(cmd)
                    if cmd.startswith("auth "):
                        ok = cmd == f"auth {self.password}"
                        conn.sendall(b"Content-Type: command/reply\nReply-Text: "
                                     + (b"+OK accepted" if ok else b"-ERR invalid") + b"\n\n")
                        if not ok:
                            break
                    elif cmd == "api show calls count":
                        body = f"\n{self.calls} total.\n\n".encode()
                        conn.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
                    elif cmd == "exit":
                        conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
                        break

    def close(self):
        self.sock.close()


def test_freeswitch_calls_over_the_event_socket_password_never_in_argv(base, exporters):
    secret = "esl-Secret-" + uuid.uuid4().hex
    conf = os.path.join(base, "fs_cli.conf")
    with open(conf, "w") as fh:
        fh.write(freeswitch.fs_cli_conf(RenderContext(*lab_node(), {"freeswitch_esl": secret})))
    esl = FakeEsl(secret, calls=7)
    try:
        e = exporters(HAPBX_MEDIA_ENGINE="freeswitch", HAPBX_ESL_PORT=str(esl.port), HAPBX_ESL_CONF="%d/fs_cli.conf",
                      CREDENTIALS_DIRECTORY=base)
        m = e.scrape()
        assert value(m, "hapbx_media_up") == 1 and value(m, "hapbx_media_active_calls") == 7
        assert esl.commands[:2] == [f"auth {secret}", "api show calls count"]
        with open(f"/proc/{e.proc.pid}/cmdline", "rb") as fh:
            assert secret.encode() not in fh.read()
        assert secret not in e.output()
        esl.password = "changed"                 # refused: down, no count
        m = e.scrape()
        assert value(m, "hapbx_media_up") == 0 and "hapbx_media_active_calls" not in m
    finally:
        esl.close()
    m = e.scrape()                               # nothing listening
    assert value(m, "hapbx_media_up") == 0


# ------------------------------------------------------------------ the rendered unit

def lab_node(stack_name: str = "lab", node: int = 0):
    c, _ = load_stack_file(f"{ROOT}/Pulumi.{stack_name}.yaml", assume_secrets=True)
    return c, c.nodes[node]


@pytest.mark.parametrize("stack_name", ["lab", "prod"])
def test_rendered_files_pass_their_checkers_and_run_least_privileged(stack_name):
    c, node = lab_node(stack_name)
    files = {f.path: f for f in hapbx_exporter.files(RenderContext(c, node, masked_secrets()))}
    for f in files.values():
        assert not f.secrets and f.mode == "0644" and f.service == hapbx_exporter.UNIT
        if f.validate:
            out = run_validator(f)
            assert out.returncode == 0, (f.path, out.stdout, out.stderr)
    unit = files[hapbx_exporter.UNIT_PATH].content
    for line in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert f"\n{line}\n" in unit
    env = files[hapbx_exporter.ENV_FILE].content
    assert f"HAPBX_EXPORTER_LISTEN={node.address}\n" in env
    assert f"HAPBX_EXPORTER_PORT={c.monitoring.hapbx_exporter_port}\n" in env
    assert f"HAPBX_VIP={c.vip.address}\n" in env and f"HAPBX_MEDIA_ENGINE={c.media.engine}\n" in env
    assert f"\nHAPBX_BACKUP_STATUS_DIR={'/var/lib/hapbx/backup' if c.backup.enabled else ''}\n" in env
    code = {p for p in files if p.endswith(".py")}
    assert f"{hapbx_exporter.LIB_DIR}/hapbx_node/metrics/__main__.py" in code
    assert f"{hapbx_exporter.LIB_DIR}/hapbx_node/layout.py" in code
    if c.media.engine == "freeswitch":
        assert f"\nLoadCredential=fs_cli.conf:{freeswitch.FS_CLI_CONF}\n" in unit
    else:
        assert "LoadCredential" not in unit
    if c.witness:
        assert hapbx_exporter.files(RenderContext(c, c.witness, masked_secrets())) == []


def test_the_sources_units_leave_it_readable_runtime_directories():
    c, node = lab_node("lab")
    ctx = RenderContext(c, node, masked_secrets())
    worker = {f.path: f for f in cdr_render.files(ctx)}[f"/etc/systemd/system/{cdr_render.WORKER_UNIT}"]
    assert f"\nRuntimeDirectory={os.path.basename(layout.CDR_WORKER_RUN_DIR)}\nRuntimeDirectoryMode=0755\n" \
        in worker.content
    uas = {f.path: f for f in sipp_uas.files(ctx)}[sipp_uas.UNIT_PATH]
    assert f"\nRuntimeDirectory={os.path.basename(layout.MEDIA_UAS_RUN_DIR)}\nRuntimeDirectoryMode=0755\n" \
        in uas.content
    assert f" -trace_stat -stf {layout.MEDIA_UAS_STATS} -fd {layout.MEDIA_UAS_STATS_EVERY}\n" in uas.content
    for f in (worker, uas):
        out = run_validator(f)
        assert out.returncode == 0, (f.path, out.stdout, out.stderr)


def test_the_leader_daemon_publishes_when_its_role_began(base, exporters):
    """Daemon.publish (hapbx_node/ha/daemon.py) writes role_since_ms; a role change in cycle() moves it."""
    from dataclasses import replace
    from types import SimpleNamespace
    from hapbx_node.ha import daemon as ha_daemon, decide as d
    dm = ha_daemon.Daemon.__new__(ha_daemon.Daemon)
    dm.cfg = SimpleNamespace(node="pbx1", witness=True)
    dm.run_dir = dm.lib_dir = base
    dm.state, dm.reason, dm.role_since_ms = replace(d.State(), role=d.FOLLOWER), "pbx2 leads", 1_700_000_000_123
    dm.publish()
    e = exporters()
    m = e.scrape()
    assert value(m, "hapbx_ha_role_since_timestamp_seconds") == 1_700_000_000.123
    assert m["hapbx_ha_role_info"] == [({"role": d.FOLLOWER, "reason": "pbx2 leads"}, 1.0)]
    # a cycle whose decision changes the role: since now
    dm.log = lambda *a, **k: None
    dm.observe = lambda: None
    dm.act = lambda actions: None
    decided = SimpleNamespace(role=d.LEADER, reason="lease taken", state=replace(dm.state, role=d.LEADER), actions=())
    real = ha_daemon.d.decide
    ha_daemon.d.decide = lambda state, o, cfg: decided
    try:
        before = time.time()
        dm.cycle()
    finally:
        ha_daemon.d.decide = real
    m = e.scrape()
    assert before - 0.01 <= value(m, "hapbx_ha_role_since_timestamp_seconds") <= time.time() + 0.01
    assert m["hapbx_ha_role_info"] == [({"role": d.LEADER, "reason": "lease taken"}, 1.0)]
