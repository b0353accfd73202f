"""Without a witness (no etcd), for real on loopback: authority follows the VIP and the
stack's noWitnessPolicy. An orderly hand-over (keepalived stops on the primary) is
automatic, because the peer sees the old primary's server down (refused); a peer that does
not answer at all (frozen, or the link cut) is never promoted over under
manual-promotion until the operator forces it, and is after the timeout under
promote-after-timeout (the accepted risk)."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from test_failover_rig import Rig, ordered_rig  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: needs root")


#: the steps of one story on one rig: run in written order (tests/conftest.py, test_failover_rig.ordered_rig)
SCENARIO = True
rig, in_order = ordered_rig(lambda: Rig(witness=False, policy="manual-promotion", no_witness_timeout=2))


def test_01_bootstrap(rig):
    rig.start_redis()
    rig.init_primary("pbx1")
    assert rig.script("pbx2", "rejoin").returncode == 0
    rig.notify("pbx1", "MASTER")
    rig.notify("pbx2", "BACKUP")
    for name in ("pbx1", "pbx2"):
        rig.start_daemon(name)
    rig.wait(lambda: rig.status("pbx1").get("writer") == "1", 15, "pbx1 writer (incumbent)")
    rig.wait(lambda: rig.redis_role("pbx2") == "slave", 10, "pbx2 redis replica")
    assert rig.status("pbx2").get("hold") == "0" and rig.pg_role("pbx2") == "standby"


def test_02_orderly_handover_is_automatic(rig):
    t0 = time.time()
    rig.notify("pbx1", "STOP")
    rig.notify("pbx2", "MASTER")
    rig.wait(lambda: rig.pg_role("pbx2") == "primary", 15, "pbx2 promoted")
    print(f"\n  [timing] no witness, keepalived stop -> peer writable: {(time.time() - t0) * 1000:.0f} ms")
    assert rig.primaries() == ["pbx2"]
    rig.notify("pbx1", "BACKUP")
    rig.wait(lambda: rig.pg_role("pbx1") == "standby" and rig.idle("pbx1"), 60, "pbx1 rejoined")
    assert rig.primaries() == ["pbx2"]


def test_03_unanswering_peer_needs_the_operator(rig):
    """pbx2 (primary) freezes: its server accepts TCP but never answers. pbx1 gets the VIP,
    but manual-promotion never promotes over a peer it cannot see."""
    pid2 = rig.pg_pid("pbx2")
    os.kill(pid2, signal.SIGSTOP)
    try:
        rig.notify("pbx1", "MASTER")
        time.sleep(4)
        assert rig.pg_role("pbx1") == "standby"
        assert "manual promotion required" in open(f"{rig.nodes['pbx1'].dir}/ha.log").read()
        # the operator has made sure pbx2 is down: forced promotion
        with open(f"{rig.nodes['pbx1'].run}/force-authority", "w"):
            pass
        rig.wait(lambda: rig.pg_role("pbx1") == "primary", 30, "pbx1 promoted by the operator")
        # pbx2's keepalived sees pbx1's adverts with the leader bonus: BACKUP, then it resigns
        rig.notify("pbx2", "FAULT")
    finally:
        os.kill(pid2, signal.SIGCONT)
    rig.wait(lambda: rig.pg_role("pbx2") != "primary", 15, "pbx2 fenced")
    assert rig.primaries() == ["pbx1"]
    rig.notify("pbx2", "BACKUP")
    rig.wait(lambda: rig.pg_role("pbx2") == "standby" and rig.idle("pbx2"), 60, "pbx2 rejoined")


def test_04_promote_after_timeout_takes_the_risk(rig):
    """The same freeze under promote-after-timeout: pbx2 promotes after the timeout (2 s here)."""
    n2 = rig.nodes["pbx2"]
    n2.overrides["NO_WITNESS_POLICY"] = "promote-after-timeout"
    rig.rewrite_envs()
    os.kill(n2.daemon.pid, signal.SIGHUP)                         # reload: re-exec, new env
    time.sleep(0.5)
    pid1 = rig.pg_pid("pbx1")
    os.kill(pid1, signal.SIGSTOP)
    try:
        t0 = time.time()
        rig.notify("pbx2", "MASTER")
        rig.wait(lambda: rig.pg_role("pbx2") == "primary", 30, "pbx2 promoted after the timeout")
        elapsed = time.time() - t0
        print(f"\n  [timing] promote-after-timeout (2 s): peer frozen -> writable: {elapsed * 1000:.0f} ms")
        assert elapsed >= 2.0
        assert "promote-after-timeout; divergence possible" in open(f"{n2.dir}/ha.log").read()
        rig.notify("pbx1", "FAULT")                               # the frozen node's keepalived gives up
    finally:
        os.kill(pid1, signal.SIGCONT)
    rig.wait(lambda: rig.primaries() == ["pbx2"], 15, "pbx1 fenced after it resumed")
