"""`hapbx upgrade`: the arguments, then ops/rolling_upgrade.py (Debian package upgrades one PBX node
at a time, the node that leads last, after a planned switchover).

    ./hapbx upgrade --stack prod
    ./hapbx upgrade --stack prod --back         # the lead handed back to the node that led before
"""
from __future__ import annotations

import sys


def add_parser(sub):
    from ops.rolling_upgrade import UPGRADE
    s = sub.add_parser("upgrade", help="apt-get upgrade both PBX nodes one at a time, the leader last (after a "
                                       "planned switchover), each a ready standby again before the next")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--stack", help="stack name (reads Pulumi.<stack>.yaml)")
    g.add_argument("--config", help="a stack file")
    s.add_argument("--command", default=UPGRADE, help=f"what runs on each node, as root (default: {UPGRADE})")
    s.add_argument("--back", action="store_true", help="hand the lead back to the node that led before")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds for each wait: a node ready again, a switchover accepted (300)")
    return s


def cmd(args, stack_file: str) -> int:
    from ops.rolling_upgrade import UpgradeError, main

    from cli.node_runner import node_runner, stack_cluster
    cluster = stack_cluster(stack_file, "upgrade")
    if cluster is None:
        return 2
    try:
        result = main(cluster, node_runner(cluster), command=args.command, back=args.back, timeout_s=args.timeout)
    except UpgradeError as err:
        print(f"hapbx upgrade: {err}", file=sys.stderr)
        return 1
    took = ", ".join(f"{n} {s} s" for n, s in result.seconds.items())
    print(f"upgraded {' then '.join(result.order)} ({took}); {result.leader_after} leads")
    return 0
