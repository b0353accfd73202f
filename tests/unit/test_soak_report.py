"""reports/soak.md from a soak's figures (lab/soak_report.py): the seed and command to repeat it, the
verdict's counts, and "not measured" (never a number) where the calls' CDRs could not be read."""
from __future__ import annotations

from lab import soak
from lab.soak_history import FaultWindow, Write, summarise
from lab.soak_report import render

T0 = 1000.0


def figures(cdr_found):
    ws = [Write(i, T0 + i * 0.05, T0 + i * 0.05 + 0.01, True, "pbx1", 1) for i in range(1, 101)]
    ws += [Write(101, T0 + 6.0, T0 + 7.0, False, error="read-only")]
    ws += [Write(i, T0 + 8 + i * 0.05, T0 + 8 + i * 0.05 + 0.01, True, "pbx2", 2) for i in range(102, 150)]
    stored = {w.id: 1 for w in ws if w.ok}
    opts = [(T0 + i * 0.1, T0 + i * 0.1 + 0.01, True) for i in range(150)]
    return summarise(writes=ws, stored=stored, stored_node={w.id: w.node for w in ws if w.ok}, options=opts,
                     registers=opts[::5], calls=[(1, T0 + 1, T0 + 1.6, True), (2, T0 + 6.2, T0 + 9, False, "503")],
                     windows=[FaultWindow("2. power off the VIP owner node", T0 + 5.5, T0 + 12.0)], samples={},
                     t0=T0, cdr_found=cdr_found, call_uuids={1: "u1"})


META = {"command": "./hapbx lab --stack lab-trixie soak --minutes 1 --seed 7", "seed": 7, "minutes": 1.0,
        "stack": "lab-trixie", "lab": "hapbx-lab13", "release": "trixie", "started": "2026-12-07 07:00:00 UTC",
        "seconds": 70.0, "host": {"cores": "2", "cpu": "x", "memory": "1 MiB", "kernel": "6", "python": "3.11"},
        "load_start": [1.0, 2.0, 3.0], "load_end": [1.5, 2.5, 3.5], "hold": soak.HOLD, "gap": soak.GAP,
        "weights": {str(k): v for k, v in soak.WEIGHT.items()}, "healthy_within": 240.0, "run_id": "soak7-1",
        "t_start": T0, "cdr_error": ""}
FAULTS = [{"n": 1, "drill": 2, "kind": "2. power off the VIP owner node", "owner": "pbx1", "hold": 6.0, "gap": 9.0,
           "t_fault": T0 + 5.5, "t_heal": T0 + 11.5, "t_healthy": T0 + 12.0, "owner_after": "pbx2", "notes": [],
           "phone_missing": [], "error": ""}]


def test_the_report_says_how_to_repeat_it_and_what_was_checked():
    text = render(META, figures({"u1"}), FAULTS, [])
    assert "**seed 7**" in text and "soak --minutes 1 --seed 7" in text
    assert "load average at start 1.00 2.00 3.00, at end 1.50 2.50 3.50" in text
    assert "**lost 0, duplicated 0**" in text and "**overlapping writers (history check violations): 0**" in text
    assert "CDRs missing in cdr.calls for answered calls: **0** of 1" in text
    assert "| 2. power off the VIP owner node | 1 | 6.0 / 6.0 / 6.0 s | 0.5 / 0.5 / 0.5 s | 1 of 1 |" in text
    assert "| 1 | pbx1 |" in text and "| 2 | pbx2 |" in text      # the tenures
    assert "history check: passed" in text


def test_cdrs_not_read_are_not_measured_never_a_number():
    text = render({**META, "cdr_error": "no VIP owner at the end: cdr.calls not read"}, figures(None), FAULTS, [])
    assert "CDRs missing in cdr.calls for answered calls: not measured: no VIP owner at the end" in text


def test_a_lost_write_fails_the_history_check():
    r = figures({"u1"})
    r["lost"] = [5]
    assert "history check: **FAILED**" in render(META, r, FAULTS, ["a finding"])
