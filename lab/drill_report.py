"""reports/failover.md and its charts from the drills' results (see lab/drills.py)."""
from __future__ import annotations

import json
import os
import statistics

from components.releases import RELEASES

from .drills import BACK_ALONE, DRILLS, HEALTHY_10S, HEALTHY_NOTE, NO_LOSS, NOTHING, SIP_1S, VIP_05S, WRITE_3S, WRITE_5S
from .drills import FAULT_WINDOW_AFTER_HEAL_S, OPTIONS_GAP_S, WRITES_GAP_S, fault_outage


def _held_to(target: str) -> set[int]:
    """The drills that must meet one of issue 9's targets (the drills' table says)."""
    return {d.number for d in DRILLS.values() if target in d.targets}


def _vip_kept(r: dict) -> bool:
    """The VIP stayed where it was at the fault: never on the peer, never on both."""
    return r["final_owner"] == r["failed"] and r.get("vip_moved_s") is None and r["two_vip_longest_s"] == 0


def _untouched(r: dict) -> bool:
    """NOTHING: no OPTIONS or write interruption in the whole run, the VIP kept."""
    return r["sip_s"] == 0 and r["write_s"] == 0 and _vip_kept(r)


def _healthy_after(r: dict) -> float | None:
    """Seconds from the fault's end until the cluster was healthy, from the run's note (drill 11)."""
    for n in r.get("notes", []):
        if n.startswith(HEALTHY_NOTE):
            return float(n[len(HEALTHY_NOTE):].split()[0])
    return None


def _max_healthy_after(rows: list[dict]) -> float | None:
    vals = [_healthy_after(r) for r in rows]
    return float("inf") if None in vals else max(vals, default=None)


def _after_power_on(r: dict, key: str) -> float | None:
    """BACK_ALONE: seconds from the power-on (the heal) until SIP / writes answered again (whole run)."""
    v = r.get(key)
    return None if v is None or v == float("inf") else max(0.0, v - r["heal_at_s"])


def _max_after_power_on(rows: list[dict], key: str) -> float:
    vals = [_after_power_on(r, key) for r in rows]
    return float("inf") if None in vals else max(vals)


def _stack_line(st: dict | None) -> str:
    if not st:   # results written before the settings were recorded
        return "- lab stack: not recorded with these results"
    return (f"- lab stack: VRRPv3 adverts every {st['advert_s']:g} s, leader lease {st['lease_ttl_s']:g} s renewed "
            f"every {st['renew_s']:g} s (fence 0.5 s before), synchronous replication relaxed by the lease holder "
            f"after {st['relax_s']:g} s without the standby, a node isolated after {st['reach_lost_ms']} ms "
            f"without an answer from gateway or witness (pinged every {st['reach_every_ms']} ms)")


def _fmt(v, unit="s", digits=2) -> str:
    if v is None:
        return "–"
    if v == float("inf"):
        return "never"
    return f"{v:.{digits}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _mmm(rows: list[dict], key: str, unit="s", digits=2) -> str:
    v = [r[key] for r in rows if r.get(key) is not None]
    if not v:
        return "–"
    if all(isinstance(x, (int, float)) for x in v):
        return " / ".join(_fmt(x, unit, digits) for x in (min(v), statistics.median(v), max(v)))
    return "–"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _during_fault(chart: dict, key: str, gap: float) -> tuple[float, list[float], list[tuple[float, float]]]:
    """From a run's chart data (attempts by send time, relative to the fault): seconds until the
    service answered again after the fault's outage, i.e. the end of the longest interruption that
    began before heal + 5 s; the other interruptions of that period (shorter stalls, e.g. one slow
    commit while the rejoined standby turns synchronous); the times of failed attempts later
    (during rejoin and after). Send times stand in for answer times where the data has none (the
    next attempt's send time bounds it: sequential)."""
    until = chart["heal"] + FAULT_WINDOW_AFTER_HEAL_S
    pts = chart[key]
    # answer time: stored (3rd field) or, conservatively, the next attempt's send time
    recs = [(p[0], p[2] if len(p) > 2 else (pts[i + 1][0] if i + 1 < len(pts) else p[0]), p[1])
            for i, p in enumerate(pts)]
    end, stalls = fault_outage(recs, 0.0, chart["heal"], gap)
    later = [p[0] for p in pts if p[0] > until and not p[1]]
    return end, later, stalls


#: the release of the lab stack (Pulumi.lab.yaml): its runs are the report's body, with charts;
#: every other release's runs get a section of their own with the same tables
MAIN_RELEASE = "bookworm"
DEBIAN = {codename: f"Debian {r.debian}" for codename, r in RELEASES.items()}


def results_path(assets: str, release: str) -> str:
    """Where one release's runs are kept (results.json: the lab stack's release)."""
    return os.path.join(assets, "results.json" if release == MAIN_RELEASE else f"results-{release}.json")


def previous_path(assets: str, release: str) -> str:
    """The runs a new drill run replaced (kept so the report can set the figures side by side)."""
    return results_path(assets, release).replace(".json", ".previous.json")


def load_previous(assets: str, release: str = MAIN_RELEASE) -> dict | None:
    path = previous_path(assets, release)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_all(assets: str) -> dict[str, dict]:
    """Every release's runs on record: {release: data}."""
    out = {}
    for release in DEBIAN:
        path = results_path(assets, release)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                out[release] = json.load(fh)
    return out


def _by_drill(data: dict) -> dict[int, list[dict]]:
    """The runs of each drill, with the fault-period readings taken from their charts."""
    results, charts = data["results"], data.get("charts", {})
    for d, runs in charts.items():   # charts and results of a drill are in the same (run) order
        rows = [r for r in results if r["drill"] == int(d)]
        for r, c in zip(rows, runs):
            r["write_fault_s"], r["write_later"], r["write_stalls"] = _during_fault(c, "writes", WRITES_GAP_S)
            r["sip_fault_s"], r["sip_later"], r["sip_stalls"] = _during_fault(c, "options", OPTIONS_GAP_S)
    by: dict[int, list[dict]] = {}
    for r in results:
        by.setdefault(r["drill"], []).append(r)
    return by


def _results_table(by: dict[int, list[dict]]) -> list[str]:
    L = ["| drill | runs | SIP answers (fault) | writes accepted (fault) | writes accepted (run) | REGISTER ok (run) | "
         "two VIP owners, longest | samples with two primaries | ack. rows lost | phone called | rejoined after heal |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in sorted(by):
        rows = by[d]
        L.append(f"| {d}. {DRILLS[d].name} | {len(rows)} | {_mmm(rows, 'sip_fault_s')} | {_mmm(rows, 'write_fault_s')} | "
                 f"{_mmm(rows, 'write_s')} | "
                 f"{_mmm(rows, 'register_s')} | {_mmm(rows, 'two_vip_longest_s', digits=1)} | "
                 f"{sum(r['two_primary_samples'] for r in rows)} | "
                 f"{sum(r['acked_lost'] for r in rows)} of {sum(r['acked'] for r in rows)} | "
                 f"{sum(1 for r in rows if r['phone_called'])}/{len(rows)} | {_mmm(rows, 'rejoin_after_heal_s', digits=1)} |")
    return L


def _targets_table(by: dict[int, list[dict]]) -> list[str]:
    L = ["| target | drills | result |", "|---|---|---|"]
    checks = [
        (SIP_1S, _held_to(SIP_1S), lambda r: r["sip_fault_s"] <= 1.0,
         lambda rows: f"max {_fmt(max(r['sip_fault_s'] for r in rows))} (whole run: max {_fmt(max(r['sip_s'] for r in rows))})"),
        (WRITE_3S, _held_to(WRITE_3S), lambda r: r["write_fault_s"] <= 3.0,
         lambda rows: f"max {_fmt(max(r['write_fault_s'] for r in rows))} (whole run: max {_fmt(max(r['write_s'] for r in rows))})"),
        (WRITE_5S, _held_to(WRITE_5S), lambda r: r["write_fault_s"] <= 5.0,
         lambda rows: f"max {_fmt(max(r['write_fault_s'] for r in rows))} (whole run: max {_fmt(max(r['write_s'] for r in rows))})"),
        ("zero samples with two writable primaries", set(DRILLS), lambda r: r["two_primary_samples"] == 0,
         lambda rows: f"{sum(r['two_primary_samples'] for r in rows)} samples"),
        (VIP_05S, _held_to(VIP_05S), lambda r: r["two_vip_longest_s"] <= 0.5,
         lambda rows: f"longest {_fmt(max(r['two_vip_longest_s'] for r in rows), digits=1)}"),
        (NO_LOSS, _held_to(NO_LOSS), lambda r: r["acked_lost"] == 0,
         lambda rows: f"{sum(r['acked_lost'] for r in rows)} lost"),
        (NOTHING, _held_to(NOTHING), _untouched,
         lambda rows: f"SIP max {_fmt(max(r['sip_s'] for r in rows))}, writes max "
                      f"{_fmt(max(r['write_s'] for r in rows))}, VIP moved or doubled in "
                      f"{sum(1 for r in rows if not _vip_kept(r))} of {len(rows)} runs"),
        (HEALTHY_10S, _held_to(HEALTHY_10S),
         lambda r: _max_healthy_after([r]) <= 10.0 and r["rejoin_after_heal_s"] is not None
                   and r["rejoin_after_heal_s"] <= 10.0,
         lambda rows: f"streaming again max {_fmt(max(r['rejoin_after_heal_s'] or 0.0 for r in rows), digits=1)}, "
                      f"healthy max {_fmt(_max_healthy_after(rows), digits=1)} after the end"),
        (BACK_ALONE, _held_to(BACK_ALONE),
         lambda r: _after_power_on(r, "sip_s") is not None and _after_power_on(r, "write_s") is not None,
         lambda rows: f"SIP answers max {_fmt(_max_after_power_on(rows, 'sip_s'), digits=1)}, writes accepted "
                      f"max {_fmt(_max_after_power_on(rows, 'write_s'), digits=1)} after power-on"),
        ("every failed node back as a streaming standby", set(DRILLS),
         lambda r: r["rejoin_after_heal_s"] is not None, lambda rows: f"{len(rows)} of {len(rows)} runs"),
        ("a phone registered before receives a call", {d.number for d in DRILLS.values() if d.phone_call},
         lambda r: r["phone_called"],
         lambda rows: f"{sum(1 for r in rows if r['phone_called'])} of {len(rows)} runs"),
    ]
    for name, ds, ok, say in checks:
        for d in sorted(ds & set(by)):
            rows = by[d]
            good = all(ok(r) for r in rows)
            L.append(f"| {name} | {d} | {_verdict(good)}: {say(rows)} |")
    return L


def _side_by_side(releases: dict[str, dict[int, list[dict]]], titles: list[str] | None = None) -> list[str]:
    """Medians of the headline figures per drill, one column per release (or per report)."""
    names = list(releases)
    titles = titles or [f"{DEBIAN[n]} ({n})" for n in names]
    L = ["| drill | figure | " + " | ".join(titles) + " |",
         "|---|---|" + "---|" * len(names)]
    figures = (("SIP answers (fault), median", "sip_fault_s"), ("writes accepted (fault), median", "write_fault_s"),
               ("writes accepted (run), median", "write_s"), ("rejoined after heal, median", "rejoin_after_heal_s"))
    for d in sorted(set().union(*releases.values())):
        for label, key in figures:
            cells = [_median(by.get(d, []), key) for by in releases.values()]
            L.append(f"| {d} | {label} | " + " | ".join(cells) + " |")
        cells = [f"{sum(r['two_primary_samples'] for r in by.get(d, []))} / "
                 f"{sum(r['acked_lost'] for r in by.get(d, []))} of {sum(r['acked'] for r in by.get(d, []))}"
                 if by.get(d) else "–" for by in releases.values()]
        L.append(f"| {d} | two-primary samples / ack. rows lost | " + " | ".join(cells) + " |")
    return L


def _median(rows: list[dict], key: str) -> str:
    vals = sorted(r[key] for r in rows if r.get(key) is not None)
    if not vals:
        return "–"
    return f"{_fmt(statistics.median(vals))} ({len(vals)} runs)"   # never: not within heal + 5 s


def _release_section(release: str, data: dict) -> list[str]:
    """Another release's runs: what ran, on which versions, and the same two tables."""
    m, by = data["meta"], _by_drill(data)
    parts = m.get("parts") or [m]
    L = [f"## {DEBIAN[release]} ({release}): lab `{m['lab']}`", "",
         *[f"- `{p['command']}`: started {p['started']}, {p['seconds']:.0f} s, drills "
           f"{', '.join(map(str, p['drills']))} × {p['runs']} runs; load average at start "
           f"{' '.join(f'{x:.2f}' for x in p['load_start'])}, at end {' '.join(f'{x:.2f}' for x in p['load_end'])}"
           + (f"; **stopped early: {p['error']}**" if p.get("error") else "")
           + (f" ({p['note']})" if p.get("note") else "") for p in parts],
         f"- on the nodes: {'; '.join(m.get('versions', {}).get('node', []))}",
         _stack_line(m.get("stack")), "", "### Results (min / median / max over the runs)", "",
         *_results_table(by), "", "### Against the targets", "", *_targets_table(by), ""]
    return L


def _against_previous(previous: dict, by: dict[int, list[dict]], meta: dict) -> list[str]:
    """Every headline figure of this report beside the report it replaced (same lab, same drills)."""
    pm = previous["meta"]
    parts = pm.get("parts") or [pm]
    when = lambda m: f"{m['started']}" + (f", {m['note']}" if m.get("note") else "")  # noqa: E731
    return ["## Beside the previous report", "",
            "The report this run replaced, on the same lab (its runs are kept in "
            f"`{os.path.basename(previous_path('', MAIN_RELEASE))}`): medians per drill; two-primary samples and "
            "acknowledged rows lost are sums.", "",
            *_side_by_side({"previous": _by_drill(previous), "now": by},
                           [f"previous ({'; '.join(when(p) for p in parts)})", f"now ({when(meta)})"])]


def write(path: str, by_release: dict[str, dict], previous: dict | None = None) -> None:
    """The report: the lab stack's release in full (beside the report it replaced, when kept),
    then every other release's tables."""
    data = by_release[MAIN_RELEASE]
    meta = data["meta"]
    by = _by_drill(data)
    results, charts = data["results"], data.get("charts", {})
    assets = os.path.splitext(path)[0]
    os.makedirs(assets, exist_ok=True)
    images = {d: _chart(os.path.join(assets, f"drill{d}.png"), d, charts.get(str(d), []), by[d]) for d in by}
    rel = os.path.basename(assets)
    m, h = meta, meta["host"]
    L = ["# Failover drills on the lab", "",
         f"Real runs of the command(s) below against lab `{m['lab']}` (two systemd-nspawn nodes + witness, "
         "the program applied by `./hapbx lab up`), written by the command itself.", "",
         f"- machine: {h['cores']} cores ({h['cpu']}), {h.get('memory') or str(h.get('memory_mb')) + ' MiB'}, kernel {h['kernel']}, "
         f"Python {h['python']}; shared with other work (load averages below)",
         *[f"- `{p['command']}`: started {p['started']}, {p['seconds']:.0f} s, drills "
           f"{', '.join(map(str, p['drills']))} × {p['runs']} runs"
           + (f" (in this report: drills {', '.join(map(str, p['in_report']))})"
              if p.get("in_report") and p["in_report"] != p["drills"] else "")
           + "; load average at start "
           f"{' '.join(f'{x:.2f}' for x in p['load_start'])}, at end {' '.join(f'{x:.2f}' for x in p['load_end'])}"
           + (f"; **stopped early: {p['error']}**" if p.get("error") else "")
           + (f" ({p['note']})" if p.get("note") else "")
           for p in (m.get("parts") or [m])],
         f"- {len(results)} runs in this report",
         f"- on the nodes: {'; '.join(m.get('versions', {}).get('node', []))}; matplotlib "
         f"{m.get('versions', {}).get('matplotlib', '?')}",
         _stack_line(m.get("stack")), "",
         "## How it is measured", "",
         "- **fault** at t = 0 (the node's clock, which is the host's: nspawn shares the kernel); the fault lasts "
         "the drill's hold time, then the **heal**; the run ends when the failed node is a streaming standby "
         "again and the cluster is healthy (one VIP owner that leads, primary and Redis master; the peer a "
         "synchronous streaming standby and replica, its keepalived BACKUP); the next run starts only then.",
         "- **samplers** on both nodes every 100 ms: VIP present, PostgreSQL primary / streaming standby / "
         "standby / down, Redis role, lease holder. A powered-off node counts as owning nothing. "
         "A fenced Redis master keeps reporting the role `master` while its writes are paused "
         "(CLIENT PAUSE WRITE) until it follows the new master: \"two Redis masters\" samples are that.",
         "- **writer** from the host: one INSERT through the VIP (psycopg, TLS, role pbx_admin) every 50 ms; "
         "an insert unanswered after 5 s is abandoned (not acknowledged). After the run the rows are read "
         "back through the VIP: **acknowledged rows lost** = acknowledged ids missing.",
         "- **SIP**: OPTIONS to the VIP every 100 ms (an answer within 1 s counts) and a digest REGISTER "
         "(challenge + authenticated request, 200 within 1 s) every 0.5 s.",
         "- **time until X answers again**: from the fault to the first success after the last interruption "
         "of the run (a failed attempt, or no success for 0.35 s OPTIONS / 1.2 s REGISTER / 0.5 s writes); "
         "0 = never interrupted. Covers the whole run, heal and rejoin included.",
         "- **phone**: a SIPp phone registered through the VIP before the fault is called (1901 → 1902 via "
         "the VIP) 2.5 s before the heal, i.e. while the fault is on; before the fault the run waits (15 s at "
         "most) until the phone's contact has reached the peer's Kamailio too (DMQ).",
         "- **rejoin**: from the heal until the node that is not primary is a streaming standby.", "",
         "## Results (min / median / max over the runs)", "",
         "Two readings of \"answers again\": *fault* = the end of the longest interruption that began before "
         "heal + 5 s (the outage the fault caused; the targets; shorter interruptions of that period, such as "
         "one slow commit once the outage was over, are listed under the drill), *run* = the end of the last "
         "interruption of the whole run, rejoin "
         "included (a later blip shows here).", "",
         *_results_table(by), "", "## Against the targets", "", *_targets_table(by)]
    if previous:
        L += ["", *_against_previous(previous, by, meta)]
    others = {r: d for r, d in by_release.items() if r != MAIN_RELEASE}
    if others:
        L += ["", "## Debian releases side by side", "",
              "The same drills on each release's lab (its own Debian packages: see the versions under each). "
              "Full tables of the other releases follow the per-drill sections.", "",
              *_side_by_side({MAIN_RELEASE: by, **{r: _by_drill(d) for r, d in others.items()}})]
    L += ["", "## Per drill", ""]
    for d in sorted(by):
        rows = by[d]
        L += [f"### {d}. {DRILLS[d].name}", "",
              f"Fault held {DRILLS[d].hold:.0f} s; heal: {DRILLS[d].healed_by}.", ""]
        if DRILLS[d].why:
            L += [DRILLS[d].why, ""]
        L += [f"- VIP on the peer (sampled): {_mmm(rows, 'vip_moved_s')}; peer PostgreSQL primary: "
              f"{_mmm(rows, 'peer_primary_s')}",
              f"- SIP OPTIONS unanswered in all: {_mmm(rows, 'sip_down_s')}; writes refused or waiting: "
              f"{_mmm(rows, 'write_down_s')}; REGISTER failing: {_mmm(rows, 'register_down_s')}",
              f"- two VIP owners: {sum(r['two_vip_samples'] for r in rows)} samples in all; "
              f"two Redis masters: {sum(r['two_redis_master_samples'] for r in rows)} samples in all",
              f"- failed node streaming again after the fault: {_mmm(rows, 'streaming_from_samples_s', digits=1)} "
              "(samples; before the heal where the node could rejoin on its own)",
              f"- rows not acknowledged but stored (commits whose answer the writer never got): "
              f"{sum(r['unacked_present'] for r in rows)}"]
        stayed = [r for r in rows if r["final_owner"] == r["failed"]]
        if stayed:
            L.append(f"- in {len(stayed)} of {len(rows)} runs the failed node led again at the end "
                     "(it kept or regained the lease: no failover, e.g. the leader restarting its own "
                     "PostgreSQL); the node that had to stream again was then the other one")
        endings = [f"run {r['run']}: {r['two_vip_longest_s']:.1f} s, {r['two_vip_ended']}" for r in rows
                   if r["two_vip_longest_s"] > 0]
        if endings:
            L.append("- two VIP owners, how long and what ended it: " + "; ".join(endings))
        for what, key in (("writes", "write_stalls"), ("SIP", "sip_stalls")):
            stalls = [f"run {r['run']}: " + ", ".join(f"{e - b:.2f} s at +{b:.1f} s" for b, e in r[key][:4])
                      for r in rows if r.get(key)]
            if stalls:
                L.append(f"- other {what} interruptions before heal + 5 s (besides the outage counted above): "
                         + "; ".join(stalls))
        notes = [f"run {r['run']}: {'; '.join(r['notes'])}" for r in rows if r.get("notes")]
        if notes:   # what a run says about itself (e.g. drill 9: where the etcd leader was; 11: the seed)
            L.append("- run notes: " + " | ".join(notes))
        later = [f"run {r['run']}: {', '.join(f'+{t:.1f} s' for t in r['write_later'][:5])}"
                 for r in rows if r.get("write_later")]
        if later:
            L.append("- writes refused after heal + 5 s (during or after the rejoin): " + "; ".join(later))
        errs: dict[str, int] = {}
        for r in rows:
            for k, v in r.get("write_errors", {}).items():
                errs[k] = errs.get(k, 0) + v
        if errs:
            L.append("- writer errors after the fault: " + "; ".join(f"{v}× `{k}`" for k, v in
                                                                     sorted(errs.items(), key=lambda kv: -kv[1])[:4]))
        L += ["", "| run | failed node | SIP | writes | REGISTER | two VIP | two primaries | lost/acked | "
              "phone | rejoined (node, after heal) | owner after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['run']} | {r['failed']} | {_fmt(r['sip_s'])} | {_fmt(r['write_s'])} | "
                     f"{_fmt(r['register_s'])} | {_fmt(r['two_vip_longest_s'], digits=1)} | "
                     f"{r['two_primary_samples']} | {r['acked_lost']}/{r['acked']} | "
                     f"{'yes' if r['phone_called'] else 'no ' + r['phone_note']} | {r['rejoin_node']} "
                     f"{_fmt(r['rejoin_after_heal_s'], digits=1)} | {r['final_owner']} |")
        if images.get(d):
            L += ["", f"![drill {d} timeline]({rel}/{os.path.basename(images[d])})"]
        L.append("")
    for release, other in others.items():
        L += _release_section(release, other)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(L).rstrip() + "\n")


def _chart(path: str, drill: int, runs: list[dict], rows: list[dict]) -> str | None:
    """Timeline of the median run (by write recovery): VIP owner, primary, Redis master, lease,
    probe outcomes, per node, over seconds since the fault."""
    if not runs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(runs)), key=lambda i: (rows[i]["write_s"] if i < len(rows) else 0))
    c = runs[order[len(order) // 2]]
    run_no = rows[order[len(order) // 2]]["run"] if order[len(order) // 2] < len(rows) else "?"
    xs = c["x"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    lanes = []
    y = 0
    colours = {"vip": "tab:blue", "primary": "tab:red", "streaming": "tab:green", "master": "tab:orange",
               "lease": "tab:purple"}
    for node in (c["failed"], c["peer"]):
        st = c["nodes"][node]
        tracks = [("VIP", lambda s: s[0] == 1, "vip"),
                  ("PG primary", lambda s: s[1] == "primary", "primary"),
                  ("PG streaming", lambda s: s[1] == "streaming", "streaming"),
                  ("Redis master", lambda s: s[2] == "master", "master"),
                  ("lease", lambda s: s[3] == "1", "lease")]
        for label, pred, col in tracks:
            spans, start = [], None
            for x, s in zip(xs, st):
                if pred(s) and start is None:
                    start = x
                if not pred(s) and start is not None:
                    spans.append((start, x - start))
                    start = None
            if start is not None:
                spans.append((start, xs[-1] - start + 0.1))
            ax.broken_barh(spans, (y + 0.15, 0.7), color=colours[col])
            lanes.append(f"{node} {label}")
            y += 1
    for label, key in (("OPTIONS", "options"), ("REGISTER", "registers"), ("writes", "writes")):
        pts = c[key]
        ax.scatter([p[0] for p in pts if p[1]], [y + 0.5] * sum(1 for p in pts if p[1]), s=4, c="tab:green",
                   marker="|")
        ax.scatter([p[0] for p in pts if not p[1]], [y + 0.5] * sum(1 for p in pts if not p[1]), s=14,
                   c="tab:red", marker="x")
        lanes.append(f"{label} ok / failed")
        y += 1
    ax.axvline(0, color="k", lw=1)
    ax.axvline(c["heal"], color="k", lw=1, ls="--")
    ax.text(0, y + 0.1, " fault", fontsize=8)
    ax.text(c["heal"], y + 0.1, " heal", fontsize=8)
    ax.set_yticks([i + 0.5 for i in range(len(lanes))])
    ax.set_yticklabels(lanes, fontsize=7)
    ax.set_ylim(0, y + 0.8)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_xlabel("seconds since the fault")
    ax.set_title(f"drill {drill}: {DRILLS[drill].name} (run {run_no}; failed node {c['failed']})", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
