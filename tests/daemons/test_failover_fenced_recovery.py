"""An etcd stall that fences the only primary, for real (issue 19; Debian 13 lab, drill 5).

When etcd stalls for longer than the lease, the primary's leader daemon fences itself
(PostgreSQL stopped with SIGQUIT, the fenced marker, the lease revoked). keepalived's
check-local then sees PostgreSQL down; with the standby's PostgreSQL down too, both nodes
went FAULT, nobody could become MASTER, take the lease and restart PostgreSQL: the cluster
stayed down. check-local now treats "fenced, not a standby, nobody holds the leader key,
etcd names this node the last primary" as waiting for the lease, not failed.

1. check-local's decision with a real etcd (auth on), real PostgreSQL and Redis of the rig
   (test_failover_rig.py, loopback), the node's PostgreSQL fenced by lib.sh's own pg_fence:
   waiting only in the one state above; failing when etcd names the peer, when the peer
   holds the leader key, when etcd stalls or does not answer, when the node was not fenced.
2. The whole cycle with both leader daemons and keepalived stood in for by KeepalivedStandIn
   (the real check-local at keepalived's interval, fall and rise; FAULT, BACKUP and MASTER
   notified as keepalived would): the standby's PostgreSQL is down, every etcd member is
   SIGSTOPped past the lease TTL, the primary fences, both nodes are FAULT; after SIGCONT the
   same node is MASTER, leads and is a writable primary within a bound, and the other node
   streams from it once it may rejoin.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from hapbx_node.ha.drivers import Postgres
from hapbx_node.ha.settings import load as load_ha_settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from test_failover_rig import LEASE_TTL, NODES, PG_BIN, Rig, free_port, timing  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: needs root")

#: after the etcd members resume: the lease expires (at most a TTL more when etcd elects a new
#: leader, which extends every lease), check-local rises (2 x 1 s), MASTER, lease, PostgreSQL start
RECOVERY_BOUND = 25


def key(rig: Rig, name: str) -> str:
    return f"{rig.nodes['pbx1'].env['ETCD_PREFIX']}/{name}"


def fenced_mark(rig: Rig, name: str) -> str:
    return f"{rig.nodes[name].dir}/lib/pg-fenced"


def check_local(rig: Rig, name: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return rig.sh(name, f"{rig.bin}/check-local", timeout=timeout, check=False)


def failing(out: subprocess.CompletedProcess) -> str:
    """What check-local said it fails on ("" when it did not say)."""
    m = re.search(r"check-local: failing: (.*)$", out.stderr, re.M)
    return m.group(1).strip() if m else ""


def pg_fence(rig: Rig, name: str):
    """What the leader daemon's lease fence does to PostgreSQL: the driver's fence (the fenced
    marker, SIGQUIT, wait until the postmaster is gone), with the node's env file."""
    _, env = load_ha_settings({**os.environ, "HAPBX_ENV": rig.nodes[name].env_file})
    assert Postgres(env).fence()
    assert rig.pg_pid(name) is None and os.path.exists(fenced_mark(rig, name))


def stall_etcd(rig: Rig):
    for p in rig.etcd.values():
        os.kill(p.pid, signal.SIGSTOP)


def resume_etcd(rig: Rig):
    for p in rig.etcd.values():
        os.kill(p.pid, signal.SIGCONT)


# ------------------------------------------------------------------ 1. check-local's decision

@pytest.fixture(scope="module")
def fenced():
    """etcd (three members, auth on), both Redis servers, pbx1 a PostgreSQL primary that was
    fenced as the daemon fences it; no daemon runs, so nothing changes the state but the test."""
    r = Rig()
    try:
        r.start_etcd()
        r.wait_etcd()
        r.bootstrap_etcd_auth()
        r.start_redis()
        r.init_primary("pbx1")
        # the rig is sound: a running primary with Redis passes
        out = check_local(r, "pbx1")
        assert out.returncode == 0, out.stderr
        pg_fence(r, "pbx1")
        assert not os.path.exists(f"{r.nodes['pbx1'].data}/standby.signal")
        yield r
    finally:
        r.close()


def set_state(rig: Rig, *, mark: bool = True, primary: str = "pbx1", leader: str | None = None) -> str | None:
    """pbx1's fenced marker and etcd's keys as given; returns the lease that holds a leader key."""
    mark_path = fenced_mark(rig, "pbx1")
    if mark:
        open(mark_path, "a").close()
    elif os.path.exists(mark_path):
        os.unlink(mark_path)
    rig.etcdctl("put", key(rig, "primary"), primary)
    rig.etcdctl("del", key(rig, "leader"))
    if leader is None:
        return None
    lease = rig.etcdctl("lease", "grant", "60").split()[1]          # "lease <id> granted with TTL(60s)"
    rig.etcdctl("put", key(rig, "leader"), leader, f"--lease={lease}")
    return lease


def test_a_fenced_last_primary_nobody_leads_is_waiting(fenced):
    """The drill's state after etcd came back: check-local passes, so keepalived lets the
    node become MASTER and its daemon can take the lease and restart PostgreSQL."""
    set_state(fenced, primary="pbx1")
    assert fenced.pg_role("pbx1") == "down"
    out = check_local(fenced, "pbx1")
    assert out.returncode == 0, f"check-local failed a fenced last primary nobody replaced: {out.stderr}"
    assert failing(out) == ""


def test_b_etcd_names_the_peer_last_primary(fenced):
    set_state(fenced, primary="pbx2")
    out = check_local(fenced, "pbx1")
    assert out.returncode == 1 and failing(out) == "postgres", out.stderr


def test_c_the_peer_holds_the_leader_key(fenced):
    lease = set_state(fenced, primary="pbx1", leader="pbx2")
    try:
        out = check_local(fenced, "pbx1")
        assert out.returncode == 1 and failing(out) == "postgres", out.stderr
    finally:
        fenced.etcdctl("lease", "revoke", lease)


def test_d_etcd_stalled(fenced):
    """Every member stopped (the drill's stall): no answer is no evidence of waiting."""
    set_state(fenced, primary="pbx1")
    stall_etcd(fenced)
    try:
        t = time.time()
        out = check_local(fenced, "pbx1")
        took = time.time() - t
    finally:
        resume_etcd(fenced)
    assert out.returncode == 1 and failing(out) == "postgres", out.stderr
    assert took < 3, f"check-local took {took:.1f} s with etcd stalled (keepalived's script timeout is 3 s)"
    fenced.wait_etcd()


def test_d_etcd_not_answering(fenced):
    """No member listens (connection refused): failing too."""
    set_state(fenced, primary="pbx1")
    n = fenced.nodes["pbx1"]
    n.overrides["ETCD_ENDPOINTS"] = f"https://127.0.0.1:{free_port()}"
    fenced.rewrite_envs()
    try:
        out = check_local(fenced, "pbx1")
    finally:
        n.overrides.pop("ETCD_ENDPOINTS")
        fenced.rewrite_envs()
    assert out.returncode == 1 and failing(out) == "postgres", out.stderr


def test_e_not_fenced_and_postgres_down(fenced):
    """PostgreSQL down without the fence's marker (crashed, stopped by hand): a failure,
    whatever etcd says."""
    set_state(fenced, mark=False, primary="pbx1")
    try:
        out = check_local(fenced, "pbx1")
    finally:
        open(fenced_mark(fenced, "pbx1"), "a").close()
    assert out.returncode == 1 and failing(out) == "postgres", out.stderr


def test_f_a_standby_is_never_waiting(fenced):
    """standby.signal present (a rejoin under way, or a fenced standby): failing, even when
    etcd names this node."""
    set_state(fenced, primary="pbx1")
    signal_file = f"{fenced.nodes['pbx1'].data}/standby.signal"
    open(signal_file, "a").close()
    try:
        out = check_local(fenced, "pbx1")
    finally:
        os.unlink(signal_file)
    assert out.returncode == 1 and failing(out) == "postgres", out.stderr


# ------------------------------------------------------------------ 2. the whole cycle

class KeepalivedStandIn:
    """keepalived's VRRP outcome for the pair, from the real check-local run on each node at
    the stack's check interval (a run over interval + 2 s counts as failed, as keepalived's
    script timeout): `fall` failures in a row -> FAULT, `rise` passes -> out of FAULT; the
    yield track_file -> FAULT. Out of FAULT a node is BACKUP while the peer is MASTER, else
    MASTER (nopreempt: a MASTER stays; between two candidates the higher priority plus the
    leader bonus wins). Every change is notified through the rendered notify script, as
    keepalived calls it (FAULT -> BACKUP -> MASTER, as keepalived passes BACKUP first)."""

    def __init__(self, rig: Rig, initial: dict[str, str]):
        ha = rig.cluster.ha
        self.rig = rig
        self.interval, self.fall, self.rise = ha.check_interval, ha.check_fall, ha.check_rise
        self.weight = ha.leader_weight
        self.priority = {n.name: n.priority for n in rig.cluster.nodes}
        self.state = dict(initial)
        self.healthy = {n: True for n in NODES}
        self.history: list[tuple[float, str, str]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._check, args=(n,), daemon=True) for n in NODES]

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join(15)

    def _flag(self, name: str, f: str) -> bool:
        try:
            with open(f"{self.rig.nodes[name].run}/{f}") as fh:
                return fh.read().strip() == "1"
        except OSError:
            return False

    def _check(self, name: str):
        fails = passes = 0
        while not self.stop.is_set():
            t = time.time()
            try:
                ok = check_local(self.rig, name, timeout=self.interval + 2).returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            if ok:
                passes, fails = passes + 1, 0
            else:
                fails, passes = fails + 1, 0
            with self.lock:
                if self.healthy[name] and fails >= self.fall:
                    self.healthy[name] = False
                elif not self.healthy[name] and passes >= self.rise:
                    self.healthy[name] = True
                self._decide()
            self.stop.wait(max(0.0, self.interval - (time.time() - t)))

    def _decide(self):
        new = {}
        for n in NODES:
            if not self.healthy[n] or self._flag(n, "yield"):
                new[n] = "FAULT"
            elif self.state[n] == "MASTER":
                new[n] = "MASTER"
        candidates = [n for n in NODES if n not in new]
        if candidates and "MASTER" not in new.values():
            prio = {n: self.priority[n] + (self.weight if self._flag(n, "leader") else 0) for n in candidates}
            winner = max(candidates, key=lambda n: prio[n])
            new[winner] = "MASTER"
        for n in NODES:
            new.setdefault(n, "BACKUP")
        for n in NODES:
            if new[n] == self.state[n]:
                continue
            steps = ["BACKUP", "MASTER"] if self.state[n] == "FAULT" and new[n] == "MASTER" else [new[n]]
            for s in steps:
                out = self.rig.script(n, "notify", "INSTANCE", "VI_PBX", s, str(self.priority[n]), timeout=20)
                if out.returncode != 0:
                    self.errors.append(f"notify {n} {s}: {out.stderr}")
                self.history.append((time.time(), n, s))
            self.state[n] = new[n]

    def went(self, name: str, state: str, since: float) -> bool:
        with self.lock:
            return any(t >= since and n == name and s == state for t, n, s in self.history)


@pytest.fixture
def pair():
    """pbx1 primary and leader (MASTER), pbx2 its synchronous standby (BACKUP), both daemons."""
    r = Rig()
    try:
        t = time.time()
        r.bootstrap_pair()
        timing("rig: etcd, PostgreSQL pair in sync, Redis pair, daemons", time.time() - t)
        yield r
    finally:
        r.close()


def test_etcd_stall_fences_the_only_primary_and_it_comes_back(pair):
    rig = pair
    n2 = rig.nodes["pbx2"]
    with KeepalivedStandIn(rig, {"pbx1": "MASTER", "pbx2": "BACKUP"}) as ka:
        # the standby is out (drill 5: the other node was still rejoining): its PostgreSQL is
        # down and stays down (maintenance keeps its daemon from rejoining it meanwhile)
        open(f"{n2.dir}/lib/maintenance", "w").close()
        rig.sh("pbx2", f"runuser -u postgres -- {PG_BIN}/pg_ctl -D {n2.data} -m fast -w stop")
        rig.wait(lambda: ka.state["pbx2"] == "FAULT", 10, "pbx2 FAULT (its PostgreSQL down)")
        assert ka.state["pbx1"] == "MASTER" and rig.status("pbx1").get("hold") == "1"

        t_stall = time.time()
        stall_etcd(rig)
        try:
            t_fenced = rig.wait(lambda: rig.pg_pid("pbx1") is None, LEASE_TTL + 3, "pbx1 fenced (etcd stalled)")
            assert os.path.exists(fenced_mark(rig, "pbx1"))
            # the dead end of the drill: both nodes FAULT, no PostgreSQL running
            rig.wait(lambda: ka.state["pbx1"] == "FAULT", 10, "pbx1 FAULT (its PostgreSQL fenced)")
            # past the lease TTL, as the drill's stall
            time.sleep(max(0.0, t_stall + 2 * LEASE_TTL - time.time()))
            assert ka.state == {"pbx1": "FAULT", "pbx2": "FAULT"}, ka.history
            assert rig.status("pbx1").get("hold") == "0"
        finally:
            resume_etcd(rig)
        t_resume = time.time()
        timing("etcd stalled -> pbx1's PostgreSQL fenced", t_fenced - t_stall)

        # the same node is MASTER again, leads, and its PostgreSQL is a writable primary
        rig.wait(lambda: rig.pg_role("pbx1") == "primary" and rig.status("pbx1").get("writer") == "1",
                 RECOVERY_BOUND, "pbx1 primary again after etcd resumed (check-local must let it be MASTER)")
        t_back = time.time()
        timing("etcd resumed -> pbx1 writable primary again", t_back - t_resume)
        assert ka.went("pbx1", "MASTER", t_resume) and ka.state["pbx1"] == "MASTER", ka.history
        assert rig.etcdctl("get", key(rig, "leader"), "--print-value-only") == "pbx1"
        assert rig.etcdctl("get", key(rig, "primary"), "--print-value-only") == "pbx1"
        assert not os.path.exists(fenced_mark(rig, "pbx1"))
        assert rig.pg_pid("pbx2") is None                               # nobody else took writes
        rig.psql("pbx1", "insert into t (node) values ('after-stall')")
        assert rig.redis_role("pbx1") == "master"

        # the standby may rejoin: its daemon brings it back streaming from pbx1, keepalived BACKUP
        os.unlink(f"{n2.dir}/lib/maintenance")
        rig.wait(lambda: rig.pg_role("pbx2") == "standby" and rig.psql(
            "pbx2", "select status from pg_stat_wal_receiver", check=False) == "streaming", 60,
            "pbx2 streaming from pbx1")
        timing("maintenance off -> pbx2 streaming from pbx1", time.time() - t_back)
        assert rig.psql("pbx1", "select application_name from pg_stat_replication") == "pbx2"
        rig.wait(lambda: rig.psql("pbx2", "select count(*) from t where node = 'after-stall'", check=False) == "1",
                 10, "the row written after the stall on pbx2")
        rig.wait(lambda: ka.state["pbx2"] == "BACKUP", 10, "pbx2 BACKUP")
        assert rig.primaries() == ["pbx1"] and ka.state["pbx1"] == "MASTER"
    assert ka.errors == []
