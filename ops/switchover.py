"""`hapbx switchover --stack S [--to NODE]`: the planned hand-over of the lead from the operator's
machine. It finds the node that leads (`hapbx-ha status` on each node: daemon_hold=1) and runs
`hapbx-ha switchover` there (hapbx_node/ha/switchover.py: the checks, keepalived stopped and
started again, the waits), reporting its refusal or failure with the node and its stderr."""
from __future__ import annotations

import shlex
import time

from components.config import ClusterConfig
from hapbx_node.layout import HA_CLI, parse_status

from .ssh import Runner

#: hapbx-ha switchover's exit code for "refused, nothing touched"
EXIT_REFUSED = 3


class SwitchoverError(RuntimeError):
    def __init__(self, text: str, refused: bool = False):
        super().__init__(text)
        self.refused = refused


def leader_of(cluster: ClusterConfig, run: Runner) -> str:
    """The node whose leader daemon holds the lease, asked on every node; an error when none or
    both say so, or a node does not answer."""
    holders = []
    for node in cluster.nodes:
        rc, out, err = run(node.name, f"{HA_CLI} status", 30)
        if rc != 0:
            raise SwitchoverError(f"{node.name}: `hapbx-ha status` failed: {err.strip() or out.strip()}")
        if parse_status(out).get("daemon_hold") == "1":
            holders.append(node.name)
    if len(holders) != 1:
        raise SwitchoverError(f"{'no node' if not holders else ' and '.join(holders)} holds the lease: not a "
                              "cluster to switch over (a failover is under way or needed)", refused=True)
    return holders[0]


def main(cluster: ClusterConfig, to: str | None, run: Runner, log=print, timeout_s: float = 60) -> dict:
    names = [n.name for n in cluster.nodes]
    if to is not None and to not in names:
        raise SwitchoverError(f"--to {to}: not a node of this stack ({', '.join(names)})", refused=True)
    leader = leader_of(cluster, run)
    if to == leader:
        raise SwitchoverError(f"{to} leads already", refused=True)
    target = to or next(n for n in names if n != leader)
    log(f"{leader} leads: handing the lead to {target}")
    started = time.monotonic()
    rc, out, err = run(leader, f"{HA_CLI} switchover --to {shlex.quote(target)} --timeout {timeout_s:g}",
                       3 * timeout_s + 30)
    for line in out.splitlines():
        log(f"  [{leader}] {line}")
    if rc == EXIT_REFUSED:
        raise SwitchoverError(f"{leader}: {err.strip()}", refused=True)
    if rc != 0:
        raise SwitchoverError(f"{leader}: hapbx-ha switchover failed (exit {rc}): {err.strip()}")
    return {"from": leader, "to": target, "seconds": round(time.monotonic() - started, 1)}
