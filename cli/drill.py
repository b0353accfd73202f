"""`hapbx lab drill`: failover drills on the running lab -> reports/failover.md (issue 9).

Placeholder wiring: the drills are being written in this module.
"""
from __future__ import annotations

import sys

REPORT = "reports/failover.md"


def add_parser(lsub) -> None:
    d = lsub.add_parser("drill", help="break the running lab the ways production breaks; write reports/failover.md")
    d.add_argument("--out", default=REPORT, help=f"report file ({REPORT})")


def run(args, raw, cluster, spec) -> int:
    print("hapbx lab drill: not implemented yet", file=sys.stderr)
    return 2
