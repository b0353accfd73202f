"""The rendered failover scripts, run for real: two PostgreSQL and two Redis servers on
loopback ports, a real three-member etcd deciding the lease, the leader daemons, and
keepalived's notify (called as keepalived calls it). The steps build on each other, in
order; timings are printed (pytest -s) and asserted against the lease TTL.

Covered: rejoin by pg_basebackup (empty node), promotion refused without the lease and
while the peer is writable, election of the running primary, repeated and concurrent
runs, lease loss -> writes stop before the TTL, split VRRP (both MASTER) -> one primary
and the VIP yielded, failover with real divergence -> pg_rewind, a stale standby that never leads (the up-to-date
node does, its VIP yielded), rejoin falling back to
pg_basebackup when pg_rewind cannot work, a crashed leader daemon fencing at once, a hung
keepalived handing over, the start guard, a crashed primary restarted in place.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from components.render.etcd import KEY_PREFIX

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from test_failover_rig import LEASE_TTL, NODES, PG_BIN, REDIS_PASSWORD, Rig, mono_ms, ordered_rig  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: needs root")

TTL_MS = LEASE_TTL * 1000
TIMINGS: dict[str, float] = {}


def timing(name: str, ms: float):
    TIMINGS[name] = round(ms)
    print(f"\n  [timing] {name}: {ms:.0f} ms", flush=True)


def print_timings():
    if TIMINGS:
        print("\n  [timings] " + ", ".join(f"{k}={v}ms" for k, v in TIMINGS.items()), flush=True)


#: the steps of one story on one rig: run in written order (tests/conftest.py, test_failover_rig.ordered_rig)
SCENARIO = True
rig, in_order = ordered_rig(lambda: Rig(sync_relax_after=3, yield_after=3.0, resign_grace=5.0, heartbeat=True),
                            teardown=print_timings)


def one_primary(rig) -> str:
    prim = rig.primaries()
    assert len(prim) == 1, f"primaries: {prim}\n{rig.logs()}"
    return prim[0]


def rejoined(rig, node: str, what: str) -> str:
    """keepalived on `node` restarts as BACKUP: `node` rejoins by itself, a streaming standby again within
    60 s (timed as `what`); returns its HA log."""
    rig.notify(node, "BACKUP")
    t1 = time.time()
    rig.wait(lambda: rig.pg_role(node) == "standby" and
             rig.psql(node, "select status from pg_stat_wal_receiver", check=False) == "streaming"
             and rig.idle(node), 60,
             f"{node} rejoined")
    timing(what, (time.time() - t1) * 1000)
    with open(f"{rig.nodes[node].dir}/ha.log") as fh:
        return fh.read()


def test_01_bootstrap_and_rejoin_by_basebackup(rig):
    rig.start_etcd()
    rig.wait_etcd()
    assert rig.bootstrap_etcd_auth() == "changed"
    assert rig.bootstrap_etcd_auth() == "unchanged"          # idempotent
    # authentication is really on: a read without credentials is refused, the node user's works
    anonymous = subprocess.run(rig.inside("witness", ["etcdctl", f"--endpoints={rig.endpoints()}", "--command-timeout=3s",
                                                      "get", KEY_PREFIX + "leader"]),
                               capture_output=True, text=True,
                               env={**os.environ, "ETCDCTL_API": "3", **rig.etcd_tls_env("witness")}, timeout=15)
    assert anonymous.returncode != 0 and ("user name is empty" in anonymous.stderr
                                          or "permission denied" in anonymous.stderr), (anonymous.stdout, anonymous.stderr)
    rig.etcdctl("get", KEY_PREFIX + "leader")
    rig.start_redis()
    rig.init_primary("pbx1")
    # pbx2 has no data directory: pg_rewind cannot work, rejoin builds it with pg_basebackup
    t = time.time()
    out = rig.script("pbx2", "rejoin")
    assert out.returncode == 0, out.stderr
    timing("rejoin by pg_basebackup (empty node)", (time.time() - t) * 1000)
    assert "pg_basebackup: ok" in out.stderr and "pg_rewind path failed" in out.stderr
    assert rig.pg_role("pbx2") == "standby"
    assert rig.psql("pbx2", "select status from pg_stat_wal_receiver") == "streaming"
    assert rig.psql("pbx1", "select slot_name from pg_replication_slots where active") == "pbx2"


def test_02_promotion_refused_without_lease_or_while_peer_writable(rig):
    out = rig.script("pbx2", "promote")
    assert out.returncode == 5, out.stderr                    # no lease
    # pretend pbx2 held the lease: the peer is still a writable primary -> refused
    run = rig.nodes["pbx2"].run
    with open(f"{run}/authority", "w") as fh:
        fh.write(f"1 {mono_ms() + 60000} fake\n")
    try:
        out = rig.script("pbx2", "promote")
        assert out.returncode == 3, out.stderr
        assert "writable primary: refusing" in out.stderr
    finally:
        os.unlink(f"{run}/authority")
    assert rig.pg_role("pbx1") == "primary" and rig.pg_role("pbx2") == "standby"


def test_03_daemons_elect_the_running_primary(rig):
    for name in NODES:
        rig.start_heartbeat(name)
    # first deploy: the daemons start before keepalived (no VRRP state yet)
    t = time.time()
    for name in NODES:
        rig.start_daemon(name)
    rig.wait(lambda: rig.status("pbx1").get("writer") == "1", 15, "pbx1 leader and writer")
    timing("daemon start -> lease + writer (incumbent primary)", (time.time() - t) * 1000)
    time.sleep(5.5)                                               # past RESIGN_GRACE: keepalived not started is no reason to resign
    assert rig.status("pbx1").get("hold") == "1" and rig.pg_role("pbx1") == "primary"
    rig.notify("pbx1", "MASTER")
    rig.notify("pbx2", "BACKUP")
    assert rig.status("pbx1")["hold"] == "1" and rig.status("pbx2").get("hold") == "0"
    assert rig.etcdctl("get", "/hapbx/rig/leader", "--print-value-only") == "pbx1"
    assert rig.etcdctl("get", "/hapbx/rig/primary", "--print-value-only") == "pbx1"
    # followers: redis follows the master, the leader switches synchronous replication on
    rig.wait(lambda: rig.redis_role("pbx2") == "slave", 10, "pbx2 redis replica")
    assert rig.redis_role("pbx1") == "master"
    rig.wait(lambda: rig.psql("pbx1", "show synchronous_standby_names") == '"pbx2"', 10, "sync on")
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "on", 10, "sync marked on")
    rig.psql("pbx1", "insert into t (node) values ('pbx1')")
    assert rig.psql("pbx1", "select sync_state from pg_stat_replication") == "sync"
    with open(f"{rig.nodes['pbx1'].run}/leader") as fh:
        assert fh.read().strip() == "1"                       # keepalived's track_file: +weight


def test_04_repeated_and_concurrent_runs_are_harmless(rig):
    pid1, pid2 = rig.pg_pid("pbx1"), rig.pg_pid("pbx2")
    results: dict[str, list[int]] = {"promote": [], "rejoin": []}

    def run(node, script):
        results[script].append(rig.script(node, script).returncode)

    threads = [threading.Thread(target=run, args=("pbx1", "promote")) for _ in range(3)]
    threads += [threading.Thread(target=run, args=("pbx2", "rejoin")) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert results["promote"] == [0, 0, 0] and results["rejoin"] == [0, 0, 0], results
    assert rig.script("pbx1", "demote").returncode == 5       # the lease holder refuses
    for name in NODES:
        rig.notify(name, "MASTER" if name == "pbx1" else "BACKUP")   # a repeated notify
    time.sleep(0.6)
    assert (rig.pg_pid("pbx1"), rig.pg_pid("pbx2")) == (pid1, pid2)   # nothing restarted
    assert one_primary(rig) == "pbx1" and rig.pg_role("pbx2") == "standby"


def test_05_lease_loss_stops_writes_before_the_ttl(rig):
    """pbx1 keeps running but loses the etcd quorum: it must stop taking writes on its own
    clock, before the lease can expire in etcd and pbx2 could take it."""
    acks: list[float] = []
    stop = threading.Event()

    def writer():
        import psycopg
        n = rig.nodes["pbx1"]
        while not stop.is_set():
            try:
                with psycopg.connect(host=n.sock, port=n.pg_port, user="postgres", dbname="postgres",
                                     connect_timeout=1, autocommit=True) as conn:
                    while not stop.is_set():
                        conn.execute("insert into t (node) values ('w')")
                        acks.append(time.time())
                        time.sleep(0.01)
            except Exception:
                time.sleep(0.02)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    rig.wait(lambda: len(acks) > 20, 10, "writes flowing")
    t_cut = time.time()
    for m in ("pbx2", "witness"):
        os.kill(rig.etcd[m].pid, signal.SIGSTOP)
    try:
        t_down = rig.wait(lambda: rig.pg_pid("pbx1") is None, 5, "pbx1 postgres fenced")
        stop.set()
        th.join(5)
        last_ack = max(acks)
        # a minority etcd leader may still accept a renewal shortly after the cut; the fence
        # is on the clock of the last renewal that succeeded
        rig.wait(lambda: rig.status("pbx1").get("hold") == "0", 5, "pbx1 let the lease go")
        st = rig.status("pbx1")
        last_renew = int(st["last_renew_at_ms"]) / 1000
        fenced = int(st["last_fence_at_ms"]) / 1000
        timing("quorum lost -> postgres stopped (fence)", (t_down - t_cut) * 1000)
        timing("last successful renewal -> writes fenced", (fenced - last_renew) * 1000)
        timing("last acknowledged write, after the last renewal", (last_ack - last_renew) * 1000)
        assert last_renew - t_cut < 1.5, "renewals went on long after the quorum was lost"
        # the invariant: nothing acknowledged once the lease may have expired in etcd (the fence
        # is planned 0.5 s earlier; the margin absorbs scheduling delays on a loaded machine)
        assert fenced < last_renew + TTL_MS / 1000, "fenced after the lease could expire"
        assert last_ack < last_renew + TTL_MS / 1000, "a write was acknowledged after the lease could expire"
        assert t_down < last_renew + TTL_MS / 1000
        assert rig.pg_role("pbx2") == "standby"                 # no quorum: nobody took over
        # Redis on pbx1 acknowledges no write either: it is paused, a SET blocks
        probe = subprocess.run(["timeout", "0.5", *rig.redis_cli("pbx1"), "SET", "fence-probe", "1"],
                               env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD}, capture_output=True)
        assert probe.returncode == 124, probe
    finally:
        for m in ("pbx2", "witness"):
            os.kill(rig.etcd[m].pid, signal.SIGCONT)
    # the quorum is back: pbx1 is still the VIP owner, takes the lease again and restarts as primary
    t = time.time()
    rig.wait(lambda: rig.status("pbx1").get("writer") == "1" and rig.pg_role("pbx1") == "primary", 20,
             "pbx1 writer again")
    timing("quorum back -> pbx1 writer again", (time.time() - t) * 1000)
    assert one_primary(rig) == "pbx1"


def test_06_split_vrrp_keeps_one_primary_and_yields_the_vip(rig):
    """Both keepalived MASTER (the nodes cannot hear each other, both reach the witness):
    the lease keeps pbx2 from promoting and pbx2 gives its VIP up."""
    rig.notify("pbx2", "MASTER")
    t = time.time()
    deadline = t + 3.0
    while time.time() < deadline:
        assert rig.pg_role("pbx2") == "standby"
        time.sleep(0.1)
    rig.wait(lambda: rig.status("pbx2").get("yield") == "1", 5, "pbx2 yields")
    timing("split VRRP -> non-leader yields the VIP", (time.time() - t) * 1000)
    assert one_primary(rig) == "pbx1"
    rig.notify("pbx2", "FAULT")                                   # what keepalived does on the yield
    # here only VRRP was split: pbx1's PostgreSQL answers, so pbx2 releases the yield and its
    # keepalived can be BACKUP again (a real cut keeps it: test_failover_partition.py)
    rig.wait(lambda: rig.status("pbx2").get("yield") == "0", 10, "pbx2 releases the yield")
    assert one_primary(rig) == "pbx1"
    rig.notify("pbx2", "BACKUP")


def test_07_failover_with_divergence_then_pg_rewind(rig):
    # pbx2 stops receiving WAL; pbx1 commits locally (not acknowledged by the standby)
    rig.psql("pbx2", "alter system set primary_conninfo = ''")
    rig.psql("pbx2", "select pg_reload_conf()")
    rig.wait(lambda: rig.psql("pbx1", "select count(*) from pg_stat_replication") == "0", 10, "standby detached")
    rig.psql("pbx1", "set synchronous_commit = local; insert into t (node) select 'lost' from generate_series(1, 10)")
    before = int(rig.psql("pbx2", "select count(*) from t"))
    # keepalived stops on pbx1 (ExecStopPost -> STOP) and the VIP moves to pbx2
    t0 = time.time()
    rig.notify("pbx1", "STOP")
    rig.notify("pbx2", "MASTER")
    rig.wait(lambda: rig.pg_pid("pbx1") is None, 10, "pbx1 resigned")
    t_resigned = time.time()
    rig.wait(lambda: rig.pg_role("pbx2") == "primary", 15, "pbx2 promoted")
    t_promoted = time.time()
    rig.wait(lambda: rig.redis_role("pbx2") == "master", 5, "pbx2 redis master")
    timing("keepalived stop on leader -> its postgres stopped", (t_resigned - t0) * 1000)
    timing("keepalived stop on leader -> peer postgres writable", (t_promoted - t0) * 1000)
    assert rig.primaries() == ["pbx2"]
    # the VIP-owner-only services (the CDR worker) moved with the writes
    rig.wait(lambda: rig.owner_services("pbx2") == "start" and rig.owner_services("pbx1") == "stop", 5,
             "CDR worker moved")
    rig.psql("pbx2", "insert into t (node) values ('pbx2')")
    # pbx1 restarts keepalived (BACKUP) and rejoins by itself: pg_rewind discards the 10 rows
    log = rejoined(rig, "pbx1", "ex-primary down -> streaming standby again (auto rejoin, pg_rewind)")
    assert "postgres: pg_rewind: ok" in log and "pg_basebackup" not in log.split("pg_rewind: ok")[-1]
    assert rig.psql("pbx1", "select count(*) from t where node = 'lost'") == "0"
    assert int(rig.psql("pbx1", "select count(*) from t")) == before + 1
    rig.wait(lambda: rig.redis_role("pbx1") == "slave", 10, "pbx1 redis replica")
    assert rig.etcdctl("get", "/hapbx/rig/primary", "--print-value-only") == "pbx2"
    assert one_primary(rig) == "pbx2"


def test_08_a_stale_standby_never_leads_the_up_to_date_node_does(rig):
    """A switchover at the wrong moment: pbx1 (standby) stopped streaming long enough for pbx2 (the
    leader) to mark it stale and commit without it; then keepalived stops on pbx2 and pbx1 becomes
    VRRP MASTER. pbx1 must not take the free lease (its promote is refused: with the lease held
    there, nobody would ever write); it gives the VIP up instead, pbx2 leads again once its
    keepalived is back, with every commit, and pbx1 streams, is synchronous again and ends its yield."""
    n1 = rig.nodes["pbx1"]
    rig.sh("pbx1", f"touch {n1.dir}/lib/maintenance")       # no automatic rejoin while it is cut off
    conninfo = rig.psql("pbx1", "show primary_conninfo")
    rig.psql("pbx1", "alter system set primary_conninfo = ''")
    rig.psql("pbx1", "select pg_reload_conf()")
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "relaxed:pbx1", 20,
             "pbx2 marks pbx1 stale")
    rig.psql("pbx2", "insert into t (node) values ('pbx1-away')")
    rig.sh("pbx1", f"rm {n1.dir}/lib/maintenance")
    rig.wait(lambda: rig.status("pbx1").get("stale") == "1", 5, "pbx1 reads that it is stale")
    t0 = time.time()
    rig.notify("pbx2", "STOP")
    rig.notify("pbx1", "MASTER")
    rig.wait(lambda: rig.status("pbx1").get("yield") == "1", 5, "pbx1 yields the VIP")
    timing("stale VRRP master -> VIP yielded", (time.time() - t0) * 1000)
    rig.wait(lambda: rig.pg_pid("pbx2") is None, 10, "pbx2 resigned")
    until = time.time() + 3
    while time.time() < until:
        assert rig.pg_role("pbx1") == "standby", rig.logs()
        assert rig.etcdctl("get", "/hapbx/rig/leader", "--print-value-only") != "pbx1", rig.logs()
        time.sleep(0.2)
    assert "missed commits" in rig.status("pbx1").get("reason", ""), rig.status("pbx1")
    rig.notify("pbx1", "FAULT")                                   # what keepalived does on the yield
    t1 = time.time()
    rig.notify("pbx2", "BACKUP")                                  # keepalived back on pbx2 ...
    rig.notify("pbx2", "MASTER")                                  # ... and MASTER: its peer is FAULT
    rig.wait(lambda: rig.pg_role("pbx2") == "primary" and rig.status("pbx2").get("writer") == "1", 20,
             "pbx2 leads again")
    timing("up-to-date node's keepalived back -> it writes again", (time.time() - t1) * 1000)
    assert rig.psql("pbx2", "select count(*) from t where node = 'pbx1-away'") == "1"
    rig.psql("pbx1", f"alter system set primary_conninfo = '{conninfo}'")
    rig.psql("pbx1", "select pg_reload_conf()")
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "on", 30,
             "pbx1 synchronous again")
    rig.wait(lambda: rig.status("pbx1").get("stale") == "0" and rig.status("pbx1").get("yield") == "0", 10,
             "pbx1 no longer stale, its yield over")
    rig.notify("pbx1", "BACKUP")
    rig.wait(lambda: rig.psql("pbx1", "select count(*) from t where node = 'pbx1-away'") == "1", 10,
             "the commit made while pbx1 was away reached it")
    assert one_primary(rig) == "pbx2"


def test_09_rejoin_falls_back_to_basebackup_when_rewind_cannot_work(rig):
    """pbx2 (the primary now) runs without wal_log_hints: after the next failover pg_rewind
    refuses it, and rejoin rebuilds it with pg_basebackup."""
    n2 = rig.nodes["pbx2"]
    rig.sh("pbx2", f"touch {n2.dir}/lib/maintenance")
    rig.sh("pbx2", f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {n2.data} -m fast -w stop")
    rig.sh("pbx2", f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D {n2.data} -l {n2.dir}/pg.log "
                   f"-o '-p {n2.pg_port} -k {n2.sock} -c wal_log_hints=off' -w start")
    rig.sh("pbx2", f"rm {n2.dir}/lib/maintenance")
    rig.wait(lambda: rig.psql("pbx2", "select count(*) from pg_stat_replication where state = 'streaming'") == "1",
             20, "pbx1 streams again")
    # the operator's rule for a planned switchover: pbx1 was marked stale when pbx2 was promoted
    # without it (step 07) and may be promoted once pbx2's leader has seen it synchronous again
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "on", 20, "pbx1 synchronous again")
    t0 = time.time()
    rig.notify("pbx2", "STOP")
    rig.notify("pbx1", "MASTER")
    rig.wait(lambda: rig.pg_role("pbx1") == "primary", 15, "pbx1 promoted")
    timing("failover back to pbx1 (keepalived stop -> writable)", (time.time() - t0) * 1000)
    log = rejoined(rig, "pbx2", "rejoin with pg_rewind refused -> pg_basebackup fallback")
    assert "falling back to pg_basebackup" in log and "pg_basebackup: ok" in log
    assert one_primary(rig) == "pbx1"
    # nothing lost: the diverged data directory was moved aside (timestamped), not deleted; the
    # divergent WAL range is in the log; status lists the copy until the operator discards it
    assert "divergent WAL on this node: from " in log
    moved = open(f"{n2.dir}/lib/moved-aside").read().split()[0]
    assert moved.startswith(f"{n2.data}.moved-") and os.path.isfile(f"{moved}/PG_VERSION")
    rig.wait(lambda: rig.status("pbx2").get("moved_aside") == moved, 5, "status reports the moved-aside copy")
    out = subprocess.run([f"{rig.bin}/hapbx-ha", "discard-moved-aside", moved], capture_output=True, text=True,
                         env={**os.environ, "HAPBX_ENV": n2.env_file, "HA_BIN": rig.bin})
    assert out.returncode == 0 and f"removed {moved}" in out.stdout, out
    assert not os.path.exists(moved)
    rig.wait(lambda: rig.status("pbx2").get("moved_aside") == "", 5, "status: nothing moved aside")


def test_10_a_dead_leader_daemon_fences_at_once(rig):
    n1 = rig.nodes["pbx1"]
    t0 = time.time()
    os.kill(n1.daemon.pid, signal.SIGKILL)
    n1.daemon.wait(5)
    out = rig.script("pbx1", "leader", "stopped")                 # the unit's ExecStopPost
    assert out.returncode == 0, out.stderr
    assert rig.pg_pid("pbx1") is None
    timing("leader daemon killed -> writes fenced (ExecStopPost)", (time.time() - t0) * 1000)
    # Restart=always: the new daemon adopts its lease and restarts postgres as the primary
    rig.start_daemon("pbx1")
    rig.wait(lambda: rig.pg_role("pbx1") == "primary" and rig.status("pbx1").get("writer") == "1", 20,
             "pbx1 writer again")
    assert "adopted this node's leader lease" in open(f"{n1.dir}/ha.log").read()
    assert one_primary(rig) == "pbx1"


def test_11_hung_keepalived_keeps_the_lead_and_the_peer_yields_on_its_beat(rig):
    """keepalived frozen on the leader (no adverts, no check runs): the peer's keepalived claims the
    VIP too; the peer sees the leader's beat change after its claim and gives the VIP back at once
    (not after YIELD_AFTER). The leader keeps lease and writes: nothing is killed, nothing fails
    over; once its heartbeat is overdue its beat says `hung`, which keeps the peer yielded although
    the leader answers. keepalived back: the beat says `ok` and the peer's yield ends."""
    n1 = rig.nodes["pbx1"]
    rig.wait(lambda: rig.psql("pbx1", "select count(*) from pg_stat_replication where state = 'streaming'") == "1",
             20, "pbx2 streaming")
    # a healthy pair to start from: pbx2 synchronous again since pbx1 restarted as primary (step 09)
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "on", 20, "pbx2 synchronous again")
    os.kill(n1.heartbeat.pid, signal.SIGKILL)                     # keepalived frozen: no more check runs
    t0 = time.time()
    rig.notify("pbx2", "MASTER")                                  # the peer stopped hearing adverts: claims the VIP
    rig.wait(lambda: rig.status("pbx2").get("yield") == "1", 10, "pbx2 gives the VIP back")
    took = time.time() - t0
    timing("VIP claimed while the leader beats -> given back", took * 1000)
    assert took < 3.0 * 0.8, f"yielded after {took:.2f}s: YIELD_AFTER's fallback (3 s), not the beat"
    assert "renewed its lease" in open(f"{rig.nodes['pbx2'].dir}/ha.log").read()
    assert rig.etcdctl("get", "/hapbx/rig/claim", "--print-value-only").startswith("pbx2 ")
    rig.notify("pbx2", "FAULT")                                   # keepalived follows the yield file
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/beat", "--print-value-only").startswith("pbx1 hung "), 10,
             "the leader's beat says its keepalived is hung")
    time.sleep(2.5)                                                # past HUNG_AFTER + a renewal: the peer would un-yield
    assert rig.status("pbx2").get("yield") == "1", "the peer left its yield while the leader's keepalived is hung"
    assert not os.path.exists(f"{n1.dir}/keepalived-killed"), "the leader killed keepalived although it leads"
    assert rig.status("pbx1").get("hold") == "1" and one_primary(rig) == "pbx1"
    rig.psql("pbx1", "insert into t (node) values ('pbx1')")     # writes never stopped (no resign, no fence)
    rig.start_heartbeat("pbx1")                                   # keepalived back (SIGCONT)
    rig.wait(lambda: rig.status("pbx2").get("yield") == "0", 15, "pbx2's yield ends once the beat says ok")
    rig.notify("pbx2", "BACKUP")
    assert one_primary(rig) == "pbx1" and rig.status("pbx1").get("hold") == "1"
    # then keepalived stopped on the leader (a planned switchover): no beat comes after the peer's
    # claim, so the peer keeps the VIP and promotes; the story goes on with pbx2 leading
    t0 = time.time()
    rig.notify("pbx1", "STOP")
    rig.notify("pbx2", "MASTER")
    rig.wait(lambda: rig.pg_role("pbx2") == "primary", 15, "pbx2 promoted")
    timing("keepalived stopped on leader -> peer writable", (time.time() - t0) * 1000)
    assert rig.status("pbx2").get("yield") == "0"
    rig.notify("pbx1", "BACKUP")
    rig.wait(lambda: rig.pg_role("pbx1") == "standby" and rig.idle("pbx1"), 60, "pbx1 rejoined")
    assert one_primary(rig) == "pbx2"


def test_12_start_guard(rig):
    """An ex-primary (no standby.signal) never starts as a primary beside the new one."""
    n1 = rig.nodes["pbx1"]
    rig.sh("pbx1", f"touch {n1.dir}/lib/maintenance")             # keep the daemon's rejoin away
    try:
        rig.stop_pg("pbx1")
        rig.wait(lambda: rig.pg_pid("pbx1") is None, 10, "pbx1 stopped")
        os.unlink(f"{n1.data}/standby.signal")
        out = rig.script("pbx1", "pg-guard")
        assert out.returncode == 1 and "the last primary was pbx2" in out.stderr, out.stderr
        open(f"{n1.dir}/lib/pg-fenced", "w").close()
        out = rig.script("pbx1", "pg-guard")
        assert out.returncode == 1 and "fenced" in out.stderr
        open(f"{n1.data}/standby.signal", "w").close()
        assert rig.script("pbx1", "pg-guard").returncode == 0     # a standby may always start
    finally:
        rig.sh("pbx1", f"rm -f {n1.dir}/lib/maintenance")
    rig.wait(lambda: rig.pg_role("pbx1") == "standby", 60, "pbx1 back as standby")
    assert one_primary(rig) == "pbx2"


def test_13_a_crashed_primary_restarts_in_place(rig):
    """The lease holder's PostgreSQL is SIGKILLed: its daemon restarts it as the primary on the
    same node (no failover) and marks the restart as planned while it runs, so keepalived's
    check-local does not move the VIP meanwhile (lab drill 3)."""
    leader = one_primary(rig)
    n = rig.nodes[leader]
    rig.wait(lambda: rig.status(leader).get("writer") == "1" and rig.idle(leader), 30, f"{leader} writer")
    marker = f"{n.run}/planned-restart.postgres"
    old = rig.pg_pid(leader)
    t0 = time.time()
    os.kill(old, signal.SIGKILL)
    rig.wait(lambda: os.path.exists(marker), 5, "the restart marked as planned")
    timing("primary SIGKILLed -> daemon restarts it in place", (time.time() - t0) * 1000)
    rig.wait(lambda: rig.pg_role(leader) == "primary" and rig.status(leader).get("writer") == "1", 30,
             f"{leader} primary again")
    timing("primary SIGKILLed -> writable again on the same node", (time.time() - t0) * 1000)
    assert rig.pg_pid(leader) not in (None, old)
    rig.wait(lambda: not os.path.exists(marker), 5, "marker removed once the server is back")
    assert one_primary(rig) == leader and "restarting it in place" in open(f"{n.dir}/ha.log").read()


def test_14_a_rewind_that_finds_nothing_to_do_is_checked_against_the_wal(rig):
    """pg_rewind once answered "no rewind required" for a data directory that had WAL of its own
    after the fork (the 60-minute soak: its crash recovery had been interrupted); the rejoin then
    waited PG_STREAM_TIMEOUT (~60 s) for a standby that could not stream. Here pg_rewind is a
    stand-in that says exactly that: the rejoin asks pg_waldump, does not believe it and rebuilds
    with pg_basebackup at once; the rows only the old primary had are gone from it (moved aside)."""
    old = one_primary(rig)
    new = rig.nodes[old].peer
    n = rig.nodes[old]
    rig.wait(lambda: rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "on", 30, f"{new} synchronous")
    rig.psql(new, "alter system set primary_conninfo = ''")
    rig.psql(new, "select pg_reload_conf()")
    rig.wait(lambda: rig.psql(old, "select count(*) from pg_stat_replication") == "0", 10, "standby detached")
    rig.psql(old, "set synchronous_commit = local; insert into t (node) select 'diverged' from generate_series(1, 5)")
    fake_bin = f"{n.dir}/pg-bin-rewind-says-nothing"
    os.makedirs(fake_bin, exist_ok=True)
    for tool in os.listdir(PG_BIN):
        if tool != "pg_rewind" and not os.path.exists(f"{fake_bin}/{tool}"):
            os.symlink(f"{PG_BIN}/{tool}", f"{fake_bin}/{tool}")
    with open(f"{fake_bin}/pg_rewind", "w", encoding="utf-8") as fh:
        fh.write("#!/bin/sh\necho 'pg_rewind: source and target cluster are on the same timeline'\n"
                 "echo 'pg_rewind: no rewind required'\n")
    os.chmod(f"{fake_bin}/pg_rewind", 0o755)
    env_text = open(n.env_file, encoding="utf-8").read()
    try:
        with open(n.env_file, "w", encoding="utf-8") as fh:
            fh.write(env_text.replace(f"PG_BIN={PG_BIN}\n", f"PG_BIN={fake_bin}\n"))
        assert f"PG_BIN={fake_bin}" in open(n.env_file).read()
        rig.notify(old, "STOP")
        rig.notify(new, "MASTER")
        rig.wait(lambda: rig.pg_role(new) == "primary", 15, f"{new} promoted")
        t0 = time.time()
        log = rejoined(rig, old, "rewind said 'no rewind required' on divergent WAL -> pg_basebackup")
        took = time.time() - t0
    finally:
        with open(n.env_file, "w", encoding="utf-8") as fh:
            fh.write(env_text)
    tail = log.split("no rewind required")[-1]
    assert "has WAL after the fork at" in tail and "not believed" in tail, tail[-3000:]
    assert "falling back to pg_basebackup" in tail and "pg_basebackup: ok" in tail
    assert took < 40, f"{took:.0f} s: the rejoin waited for the stream instead of checking the WAL"
    assert rig.psql(old, "select count(*) from t where node = 'diverged'") == "0"
    assert one_primary(rig) == new
