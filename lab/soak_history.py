"""The soak's history check and tallies (lab/soak.py records, lab/soak_report.py prints): pure
functions over what was recorded, no I/O, unit tested with hand-made histories.

A write attempt is a `Write`: sent and answered (the writer's clock, the host's = the nodes': nspawn
shares the kernel), acknowledged or not, and for an acknowledgement the node and PostgreSQL timeline
it came from (returned by the INSERT itself: one round trip).

Tenures. A primary's term is its timeline: every promotion starts a new PostgreSQL timeline, a
primary restarted in place (its PostgreSQL killed) keeps it. So a tenure is (timeline, node), and
tenures are ordered by timeline. Two faults the check catches:
- a timeline acknowledged by two nodes (two promotions from one timeline: split brain);
- overlapping writers: a write acknowledged in tenure T whose send time is after the acknowledgement
  of a write in a later tenure (the old primary acknowledged after the new one already had). The
  writes are sequential from one writer; the check holds for several writers as well (it compares
  send and acknowledgement times, never positions).
The samplers (100 ms, on the nodes) give a second, independent view: a write acknowledged by X while
every sample of X around [sent, answered] said "in recovery" and every sample of the peer said
"primary" is a violation too.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .drills import interruptions

#: the gaps that make an outage (lab/drill_report.py, drills.interruptions): seconds without a success
GAPS = {"options": 0.35, "register": 1.2, "writes": 0.5}
BETWEEN = "between faults"


@dataclass(frozen=True)
class Write:
    id: int
    sent: float
    done: float
    ok: bool
    node: str = ""       # who acknowledged it ("" when not acknowledged)
    timeline: int = 0    # the PostgreSQL timeline it was acknowledged on
    error: str = ""


@dataclass(frozen=True)
class FaultWindow:
    kind: str            # the fault's name (drill number and name)
    start: float         # the fault acted
    end: float           # the cluster healthy again after its heal (or the soak's end)


# ------------------------------------------------------------------ 1. every acknowledged write, once


def lost_and_duplicated(writes: list[Write], stored: dict[int, int]) -> tuple[list[int], list[int]]:
    """(acknowledged ids missing at the end, ids stored more than once); stored: id -> rows read back."""
    acked = sorted({w.id for w in writes if w.ok})
    lost = [i for i in acked if stored.get(i, 0) == 0]
    dup = sorted(i for i, n in stored.items() if n > 1)
    return lost, dup


def stored_elsewhere(writes: list[Write], stored_node: dict[int, str]) -> list[int]:
    """Acknowledged writes whose row names another node than the acknowledgement did (the node is
    written by the INSERT and returned by it: they must agree)."""
    return sorted(w.id for w in writes if w.ok and w.id in stored_node and stored_node[w.id] != w.node)


# ------------------------------------------------------------------ 2. tenures and overlapping writers


def tenures(writes: list[Write]) -> list[tuple[int, str, float, float, int]]:
    """(timeline, node, first ack, last ack, acknowledgements) of every tenure, by timeline then
    first acknowledgement."""
    by: dict[tuple[int, str], list[float]] = {}
    for w in writes:
        if w.ok:
            by.setdefault((w.timeline, w.node), []).append(w.done)
    return sorted(((tl, n, min(v), max(v), len(v)) for (tl, n), v in by.items()), key=lambda t: (t[0], t[2]))


def split_timelines(writes: list[Write]) -> dict[int, list[str]]:
    """Timelines acknowledged by more than one node: {timeline: nodes}."""
    nodes: dict[int, set[str]] = {}
    for w in writes:
        if w.ok:
            nodes.setdefault(w.timeline, set()).add(w.node)
    return {tl: sorted(ns) for tl, ns in nodes.items() if len(ns) > 1}


def overlapping_writers(writes: list[Write]) -> list[tuple[Write, Write]]:
    """(the late write, the earlier acknowledgement it overlaps): a write acknowledged in tenure
    (timeline t, node X) sent after the acknowledgement of a write in a later tenure: a higher
    timeline, or the same timeline on another node (split brain). Several writers: any pair counts."""
    acked = sorted((w for w in writes if w.ok), key=lambda w: w.done)
    out: list[tuple[Write, Write]] = []
    # per timeline: the earliest acknowledgement on it by each node
    first: dict[int, dict[str, Write]] = {}
    for w in acked:
        first.setdefault(w.timeline, {})
        if w.node not in first[w.timeline]:
            first[w.timeline][w.node] = w
    later = sorted(first)
    for w in acked:
        for tl in later:
            if tl < w.timeline:
                continue
            for node, v in first[tl].items():
                if (tl > w.timeline or node != w.node) and v.done < w.sent:
                    out.append((w, v))
                    break
            else:
                continue
            break
    return out


def sampler_violations(writes: list[Write], samples: dict[str, list[tuple]], margin: float = 0.15) -> list[Write]:
    """Writes acknowledged by X while the samplers saw X in recovery and another node primary in
    every sample of [sent - margin, answered + margin] (each node samples every 100 ms; a window
    without samples of both proves nothing). samples: node -> [(t, vip, pg, redis, hold)] by t."""
    import bisect
    times = {n: [r[0] for r in rows] for n, rows in samples.items()}
    out = []
    for w in writes:
        if not w.ok or w.node not in samples:
            continue
        lo, hi = w.sent - margin, w.done + margin

        def window(n: str) -> list[str]:
            i, j = bisect.bisect_left(times[n], lo), bisect.bisect_right(times[n], hi)
            return [r[2] for r in samples[n][i:j]]
        mine = window(w.node)
        others = [window(n) for n in samples if n != w.node]
        if (mine and all(s in ("streaming", "standby") for s in mine)
                and any(o and all(s == "primary" for s in o) for o in others)):
            out.append(w)
    return out


# ------------------------------------------------------------------ 3. tallies by fault kind


def kind_at(t: float, windows: list[FaultWindow], before: float = 0.5) -> str:
    """The fault during which something that began at t began: its window [start - before, end]
    (an outage begins at the last answer before it, up to a probe period before the fault acted)."""
    for w in windows:
        if w.start - before <= t <= w.end:
            return w.kind
    return BETWEEN


def outages(records: list[tuple], t0: float, gap: float, windows: list[FaultWindow]) -> list[tuple[str, float, float]]:
    """(fault kind, start, seconds) of every interruption from t0 on (drills.interruptions: a failed
    attempt, or no success for `gap` s); inf seconds: not answered again before the end.
    records: (sent, done, ok) sorted by sent."""
    return [(kind_at(t0 + s, windows), t0 + s, e - s) for s, e in interruptions(records, t0, gap)]


def outage_table(out: list[tuple[str, float, float]]) -> dict[str, tuple[int, float, float]]:
    """kind -> (count, longest, total seconds)."""
    t: dict[str, tuple[int, float, float]] = {}
    for kind, _, d in out:
        n, longest, total = t.get(kind, (0, 0.0, 0.0))
        t[kind] = (n + 1, max(longest, d), total + (d if d != float("inf") else 0.0))
    return t


def failed_outside(attempts: list[tuple], windows: list[FaultWindow]) -> list[tuple]:
    """Attempts (sent, done, ok, ...) that failed with no fault window overlapping [sent, done]."""
    return [a for a in attempts if not a[2]
            and not any(w.start - 0.5 <= a[1] and a[0] <= w.end for w in windows)]


def hold_summary(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return min(values), statistics.median(values), max(values)


# ------------------------------------------------------------------ everything, for the report


def summarise(*, writes: list[Write], stored: dict[int, int], stored_node: dict[int, str], options: list[tuple],
              registers: list[tuple], calls: list[tuple], windows: list[FaultWindow], samples: dict[str, list[tuple]],
              t0: float, cdr_found: set[str] | None, call_uuids: dict[int, str]) -> dict:
    """The soak's figures: checks 1-3 over the recorded history. calls: (n, sent, done, ok[, error]);
    call_uuids: n -> call UUID of each answered call; cdr_found: the UUIDs in cdr.calls (None: not
    measured)."""
    lost, dup = lost_and_duplicated(writes, stored)
    acked = [w for w in writes if w.ok]
    overl = overlapping_writers(writes)
    samp = sampler_violations(writes, samples)
    unacked_stored = sum(1 for w in writes if not w.ok and stored.get(w.id, 0) > 0)
    out_by = {}
    for name, recs in (("options", options), ("register", registers),
                       ("writes", [(w.sent, w.done, w.ok) for w in sorted(writes, key=lambda w: w.sent)])):
        out_by[name] = outage_table(outages(recs, t0, GAPS[name], windows))
    call_recs = [(c[1], c[2], c[3], c[0]) for c in calls]
    failed_calls = [c for c in call_recs if not c[2]]
    failed_out = failed_outside(call_recs, windows)
    calls_by_kind: dict[str, list[int]] = {}
    for s, _, ok, _ in call_recs:
        k = kind_at(s, windows)
        v = calls_by_kind.setdefault(k, [0, 0])
        v[0] += 1
        v[1] += 0 if ok else 1
    answered = [c[0] for c in calls if c[3]]
    cdr_missing = None if cdr_found is None else [n for n in answered if call_uuids.get(n) not in cdr_found]
    reg_failed_out = failed_outside(registers, windows)
    return {
        "attempts": len(writes), "acked": len(acked), "lost": lost, "duplicated": dup,
        "stored_elsewhere": stored_elsewhere(writes, stored_node), "unacked_stored": unacked_stored,
        "tenures": tenures(writes), "split_timelines": split_timelines(writes),
        "overlapping": [(w.id, w.node, w.timeline, v.id, v.node, v.timeline, round(w.sent - v.done, 3))
                        for w, v in overl],
        "sampler_violations": [(w.id, w.node, w.sent, w.done) for w in samp],
        "outages": out_by,
        "calls": len(calls), "calls_failed": len(failed_calls), "calls_failed_outside": len(failed_out),
        "calls_by_kind": calls_by_kind, "answered": len(answered),
        "cdr_missing": cdr_missing,
        "registers": len(registers), "registers_failed": sum(1 for r in registers if not r[2]),
        "registers_failed_outside": len(reg_failed_out),
        "write_errors": _errors([w.error for w in writes if not w.ok]),
        "call_errors": _errors([c[4] for c in calls if not c[3] and len(c) > 4]),
    }


def _errors(errors: list[str]) -> dict[str, int]:
    """The most frequent errors (addresses and quoted names folded)."""
    import re
    out: dict[str, int] = {}
    for e in errors:
        k = re.sub(r"\d+\.\d+\.\d+\.\d+|\"[^\"]*\"", "…", e)[:70]
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:6])
