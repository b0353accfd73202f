"""reports/soak.md from a soak's figures (lab/soak.py runs it, lab/soak_history.py checks it); the
figures also go to the .json beside the report."""
from __future__ import annotations

import statistics

from .soak_history import BETWEEN


def _s(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if v == float("inf"):
        return "never answered again"
    return f"{v:.{digits}f} s"


def _mmm(values: list[float]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    return " / ".join(f"{x:.1f}" for x in (min(v), statistics.median(v), max(v))) + " s"


def _load(x) -> str:
    return " ".join(f"{v:.2f}" for v in x)


def render(meta: dict, r: dict, faults: list[dict], findings: list[str]) -> str:
    h = meta["host"]
    t0 = meta["t_start"]
    kinds = sorted({f["kind"] for f in faults}, key=lambda k: int(k.split(".")[0]))
    L = ["# Randomized fault soak on the lab", "",
         f"A real run of the command below against lab `{meta['lab']}` ({meta['release']}), written by the command "
         "itself. The failover drills' faults (lab/drills.py DRILLS) one at a time, drawn at random with random "
         "holds and quiet gaps, while a writer, SIP probes, a registered phone and calls ran the whole time; "
         "then every acknowledged write was checked.", "",
         f"- command: `{meta['command']}`",
         f"- **seed {meta['seed']}** (the same seed draws the same faults, holds and gaps in the same order: "
         f"`./hapbx lab --stack {meta['stack']} soak --minutes {meta['minutes']:g} --seed {meta['seed']}`)",
         f"- started {meta['started']}, ran {meta['seconds']:.0f} s ({meta['minutes']:g} minutes asked); run id "
         f"`{meta['run_id']}`",
         f"- machine: {h['cores']} cores ({h.get('cpu', '?')}), {h.get('memory', '?')}, kernel {h['kernel']}, "
         f"Python {h['python']}; shared with other work: load average at start {_load(meta['load_start'])}, "
         f"at end {_load(meta['load_end'])}",
         f"- on the nodes: {'; '.join(meta.get('versions', [])) or 'not recorded'}",
         *([f"- **stopped early: {meta['error']}**"] if meta.get("error") else []), ""]
    verdict = (not r["lost"] and not r["duplicated"] and not r["overlapping"] and not r["split_timelines"]
               and not r["sampler_violations"] and not r["stored_elsewhere"])
    L += ["## Verdict", "",
          f"- acknowledged writes: {r['acked']} of {r['attempts']} attempts; **lost {len(r['lost'])}, duplicated "
          f"{len(r['duplicated'])}**; acknowledged by one node but stored naming another: "
          f"{len(r['stored_elsewhere'])}; not acknowledged but stored (commits whose answer never came): "
          f"{r['unacked_stored']}",
          f"- **overlapping writers (history check violations): {len(r['overlapping'])}**; timelines acknowledged "
          f"by two nodes: {len(r['split_timelines'])}; writes acknowledged by a node the samplers saw in recovery "
          f"while the other was primary: {len(r['sampler_violations'])}",
          f"- faults injected: {len(faults)}, healed and healthy again: "
          f"{sum(1 for f in faults if f['t_healthy'])}",
          f"- registrations lost (the phone's contact missing on a node after a heal): "
          f"{sum(1 for f in faults if f['phone_missing'])} of {len(faults)} heals"
          + (f"; missing at the start already on {', '.join(meta['phone_missing_start'])}"
             if meta.get("phone_missing_start") else ""),
          f"- REGISTER attempts failed: {r['registers_failed']} of {r['registers']}, of which outside any fault "
          f"window: {r['registers_failed_outside']}",
          f"- calls: {r['calls']}, failed {r['calls_failed']}, of which outside any fault window "
          f"{r['calls_failed_outside']}",
          "- CDRs missing in cdr.calls for answered calls: "
          + (f"**{len(r['cdr_missing'])}** of {r['answered']}" if r["cdr_missing"] is not None
             else f"not measured: {meta.get('cdr_error') or 'no answered calls'}")
          + (f"; of those, kept in a media stand-in's error directory for a replay (not posted, not lost): "
             f"{len(meta['cdrs_kept'])} ({', '.join(sorted(set(meta['cdrs_kept'].values())))})"
             if meta.get("cdrs_kept") else ""),
          f"- history check: {'passed' if verdict else '**FAILED**'}", ""]
    L += ["## Findings", ""]
    L += [f"- {x}" for x in findings] or ["- none: every fault healed, the cluster was healthy again each time "
                                          f"within {meta['healthy_within']:.0f} s"]
    if meta.get("annotations"):   # written after the run (from the nodes' journals), not by the command
        L += ["", "## Notes added after the run", "",
              "Not written by the command: what the nodes' journals and the figures above say about the findings "
              "and the outliers.", ""]
        L += [f"- {x}" for x in meta["annotations"]]
    L += ["", "## How it is measured", "",
          "- **schedule**: `random.Random(seed)` draws a drill of lab/drills.py (weights: flapping link "
          f"{meta['weights'].get('11', meta['weights'].get(11, '?'))}, both nodes off "
          f"{meta['weights'].get('12', meta['weights'].get(12, '?'))}, the others 1), its hold (uniform "
          f"{meta['hold'][0]:g}-{meta['hold'][1]:g} s; the flapping drill its own 60 s) and the quiet gap after "
          f"the cluster is healthy again (uniform {meta['gap'][0]:g}-{meta['gap'][1]:g} s). The fault hits the "
          "VIP owner of the moment and heals with the drill's own actions; then the soak waits until "
          f"`drills.wait_healthy` (one leading VIP owner, a synchronous streaming standby, Redis replica, DMQ "
          f"both ways) says healthy, {meta['healthy_within']:.0f} s at most (else a finding, and the soak stops).",
          "- **writer**: one INSERT through the VIP every 50 ms (psycopg, TLS, pbx_admin; abandoned after 5 s) into "
          "`hapbx_drill.soak_writes` (no unique key, so a duplicate shows); `RETURNING` gives the node and "
          "PostgreSQL timeline that acknowledged it, in the same round trip (SECURITY DEFINER functions: the "
          "node's name is its postgresql.conf `primary_conninfo` application_name; the timeline is the first 8 "
          "hex digits of `pg_walfile_name(pg_current_wal_lsn())`). At the end the rows are read back through the "
          "VIP.",
          "- **tenures**: a promotion starts a new timeline, so a tenure is (timeline, node). A violation "
          "(overlapping writers) is a write acknowledged in one tenure but sent after a write of a later tenure "
          "(higher timeline, or the same timeline on the other node) had been acknowledged; a timeline "
          "acknowledged by both nodes is a split brain. Cross-check: the samplers (both nodes, 100 ms): a write "
          "acknowledged by X while every sample of X within 0.15 s of [sent, answered] said in recovery and "
          "every sample of the peer said primary.",
          "- **outages** (as lab/drill_report.py and `drills.interruptions` define them): a failed attempt, or no "
          "success for 0.35 s (OPTIONS every 100 ms), 1.2 s (digest REGISTER every 0.5 s), 0.5 s (writes); each "
          "counted under the fault during which it began (from 0.5 s before the fault acted until the cluster "
          f"was healthy again), else \"{BETWEEN}\".",
          "- **calls**: SIPp call.xml through the VIP every 2 s (user 1901 to a queue extension, answered by a "
          "node's media stand-in, 0.5 s long) with a fixed Call-ID; its CDR (call UUID = uuid3 of the Call-ID, "
          "components/render/sipp_uas.py) looked up in `cdr.calls` on the primary at the end (up to 60 s for "
          "the posters to finish).",
          "- **registrations**: a phone (1902) registered through the VIP at the start (refreshed every 20 min); "
          "after every heal both Kamailios must know its contact (10 s for DMQ).", ""]
    L += ["## Faults injected by kind", "",
          "| fault | count | hold (min / median / max) | healthy after the heal (min / median / max) | "
          "owner changed |", "|---|---|---|---|---|"]
    for k in kinds:
        fs = [f for f in faults if f["kind"] == k]
        L.append(f"| {k} | {len(fs)} | {_mmm([f['hold'] for f in fs])} | "
                 f"{_mmm([f['t_healthy'] - f['t_heal'] for f in fs if f['t_healthy']])} | "
                 f"{sum(1 for f in fs if f['owner_after'] and f['owner_after'] != f['owner'])} of {len(fs)} |")
    L += ["", "## Outages by fault kind", "",
          "Count and longest; \"never\": not answered again before the soak ended.", "",
          "| began during | SIP OPTIONS | REGISTER | writes | calls failed / placed |", "|---|---|---|---|---|"]
    rows = kinds + [BETWEEN]
    for k in rows:
        cells = []
        for what in ("options", "register", "writes"):
            n, longest, _ = r["outages"][what].get(k, (0, 0.0, 0.0))
            cells.append(f"{n}, longest {_s(longest, 2)}" if n else "0")
        placed, failed = r["calls_by_kind"].get(k, (0, 0))
        L.append(f"| {k} | {' | '.join(cells)} | {failed} / {placed} |")
    L += ["", "## Tenures (timeline, node)", "",
          "| timeline | node | first acknowledgement | last | writes acknowledged |", "|---|---|---|---|---|"]
    for tl, node, first, last, n in r["tenures"]:
        L.append(f"| {tl} | {node} | +{first - t0:.1f} s | +{last - t0:.1f} s | {n} |")
    if r["overlapping"]:
        L += ["", "Overlapping writers (first 20): write id, node, timeline; the earlier acknowledgement it "
              "overlaps; seconds between:", ""]
        L += [f"- {x}" for x in r["overlapping"][:20]]
    if r["sampler_violations"]:
        L += ["", "Writes the samplers contradict (first 20): " + ", ".join(str(x) for x in r["sampler_violations"][:20])]
    if r["write_errors"]:
        L += ["", "Writer errors: " + "; ".join(f"{v}× `{k}`" for k, v in r["write_errors"].items())]
    if r.get("call_errors"):
        L += ["", "Call errors (SIPp's first error line): " + "; ".join(f"{v}× `{k}`" for k, v in r["call_errors"].items())]
    L += ["", "## Fault log", "",
          "| # | at | fault | VIP owner at the fault | hold | healthy after the heal | owner after | notes |",
          "|---|---|---|---|---|---|---|---|"]
    for f in faults:
        notes = "; ".join(f["notes"] + ([f"phone missing on {', '.join(f['phone_missing'])}"]
                                        if f["phone_missing"] else []) + ([f["error"]] if f["error"] else []))
        L.append(f"| {f['n']} | +{f['t_fault'] - t0:.0f} s | {f['kind']} | {f['owner']} | {f['hold']:.1f} s | "
                 f"{_s(f['t_healthy'] - f['t_heal']) if f['t_healthy'] else '**not healthy**'} | "
                 f"{f['owner_after'] or '–'} | {notes.replace('|', '/')} |")
    return "\n".join(L).rstrip() + "\n"


def write(path: str, meta: dict, r: dict, faults: list[dict], findings: list[str]) -> None:
    import os
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(meta, r, faults, findings))
