"""`hapbx lab cdr-drill`: the arguments, then bench/cdr_drill.py (CDRs to the VIP while the VIP owner is
powered off or its Redis SIGKILLed -> reports/cdr-drill.md).

    ./hapbx lab cdr-drill                                 # both drills, 5 runs each
    ./hapbx lab cdr-drill --only redis-kill --runs 2      # one drill, fewer runs
"""
from __future__ import annotations

import sys


def add_parser(lsub) -> None:
    from bench import cdr_drill as cd
    d = lsub.add_parser("cdr-drill", help="post CDRs to the VIP while the lab breaks; every acknowledged one must "
                                          "be in PostgreSQL once: write reports/cdr-drill.md")
    d.add_argument("--runs", type=int, default=5, help="runs of each drill (5)")
    d.add_argument("--only", default="", help=f"drills to run, e.g. redis-kill (default: {','.join(cd.SCENARIOS)})")
    d.add_argument("--rate", type=float, default=cd.RATE, help=f"CDRs posted per second ({cd.RATE:g})")
    d.add_argument("--timeout", type=float, default=cd.TIMEOUT,
                   help=f"seconds a post may take, then it counts as not acknowledged ({cd.TIMEOUT:g}: mod_json_cdr's)")
    d.add_argument("--hold", type=float, default=cd.HOLD, help=f"seconds the fault lasts before the heal ({cd.HOLD:g})")
    d.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="",
                   help="set Redis' AOF fsync policy on both nodes before each run (CONFIG SET; put back at the end); "
                        "default: as the nodes run it")
    d.add_argument("--out", default=cd.REPORT, help=f"report file ({cd.REPORT}); its figures in the .json beside it")
    d.add_argument("--merge", action="store_true",
                   help="keep the runs on record of the drills (and appendfsync) not run again")
    d.add_argument("--note", default="", help="a note on this invocation, printed in the report")
    d.add_argument("--report-only", action="store_true", help="write the report again from its .json")


def run(args, raw, cluster, spec) -> int:
    from bench import cdr_drill as cd
    if args.report_only:
        return cd.report_only(args.out)
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(cd.SCENARIOS)
    bad = [x for x in only if x not in cd.SCENARIOS]
    if bad or args.runs < 1 or not 0 < args.rate <= 1000 or not 0 < args.timeout <= 60 or not 1 <= args.hold <= 120:
        print(f"hapbx lab cdr-drill: unknown drill(s) {bad} (allowed: {', '.join(cd.SCENARIOS)}), or --runs < 1, "
              "--rate not in (0, 1000], --timeout not in (0, 60] or --hold not in [1, 120]", file=sys.stderr)
        return 2
    return cd.run(cluster, spec, out=args.out, only=only, runs=args.runs, rate=args.rate, timeout=args.timeout,
                  hold=args.hold, override=args.appendfsync, note=args.note, merge=args.merge)
