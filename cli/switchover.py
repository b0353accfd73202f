"""`hapbx switchover`: the arguments, then ops/switchover.py (the planned hand-over of lease, writes
and VIP to the synchronous standby; `hapbx-ha switchover` on the leader).

    ./hapbx switchover --stack prod              # to the standby
    ./hapbx switchover --stack prod --to pbx1
"""
from __future__ import annotations

import sys


def add_parser(sub):
    s = sub.add_parser("switchover", help="hand lease, writes and VIP to the synchronous standby (refused, with "
                                          "the reason, when that is not safe)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--stack", help="stack name (reads Pulumi.<stack>.yaml)")
    g.add_argument("--config", help="a stack file")
    s.add_argument("--to", help="the node to lead next (default: the standby)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds for each of the leader's waits (60)")
    return s


def cmd(args, stack_file: str) -> int:
    from ops.switchover import SwitchoverError, main

    from cli.node_runner import node_runner, stack_cluster
    cluster = stack_cluster(stack_file, "switchover")
    if cluster is None:
        return 2
    try:
        result = main(cluster, args.to, node_runner(cluster), timeout_s=args.timeout)
    except SwitchoverError as err:
        print(f"hapbx switchover: {'refused: ' if err.refused else ''}{err}", file=sys.stderr)
        return 3 if err.refused else 1
    print(f"{result['to']} leads (was {result['from']}); {result['seconds']} s")
    return 0
