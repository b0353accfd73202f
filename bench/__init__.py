"""Measurements of the PBX's parts, each written to reports/<part>-bench.md by the command itself.

    sip.py       `hapbx bench sip`: SIPp against the running lab, ours beside stock Kamailio
    cdr.py       `hapbx bench cdr`: the CDR pipeline on loopback (receiver -> Redis -> worker -> PostgreSQL)
    loadgen.py   the CDR load generator (its own process, Debian's python3)
    devstack.py  the loopback PostgreSQL + Redis + CDR services the CDR bench and the daemons-tier CDR tests run
    scenarios/   the SIPp scenarios of the SIP bench (users from an injection file)

The lab the SIP bench runs against is lab/context.py's, the drills' own; the SIPp runner and the
report writer they share are lab/sipp.py and lab/report.py (bench imports lab, never the reverse).
"""
