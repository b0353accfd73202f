"""`hapbx upgrade` (ops/rolling_upgrade.py) against a stand-in pair of nodes: the standby is
upgraded first, the leader only after a planned switchover made it a standby, each node a ready
standby again before the next step; a refused switchover is retried, a failing upgrade stops with
the node and its stderr and leaves the other node untouched."""
from __future__ import annotations

import pytest

from hapbx_node.layout import HA_CLI
from ops.rolling_upgrade import UPGRADE, UpgradeError, main, standby_problems
from tests.mockrun import ROOT

READY = {"postgres": "standby", "postgres_streaming": "yes", "vrrp_state": "BACKUP", "daemon_hold": "0"}


@pytest.fixture(scope="module")
def cluster():
    from components.config import load_stack_file
    c, _ = load_stack_file(f"{ROOT}/Pulumi.prod.yaml", assume_secrets=True)
    return c


class Pair:
    """Two nodes: `leader` holds; an upgrade leaves its node not streaming for `settle` status reads;
    a switchover is refused `refusals` times, then moves the lead."""

    def __init__(self, leader: str, standby: str, refusals: int = 0, settle: int = 1, fail_on: str = ""):
        self.leader, self.standby = leader, standby
        self.refusals, self.settle, self.fail_on = refusals, settle, fail_on
        self.unsettled: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []      # (node, what) in order

    def __call__(self, node: str, script: str, timeout: float):
        if script.startswith(f"{HA_CLI} status; systemctl is-active"):
            if node == self.leader:
                return 0, "daemon_hold=1\npostgres=primary\nvrrp_state=MASTER\nactive\nactive\n", ""
            if self.unsettled.get(node, 0) > 0:
                self.unsettled[node] -= 1
                return 3, "daemon_hold=0\npostgres=standby\npostgres_streaming=no\nvrrp_state=BACKUP\nactivating\nactive\n", ""
            return 0, "daemon_hold=0\npostgres=standby\npostgres_streaming=yes\nvrrp_state=BACKUP\nactive\nactive\n", ""
        if script == f"{HA_CLI} status":
            return 0, f"daemon_hold={'1' if node == self.leader else '0'}\n", ""
        if " switchover --to " in script:
            assert node == self.leader
            if self.refusals:
                self.refusals -= 1
                return 3, "", "hapbx-ha switchover: refused: pbx2 is not a synchronous standby yet\n"
            self.log.append((node, "switchover"))
            self.leader, self.standby = self.standby, self.leader
            return 0, "", ""
        assert node == self.standby, f"{node} upgraded while it leads"
        self.log.append((node, "upgrade"))
        if node == self.fail_on:
            return 100, "", "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
        self.unsettled[node] = self.settle
        return 0, "", ""


def run(cluster, pair, **kw):
    clock = [0.0]

    def sleep(s):
        clock[0] += s
    return main(cluster, pair, log=lambda _: None, sleep=sleep, clock=lambda: clock[0], **kw)


def test_the_standby_first_then_the_leader_after_a_switchover(cluster):
    a, b = (n.name for n in cluster.nodes)
    pair = Pair(leader=a, standby=b, settle=3)
    result = run(cluster, pair)
    assert pair.log == [(b, "upgrade"), (a, "switchover"), (a, "upgrade")]
    assert result.order == [b, a] and result.leader_after == b and set(result.seconds) == {a, b}


def test_back_hands_the_lead_to_the_node_that_led(cluster):
    a, b = (n.name for n in cluster.nodes)
    pair = Pair(leader=a, standby=b)
    result = run(cluster, pair, back=True)
    assert pair.log[-1] == (b, "switchover") and result.leader_after == a


def test_a_refused_switchover_is_retried_until_the_standby_is_synchronous(cluster):
    a, b = (n.name for n in cluster.nodes)
    pair = Pair(leader=a, standby=b, refusals=2)
    assert run(cluster, pair).leader_after == b
    assert pair.log == [(b, "upgrade"), (a, "switchover"), (a, "upgrade")]


def test_a_failing_upgrade_names_the_node_and_leaves_the_leader_alone(cluster):
    a, b = (n.name for n in cluster.nodes)
    pair = Pair(leader=a, standby=b, fail_on=b)
    with pytest.raises(UpgradeError, match=rf"{b}: the upgrade command failed \(exit 100\): E: Sub-process"):
        run(cluster, pair)
    assert pair.log == [(b, "upgrade")] and pair.leader == a


def test_a_standby_that_never_settles_stops_the_upgrade_with_what_is_wrong(cluster):
    a, b = (n.name for n in cluster.nodes)
    pair = Pair(leader=a, standby=b, settle=10_000)
    with pytest.raises(UpgradeError, match=rf"{b}: not a ready standby after 300 s: postgres_streaming no, "
                                           r"kamailio.service activating"):
        run(cluster, pair)
    assert pair.log == [(b, "upgrade")]


def test_standby_problems_reads_status_and_units():
    assert standby_problems(READY, "active\nactive\n") == []
    assert standby_problems({**READY, "daemon_hold": "1"}, "active active") == ["it holds the lease"]
    assert standby_problems({}, "") == ["postgres unknown", "postgres_streaming unknown", "vrrp_state unknown",
                                       "kamailio.service unknown", "keepalived.service unknown"]


def test_the_default_command_keeps_the_rendered_configuration_and_never_asks():
    assert "--force-confold" in UPGRADE and "DEBIAN_FRONTEND=noninteractive" in UPGRADE and " -y " in UPGRADE
