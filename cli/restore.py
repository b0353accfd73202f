"""`hapbx restore`: the arguments, then ops/restore.py (point-in-time recovery from the backup
repository, the peer rebuilt, the lease back).

    ./hapbx restore --stack prod --to latest                 # print the steps, change nothing
    ./hapbx restore --stack prod --to 2026-12-07T09:30:00+01:00 --node pbx2 --yes
"""
from __future__ import annotations

import sys

from ops.restore import RestoreError, main, parse_target, plan, stamp_now
from cli.node_runner import node_runner


def add_parser(sub):
    r = sub.add_parser("restore", help="restore PostgreSQL to a point in time from the backup repository, "
                                       "rebuild the peer as its standby, re-establish the lease")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--stack", help="stack name (reads Pulumi.<stack>.yaml)")
    g.add_argument("--config", help="a stack file")
    r.add_argument("--to", required=True, help="'latest', or a time with its zone (2026-12-07T09:30:00+01:00)")
    r.add_argument("--node", help="the node that becomes the restored primary (default: postgres.initialPrimary)")
    r.add_argument("--yes", action="store_true", help="do it (without: print the steps and change nothing)")
    return r


def cmd(args, stack_file: str) -> int:
    from components.config import ConfigError, load_stack_file
    try:
        cluster, _ = load_stack_file(stack_file, assume_secrets=True)
        target = parse_target(args.to)
        steps = plan(cluster, args.node or cluster.primary.name, target, stamp_now())
    except (ConfigError, RestoreError, FileNotFoundError) as err:
        print(f"hapbx restore: {err}", file=sys.stderr)
        return 2
    if not args.yes:
        print(f"hapbx restore would run, with an outage from step 4 to 8 ({len(steps)} steps; --yes to do it):")
        for i, s in enumerate(steps, 1):
            print(f"  {i:>2}. [{s.node}] {s.title}")
        return 0
    run = node_runner(cluster)
    try:
        result = main(cluster, args.to, args.node, run)
    except RestoreError as err:
        print(f"hapbx restore: {err}", file=sys.stderr)
        return 1
    print(f"restored {result['node']} to {result['target']} in {result['seconds']} s; the peer streams from it")
    return 0
