"""EtcdStore against a stand-in etcdctl (a script on PATH that answers per endpoint): which member
each call goes to. A member that fails a call (cut from the raft leader: the renewal times out) is
left for the next one, and the store stays with a member while it answers; an answer that the
lease is gone is an answer, not a failure."""
from __future__ import annotations

import os

import pytest

from hapbx_node.ha import decide as d
from hapbx_node.ha.store import EtcdStore

A, B, C = "https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"

ETCDCTL = r'''#!/bin/bash
# the stand-in: logs the endpoint, answers as $STUB_DIR/<host> says (ok | hang | gone)
ep=""; for a in "$@"; do [[ $a == --endpoints=* ]] && ep=${a#--endpoints=}; done
[[ $ep == *,* ]] && { echo "more than one endpoint: $ep" >&2; exit 9; }
echo "$ep $*" >> "$STUB_DIR/calls"
host=${ep#https://}; host=${host%%:*}
mode=$(cat "$STUB_DIR/$host" 2>/dev/null || echo ok)
case $mode in
hang) exec sleep 5 ;;   # exec: the timeout kills the sleep itself (no process left)
gone) echo "Error: etcdserver: requested lease not found" >&2; exit 1 ;;
esac
case " $* " in
*" keep-alive "*) echo "lease 1234 keepalived with TTL(3)" ;;
*" get "*) printf '/hapbx/cluster/leader\npbx1\n/hapbx/cluster/beat\npbx1 ok 7\n' ;;
esac
'''


@pytest.fixture
def store(tmp_path, monkeypatch):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "etcdctl").write_text(ETCDCTL)
    (stub / "etcdctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path)}
    return EtcdStore(",".join((A, B, C)), "/hapbx/cluster", env), tmp_path


def calls(tmp_path) -> list[str]:
    return [line.split()[0] for line in (tmp_path / "calls").read_text().splitlines()]


def test_one_member_at_a_time_and_the_same_while_it_answers(store):
    s, tmp = store
    assert isinstance(s.renew("1234", 800), d.Renewed)
    assert s.holder(800) == d.Holder("pbx1", "pbx1 ok 7")
    assert isinstance(s.renew("1234", 800), d.Renewed)
    assert calls(tmp) == [A, A, A]


def test_a_member_that_holds_the_call_is_left_for_the_next(store):
    s, tmp = store
    (tmp / "10.0.0.11").write_text("hang\n")        # cut from the raft leader: the renewal hangs
    failed = s.renew("1234", 300)
    assert isinstance(failed, d.RenewFailed) and A in failed.error
    assert isinstance(s.renew("1234", 300), d.Renewed)   # the next call: the next member
    assert isinstance(s.renew("1234", 300), d.Renewed)
    assert calls(tmp) == [A, B, B]


def test_a_gone_lease_is_an_answer_not_a_failed_member(store):
    s, tmp = store
    (tmp / "10.0.0.11").write_text("gone\n")
    assert isinstance(s.renew("1234", 800), d.LeaseGone)
    s.renew("1234", 800)
    assert calls(tmp) == [A, A]


def test_every_member_failing_goes_round(store):
    s, tmp = store
    for host in ("10.0.0.11", "10.0.0.12", "10.0.0.13"):
        (tmp / host).write_text("hang\n")
    for _ in range(4):
        assert isinstance(s.renew("1234", 100), d.RenewFailed)
    assert calls(tmp) == [A, B, C, A]


def test_an_etcdctl_call_does_not_outlive_a_killed_daemon(store, tmp_path):
    """The HA daemon SIGKILLed in the middle of a renewal that hangs: etcdctl (here its stand-in's
    sleep) is gone within the call's own limit, not left running orphaned."""
    import signal
    import subprocess
    import sys
    import time

    s, tmp = store
    (tmp / "10.0.0.11").write_text("hang\n")
    (tmp / "calls").write_text("")
    daemon = subprocess.Popen([sys.executable, "-c", (
        "import sys; from hapbx_node.ha.store import EtcdStore\n"
        f"EtcdStore({A!r}, '/hapbx/cluster', {dict(s.env)!r}).renew('1234', 800)\n")],
        cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 5
    while not (tmp / "calls").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (tmp / "calls").read_text(), "the daemon never called etcdctl"
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()

    def stand_ins() -> list[str]:
        ps = subprocess.run(["pgrep", "-f", "sleep 5$"], capture_output=True, text=True).stdout.split()
        return [p for p in ps if str(tmp) in open(f"/proc/{p}/environ", "rb").read().decode(errors="replace")]

    assert stand_ins(), "the hanging etcdctl stand-in should still run right after the kill"
    deadline = time.monotonic() + 3
    while stand_ins() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stand_ins() == [], "etcdctl outlived the daemon beyond its 0.8 s limit"
