"""The CDR drill on the suite's lab, short (the full one: `./hapbx lab cdr-drill`, reports/cdr-drill.md).

CDRs posted to the VIP from the host at 50/s while (1) the VIP owner is powered off and started again,
(2) Redis on the master (the VIP owner) is SIGKILLed and systemd restarts it: one run of each, with a 5 s
fault. Every acknowledged CDR must be in cdr.calls on the primary exactly once once the queue drained.
Then fails back so later tests see the configured roles, and removes the drill's firewall rule.
"""
from __future__ import annotations

from bench import cdr_drill
from lab import drills
from lab.context import LabContext


def test_cdr_drill_power_off_and_redis_kill_lose_no_acknowledged_cdr(lab):
    ctx = LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)
    st = None
    try:
        st = cdr_drill.setup(ctx)
        for scenario in ("poweroff", "redis-kill"):
            r = cdr_drill.run_one(ctx, st, scenario, 1, hold=5.0)
            print(f"\n{scenario}: " + ", ".join(f"{k} {r[k]}" for k in (
                "failed", "final_owner", "offered", "acked", "stored_queue", "stored_postgres", "http_503", "timeouts",
                "refused", "other_errors", "longest_no_ack_s", "p50_ms", "p99_ms", "missing", "duplicates",
                "unacked_stored")) + f"; {cdr_drill.ha_summary(r)}")
            assert r["acked"] > 0, r                       # the stream did reach the receivers on the VIP
            assert r["missing"] == 0, r                    # every acknowledged CDR is in PostgreSQL
            assert r["duplicates"] == 0, r                 # ... once
            assert r["unknown_rows"] == 0 and r["conflicts"] == 0, r
        drills.switch_to(ctx, lab.cluster.primary.name)
    finally:
        cdr_drill.cleanup(ctx, st)
