"""The soak's history check (lab/soak_history.py) on hand-made histories: the ones a healthy cluster
produces pass, the ones an old primary still acknowledging, a lost or doubled row, or a split brain
produce are caught."""
from __future__ import annotations

from lab.soak_history import (BETWEEN, FaultWindow, Write, failed_outside, kind_at, lost_and_duplicated, outage_table,
                              outages, overlapping_writers, sampler_violations, split_timelines, stored_elsewhere,
                              summarise, tenures)


def seq(start: int, t: float, node: str, tl: int, n: int, step: float = 0.05, rtt: float = 0.01) -> list[Write]:
    """n sequential acknowledged writes from one writer, ids from start, sent from t every step."""
    return [Write(start + i, t + i * step, t + i * step + rtt, True, node, tl) for i in range(n)]


def failover() -> list[Write]:
    """pbx1 on timeline 1, 2 s of refused writes, pbx2 promoted (timeline 2), later pbx1 again (3)."""
    ws = seq(1, 100.0, "pbx1", 1, 20)
    ws += [Write(21 + i, 101.0 + i * 0.1, 101.05 + i * 0.1, False, error="read-only") for i in range(20)]
    ws += seq(41, 103.0, "pbx2", 2, 20)
    ws += seq(61, 110.0, "pbx1", 3, 20)
    return ws


# ------------------------------------------------------------------ histories that must pass


def test_a_failover_and_a_failback_are_no_violation():
    ws = failover()
    assert overlapping_writers(ws) == []
    assert split_timelines(ws) == {}
    assert [(t[0], t[1], t[4]) for t in tenures(ws)] == [(1, "pbx1", 20), (2, "pbx2", 20), (3, "pbx1", 20)]


def test_a_primary_restarted_in_place_keeps_its_timeline_and_is_one_tenure():
    ws = seq(1, 0.0, "pbx1", 4, 10) + [Write(11, 0.6, 1.6, False, error="terminating")] + seq(12, 3.0, "pbx1", 4, 10)
    assert overlapping_writers(ws) == [] and split_timelines(ws) == {}
    assert len(tenures(ws)) == 1


def test_several_writers_interleaving_within_one_tenure_pass():
    a = seq(1, 0.0, "pbx1", 1, 10, step=0.1, rtt=0.3)        # overlapping in flight, same tenure
    b = seq(101, 0.05, "pbx1", 1, 10, step=0.1, rtt=0.3)
    c = seq(201, 5.0, "pbx2", 2, 10)
    assert overlapping_writers(a + b + c) == []


def test_every_acknowledged_row_present_once():
    ws = failover()
    stored = {w.id: 1 for w in ws if w.ok}
    stored[25] = 1   # a commit whose answer never came: stored, not acknowledged, allowed
    assert lost_and_duplicated(ws, stored) == ([], [])
    assert stored_elsewhere(ws, {w.id: w.node for w in ws if w.ok}) == []


# ------------------------------------------------------------------ histories that must fail


def test_the_old_primary_acknowledging_after_the_new_one_is_caught():
    ws = seq(1, 0.0, "pbx1", 1, 10) + seq(11, 1.0, "pbx2", 2, 5)
    late = Write(16, 1.5, 1.52, True, "pbx1", 1)   # sent after pbx2 (timeline 2) had acknowledged
    ws += [late] + seq(17, 1.6, "pbx2", 2, 5)
    got = overlapping_writers(ws)
    assert len(got) == 1 and got[0][0] == late and got[0][1].node == "pbx2" and got[0][1].timeline == 2


def test_a_late_write_of_the_old_primary_is_caught_with_several_writers():
    a = seq(1, 0.0, "pbx1", 1, 5)
    b = seq(101, 2.0, "pbx2", 2, 5)                   # writer B: the new primary
    stale = Write(201, 2.2, 2.9, True, "pbx1", 1)     # writer C still on the old primary
    assert [w.id for w, _ in overlapping_writers(a + b + [stale])] == [201]


def test_two_nodes_acknowledging_one_timeline_is_a_split_brain():
    ws = seq(1, 0.0, "pbx1", 2, 5) + seq(6, 1.0, "pbx2", 2, 5)
    assert split_timelines(ws) == {2: ["pbx1", "pbx2"]}
    assert overlapping_writers(ws)   # pbx2's writes, sent after pbx1 acknowledged on the same timeline


def test_a_lost_and_a_doubled_row_are_counted():
    ws = failover()
    stored = {w.id: 1 for w in ws if w.ok}
    del stored[5]
    stored[50] = 2
    assert lost_and_duplicated(ws, stored) == ([5], [50])


def test_a_row_naming_another_node_than_its_acknowledgement_is_caught():
    ws = seq(1, 0.0, "pbx1", 1, 3)
    assert stored_elsewhere(ws, {1: "pbx1", 2: "pbx2", 3: "pbx1"}) == [2]


# ------------------------------------------------------------------ the samplers' view


def samples(node_roles: dict[str, str], t0: float, t1: float) -> dict[str, list[tuple]]:
    out = {}
    for node, role in node_roles.items():
        out[node] = [(t0 + i * 0.1, 0, role, "-", "-") for i in range(int((t1 - t0) / 0.1) + 1)]
    return out


def test_a_write_acked_by_a_node_the_samplers_saw_in_recovery_is_caught():
    s = samples({"pbx1": "streaming", "pbx2": "primary"}, 0.0, 3.0)
    bad = Write(1, 1.0, 1.02, True, "pbx1", 1)
    good = Write(2, 1.1, 1.12, True, "pbx2", 2)
    assert sampler_violations([bad, good], s) == [bad]


def test_no_sampler_verdict_around_a_role_change_or_without_samples():
    s = samples({"pbx1": "primary", "pbx2": "streaming"}, 0.0, 1.0)
    s2 = samples({"pbx1": "streaming", "pbx2": "primary"}, 1.1, 3.0)
    merged = {n: s[n] + s2[n] for n in s}
    at_change = Write(1, 0.98, 1.0, True, "pbx1", 1)   # pbx1 still primary in the window
    unsampled = Write(2, 10.0, 10.01, True, "pbx1", 1)
    down = {"pbx1": [(5.0, 0, "down", "-", "-")], "pbx2": [(5.0, 1, "primary", "-", "-")]}
    assert sampler_violations([at_change, unsampled], merged) == []
    assert sampler_violations([Write(3, 5.0, 5.01, True, "pbx1", 1)], down) == []


# ------------------------------------------------------------------ tallies by fault kind


WINDOWS = [FaultWindow("2. power off", 100.0, 130.0), FaultWindow("9. kill etcd", 200.0, 215.0)]


def probe(t0: float, t1: float, period: float, down: tuple[float, float] | None = None) -> list[tuple]:
    out, t = [], t0
    while t < t1:
        ok = not (down and down[0] <= t < down[1])
        out.append((t, t + 0.01 if ok else t + 1.0, ok))
        t += period
    return out


def test_outages_go_to_the_fault_they_began_in():
    recs = probe(90.0, 300.0, 0.1, down=(101.0, 104.0)) 
    recs = [r for r in recs if not (250.0 <= r[0] < 251.0)]   # no answer for 1 s, between faults
    got = outages(recs, 90.0, 0.35, WINDOWS)
    assert [(k, round(d, 1)) for k, _, d in got] == [("2. power off", 3.1), (BETWEEN, 1.1)]
    t = outage_table(got)
    assert t["2. power off"][0] == 1 and abs(t[BETWEEN][1] - 1.1) < 0.05


def test_an_outage_not_over_at_the_end_is_infinite():
    recs = probe(90.0, 105.0, 0.1, down=(101.0, 200.0))
    (kind, _, d), = outages(recs, 90.0, 0.35, WINDOWS)
    assert kind == "2. power off" and d == float("inf")


def test_kind_at_takes_half_a_second_before_the_fault():
    assert kind_at(99.6, WINDOWS) == "2. power off"
    assert kind_at(99.4, WINDOWS) == BETWEEN
    assert kind_at(216.0, WINDOWS) == BETWEEN


def test_failures_outside_every_fault_window():
    attempts = [(50.0, 50.5, False), (110.0, 111.0, False), (140.0, 140.5, True), (160.0, 168.0, False)]
    assert failed_outside(attempts, WINDOWS) == [(50.0, 50.5, False), (160.0, 168.0, False)]


def test_summarise_counts_cdrs_missing_and_not_measured():
    ws = failover()
    stored = {w.id: 1 for w in ws if w.ok}
    calls = [(1, 95.0, 95.6, True), (2, 101.0, 109.0, False), (3, 150.0, 150.6, True)]
    common = dict(writes=ws, stored=stored, stored_node={w.id: w.node for w in ws if w.ok},
                  options=probe(90.0, 130.0, 0.1), registers=probe(90.0, 130.0, 0.5), calls=calls,
                  windows=WINDOWS, samples={}, t0=90.0, call_uuids={1: "u1", 3: "u3"})
    r = summarise(cdr_found={"u1"}, **common)
    assert r["cdr_missing"] == [3] and r["answered"] == 2
    assert r["calls_failed"] == 1 and r["calls_failed_outside"] == 0
    assert r["lost"] == [] and r["duplicated"] == [] and r["overlapping"] == []
    assert r["outages"]["writes"]["2. power off"][0] == 2   # refused 101-103, then no attempt 104-110
    assert summarise(cdr_found=None, **common)["cdr_missing"] is None
