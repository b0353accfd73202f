"""bench.standin_loopback's report: one line per rate and poster, the baseline named by its
revision, the figures as the steps measured them."""
from bench.standin_loopback import report


def _row(rate, poster, cpu_ms, **extra):
    return {"poster": poster, "rate": rate, "placed": rate * 20, "completed": rate * 20, "cdrs_posted": rate * 20,
            "posted_twice": 0, "poster_cpu_pct": 12.5, "poster_cpu_s": 3.0, "poster_cpu_ms_per_cdr": cpu_ms,
            "uas_cpu_pct": 11.0, "bye_p99_ms": 16.0, **extra}


def test_one_line_per_rate_and_poster_with_the_baselines_revision():
    rows = [_row(400, "baseline", 3.686, rev="HEAD^ = abc1234"), _row(400, "this tree", 0.376)]
    text = report(rows, "2 cores; sipp v3.6.1", "python -m bench.standin_loopback --rates 400")
    table = [line for line in text.splitlines() if line.startswith("| 400 ")]
    assert len(table) == 2
    assert "baseline (HEAD^ = abc1234)" in table[0] and "3.686 ms" in table[0]
    assert "this tree" in table[1] and "0.376 ms" in table[1] and "8,000 of 8,000" in table[1]
    assert "`python -m bench.standin_loopback --rates 400`" in text and "2 cores" in text


def test_a_step_without_the_poster_shows_no_poster_figures():
    row = {k: v for k, v in _row(200, "this tree", 0.4).items() if not k.startswith("poster_cpu")}
    [line] = [x for x in report([row], "2 cores", "x").splitlines() if x.startswith("| 200 ")]
    assert "- % of a core (- s)" in line and "| - ms |" in line
