"""`hapbx lab soak`: the arguments, then lab/soak.py (the failover drills' faults at random for N
minutes under a continuous workload; every acknowledged write checked -> reports/soak.md).

    ./hapbx lab soak --minutes 60 --seed 7           # reports/soak.md (+ soak.json)
    ./hapbx lab --stack lab-trixie soak --minutes 3 --seed 1 --out /tmp/soak.md
"""
from __future__ import annotations

import os
import random
import sys

REPORT = "reports/soak.md"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_parser(lsub) -> None:
    s = lsub.add_parser(
        "soak", help="inject the failover drills' faults at random for N minutes while a writer, SIP probes and "
                     "calls run; check every acknowledged write (lost, duplicated, overlapping writers); write "
                     f"{REPORT}",
        description="Randomized fault soak (issue 24): one fault at a time drawn from the failover drills with a "
                    "random hold (3-20 s; the flapping link its own 60 s) and a random quiet gap (5-20 s) after "
                    "the cluster is healthy again (240 s at most, else the soak stops with a finding). Meanwhile: "
                    "writes through the VIP every 50 ms (each acknowledgement with the node and PostgreSQL "
                    "timeline that gave it), SIP OPTIONS every 100 ms, a digest REGISTER every 0.5 s, a call every "
                    "2 s. At the end: acknowledged writes lost / duplicated, overlapping writers (a write "
                    "acknowledged by an old primary after a newer one acknowledged), outages by fault kind, "
                    "registrations, calls and CDRs lost. Exit 1 when the history check failed or a fault did "
                    "not heal.")
    s.add_argument("--minutes", type=float, default=60.0, help="how long faults are injected (60)")
    s.add_argument("--seed", type=int, default=None,
                   help="the schedule's seed (default: a random one, printed and in the report: give it again to "
                        "repeat the run's faults, holds and gaps)")
    s.add_argument("--out", default=REPORT, help=f"report file ({REPORT}); its figures in the .json beside it")
    s.add_argument("--report-only", action="store_true", help="write the report again from the .json beside it")


def run(args, raw, cluster, spec) -> int:
    from lab import soak
    if not 0 < args.minutes <= 24 * 60:
        print("hapbx lab soak: --minutes must be in (0, 1440]", file=sys.stderr)
        return 2
    if args.report_only:
        return soak.report_only(args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    out = args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out)
    return soak.command(cluster, spec, minutes=args.minutes, seed=seed, out=out, stack=args.stack,
                        argv=["lab", "--stack", args.stack, "soak", "--minutes", f"{args.minutes:g}", "--seed",
                              str(seed), *(["--out", args.out] if args.out != REPORT else [])])
