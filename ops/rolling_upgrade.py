"""`hapbx upgrade --stack S`: the Debian package upgrade of both PBX nodes, one node at a time, the
node that leads last, with the calls up.

Order: the standby first (its daemons restart under it while the leader carries everything), then a
planned switchover to it (ops/switchover.py: refused while it is not a synchronous standby again,
retried until it is), then the old leader, now the standby. Before each node and after it, the
cluster must be healthy: one node leading, the other a streaming standby with keepalived BACKUP and
Kamailio active. A failing step stops the upgrade there, naming the node, the step and its stderr;
the node not yet upgraded is left untouched. The lead stays where the last switchover put it
(--back: handed back to the node that led before).

The command run on each node is the operator's (`--command`); the default keeps the configuration
files this program renders (confold: the next `pulumi up` owns them) and never asks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from components.config import ClusterConfig
from hapbx_node.layout import HA_CLI, parse_status

from . import switchover
from .ssh import Runner

UPGRADE = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -q "
           "-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef upgrade")
#: what a standby must show before the next step: `hapbx-ha status` fields and the active units
STANDBY_STATUS = {"postgres": "standby", "postgres_streaming": "yes", "vrrp_state": "BACKUP"}
STANDBY_UNITS = ("kamailio.service", "keepalived.service")


class UpgradeError(RuntimeError):
    pass


@dataclass
class Upgrade:
    order: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)       # node -> its upgrade command
    switchovers: list[dict] = field(default_factory=list)
    leader_after: str = ""


def standby_problems(status: dict[str, str], units: str) -> list[str]:
    """Why a node is not yet a ready standby (empty: ready). `units`: systemctl is-active's output
    for STANDBY_UNITS, one state per line. Pure: tests/unit/test_rolling_upgrade.py."""
    problems = [f"{k} {status.get(k, 'unknown')}" for k, want in STANDBY_STATUS.items() if status.get(k) != want]
    if status.get("daemon_hold") == "1":
        problems.append("it holds the lease")
    states = units.split()
    for unit, state in zip(STANDBY_UNITS, states + ["unknown"] * (len(STANDBY_UNITS) - len(states))):
        if state != "active":
            problems.append(f"{unit} {state}")
    return problems


def wait_standby(node: str, run: Runner, timeout_s: float, sleep=time.sleep, clock=time.monotonic) -> None:
    deadline = clock() + timeout_s
    problems: list[str] = []
    while True:
        rc, out, err = run(node, f"{HA_CLI} status; systemctl is-active {' '.join(STANDBY_UNITS)}", 30)
        lines = out.splitlines()
        units = "\n".join(line for line in lines if "=" not in line)
        problems = standby_problems(parse_status(out), units) if out else [f"no status ({err.strip()})"]
        if not problems:
            return
        if clock() >= deadline:
            raise UpgradeError(f"{node}: not a ready standby after {timeout_s:g} s: {', '.join(problems)}")
        sleep(2)


def hand_over(cluster: ClusterConfig, to: str, run: Runner, timeout_s: float, log,
              sleep=time.sleep, clock=time.monotonic) -> dict:
    """A planned switchover to `to`, retried while it is refused (the standby not synchronous yet)."""
    deadline = clock() + timeout_s
    while True:
        try:
            return switchover.main(cluster, to, run, log=log)
        except switchover.SwitchoverError as err:
            if not err.refused or clock() >= deadline:
                raise UpgradeError(f"switchover to {to}: {err}") from None
            log(f"  switchover to {to} refused for now ({err}); again in 2 s")
            sleep(2)


def main(cluster: ClusterConfig, run: Runner, command: str = UPGRADE, back: bool = False, log=print,
         timeout_s: float = 300, sleep=time.sleep, clock=time.monotonic) -> Upgrade:
    try:
        leader = switchover.leader_of(cluster, run)
    except switchover.SwitchoverError as err:
        raise UpgradeError(f"refused: {err}") from None
    standby = next(n.name for n in cluster.nodes if n.name != leader)
    result = Upgrade(order=[standby, leader])
    log(f"{leader} leads: upgrading {standby} first, then {leader} after a switchover")
    wait_standby(standby, run, timeout_s, sleep, clock)
    for node in result.order:
        other = next(n.name for n in cluster.nodes if n.name != node)
        if node == leader:
            result.switchovers.append(hand_over(cluster, other, run, timeout_s, log, sleep, clock))
            wait_standby(node, run, timeout_s, sleep, clock)
        log(f"{node}: {command}")
        started = clock()
        rc, out, err = run(node, command, max(timeout_s, 1800))
        result.seconds[node] = round(clock() - started, 1)
        if rc != 0:
            raise UpgradeError(f"{node}: the upgrade command failed (exit {rc}): "
                               f"{(err.strip() or out.strip())[-2000:]}")
        wait_standby(node, run, timeout_s, sleep, clock)
        log(f"{node}: upgraded in {result.seconds[node]} s, a ready standby again")
    if back:
        result.switchovers.append(hand_over(cluster, leader, run, timeout_s, log, sleep, clock))
    result.leader_after = switchover.leader_of(cluster, run)
    return result
