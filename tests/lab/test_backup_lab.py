"""Backups on the lab (both releases: pgBackRest 2.45 and 2.55): a scheduled full backup is taken by
the streaming standby (the primary skips) and Prometheus has it from the exporter; the primary's WAL
reaches the repository; a point-in-time restore into a scratch instance gives exactly the rows
committed before the target; the recordings retention runs and reports.

Traffic: ssh to the lab's nodes and HTTP to their exporters, on the lab's own bridge.
"""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from lab import drills, restore_drill
from lab.context import LabContext

STATUS_DIR = "/var/lib/hapbx/backup"


def ctx_of(lab) -> LabContext:
    return LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)


def statuses(lab, name: str) -> dict[str, dict]:
    out = {}
    for n in lab.cluster.nodes:
        text = lab.sh(n.name, f"cat {STATUS_DIR}/{name} 2>/dev/null || true").strip()
        out[n.name] = json.loads(text) if text else {}
    return out


def test_a_scheduled_full_backup_is_taken_by_the_standby(lab):
    """As the timer does, on both nodes: the streaming standby backs up, the primary skips (whichever
    node each is now: earlier tests may have moved the primary)."""
    ctx = ctx_of(lab)
    primary = drills.wait_healthy(ctx, 120, "the backup tests")
    started = int(time.time())   # the status files hold whole seconds
    for n in lab.cluster.nodes:
        lab.sh(n.name, "systemctl start hapbx-backup@full.service", timeout=600)
    st = statuses(lab, "pgbackrest.json")
    assert all(s.get("finished", 0) >= started for s in st.values()), st
    took = [n for n, s in st.items() if s.get("outcome") == "success"]
    assert took == [ctx.peer(primary)], st
    assert st[primary]["outcome"] == "skipped" and "standby" in st[primary]["reason"], st[primary]
    info = json.loads(lab.sh(primary, f"runuser -u postgres -- pgbackrest --stanza={lab.cluster.backup.stanza} "
                                      "--output=json info"))
    assert any(b["type"] == "full" for b in info[0]["backup"]), info
    assert info[0]["cipher"] == "aes-256-cbc"
    # the exporter reports it (asked through Prometheus: the exporters answer the nodes only)
    node = lab.cluster.nodes[0]
    query = urllib.parse.quote("hapbx_backup_last_success_timestamp_seconds")
    url = f"http://{node.address}:{lab.cluster.monitoring.prometheus_port}/api/v1/query?query={query}"
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url, timeout=10) as r:
            result = json.loads(r.read())["data"]["result"]
        if [x for x in result if x["metric"].get("node") == took[0]]:
            break
        assert time.monotonic() < deadline, f"Prometheus has no backup success of {took[0]}: {result}"
        time.sleep(3)


def test_the_primarys_wal_reaches_the_repository(lab):
    primary = drills.wait_healthy(ctx_of(lab), 120, "the backup tests")
    out = lab.sh(primary, f"runuser -u postgres -- pgbackrest --stanza={lab.cluster.backup.stanza} check 2>&1")
    assert "ERROR" not in out, out


def test_a_point_in_time_restore_gives_exactly_the_rows_before_the_target(lab):
    ctx = ctx_of(lab)
    primary = drills.wait_healthy(ctx, 120, "the backup tests")
    standby = ctx.peer(primary)
    run = f"t{int(time.time())}"
    restore_drill.setup_rows(ctx, primary)
    restore_drill.write_batch(ctx, primary, run, 1, rows=40)
    time.sleep(1.0)
    target = ctx.psql(primary, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                               "'YYYY-MM-DD HH24:MI:SS.US') || '+00';").strip()
    time.sleep(1.0)
    restore_drill.write_batch(ctx, primary, run, 2, rows=40)
    restore_drill.archived_through(ctx, primary)
    pg = restore_drill.PgPaths(lab.cluster.postgres.version)
    try:
        restore_drill.scratch_restore(ctx, standby, pg, lab.cluster.backup.stanza, target)
        got = restore_drill.counts(ctx, standby, run, restore_drill.SCRATCH_PORT, restore_drill.SCRATCH)
    finally:
        restore_drill.scratch_drop(ctx, standby, pg)
    assert got == {1: 40}, f"restored to {target}: rows by batch {got}"


def test_the_recordings_retention_runs_and_reports(lab):
    for n in lab.cluster.nodes:
        lab.sh(n.name, "systemctl start hapbx-recordings-retention.service")
    st = statuses(lab, "recordings.json")
    for node, s in st.items():
        assert s.get("outcome") == "success", (node, s)
        assert s["dry_run"] is lab.cluster.backup.recordings_dry_run


def test_no_backup_secret_in_pgbackrests_logs_or_the_journal(lab):
    """The cipher pass (and every other generated credential) lives in pgbackrest.conf only: not in
    pgBackRest's own logs, not in the journal of the backup, archive and retention units."""
    from tests.lab import argv_scan
    secrets = argv_scan.generated_secrets(lab)
    assert secrets, "no generated secret found in the lab's state"
    for n in lab.cluster.nodes:
        text = lab.sh(n.name, "cat /var/log/pgbackrest/* 2>/dev/null; journalctl --no-pager -q -o cat "
                              "-u 'hapbx-backup@*' -u hapbx-archive-check -u pgbackrest -u hapbx-recordings-retention",
                      timeout=60)
        assert text.strip(), f"{n.name}: no pgBackRest log or journal to look at"
        leaked = [s[:4] + "..." for s in secrets if s in text]
        assert not leaked, f"{n.name}: a generated secret is in pgBackRest's logs or the journal: {leaked}"
