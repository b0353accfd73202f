"""The restore (`hapbx restore --stack S --to TIME|latest [--node N]`): the cluster's PostgreSQL back to a point
in time from the pgBackRest repository, then the peer rebuilt as its standby and the lease back.

The steps, in order (``plan``; each names its node and stops the run with that node, the step and
the command's stderr when it fails):

 1. preflight      both nodes answer; the repository holds a backup that ended before the target
 2. ha off         keepalived and the leader daemon stopped on both nodes (nothing promotes, fences
                   or moves the VIP while the data is replaced); the writer-only units and
                   PostgreSQL stopped; the lease left to expire
 3. restore        on the chosen node: its data directory moved aside (kept, listed for
                   `hapbx-ha discard-moved-aside`), pgBackRest restores into an empty one, the
                   node recorded in etcd as the last primary; PostgreSQL replays the archive to the
                   target and promotes itself
 4. ha on          the chosen node's leader daemon and keepalived: it takes the lease and the VIP
 5. peer           the peer rejoins as a standby of the restored primary (`hapbx-ha rejoin
                   --basebackup`: its old data moved aside), then its HA starts
 6. backup         a full backup from the new standby starts (the restored timeline's base)

Nothing is deleted: both nodes' previous data directories stay until the operator discards them.
The steps run through a Runner: ``ssh_runner`` (the stack's ssh settings: its key file or the
agent, its pinned host keys) for real hosts, the lab's own ssh for lab stacks (lab/restore_drill.py).
The command line is cli/restore.py.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shlex
import time
from typing import Callable, Sequence

from components.config import ClusterConfig
from hapbx_node.layout import HA_BIN, HA_CLI, HA_LIB_DIR, LEADER_UNIT, PgPaths

from .ssh import Runner

LATEST = "latest"
#: how long PostgreSQL may replay the archive before the restore counts as failed
RECOVERY_TIMEOUT_S = 1800
WRITER_UNITS = ("hapbx-cdr-worker.service", "hapbx-archive-check.service")


class RestoreError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Step:
    node: str
    title: str
    script: str
    timeout: float = 120


#: run(node, script, timeout) -> (exit status, stdout, stderr)


def parse_target(text: str) -> str:
    """``latest`` or a time with its zone, as pgBackRest's --target wants it (UTC)."""
    if text == LATEST:
        return LATEST
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--to {text!r} is not a time (allowed: 'latest' or ISO 8601 with its zone, "
                           "e.g. 2026-12-07T09:30:00+01:00)") from None
    if when.tzinfo is None:
        raise RestoreError(f"--to {text!r} has no time zone (add one, e.g. +00:00): a restore to an "
                           "ambiguous time is refused")
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _pg(cluster: ClusterConfig) -> PgPaths:
    return PgPaths(cluster.postgres.version)


def _pgbackrest(cluster: ClusterConfig, args: str) -> str:
    return f"runuser -u postgres -- pgbackrest --stanza={shlex.quote(cluster.backup.stanza)} {args}"


def preflight_script(cluster: ClusterConfig, target: str) -> str:
    """Prints the repository's backups (JSON) and fails when none ended before the target."""
    info = _pgbackrest(cluster, "--output=json info")
    check = ("import json, sys, datetime as dt\n"
             "target = sys.argv[1]\n"
             "stanzas = json.load(sys.stdin)\n"
             "backups = [b for s in stanzas for b in s.get('backup', [])]\n"
             "if not backups:\n"
             "    sys.exit('the repository holds no backup of this stanza')\n"
             "if target != 'latest':\n"
             "    t = dt.datetime.strptime(target, '%Y-%m-%d %H:%M:%S.%f+00').replace(tzinfo=dt.timezone.utc)\n"
             "    done = [b for b in backups if b['timestamp']['stop'] <= t.timestamp()]\n"
             "    if not done:\n"
             "        first = dt.datetime.fromtimestamp(min(b['timestamp']['stop'] for b in backups), dt.timezone.utc)\n"
             "        sys.exit(f'no backup ended before {target} (the oldest ended {first:%Y-%m-%d %H:%M:%S}+00)')\n"
             "print(json.dumps([{'label': b['label'], 'type': b['type'], 'stop': b['timestamp']['stop']} for b in backups]))\n")
    return f"{info} | python3 -c {shlex.quote(check)} {shlex.quote(target)}"


def ha_off_script(cluster: ClusterConfig) -> str:
    units = " ".join(("keepalived.service", LEADER_UNIT, *WRITER_UNITS, _pg(cluster).service))
    return f"systemctl stop {units}\n"


def lease_free_script() -> str:
    """Waits (60 s at most) until no node holds the leader key: the stopped daemons' lease expired."""
    return (f"for i in $(seq 120); do s=$({HA_CLI} status); "
            "grep -qx 'etcd_leader=none' <<<\"$s\" && exit 0; sleep 0.5; done\n"
            "echo \"the leader lease did not expire: $(grep etcd_leader <<<\"$s\")\" >&2; exit 1\n")


def restore_script(cluster: ClusterConfig, target: str, stamp: str) -> str:
    pg = _pg(cluster)
    aside = f"{pg.data_dir}.before-restore-{stamp}"
    kind = "--type=default" if target == LATEST else f"--type=time --target={shlex.quote(target)} --target-action=promote"
    return f"""
[ ! -e {aside} ] || {{ echo "{aside} exists already" >&2; exit 1; }}
if [ -d {pg.data_dir} ]; then   # a lost disk has none
    mv {pg.data_dir} {aside}
    mkdir -p {HA_LIB_DIR} && echo "{aside} $(date +%s)" >> {HA_LIB_DIR}/moved-aside
fi
install -d -o postgres -g postgres -m 0700 {pg.data_dir}
{_pgbackrest(cluster, f"--process-max={cluster.backup.process_max} {kind} restore")}
# the last primary is this node: pg-guard lets it start as one, promote keeps it
. {HA_BIN}/lib.sh
ectl 2000 put "$ETCD_PRIMARY_KEY" "$HAPBX_NODE" >/dev/null
rm -f "$FENCED_MARK"
systemctl start {pg.service}
for i in $(seq {RECOVERY_TIMEOUT_S}); do
    r=$(runuser -u postgres -- psql -XAtq -p {cluster.postgres.port} -c 'select pg_is_in_recovery()' 2>/dev/null || true)
    [ "$r" = f ] && exit 0
    sleep 1
done
echo "PostgreSQL still in recovery after {RECOVERY_TIMEOUT_S} s" >&2
exit 1
"""


def ha_on_script(expect_leader: str) -> str:
    return (f"systemctl start {LEADER_UNIT} keepalived.service\n"
            f"for i in $(seq 120); do s=$({HA_CLI} status); "
            f"grep -qx 'etcd_leader={expect_leader}' <<<\"$s\" && exit 0; sleep 0.5; done\n"
            f"echo \"{expect_leader} did not take the lease: $(grep etcd_leader <<<\"$s\")\" >&2; exit 1\n")


def rejoin_script() -> str:
    return (f"{HA_CLI} rejoin --basebackup\n"
            f"systemctl start {LEADER_UNIT} keepalived.service\n"
            f"for i in $(seq 240); do {HA_CLI} status | grep -qx 'postgres_streaming=yes' && exit 0; sleep 0.5; done\n"
            "echo 'the rebuilt standby does not stream' >&2; exit 1\n")


def plan(cluster: ClusterConfig, node: str, target: str, stamp: str) -> list[Step]:
    """The restore's steps (pure: what `execute` runs, and what the unit tests read)."""
    if not cluster.backup.enabled:
        raise RestoreError("backup.enabled is false in this stack: there is no repository to restore from")
    names = [n.name for n in cluster.nodes]
    if node not in names:
        raise RestoreError(f"--node {node!r} is not a PBX node of this stack (allowed: {', '.join(names)})")
    peer = next(n for n in names if n != node)
    return [
        *(Step(n, "reachable", "true", 30) for n in names),
        Step(node, "repository holds a backup before the target", preflight_script(cluster, target), 120),
        *(Step(n, "HA, writer units and PostgreSQL stopped", ha_off_script(cluster), 180) for n in (peer, node)),
        Step(node, "leader lease expired", lease_free_script(), 90),
        Step(node, f"PostgreSQL restored to {target}", restore_script(cluster, target, stamp), RECOVERY_TIMEOUT_S + 600),
        Step(node, "HA started: the restored primary takes the lease", ha_on_script(node), 90),
        Step(peer, "rebuilt as the standby, HA started", rejoin_script(), 1800),
        Step(peer, "full backup of the restored timeline started",
             "systemctl start --no-block hapbx-backup@full.service", 30),
    ]


def execute(steps: Sequence[Step], run: Runner, log: Callable[[str], None] = print) -> list[dict]:
    """Runs the steps in order; the first failure raises RestoreError naming node, step and stderr.
    Returns each step's node, title, seconds and stdout tail."""
    done = []
    for s in steps:
        started = time.monotonic()
        log(f"[{s.node}] {s.title} ...")
        rc, out, err = run(s.node, s.script, s.timeout)
        took = time.monotonic() - started
        if rc != 0:
            raise RestoreError(f"{s.node}: step '{s.title}' failed (exit {rc}) after {took:.1f} s: "
                               f"{(err or out).strip()[-1500:]}")
        log(f"[{s.node}] {s.title}: ok ({took:.1f} s)")
        done.append({"node": s.node, "step": s.title, "seconds": round(took, 1), "stdout": out.strip()[-400:]})
    return done


def stamp_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def main(cluster: ClusterConfig, to: str, node: str | None, run: Runner, log=print) -> dict:
    target = parse_target(to)
    chosen = node or cluster.primary.name
    steps = plan(cluster, chosen, target, stamp_now())
    started = time.monotonic()
    done = execute(steps, run, log)
    return {"node": chosen, "target": target, "seconds": round(time.monotonic() - started, 1), "steps": done,
            "backups": json.loads(done[len(cluster.nodes)]["stdout"] or "[]")}
