"""`hapbx lab drill`: failover drills on the running lab -> reports/failover.md (issue 9).

    ./hapbx lab drill                      # the seven drills, 5 runs each
    ./hapbx lab drill --only 1,3 --runs 2  # some drills, fewer runs

The scenarios, probes and measurements are in lab/drills.py; the report and its charts in
lab/drill_report.py. Every run's figures also go to reports/failover/results.json (results-trixie.json
for the Debian 13 lab, `--stack lab-trixie`), from which `--report-only` writes the report again; the
report shows every release on record.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from cli.machine import host

REPORT = "reports/failover.md"


def add_parser(lsub) -> None:
    d = lsub.add_parser("drill", help="break the running lab the ways production breaks; write reports/failover.md")
    d.add_argument("--out", default=REPORT, help=f"report file ({REPORT}); charts and results.json beside it")
    d.add_argument("--runs", type=int, default=5, help="runs of each drill (5)")
    d.add_argument("--only", default="", help="drills to run, e.g. 1,3 (default: all seven)")
    d.add_argument("--report-only", action="store_true", help="write the report again from results.json")
    d.add_argument("--note", default="", help="a note on this invocation, printed in the report")
    d.add_argument("--merge", action="store_true",
                   help="keep the other drills' results from results.json (a drill run again replaces its own)")


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, raw, cluster, spec) -> int:
    from lab import drill_report, drills, machinery

    root = _root()
    out = args.out if os.path.isabs(args.out) else os.path.join(root, args.out)
    assets = os.path.splitext(out)[0]
    release = cluster.os.release
    results_path = drill_report.results_path(assets, release)
    if args.report_only:
        drill_report.write(out, drill_report.load_all(assets))
        print(f"hapbx lab drill: wrote {os.path.relpath(out, root)}")
        return 0
    try:
        only = sorted({int(x) for x in args.only.split(",") if x.strip()}) or sorted(drills.DRILLS)
    except ValueError:
        print(f"hapbx lab drill: --only {args.only!r}: give drill numbers like 1,3", file=sys.stderr)
        return 2
    bad = [d for d in only if d not in drills.DRILLS]
    if bad or args.runs < 1:
        print(f"hapbx lab drill: unknown drill(s) {bad} (allowed 1-7) or --runs < 1", file=sys.stderr)
        return 2
    if not machinery.status(spec).up:
        print(f"hapbx lab drill: lab {spec.name} is not up: run ./hapbx lab up first", file=sys.stderr)
        return 1
    ctx = drills.make_ctx(spec, cluster)
    command = " ".join(["./hapbx lab drill", *(shlex.quote(a) for a in sys.argv[3:])])
    try:  # ./hapbx execs python: its parent is what ran it (flock, for measurements)
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            parent = [a.decode() for a in fh.read().split(b"\0") if a]
        if parent and os.path.basename(parent[0]) == "flock":
            command = " ".join(parent[:2]) + " " + command
    except OSError:
        pass
    meta = {"command": command,
            "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_start": os.getloadavg(), "host": host(), "lab": spec.name, "release": release,
            "drills": only, "runs": args.runs, "note": args.note,
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
            for n in range(1, args.runs + 1):
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
    except drills.DrillError as err:
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
        if args.merge and os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as fh:
                old = json.load(fh)
            kept = [r for r in old["results"] if r["drill"] not in only]
            data["results"] = sorted(kept + results, key=lambda r: (r["drill"], r["run"]))
            data["charts"] = {**{k: v for k, v in old.get("charts", {}).items() if int(k) not in only}, **charts}
            # each drill keeps the conditions it was measured under
            earlier = old["meta"].get("parts", [dict(old["meta"], parts=None)])
            parts, covered = [], set()
            for part in reversed(earlier + [dict(meta)]):   # a part stays while some drill's runs are its own
                mine = set(part["drills"]) - covered
                if mine:
                    parts.insert(0, dict(part, in_report=sorted(mine)))
                covered |= set(part["drills"])
            meta["parts"] = parts
        with open(results_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, default=_json_default)
        drill_report.write(out, drill_report.load_all(assets))
        print(f"hapbx lab drill: {len(results)} runs in {meta['seconds']:.0f}s; wrote {os.path.relpath(out, root)}")
    return 1 if error else 0


def _json_default(o):
    if isinstance(o, float) and o == float("inf"):
        return None
    return str(o)


def _versions(ctx) -> dict:
    node = ctx.names[0]
    cmd = ("keepalived --version 2>&1 | head -1; "
           "dpkg-query -W -f='${Package} ${Version}\\n' postgresql-15 redis-server kamailio etcd-server sip-tester 2>/dev/null")
    out = ctx.sh(node, cmd, check=False)
    import matplotlib
    return {"node": out.strip().splitlines(), "matplotlib": matplotlib.__version__}
