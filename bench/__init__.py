"""Measurements of the PBX's parts, each written to reports/<part>-bench.md by the command itself.

    sip.py       `hapbx bench sip`: SIPp against the running lab, ours beside stock Kamailio
    cdr.py       `hapbx bench cdr`: the CDR pipeline on loopback (receiver -> Redis -> worker -> PostgreSQL)
    loadgen.py   the CDR load generator (its own process, Debian's python3)
    devstack.py  the loopback PostgreSQL + Redis + CDR services the CDR bench and the render-tier CDR tests run
    sipp.py      the one SIPp runner (benches, drills, tests) and the parsers of its files
    report.py    the one report writer: the machine, the command, the files
    scenarios/   the SIPp scenarios of the SIP bench (users from an injection file)

The lab the SIP bench runs against is lab/context.py's, the drills' own.
"""
