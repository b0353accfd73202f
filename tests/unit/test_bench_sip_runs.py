"""bench/sip_runs.py and the SIP bench's headline figures over runs: medians, spreads, the
verdicts on them, the report and --from-json of the new and the old JSON."""
from __future__ import annotations

import argparse
import json

import pytest

from bench import sip as b
from bench import sip_runs as r


def test_median_and_spread():
    f = r.Figure([200.0, 150.0, 300.0])
    assert (f.median, f.low, f.high) == (200.0, 150.0, 300.0)
    assert f.show("/s") == "200/s (150/s-300/s)"
    assert r.Figure([8.0, None, 12.0]).median == 10.0                  # the runs that had it
    assert r.Figure([8.0, None, 12.0]).show(" ms") == "10 ms (8 ms-12 ms) [1 of 3 runs: none]"
    assert r.Figure([None, None]).median is None and r.Figure([None]).show() == "-"
    assert r.Figure([0.123]).show(digits=2) == "0.12"                   # one run: no spread
    assert r.Figure([1.0, 1.0, 0.0]).median == 1.0                      # a verdict of most runs


def test_aggregate_and_ratio():
    figs = r.aggregate([{"a": 1.0, "b": 5.0}, {"a": 3.0}, {"a": 2.0, "b": 7.0}])
    assert figs["a"].values == [1.0, 3.0, 2.0] and figs["b"].values == [5.0, None, 7.0]
    assert r.ratio(figs["a"], figs["b"]) == "0.33x"
    assert r.ratio(figs["a"], r.Figure([None])) == "-" and r.ratio(figs["a"], r.Figure([0.0])) == "-"


def step(scenario, rate, **kw) -> b.Step:
    base = dict(scenario=scenario, target="ours", rate=rate, seconds=10, attempted=int(rate * 10), ok=int(rate * 10),
                failed=0, p95=10.0, elapsed=10.0, classified=True)
    base.update(kw)
    return b.Step(**base)


def one_run(n: int, calls_stop: float, setup_p95: float, target: str = "ours") -> dict:
    calls = [step("calls", x, run=n, target=target, p95=setup_p95) for x in (100, 200, 300) if x < calls_stop]
    calls.append(step("calls", calls_stop, run=n, target=target, kamailio_failed=50, failed=50, ok=int(calls_stop * 10) - 50))
    return {target: {"register": [step("register", 500, run=n, target=target, p95=12.0 + n)],
                     "hold": [step("hold", 100, run=n, target=target, max_concurrent=800, held_seconds=30)],
                     "calls": calls}}


def test_headline_figures_are_medians_of_the_runs():
    runs = [one_run(1, 400, 8.0), one_run(2, 300, 9.0), one_run(3, 200, 60.0)]   # run 3 fails at 200/s
    figs = b.headline(runs, "ours")
    assert figs["calls_rate"].values == [300, 200, 100] and figs["calls_rate"].median == 200
    # the step at 200/s: passed in runs 1 and 2, failed (Kamailio's replies) in run 3
    assert figs["setup_p95"].values == [8.0, 9.0, 10.0] and figs["setup_p95"].median == 9.0
    assert figs["setup_p95_ok"].values == [1.0, 1.0, 0.0] and b.mostly(figs["setup_p95_ok"])
    assert not b.mostly(r.Figure([1.0, 0.0, 0.0])) and not b.mostly(r.Figure([1.0, 0.0]))
    assert figs["register_p95"].median == 14.0 and figs["held"].median == 800
    assert b.headline(runs, "stock") == {k: r.Figure([None] * 3) for k in figs}


def test_report_shows_medians_with_spread_and_every_run(tmp_path):
    runs = [{**one_run(n, 400, 8.0 + n), **one_run(n, 300, 5.0, "stock")} for n in (1, 2, 3)]
    meta = {"argv": [], "started": "now", "took": 1.0, "lab": "lab", "config": "x", "owner": "pbx1", "locked": False,
            "info": {"cores": 2}, "kamailio": {"children": 8, "shm_mb": 64, "pkg_mb": 8},
            "stock": {"version": "5.6", "source": "deb", "changes": [], "port": 5070, "shm_mb": 64, "pkg_mb": 8},
            "args": {"concurrent": 800, "hold_seconds": 40, "ramp_rate": 100, "call_hold_ms": 4000, "users": 10,
                     "register_rates": [500], "call_rates": [100, 200], "step_seconds": 12, "max_minutes": 20},
            "notes": []}
    text = b.report(runs, meta, "x.png")
    assert "median of 3 runs" in text
    assert "| highest calls/s passed | 300 (300-300) | 200 (200-200) | 1.50x | >= 200: **met** |" in text
    assert "| call-setup p95 at 200 calls/s | 10 ms (9 ms-11 ms) | 5 ms (5 ms-5 ms) | 2.00x | < 50 ms: **met** |" in text
    assert text.count("| ours | 2 | ") == 6 and text.count("| stock | 3 | ") == 5     # every step of every run
    assert "stock, all steps of all runs: Kamailio 150" in text
    # saved as the bench saves it, then written again from the file
    data = {"meta": meta, "runs": [{t: {s: [x.as_dict() for x in v] for s, v in res.items()} for t, res in run.items()}
                                   for run in runs]}
    path = tmp_path / "sip-bench.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "again.md"
    assert b.run(argparse.Namespace(from_json=str(path), out=str(out))) == 0
    assert out.read_text() == text.replace("x.png", "again.png")


def test_the_single_run_json_of_before_is_read_as_one_run():
    old = {"results": {"ours": {"calls": [{"scenario": "calls", "target": "ours", "rate": 250, "seconds": 12,
                                           "attempted": 3000, "ok": 2996, "failed": 4, "fail_ratio": 0.0013,
                                           "elapsed": 12.0, "achieved": 250}]}}}
    runs = b.load_runs(old)
    s = runs[0]["ours"]["calls"][0]
    assert len(runs) == 1 and s.run == 1 and not s.classified and s.server_failed == 4 and not b.passed(s)


@pytest.mark.parametrize("given,want", [(None, b.RUNS), (0, b.RUNS), (1, 1), (99, b.MAX_RUNS)])
def test_runs_bounded(given, want):
    a = argparse.Namespace(users=10, register_rates=[100], call_rates=[10], step_seconds=12, call_hold_ms=0,
                           concurrent=10, ramp_rate=10, hold_seconds=10, max_minutes=5)
    if given is not None:
        a.runs = given
    b.bounded(a)
    assert a.runs == want
