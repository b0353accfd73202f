"""`hapbx lab drill restore`: backups and restores on the running lab -> reports/restore.md.

1. rows      a table of timestamped rows (drill.restore_rows) on the primary, written in batches
2. backups   a full backup, more rows, a differential one: each started on both nodes (the runner
             backs up on the streaming standby and skips on the primary); each outcome read back
             from the nodes' status files, duration and size from there
3. PITR      a time T between two batches; pgBackRest restores to T into a scratch instance on the
             standby (its own port, socket and directory; no archiving): exactly the rows committed
             before T must be there
4. RPO       rows written every 0.2 s for a while, then "the cluster is lost": the rows the archive
             could give back at that moment (their WAL position below the end of the last archived
             segment) give the data-loss window
5. cluster   both nodes' PostgreSQL data directories destroyed, then `./hapbx restore --to latest`
             (ops/restore.py) onto the first node; the peer is rebuilt as its standby; the drill's
             rows, the cluster's health and a softphone registering and calling are checked

Traffic: ssh to the lab's nodes, SIP to the lab's VIP from the lab bridge's host address.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import socket
import time

from ops import restore
from hapbx_node.layout import PgPaths
from lab import deploy, drills, machinery, report, sipp
from lab.context import LabContext

REPORT = "reports/restore.md"
SCRATCH = "/var/lib/postgresql/hapbx-drill-restore"
SCRATCH_PORT = 5499
WAL_SEGMENT = 16 << 20
STATUS = "/var/lib/hapbx/backup/pgbackrest.json"
ROWS = "drill.restore_rows"


class RestoreDrillError(RuntimeError):
    pass


# ---------------------------------------------------------------- rows

def setup_rows(ctx: LabContext, primary: str) -> None:
    ctx.psql(primary, "CREATE SCHEMA IF NOT EXISTS drill; CREATE TABLE IF NOT EXISTS drill.restore_rows ("
                      "id bigserial PRIMARY KEY, run text NOT NULL, batch int NOT NULL, "
                      "written_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                      "lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn());")


def write_batch(ctx: LabContext, primary: str, run: str, batch: int, rows: int = 100) -> None:
    ctx.psql(primary, f"INSERT INTO {ROWS} (run, batch) SELECT '{run}', {batch} FROM generate_series(1, {rows});")


def counts(ctx: LabContext, node: str, run: str, port: int | None = None, host: str | None = None) -> dict[int, int]:
    where = f"-p {port} -h {host} " if port else ""
    out = ctx.sh(node, f"cd / && runuser -u postgres -- psql -X -A -t -q {where}-d pbx",
                 input=f"SELECT batch, count(*) FROM {ROWS} WHERE run = '{run}' GROUP BY batch ORDER BY batch;\n",
                 timeout=60)
    return {int(b): int(n) for b, n in (line.split("|") for line in out.split() if "|" in line)}


# ---------------------------------------------------------------- backups

def nodes(ctx: LabContext) -> list[str]:
    return [n.name for n in ctx.cluster.nodes]


def backup(ctx: LabContext, kind: str) -> dict:
    """Starts hapbx-backup@<kind> on both nodes; returns the node that took it and its status."""
    started = time.monotonic()
    for node in nodes(ctx):
        ctx.sh(node, f"systemctl start hapbx-backup@{kind}.service", timeout=1800, check=False)
    wall = time.monotonic() - started
    statuses = {n: json.loads(ctx.sh(n, f"cat {STATUS}", timeout=20) or "{}") for n in nodes(ctx)}
    took = [n for n, s in statuses.items() if s.get("outcome") == "success" and s.get("type") == kind
            and s.get("finished", 0) >= time.time() - wall - 60]
    if len(took) != 1:
        raise RestoreDrillError(f"{kind} backup: expected one node to succeed, got {statuses}")
    s = statuses[took[0]]
    return {"kind": kind, "node": took[0], "seconds": round(s["duration_seconds"], 1),
            "size_bytes": s["size_bytes"], "repo_size_bytes": s.get("repo_size_bytes", 0),
            "others": {n: st.get("outcome") for n, st in statuses.items() if n != took[0]}}


def archived_through(ctx: LabContext, primary: str) -> str:
    """Switches WAL and waits until the switched segment is in the repository; returns its name."""
    seg = ctx.psql(primary, "SELECT pg_walfile_name(pg_switch_wal());").strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        last = ctx.psql(primary, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver;").strip()
        if last and last[8:] >= seg[8:]:
            return seg
        time.sleep(0.5)
    raise RestoreDrillError(f"WAL {seg} not archived within 120 s (pg_stat_archiver on {primary})")


# ---------------------------------------------------------------- the scratch instance

def scratch_restore(ctx: LabContext, node: str, pg: PgPaths, stanza: str, target: str) -> float:
    """pgBackRest restores to target ('latest' or a time) into SCRATCH on node and starts it there."""
    kind = "--type=default" if target == restore.LATEST else f"--type=time --target='{target}' --target-action=promote"
    started = time.monotonic()
    ctx.sh(node, f"""set -e
rm -rf {SCRATCH} && install -d -o postgres -g postgres -m 0700 {SCRATCH}
runuser -u postgres -- pgbackrest --stanza={stanza} --pg1-path={SCRATCH} {kind} restore
printf "listen_addresses = ''\\nport = {SCRATCH_PORT}\\nunix_socket_directories = '{SCRATCH}'\\n" > {SCRATCH}/postgresql.conf
printf "local all postgres peer\\n" > {SCRATCH}/pg_hba.conf
: > {SCRATCH}/pg_ident.conf
chown postgres:postgres {SCRATCH}/postgresql.conf {SCRATCH}/pg_hba.conf {SCRATCH}/pg_ident.conf
runuser -u postgres -- {pg.bin_dir}/pg_ctl -D {SCRATCH} -l {SCRATCH}/log -w -t 900 \\
  -o "-c archive_mode=off -c synchronous_standby_names='' -c hot_standby=on" start
for i in $(seq 900); do
  r=$(runuser -u postgres -- psql -XAtq -h {SCRATCH} -p {SCRATCH_PORT} -d pbx -c 'select pg_is_in_recovery()' || true)
  [ "$r" = f ] && exit 0; sleep 1
done
exit 1""", timeout=1200)
    return time.monotonic() - started


def scratch_drop(ctx: LabContext, node: str, pg: PgPaths) -> None:
    ctx.sh(node, f"[ ! -f {SCRATCH}/postmaster.pid ] || runuser -u postgres -- {pg.bin_dir}/pg_ctl -D {SCRATCH} "
                 f"-m immediate stop; rm -rf {SCRATCH}", timeout=120, check=False)


# ---------------------------------------------------------------- RPO

def segment_end_lsn(segment: str) -> int:
    log, seg = int(segment[8:16], 16), int(segment[16:24], 16)
    return (log << 32) + (seg + 1) * WAL_SEGMENT


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def rpo(ctx: LabContext, primary: str, run: str, seconds: int) -> dict:
    """Rows every 0.2 s for `seconds`, then the loss: what the archive held at that moment."""
    n = seconds * 5
    ctx.psql(primary, f"DO $$ BEGIN FOR i IN 1..{n} LOOP INSERT INTO {ROWS} (run, batch) VALUES ('{run}', 9); "
                      "COMMIT; PERFORM pg_sleep(0.2); END LOOP; END $$;", timeout=seconds + 120)
    last = ctx.psql(primary, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver;").strip()
    rows = [line.split("|") for line in ctx.psql(
        primary, f"SELECT extract(epoch from written_at), lsn FROM {ROWS} WHERE run = '{run}' AND batch = 9 "
                 "ORDER BY id;").split()]
    end = segment_end_lsn(last)
    safe = [float(t) for t, lsn in rows if lsn_int(lsn) < end]
    lost_at = float(rows[-1][0])
    return {"written": len(rows), "recoverable": len(safe), "last_archived_wal": last,
            "window_seconds": round(lost_at - (max(safe) if safe else float(rows[0][0])), 1)}


# ---------------------------------------------------------------- the softphone

def softphone_call(ctx: LabContext, spec) -> dict:
    """Softphone 9002 registers from the host and answers; 9001 calls it through the VIP."""
    c = ctx.cluster
    me, vip = spec.host_address, c.vip.address
    target = f"{vip}:{c.kamailio.sip_port}"
    words = deploy.softphone_passwords(spec)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((me, 0))
        port = s.getsockname()[1]
    r = sipp.run(sipp.scenario("register.xml"), target, me, port=port, keys={"domain": vip, "user": "9002"},
                 auth=("9002", words["9002"]))
    if not r.ok:
        raise RestoreDrillError(f"softphone 9002 did not register on the restored cluster: {r.errors[-800:]}")
    phone = sipp.Uas(me, port)
    try:
        call = sipp.run(sipp.scenario("call.xml"), target, me, service="9002", keys={"domain": vip, "user": "9001"},
                        auth=("9001", words["9001"]), extra=("-d", "500"))
        answered = phone.invites()
    finally:
        phone.stop()
    if not call.ok or answered != 1:
        raise RestoreDrillError(f"the call 9001 -> 9002 failed on the restored cluster: {call.errors[-800:]}")
    return {"registered": True, "call": "answered", "setup_seconds": round(call.seconds, 2)}


# ---------------------------------------------------------------- the drill

def one_run(ctx: LabContext, spec, pg: PgPaths, onto: str, rpo_seconds: int, log) -> dict:
    """One run of the drill (the module's steps 1-5); the cluster is restored onto `onto`."""
    cluster, stanza = ctx.cluster, ctx.cluster.backup.stanza
    primary = drills.wait_healthy(ctx, 300, "the restore drill")
    standby = ctx.peer(primary)
    run_id = f"r{int(time.time())}-{secrets.token_hex(2)}"
    result: dict = {"run": run_id, "primary": primary, "standby": standby, "backups": []}
    log(f"restore drill {run_id}: primary {primary}, standby {standby}")
    setup_rows(ctx, primary)
    write_batch(ctx, primary, run_id, 1)
    result["backups"].append(backup(ctx, "full"))
    write_batch(ctx, primary, run_id, 2)
    result["backups"].append(backup(ctx, "diff"))
    log(f"backups: {result['backups']}")
    time.sleep(1.0)
    target = ctx.psql(primary, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                               "'YYYY-MM-DD HH24:MI:SS.US') || '+00';").strip()
    time.sleep(1.0)
    write_batch(ctx, primary, run_id, 3)
    archived_through(ctx, primary)
    try:
        took = scratch_restore(ctx, standby, pg, stanza, target)
        got = counts(ctx, standby, run_id, SCRATCH_PORT, SCRATCH)
    finally:
        scratch_drop(ctx, standby, pg)
    result["pitr"] = {"target": target, "seconds": round(took, 1), "rows": got, "expected": {1: 100, 2: 100}}
    if got != {1: 100, 2: 100}:
        raise RestoreDrillError(f"point-in-time restore to {target}: rows by batch {got}, expected batches 1 and 2 "
                                "with 100 rows each and none of batch 3")
    log(f"PITR to {target}: {got} in {took:.1f} s")
    result["rpo"] = rpo(ctx, primary, run_id, rpo_seconds)
    log(f"RPO: {result['rpo']}")

    # the whole cluster from the repository: both nodes' databases lost, once every row is archived
    archived_through(ctx, primary)
    written = counts(ctx, primary, run_id)
    for node in (standby, primary):
        ctx.sh(node, f"systemctl stop keepalived.service hapbx-leader.service hapbx-cdr-worker.service "
                     f"{pg.service}; rm -rf {pg.data_dir}", timeout=180)
    started = time.monotonic()
    outcome = restore.main(cluster, restore.LATEST, onto, machinery.script_runner(spec), log=log)
    restored_primary = drills.wait_healthy(ctx, 300, "the restored cluster")
    cluster_seconds = time.monotonic() - started
    restored = counts(ctx, restored_primary, run_id)
    result["cluster"] = {"node": outcome["node"], "seconds": round(cluster_seconds, 1),
                         "steps": [{k: s[k] for k in ("node", "step", "seconds")} for s in outcome["steps"]],
                         "rows_written": written, "rows_restored": restored,
                         "softphone": softphone_call(ctx, spec)}
    if restored != written:
        raise RestoreDrillError(f"cluster restore: rows by batch {restored}, written {written}")
    log(f"cluster restored onto {onto} in {cluster_seconds:.1f} s: {restored}")
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return result


def run(cluster, spec, out: str = REPORT, runs: int = 3, rpo_seconds: int = 75, log=print) -> int:
    """`runs` runs, the cluster restored onto each node in turn; a failed run is reported, not hidden."""
    ctx = LabContext.from_cluster(spec, cluster, log=log)
    pg = PgPaths(cluster.postgres.version)
    results = []
    for i in range(runs):
        onto = cluster.nodes[i % len(cluster.nodes)].name
        try:
            results.append(one_run(ctx, spec, pg, onto, rpo_seconds, log))
        except (RestoreDrillError, restore.RestoreError, drills.DrillError) as err:
            log(f"run {i + 1} failed: {err}")
            results.append({"failed": str(err)[:1500], "finished": dt.datetime.now(dt.timezone.utc)
                            .isoformat(timespec="seconds")})
    write_report(out, cluster, results)
    return 0 if all("failed" not in r for r in results) else 1


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else round((v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, 1)


def write_report(out: str, cluster, results: list[dict]) -> None:
    h = report.host()
    ok = [r for r in results if "failed" not in r]
    backups = [b for r in ok for b in r["backups"]]
    attempted = 2 * len(results)
    lines = [
        "# Backup and restore drill (`./hapbx lab drill restore`)",
        "",
        f"{len(results)} runs, the last finished {results[-1]['finished']}; lab stack on Debian "
        f"{cluster.release.debian} (PostgreSQL {cluster.postgres.version}, pgBackRest "
        f"{cluster.release.versions['pgBackRest']}), repository {cluster.backup.repository.type} (a directory of "
        "the lab host mounted on both nodes), encrypted (aes-256-cbc).",
        f"Machine: {h.get('cpu', '?')}, {h.get('cores')} cores, {h.get('memory', '?')}, kernel {h.get('kernel')}, "
        f"Debian {h.get('debian', '?')}; load {report.load_avg()} at the end.",
        "Command: `flock /run/lock/hapbx-measure.lock ./hapbx lab"
        f"{'' if cluster.release.codename == 'bookworm' else ' --stack lab-trixie'} drill restore --runs "
        f"{len(results)}{'' if out == REPORT else ' --out ' + out}`",
        "",
        "Each run: rows in batches, a full and a differential backup (started on both nodes: the runner "
        "takes it on the streaming standby, the primary records 'skipped'), a point-in-time restore into a "
        "scratch instance on the standby, the archive's data-loss window, then both nodes' PostgreSQL data "
        "directories destroyed (the database lost on both; the OS, etcd and the rest of the stack kept) and "
        "the whole cluster restored with `./hapbx restore --to latest`, onto each node in turn.",
        "",
        f"**Backups: {len(backups)} of {attempted} succeeded. Runs: {len(ok)} of {len(results)} passed.**",
        "",
        "| run | full (node, s, size) | diff (s, size) | PITR rows before the target | PITR s | RPO window | "
        "cluster restored onto | until healthy | rows lost | softphone |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        if "failed" in r:
            lines.append(f"| {i} | failed: {r['failed'][:300]} | | | | | | | | |")
            continue
        full, diff = r["backups"]
        c, p, o = r["cluster"], r["pitr"], r["rpo"]
        lost = sum(c["rows_written"].values()) - sum(c["rows_restored"].values())
        lines.append(f"| {i} | {full['node']}, {full['seconds']} s, {_size(full['size_bytes'])} | {diff['seconds']} s, "
                     f"{_size(diff['size_bytes'])} | {p['rows']} (expected {p['expected']}) | {p['seconds']} | "
                     f"{o['window_seconds']} s ({o['recoverable']} of {o['written']} rows) | {c['node']} | "
                     f"{c['seconds']} s | {lost} | registered, call {c['softphone']['call']} |")
    if ok:
        lines += [
            "",
            f"Medians over the passing runs: full backup {_median([r['backups'][0]['seconds'] for r in ok])} s, "
            f"differential {_median([r['backups'][1]['seconds'] for r in ok])} s, point-in-time restore "
            f"{_median([r['pitr']['seconds'] for r in ok])} s, whole cluster until healthy "
            f"{_median([r['cluster']['seconds'] for r in ok])} s, data-loss window "
            f"{_median([r['rpo']['window_seconds'] for r in ok])} s.",
            "",
            "**RPO**: one row every 0.2 s for 75 s, then the loss: the rows whose WAL was in the archive at "
            "that moment (WAL position below the end of the last archived segment) are what a restore gives "
            "back. `archive_timeout` is 60 s, so the window is at most about a minute plus the asynchronous "
            "push. The whole-cluster restores lost no row because the drill switched and archived the WAL "
            "before destroying the databases; without that, they would lose the window above.",
            "",
            "**RTO** (the whole cluster, from `./hapbx restore` to VIP + primary streaming to the rebuilt "
            "standby), the steps of the last passing run:",
            "",
            "| step | node | seconds |",
            "|---|---|---|",
            *(f"| {s['step']} | {s['node']} | {s['seconds']} |" for s in ok[-1]["cluster"]["steps"]),
            "",
            "The lab's database is small (tens of MiB): these times are pgBackRest's and the HA core's fixed "
            "costs; a production database adds its size over the repository's throughput (restore with "
            f"`processMax` {cluster.backup.process_max} parallel processes).",
        ]
    lines.append("")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    with open(re.sub(r"\.md$", ".json", out), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=str)
