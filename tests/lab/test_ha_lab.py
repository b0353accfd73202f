"""The HA layer on the lab: the VIP on the one node that leads, and a switchover that moves
the VIP, PostgreSQL and Redis together, then the old node back as a streaming standby; an
apply while the roles are swapped keeps them and writes on the node that is primary now.

The test fails back at the end so later checks see the configured roles.
"""
from __future__ import annotations

import json
import time

from hapbx_node import layout
from lab import deploy

STATUS = f"{layout.HA_BIN}/status"


def status(lab, node: str) -> dict[str, str]:
    return layout.parse_status(lab.sh(node, STATUS, check=False))


def wait(predicate, seconds: float, what: str, since: float) -> float:
    """Seconds from ``since`` (the fault) until predicate holds."""
    while time.monotonic() - since < seconds:
        if predicate():
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")


def owner(lab) -> tuple[str, str]:
    names = [n.name for n in lab.cluster.nodes]
    holders = [n for n in names if status(lab, n).get("vip") == "present"]
    assert len(holders) == 1, f"VIP holders: {holders}"
    return holders[0], next(n for n in names if n != holders[0])


def switchover(lab) -> dict[str, float]:
    """Stop keepalived on the VIP owner; measure until the peer owns the VIP, is the only
    writable PostgreSQL and the Redis master, and the old owner streams again."""
    old, new = owner(lab)
    fault = time.monotonic()
    lab.sh(old, "systemctl stop keepalived")
    took = {
        "vip": wait(lambda: status(lab, new).get("vip") == "present" and status(lab, old).get("vip") == "absent",
                    20, "VIP on the peer", fault),
        "postgres_primary": wait(lambda: status(lab, new).get("postgres") == "primary", 60, "peer PostgreSQL primary", fault),
        "redis_master": wait(lambda: status(lab, new).get("redis") == "master", 20, "peer Redis master", fault),
    }
    assert status(lab, old).get("postgres") != "primary", "two writable primaries"
    lab.sh(old, "systemctl start keepalived")
    took["rejoined"] = wait(lambda: status(lab, old).get("postgres") == "standby"
                            and status(lab, old).get("postgres_streaming") == "yes", 180, "old node streaming", fault)
    # a planned switchover back needs a synchronous standby (a stale one is never promoted)
    took["in_sync"] = wait(lambda: status(lab, new).get("etcd_sync") == "on", 60, "old node synchronous", fault)
    assert status(lab, new).get("vip") == "present" and status(lab, old).get("redis") == "slave"
    print(f"\nswitchover {old} -> {new}, seconds after `systemctl stop keepalived`: "
          + ", ".join(f"{k} {v:.2f}" for k, v in took.items()))
    return took


def test_the_vip_is_on_one_node_and_that_node_leads(lab):
    holder, peer = owner(lab)
    s = status(lab, holder)
    assert (s["daemon_hold"], s["postgres"], s["redis"]) == ("1", "primary", "master")
    assert status(lab, peer)["postgres_streaming"] == "yes"
    assert holder == lab.cluster.primary.name
    # both reachability watchers hear the gateway or the witness, and never lost them
    for node in (holder, peer):
        st = status(lab, node)
        assert (st.get("reach_isolated"), st.get("reach_isolations")) == ("0", "0"), st
        # how close this loaded host came to a false fence or a false isolation (for the record)
        print(f"\n{node}: longest renewal gap {st.get('daemon_renew_max_gap_ms')} ms (fence after "
              f"{lab.cluster.etcd.lease_ttl_seconds * 1000 - 500}), longest silence of gateway and witness "
              f"{st.get('reach_max_gap_ms')} ms (isolated after {lab.cluster.ha.reach_lost_after_ms})")


def stdout_of(lab, name: str) -> str:
    """What a command printed in the last apply that ran it (kept in the lab's state)."""
    with open(deploy.state_path(lab.spec)) as fh:
        resources = json.load(fh)["resources"].values()
    return next(r["outputs"].get("stdout", "") for r in resources if r["name"] == name)


def test_stopping_keepalived_moves_every_role_an_apply_keeps_them_and_back(lab):
    first, second = lab.cluster.primary.name, lab.cluster.standby.name
    switchover(lab)
    # postgres.initialPrimary names the first deploy's primary only: an apply that runs every
    # command again succeeds with the roles swapped, writes the schema on the node that is
    # primary now and moves nothing
    lab.apply(force=True)
    assert owner(lab)[0] == second
    assert (status(lab, second)["postgres"], status(lab, second)["redis"]) == ("primary", "master")
    assert status(lab, first)["postgres_streaming"] == "yes"
    assert "seed data applied" in stdout_of(lab, f"postgres-{second}-migrate")
    assert f"skipped on {first} (standby): {second} is the primary" in stdout_of(lab, f"postgres-{first}-migrate")
    assert f"{second} is the primary since a failover" in stdout_of(lab, f"postgres-{second}-standby")
    switchover(lab)  # and back: the configured primary leads again
    assert owner(lab)[0] == first
