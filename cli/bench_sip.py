"""`hapbx bench sip`: SIPp against the lab's VIP, ours side by side with stock Kamailio (issue 10).

Placeholder wiring: the benchmark is being written in this module.
"""
from __future__ import annotations

import sys

REPORT = "reports/sip-bench.md"


def add_parser(bsub) -> None:
    s = bsub.add_parser("sip", help="SIP on the running lab: REGISTER and calls, ours vs stock Kamailio")
    s.add_argument("--out", default=REPORT, help=f"report file ({REPORT})")
    s.set_defaults(func=run)


def run(args) -> int:
    print("hapbx bench sip: not implemented yet", file=sys.stderr)
    return 2
