"""Real network partitions of the HA rig: pbx1, pbx2 and the witness each in a private
network namespace on a private bridge, their own PostgreSQL, Redis, etcd member and
leader daemon inside, and the cut made by nft rules in the hosts (test_failover_rig.py,
netns mode). keepalived is stood in for by its notify calls, made as the VRRP outcome
of each cut would make them (a node that hears no adverts goes MASTER, a node that
cannot reach the witness goes FAULT); test_keepalived_vrrp.py shows those transitions.

During every scenario a writer inserts rows into whichever node is primary and
records each acknowledgement, and a sampler reads both nodes' roles every 100 ms.
Asserted each time: no sample with two writable primaries, no acknowledged row
missing from the final primary, exactly one primary and it holds the lease.

Scenarios, in order (each starts from a healthy pair):
  1. link cut between the nodes, both reach the witness, etcd leader on the witness
  2. the primary's node isolated from both others (failover to the peer, rejoin by pg_rewind)
  3. link cut between the nodes, etcd leader on the standby's member (the primary's
     member loses its raft leader: who keeps the lease is etcd's call, never both)
"""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from test_failover_rig import LEASE_TTL, NODES, Rig, ordered_rig, timing  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and PostgreSQL as postgres: needs root")

SYNC_RELAX_AFTER = 3


class Probe:
    """A writer into the current primary and a 100 ms sampler of both nodes' roles."""

    def __init__(self, rig: Rig):
        self.rig = rig
        self.acks: list[tuple[int, float]] = []
        self.samples: list[tuple[float, tuple[str, str]]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True),
                        threading.Thread(target=self._sample, daemon=True)]

    def __enter__(self):
        for th in self.threads:
            th.start()
        self.rig.wait(lambda: len(self.acks) > 10 and len(self.samples) > 3, 20, "writer and sampler running")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join(15)

    def _connect(self, name: str):
        import psycopg
        n = self.rig.nodes[name]
        return psycopg.connect(host=n.sock, port=n.pg_port, user="postgres", dbname="postgres",
                               connect_timeout=1, autocommit=True)

    def _role(self, name: str) -> str:
        try:
            with self._connect(name) as conn:
                return "standby" if conn.execute("select pg_is_in_recovery()").fetchone()[0] else "primary"
        except Exception:
            return "down"

    def _sample(self):
        while not self.stop.is_set():
            t = time.time()
            self.samples.append((t, tuple(self._role(n) for n in NODES)))
            self.stop.wait(max(0.0, 0.1 - (time.time() - t)))

    def _write(self):
        # No statement_timeout: a commit waiting for the synchronous standby that is
        # cancelled is reported committed although not replicated; we wait it out.
        while not self.stop.is_set():
            for name in NODES:
                try:
                    with self._connect(name) as conn:
                        if conn.execute("select pg_is_in_recovery()").fetchone()[0]:
                            continue
                        while not self.stop.is_set():
                            row = conn.execute("insert into t (node) values (%s) returning id", (name,)).fetchone()
                            self.acks.append((row[0], time.time()))
                            time.sleep(0.02)
                except Exception:
                    continue
            self.stop.wait(0.05)

    def double_primaries(self) -> list[float]:
        return [t for t, roles in self.samples if roles.count("primary") > 1]

    def first_ack_after(self, t: float) -> float | None:
        return next((at for _, at in self.acks if at > t), None)

    def largest_gap_after(self, t: float) -> float:
        times = [at for _, at in self.acks if at > t - 1]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def bootstrap(r: Rig):
    t = time.time()
    r.bootstrap_pair()
    timing("netns rig: etcd, PostgreSQL pair in sync, Redis pair", time.time() - t)


#: the steps of one story on one rig: run in written order (tests/conftest.py, test_failover_rig.ordered_rig)
SCENARIO = True
rig, in_order = ordered_rig(lambda: Rig(sync_relax_after=SYNC_RELAX_AFTER, yield_after=3.0, resign_grace=5.0,
                                        heartbeat=True, netns=True), setup=bootstrap)


def primary_of(rig: Rig) -> str:
    prim = rig.primaries()
    assert len(prim) == 1, f"primaries: {prim}\n{rig.logs()}"
    return prim[0]


def check_invariants(rig: Rig, probe: Probe, expected_primary: str | None = None) -> str:
    assert probe.double_primaries() == [], f"samples with two writable primaries: {probe.double_primaries()}"
    final = primary_of(rig)
    if expected_primary:
        assert final == expected_primary, rig.logs()
    assert rig.etcdctl("get", "/hapbx/rig/leader", "--print-value-only") == final      # the lease holder
    acked = {i for i, _ in probe.acks}
    have = {int(x) for x in rig.psql(final, "select id from t").split()}
    lost = sorted(acked - have)
    assert not lost, f"{len(lost)} acknowledged rows missing on {final}: {lost[:10]}"
    print(f"\n  [probe] {len(probe.acks)} rows acknowledged, none lost; {len(probe.samples)} role samples, "
          "none with two writable primaries", flush=True)
    return final


def heal_and_resync(rig: Rig, primary: str, timeout: float = 90):
    """Links back, keepalived's steady states, and the other node streaming again."""
    standby = rig.nodes[primary].peer
    rig.heal()
    rig.notify(primary, "MASTER")
    rig.notify(standby, "BACKUP")
    t = time.time()
    rig.wait(lambda: rig.pg_role(standby) == "standby" and rig.psql(
        standby, "select status from pg_stat_wal_receiver", check=False) == "streaming", timeout,
        f"{standby} streaming from {primary}")
    timing(f"healed -> {standby} streaming again", time.time() - t)
    rig.wait_in_sync(primary, timeout)
    rig.wait(lambda: rig.status(standby).get("yield", "0") == "0", 15, f"{standby} no longer yields")


def test_1_link_cut_both_reach_the_witness(rig):
    """The nodes cannot hear each other; both reach the witness, which leads etcd. pbx2's
    keepalived goes MASTER (no adverts): the lease stays with pbx1, pbx2 never promotes
    and yields its VIP; pbx1 relaxes synchronous replication and keeps taking writes."""
    rig.etcd_move_leader("witness")
    assert rig.reaches("pbx1", "pbx2")
    with Probe(rig) as probe:
        t_cut = time.time()
        rig.cut("pbx1", "pbx2")
        assert not rig.reaches("pbx1", "pbx2") and rig.reaches("pbx1", "witness") and rig.reaches("pbx2", "witness")
        rig.notify("pbx2", "MASTER")
        t_yield = rig.wait(lambda: rig.status("pbx2").get("yield") == "1", 15, "pbx2 yields the VIP")
        rig.notify("pbx2", "FAULT")                              # what keepalived does on the yield
        relaxed = rig.wait(lambda: rig.psql("pbx1", "show synchronous_standby_names", check=False) == "", 15,
                           "pbx1 relaxed synchronous replication")
        rig.wait(lambda: (probe.first_ack_after(relaxed) or 0) > 0, 10, "writes acknowledged again")
        time.sleep(2 * LEASE_TTL)                                # well past any lease expiry
        assert rig.pg_role("pbx2") == "standby" and rig.status("pbx2").get("hold") == "0"
        assert rig.status("pbx2").get("yield") == "1"           # held while the link is cut
        assert rig.etcdctl("get", "/hapbx/rig/sync", "--print-value-only") == "relaxed:pbx2"
    check_invariants(rig, probe, "pbx1")
    timing("cut -> pbx2 yields the VIP", t_yield - t_cut)
    timing("cut -> synchronous replication relaxed on pbx1", relaxed - t_cut)
    timing("longest write stall (commits waiting for the lost standby)", probe.largest_gap_after(t_cut))
    heal_and_resync(rig, "pbx1")


def test_2_primary_isolated_fails_over_and_rejoins(rig):
    """pbx1 (primary, VIP owner) loses both links: it stops writes before its lease can
    expire; pbx2 takes the lease once it has, promotes, and pbx1 rejoins after the heal."""
    with Probe(rig) as probe:
        t_cut = time.time()
        rig.cut("pbx1", "pbx2")
        rig.cut("pbx1", "witness")
        assert rig.reaches("pbx2", "witness") and not rig.reaches("pbx1", "witness")
        rig.notify("pbx1", "FAULT")                              # the reach watcher: the witness is gone
        rig.notify("pbx2", "MASTER")
        t_fenced = rig.wait(lambda: rig.pg_role("pbx1") != "primary", 3 * LEASE_TTL, "pbx1 stops writes")
        t_promoted = rig.wait(lambda: rig.status("pbx2").get("writer") == "1" and rig.pg_role("pbx2") == "primary",
                              30, "pbx2 primary")
        rig.wait(lambda: (probe.first_ack_after(t_promoted) or 0) > 0, 15, "writes acknowledged by pbx2")
        assert rig.redis_role("pbx2") == "master"
    check_invariants(rig, probe, "pbx2")
    timing("isolation -> pbx1 writes stopped", t_fenced - t_cut)
    timing("isolation -> pbx2 primary", t_promoted - t_cut)
    t = time.time()
    heal_and_resync(rig, "pbx2")
    assert "pg_rewind: ok" in open(f"{rig.nodes['pbx1'].dir}/ha.log").read()
    timing("heal -> pbx1 back in sync (pg_rewind)", time.time() - t)


def test_3_link_cut_with_the_etcd_leader_on_the_standby_node(rig):
    """The same cut as scenario 1, but the raft leader is the standby node's member: the
    primary's member loses its leader and the primary's renewals may fail. Whoever keeps
    or takes the lease, there is never a second writable primary nor a lost write."""
    primary = primary_of(rig)
    standby = rig.nodes[primary].peer
    rig.etcd_move_leader(standby)
    with Probe(rig) as probe:
        t_cut = time.time()
        rig.cut(primary, standby)
        rig.notify(standby, "MASTER")                            # it hears no adverts
        time.sleep(4 * LEASE_TTL)
        # keepalived's side of the outcome: the node that does not lead yields (FAULT)
        rig.wait(lambda: len(rig.primaries()) == 1, 30, "one primary")
        final = primary_of(rig)
        loser = rig.nodes[final].peer
        if final == standby:
            rig.notify(primary, "FAULT")
        else:
            rig.wait(lambda: rig.status(standby).get("yield") == "1", 15, f"{standby} yields")
            rig.notify(standby, "FAULT")
        t_final = time.time()
        rig.wait(lambda: (probe.first_ack_after(t_final) or 0) > 0, 15, f"writes acknowledged by {final}")
        print(f"\n  [outcome] etcd leader on {standby}'s member, link cut: {final} holds the lease and is primary, "
              f"{loser} is {rig.pg_role(loser)}; etcd leader now {rig.etcd_leader()}", flush=True)
    check_invariants(rig, probe)
    timing("longest write stall after the cut", probe.largest_gap_after(t_cut))
    heal_and_resync(rig, final)
