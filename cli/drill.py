"""`hapbx lab drill`: the arguments, then lab/drill_run.py (failover drills -> reports/failover.md).

    ./hapbx lab drill                      # the twelve drills, 5 runs each
    ./hapbx lab drill --only 1,3 --runs 2  # some drills, fewer runs
    ./hapbx lab drill restore              # backups, point-in-time and whole-cluster restores
                                           # (lab/restore_drill.py -> reports/restore.md)
"""
from __future__ import annotations

import sys

REPORT = "reports/failover.md"
RESTORE_REPORT = "reports/restore.md"


def add_parser(lsub) -> None:
    d = lsub.add_parser("drill", help="break the running lab the ways production breaks; write reports/failover.md "
                                      "(`drill restore`: backups and restores, reports/restore.md)")
    d.add_argument("kind", nargs="?", default="failover", choices=("failover", "restore"),
                   help="failover (the default): the failover drills; restore: the backup and restore drill")
    d.add_argument("--out", default=REPORT, help=f"report file ({REPORT}); charts and results.json beside it")
    d.add_argument("--runs", type=int, default=None, help="runs of each drill (5; restore: 3)")
    d.add_argument("--only", default="", help="drills to run, e.g. 1,3 (default: all twelve)")
    d.add_argument("--report-only", action="store_true", help="write the report again from results.json")
    d.add_argument("--note", default="", help="a note on this invocation, printed in the report")
    d.add_argument("--merge", action="store_true",
                   help="keep the other drills' results from results.json (a drill run again replaces its own)")


def run(args, raw, cluster, spec) -> int:
    if args.kind == "restore":
        from lab import restore_drill
        return restore_drill.run(cluster, spec, out=RESTORE_REPORT if args.out == REPORT else args.out,
                                 runs=args.runs or 3)
    from lab import drill_run, drills
    args.runs = 5 if args.runs is None else args.runs
    if args.report_only:
        return drill_run.report_only(args.out)
    try:
        only = sorted({int(x) for x in args.only.split(",") if x.strip()}) or sorted(drills.DRILLS)
    except ValueError:
        print(f"hapbx lab drill: --only {args.only!r}: give drill numbers like 1,3", file=sys.stderr)
        return 2
    bad = [d for d in only if d not in drills.DRILLS]
    if bad or args.runs < 1:
        print(f"hapbx lab drill: unknown drill(s) {bad} (allowed {min(drills.DRILLS)}-{max(drills.DRILLS)}) "
              "or --runs < 1", file=sys.stderr)
        return 2
    return drill_run.run(cluster, spec, out=args.out, only=only, runs=args.runs, note=args.note, merge=args.merge)
