"""`hapbx lab drill`: failover drills on the running lab -> reports/failover.md (issue 9).

The drills (what each breaks and how it heals), probes and measurements are in lab/drills.py; the
report and its charts in lab/drill_report.py. Every run's figures also go to
reports/failover/results.json (results-trixie.json for the Debian 13 lab, `--stack lab-trixie`),
from which `--report-only` writes the report again; the report shows every release on record.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

from lab.report import host, with_flock

from . import drill_report, drills, machinery
from .context import LabCommandError, LabContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paths(out: str) -> tuple[str, str]:
    """(the report, the directory of its charts and results)."""
    out = out if os.path.isabs(out) else os.path.join(ROOT, out)
    return out, os.path.splitext(out)[0]


def report_only(out: str) -> int:
    """The report again from the results on record."""
    out, assets = _paths(out)
    drill_report.write(out, drill_report.load_all(assets), drill_report.load_previous(assets))
    print(f"hapbx lab drill: wrote {os.path.relpath(out, ROOT)}")
    return 0


def run(cluster, spec, *, out: str, only: list[int], runs: int, note: str = "", merge: bool = False) -> int:
    """The drills `only`, `runs` runs each, on the running lab; results.json and the report."""
    out, assets = _paths(out)
    release = cluster.os.release
    results_path = drill_report.results_path(assets, release)
    if not machinery.status(spec).up:
        print(f"hapbx lab drill: lab {spec.name} is not up: run ./hapbx lab up first", file=sys.stderr)
        return 1
    ctx = LabContext.from_cluster(spec, cluster)
    command = with_flock(" ".join(["./hapbx", *(shlex.quote(a) for a in sys.argv[1:])]))
    meta = {"command": command,
            "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_start": os.getloadavg(), "host": host(), "lab": spec.name, "release": release,
            "drills": only, "runs": runs, "note": note,
            "stack": {"advert_s": cluster.vip.advert_interval, "lease_ttl_s": cluster.etcd.lease_ttl_seconds,
                      "renew_s": cluster.etcd.renew_interval_seconds, "relax_s": cluster.ha.sync_relax_after,
                      "reach_every_ms": cluster.ha.reach_interval_ms,
                      "reach_lost_ms": cluster.ha.reach_lost_after_ms}}
    started = time.monotonic()
    results: list[dict] = []
    charts: dict = {}
    error = ""
    try:
        drills.setup(ctx)
        meta["versions"] = _versions(ctx)
        for d in only:
            for n in range(1, runs + 1):
                t = time.monotonic()
                rd = drills.run_one(ctx, d, n)
                a = drills.analyse(rd)
                results.append(a)
                charts.setdefault(str(d), []).append(drills.chart_data(rd))
                print(f"[drill {d} run {n}] {rd.failed}: SIP {a['sip_s']:.2f}s, REGISTER {a['register_s']:.2f}s, "
                      f"writes {a['write_s']:.2f}s, two VIP {a['two_vip_longest_s']:.1f}s, "
                      f"two primaries {a['two_primary_samples']} samples, lost {a['acked_lost']}/{a['acked']}, "
                      f"phone {'called' if a['phone_called'] else 'NOT called'}, {a['rejoin_node']} streaming "
                      f"{a['rejoin_after_heal_s']:.1f}s after heal ... {time.monotonic() - t:.0f}s", flush=True)
    except LabCommandError as err:   # a drill that could not run or heal (DrillError), or a node command that failed
        error = str(err)
        print(f"hapbx lab drill: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        try:
            drills.cleanup(ctx)
        except Exception as exc:  # the report of what ran still gets written
            print(f"hapbx lab drill: cleanup: {exc}", file=sys.stderr)
    meta["load_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["error"] = error
    if results:
        os.makedirs(assets, exist_ok=True)
        data = {"meta": meta, "results": results, "charts": charts}
        if merge and os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as fh:
                _merge(data, json.load(fh), only)
        elif os.path.exists(results_path):
            # the runs this one replaces stay on record: the report sets its figures beside them
            os.replace(results_path, drill_report.previous_path(assets, release))
        with open(results_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, default=_json_default)
        drill_report.write(out, drill_report.load_all(assets), drill_report.load_previous(assets))
        print(f"hapbx lab drill: {len(results)} runs in {meta['seconds']:.0f}s; wrote {os.path.relpath(out, ROOT)}")
    return 1 if error else 0


def _merge(data: dict, old: dict, only: list[int]) -> None:
    """This invocation's runs into the results on record: a drill run again replaces its own runs,
    the others' stay, each drill with the conditions it was measured under (meta's parts)."""
    meta = data["meta"]
    kept = [r for r in old["results"] if r["drill"] not in only]
    data["results"] = sorted(kept + data["results"], key=lambda r: (r["drill"], r["run"]))
    data["charts"] = {**{k: v for k, v in old.get("charts", {}).items() if int(k) not in only}, **data["charts"]}
    earlier = old["meta"].get("parts", [dict(old["meta"], parts=None)])
    parts, covered = [], set()
    for part in reversed(earlier + [dict(meta)]):   # a part stays while some drill's runs are its own
        mine = set(part["drills"]) - covered
        if mine:
            parts.insert(0, dict(part, in_report=sorted(mine)))
        covered |= set(part["drills"])
    meta["parts"] = parts


def _json_default(o):
    if isinstance(o, float) and o == float("inf"):
        return None
    return str(o)


def _versions(ctx: LabContext) -> dict:
    node = ctx.names[0]
    cmd = ("keepalived --version 2>&1 | head -1; "
           "dpkg-query -W -f='${Package} ${Version}\\n' postgresql-15 redis-server kamailio etcd-server sip-tester 2>/dev/null")
    out = ctx.sh(node, cmd, check=False)
    import matplotlib
    return {"node": out.strip().splitlines(), "matplotlib": matplotlib.__version__}
