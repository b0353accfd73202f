"""`hapbx lab alert-drill`: the arguments, then lab/alert_drill.py (faults -> notifications -> reports/alerts.md).

    ./hapbx lab alert-drill                       # drills 1, 2, 5 and the SIP attack, 3 runs each
    ./hapbx lab alert-drill --only attack --runs 1
"""
from __future__ import annotations

import sys

REPORT = "reports/alerts.md"


def add_parser(lsub) -> None:
    d = lsub.add_parser("alert-drill", help="faults on the running lab and the alerts they send; write "
                                            "reports/alerts.md")
    d.add_argument("--out", default=REPORT, help=f"report file ({REPORT}); results beside it")
    d.add_argument("--runs", type=int, default=3, help="runs of each scenario (3)")
    d.add_argument("--merge", action="store_true", help="keep the other scenarios' results on record")
    d.add_argument("--only", default="", help="scenarios, e.g. drill1,attack (default: drill1,drill2,drill5,attack)")


def run(args, raw, cluster, spec) -> int:
    from lab import alert_drill
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    known = {s.key for s in alert_drill.SCENARIOS}
    if set(only) - known or args.runs < 1:
        print(f"hapbx lab alert-drill: unknown scenario(s) {sorted(set(only) - known)} (allowed: "
              f"{', '.join(sorted(known))}) or --runs < 1", file=sys.stderr)
        return 2
    return alert_drill.run(cluster, spec, out=args.out, runs=args.runs, only=only, merge=args.merge)
