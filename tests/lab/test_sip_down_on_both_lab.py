"""Kamailio down on both nodes, then started again: the cluster leads again by itself.

Kamailio fails on the leader (the peer takes over), then on the new leader: both nodes' keepalived
are FAULT, each resignation stopped that node's PostgreSQL, nobody may lead; and
Kamailio loads its dispatcher set and subscribers from the local PostgreSQL at start, so it could
not come back on a node whose PostgreSQL the resignation stopped: no node ever became eligible
again (found on the lab, held for minutes). The HA core now starts a stopped PostgreSQL read-only
once nobody has led for three lease TTLs (decide._maybe_start_read_only); Kamailio then starts,
and the node that has every commit is elected.
"""
from __future__ import annotations

import threading
import time

from lab import drills
from lab.context import LabContext

#: the bound on the way back: the read-only start (3 lease TTLs), PostgreSQL and Kamailio starting
#: (Kamailio's unit retries every few seconds), an election and a promotion
BACK_WITHIN = 90


def both(lab, command: str) -> None:
    """`command` on both PBX nodes at the same moment (two threads)."""
    errors: list[str] = []

    def one(node: str) -> None:
        try:
            lab.sh(node, command, timeout=60, check=False)
        except Exception as err:  # reported below
            errors.append(f"{node}: {err}")

    threads = [threading.Thread(target=one, args=(n.name,)) for n in lab.cluster.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(70)
    assert not errors, errors


def until(what: str, seconds: float, predicate) -> float:
    """Seconds until predicate() held (polled every 0.5 s); fails the test after `seconds`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.5)
    return time.monotonic() - t0


def test_kamailio_down_on_both_nodes_with_both_databases_stopped_the_cluster_leads_again(lab):
    """Kamailio fails on the leader (the peer takes over, the old leader rejoins as its standby),
    then on the new leader (it resigns: its PostgreSQL stops), and the standby's PostgreSQL is down
    at that moment too (as found: its rejoin had failed; or a restart for a package upgrade). Both
    nodes FAULT, no PostgreSQL running, nobody eligible. Started again, Kamailio can only come up
    where PostgreSQL runs again."""
    ctx = LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)
    first = drills.wait_healthy(ctx, 120, "before the test")
    second = ctx.peer(first)
    role = lambda node: lab.ha_file(node).get("role")  # noqa: E731
    pg_down = lambda node: "down" in lab.sh(node, "pg_lsclusters -h | awk '{print $4}'")  # noqa: E731
    try:
        lab.sh(first, "systemctl stop kamailio")
        took = until(f"{second} leads after Kamailio stopped on {first}", 60, lambda: role(second) == "leader")
        until(f"{first} streams from {second}", 120,
              lambda: drills.status(ctx, first).get("postgres_streaming") == "yes")
        print(f"\nKamailio stopped on {first}: {second} leads after {took:.1f} s, {first} streams from it")
        lab.sh(second, "systemctl stop kamailio")
        took = until(f"{second} resigned", 60, lambda: role(second) != "leader" and pg_down(second))
        lab.sh(first, "systemctl stop postgresql")
        assert pg_down(first) and pg_down(second)
        print(f"Kamailio stopped on {second}: it resigned after {took:.1f} s; PostgreSQL stopped on {first} too")
        started = time.monotonic()
        both(lab, "systemctl start kamailio")    # fails where PostgreSQL is down: the unit retries
        owner = drills.wait_healthy(ctx, BACK_WITHIN, "after Kamailio was started on both nodes")
        print(f"{owner} leads and the cluster is healthy {time.monotonic() - started:.1f} s after the start")
    finally:
        both(lab, "systemctl start kamailio")
        drills.switch_to(ctx, lab.cluster.primary.name)       # later tests expect the configured roles
