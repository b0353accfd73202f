"""How the drills turn probe attempts into interruptions and the report's 'answers again' times."""
from __future__ import annotations

import math

from lab.drills import interruption_end, interruptions
from lab.drill_report import _during_fault


def attempts(spec):
    """(sent, done, ok) every 0.05 s from a compact spec: (start, end, ok, latency)."""
    out = []
    for start, end, ok, latency in spec:
        t = start
        while t < end - 1e-9:
            out.append((round(t, 3), round(t + latency, 3), ok))
            t += 0.05
    return out


def test_failed_attempts_and_slow_answers_are_interruptions():
    recs = attempts([(-1.0, 0.2, True, 0.005), (0.2, 1.0, False, 0.01), (1.0, 6.5, True, 0.005),
                     (6.5, 6.55, True, 0.63), (7.13, 8.0, True, 0.005)])
    ints = interruptions(recs, 0.0, 0.5)
    assert len(ints) == 2
    (s1, e1), (s2, e2) = ints
    assert math.isclose(s1, 0.155, abs_tol=0.01) and math.isclose(e1, 1.005, abs_tol=0.01)   # failures
    assert math.isclose(s2, 6.455, abs_tol=0.01) and math.isclose(e2, 7.13, abs_tol=0.01)    # one 0.63 s commit
    end, down = interruption_end(recs, 0.0, 0.5)
    assert end == e2 and math.isclose(down, (e1 - s1) + (e2 - s2))


def test_nothing_wrong_is_no_interruption_and_still_failing_is_infinite():
    ok = attempts([(-1.0, 5.0, True, 0.005)])
    assert interruptions(ok, 0.0, 0.5) == [] and interruption_end(ok, 0.0, 0.5) == (0.0, 0.0)
    failing = attempts([(-1.0, 0.5, True, 0.005), (0.5, 3.0, False, 0.01)])
    assert interruption_end(failing, 0.0, 0.5)[0] == float("inf")


def test_the_fault_reading_is_the_longest_outage_and_lists_the_other_stalls():
    recs = attempts([(-1.0, 0.2, True, 0.005), (0.2, 1.0, False, 0.01), (1.0, 6.5, True, 0.005),
                     (6.5, 6.55, True, 0.63), (7.13, 12.0, True, 0.005)])
    chart = {"heal": 5.0, "writes": [[s, ok, d] for s, d, ok in recs]}
    end, later, others = _during_fault(chart, "writes", 0.5)
    assert math.isclose(end, 1.005, abs_tol=0.01)
    assert len(others) == 1 and math.isclose(others[0][1] - others[0][0], 0.675, abs_tol=0.02)
    assert later == []
    # a longer outage later (e.g. commits waiting for a cut standby) is the one counted
    hang = attempts([(-1.0, 0.0, True, 0.005), (0.0, 0.05, True, 0.3), (0.3, 2.0, True, 0.005),
                     (2.0, 2.05, True, 9.0), (11.0, 12.0, True, 0.005)])
    end, _, others = _during_fault({"heal": 10.0, "writes": [[s, ok, d] for s, d, ok in hang]}, "writes", 0.2)
    assert math.isclose(end, 11.0, abs_tol=0.01) and len(others) == 1
