"""A 3-minute randomized fault soak on the suite's lab (the full one: `./hapbx lab soak --minutes 60`,
reports/soak.md): the failover drills' faults at random (seed fixed, so a failure can be repeated),
while a writer, SIP probes, a registered phone and calls run; then the history check.

Asserts what must hold whatever the timing: no acknowledged write lost or duplicated, no overlapping
writers (an old primary acknowledging after a newer one had), no timeline acknowledged by two nodes,
at least 3 faults injected and each healed, the cluster healthy at the end. Outage durations are
figures for the report, not assertions here.
"""
from __future__ import annotations

import os

from lab import drills, soak, soak_report
from lab.context import LabContext

SEED = 1
MINUTES = 3.0


def test_a_three_minute_soak_loses_no_acknowledged_write(lab, tmp_path):
    ctx = LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)
    try:
        drills.setup(ctx)
        data = soak.run(ctx, minutes=MINUTES, seed=SEED, log=print)
        r = soak.figures(data)
        meta = {"command": f"tests/lab/test_soak_lab.py (seed {SEED})", "seed": SEED, "minutes": MINUTES,
                "stack": "labtest", "lab": lab.spec.name, "release": lab.cluster.os.release, "started": "",
                "seconds": data.t_end - data.t_start, "host": {"cores": os.cpu_count(), "kernel": "", "python": ""},
                "load_start": os.getloadavg(), "load_end": os.getloadavg(), "hold": soak.HOLD, "gap": soak.GAP,
                "weights": soak.WEIGHT, "healthy_within": soak.HEALTHY_WITHIN, "run_id": data.run_id,
                "t_start": data.t_start, "cdr_error": data.cdr_error}
        faults = [dict(f.__dict__) for f in data.faults]
        soak_report.write(str(tmp_path / "soak.md"), meta, r, faults, data.findings)
        print((tmp_path / "soak.md").read_text())
        assert r["acked"] > 1000, r["acked"]                         # the writer did write through the VIP
        assert r["lost"] == [] and r["duplicated"] == [], (r["lost"][:20], r["duplicated"][:20])
        assert r["stored_elsewhere"] == []                           # the row names the node that acknowledged it
        assert r["overlapping"] == [] and r["split_timelines"] == {}, (r["overlapping"][:5], r["split_timelines"])
        assert r["sampler_violations"] == [], r["sampler_violations"][:5]
        assert len(data.faults) >= 3, [f.kind for f in data.faults]
        assert all(f.t_heal and f.t_healthy and not f.error for f in data.faults), faults
        assert not [x for x in data.findings if "not healthy" in x or "stopped" in x], data.findings
        owner, problems = drills.health(ctx)                         # healthy at the end
        assert owner and not problems, problems
    finally:
        try:
            drills.switch_to(ctx, lab.cluster.primary.name)   # later tests expect the configured roles
        finally:
            drills.cleanup(ctx)
