"""`hapbx bench media`: calls/s through the VIP with the media-only nodes in the dispatcher set and
without them, side by side in one run (issue 24, scale-out media).

On a running lab whose stack has `mediaNodes` (`lab/media_variant.py`; README "Media nodes on the
lab"), from the host's lab address to the lab's own addresses only. The users call --queues queue
numbers in turn (bench/sip.py `users_file`): dispatcher hashes the called number, so the numbers
spread over every active media engine, as a dial plan's queues do. Two variants, alternated
within each run (A B, then B A, ... so a drifting host load favours neither):

  all        every destination of the dispatcher set active (the PBX nodes' engines and the
             media-only nodes')
  pbx-only   the media-only nodes' destinations disabled on both Kamailios for the variant
             (`kamcmd dispatcher.set_state d`; probing does not bring a disabled one back) and
             set active and probing again after it, in every case

Each variant steps calls/s up exactly as `bench sip` does (bench/sip.py `stepped`: a step fails on
more than 0.1 % Kamailio-caused failures or an unreached rate); the figure is the highest passing
rate, the median of --runs runs with the spread. Which engine answers which number is probed
(one call per number) for each variant and reported; after each pbx-only variant both Kamailios'
`dispatcher.list` must still show the media-only destinations disabled (else a note, and the run
counts as stopped early). Writes reports/media-scale.md and .json.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

from bench import sip, sip_runs
from components.render.postgres import DISPATCHER_SET   # the media engines' set, as the data tier seeds it
from lab import report as writer

REPORT = "reports/media-scale.md"
VARIANTS = ("all", "pbx-only")
#: dispatcher states: disabled by the bench (probing leaves it), active and probing (the configured)
DISABLED, RESTORED = "d", "ap"


def media_only_destinations(listing: str, media_addresses: list[str]) -> list[str]:
    """The URIs of `kamcmd dispatcher.list` output whose host is a media-only node."""
    want = {ipaddress.ip_address(a) for a in media_addresses}
    return [uri for uri in flags_of(listing)
            if (m := re.match(r"sip:([0-9.]+)", uri)) and ipaddress.ip_address(m.group(1)) in want]


def flags_of(listing: str) -> dict[str, str]:
    """Each destination's FLAGS in `kamcmd dispatcher.list` output: {uri: flags} (e.g. 'AP', 'DX')."""
    return dict(re.findall(r"URI:\s*(sip:[^\s]+)\s+FLAGS:\s*(\S+)", listing))


def still_disabled(lab, uris: list[str]) -> list[str]:
    """What says a media-only destination was not disabled on a node (empty: all were)."""
    out = []
    for node in lab.names:
        flags = flags_of(lab.sh(node, "kamcmd dispatcher.list"))
        out += [f"{uri} on {node}: FLAGS {flags.get(uri, 'missing')}" for uri in uris
                if not flags.get(uri, "").startswith("D")]
    return out


def order(run_no: int) -> tuple[str, ...]:
    """The variants' order in run n: alternated, so neither always goes first."""
    return VARIANTS if run_no % 2 else tuple(reversed(VARIANTS))


def set_state(lab, uris: list[str], state: str) -> None:
    """The destinations' state on both PBX nodes' Kamailio."""
    for node in lab.names:
        for uri in uris:
            lab.sh(node, f"kamcmd dispatcher.set_state {state} {DISPATCHER_SET} {uri}")


@contextmanager
def variant(lab, v: str, uris: list[str]):
    """The dispatcher state of variant v for its steps: pbx-only disables the media-only
    destinations on both nodes and sets them active and probing again afterwards, whatever
    happened. Yields a check: what says they were not disabled all along (nothing for 'all')."""
    if v != "pbx-only":
        yield lambda: []
        return
    set_state(lab, uris, DISABLED)
    try:
        yield lambda: still_disabled(lab, uris)   # probing leaves an admin-disabled destination alone
    finally:
        set_state(lab, uris, RESTORED)


def figures(runs: list[dict[str, list[sip.Step]]]) -> dict[str, sip_runs.Figure]:
    """Per variant: the highest passing calls/s of each run (None: no step passed)."""
    return {v: sip_runs.Figure([(b.rate if (b := sip.best(r.get(v, []))) else None) for r in runs]) for v in VARIANTS}


def report(runs: list[dict[str, list[sip.Step]]], meta: dict) -> str:
    f = figures(runs)
    info = meta["info"]
    lines = [
        "# Media scale-out: calls/s with and without the media-only nodes",
        "",
        "A real run of the command below against the lab, written by the command itself (bench/media_scale.py).",
        "",
        f"- command: `{meta['command']}`",
        f"- started {meta['started']}, {meta['took']:.0f} s; lab `{meta['lab']}` ({meta['config']}), VIP on {meta['owner']}",
        f"- machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory')}, kernel {info.get('kernel')}; "
        f"load average {info.get('load_start')} at the start, {info.get('load_end')} at the end; {info.get('sipp')}",
        *([f"- the lab idle before the run (its daemons, no calls): {info['idle_cpu']}"] if info.get("idle_cpu") else []),
        *([f"- note: {meta['args']['note']}"] if meta["args"].get("note") else []),
        f"- media-only nodes: {', '.join(meta['media_nodes'])}; their dispatcher destinations: "
        f"{', '.join(meta['destinations'])}",
        f"- {meta['args']['users']} users calling {meta['args']['queues']} queue numbers in turn, each call held "
        f"{meta['args']['call_hold_ms']} ms, steps of {meta['args']['step_seconds']:g} s at "
        f"{', '.join(f'{r:g}' for r in meta['args']['call_rates'])} calls/s",
        "",
        "## Figures",
        "",
        "| variant | highest calls/s passed, median (min-max) | numbers per media engine (probed) |",
        "|---|---|---|",
    ]
    for v in VARIANTS:
        shares = meta["engines"].get(v, {})
        lines.append(f"| {v} | {f[v].show()} | {', '.join(f'{e}: {k}' for e, k in shares.items()) or '-'} |")
    lines += [
        "",
        "## What it shows",
        "",
        "- Whether the dispatcher set spreads the calls over the media-only node (the numbers per engine "
        "above) and whether calls through it fail more (the step tables: Kamailio-caused failures, stand-in answers).",
        "- The lab's nodes are containers on the same host: every node, SIPp and the stand-ins share "
        f"its {info.get('cores')} cores, so a further engine adds no CPU here. On separate machines each "
        "engine brings its own; this lab figure is the routing's cost and correctness, not the capacity gain.",
    ]
    for n in meta.get("notes", []):
        lines.append(f"- {n}")
    lines += ["", "## Steps", "", sip.HEAD.replace("| Kamailio |", "| variant |", 1)]
    for r in runs:
        for v in VARIANTS:
            for s in r.get(v, []):
                lines.append(sip.step_row(s))
    extra = [x for r in runs for v in VARIANTS for x in sip.samples(r.get(v, []))]
    if extra:
        lines += ["", "First failure of each class, per step:", "", *extra]
    return "\n".join(lines) + "\n"


def probe_engines(lab, target: sip.Target, user: tuple[str, str], callees: list[str]) -> dict[str, int]:
    return sip.engine_shares({c: sip.media_engine_of_ours(lab, target, user, c) for c in callees})


def run(args) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    sip.bounded(args)
    argv = sys.argv[sys.argv.index("media") + 1:] if "media" in sys.argv else []
    started, t_start = time.monotonic(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    def has_media_nodes(lab, path: str) -> None:
        if not lab.cluster.media_nodes:
            raise sip.BenchRefused(f"hapbx bench media: the stack {path} has no mediaNodes (README: media nodes on the lab)")
    try:
        lab, path = sip.running_lab(args, "media", max(args.call_rates), has_media_nodes)
    except sip.BenchRefused as err:
        print(err, file=sys.stderr)
        return err.code
    media = [m.address for m in lab.cluster.media_nodes]
    locked = writer.under_measure_lock()
    owner = lab.vip_owner()
    if owner is None:
        print("hapbx bench media: the VIP is on no node", file=sys.stderr)
        return 1
    uris = media_only_destinations(lab.sh(owner, "kamcmd dispatcher.list"), media)
    if not uris:
        print(f"hapbx bench media: no dispatcher destination of {', '.join(media)} on {owner}", file=sys.stderr)
        return 1
    domain = lab.psql(owner, "SELECT value FROM pbx.settings WHERE key = 'sip.domain';").strip() or lab.vip
    users = [(str(sip.USER_BASE + i), secrets.token_hex(8)) for i in range(args.users)]
    callees = sip.queue_numbers(args.queues)
    ours = sip.Target("ours", lab.vip, lab.sip_port, domain, "/etc/kamailio/kamailio.cfg", owner)
    tmp = tempfile.mkdtemp(prefix="hapbx-bench-media-")
    info, notes = sip.machine(), []
    info["load_start"], info["idle_cpu"] = writer.load_avg(), writer.cpu_busy()
    runs: list[dict[str, list[sip.Step]]] = []
    engines: dict[str, dict[str, int]] = {}
    try:
        inf = sip.users_file(tmp, users, callees)
        sip.provision_ours(lab, owner, users, domain, callees)
        log(f"bench media: lab {lab.spec.name}, VIP on {owner}; media-only destinations {', '.join(uris)}")
        for n in range(1, args.runs + 1):
            deadline = time.monotonic() + args.max_minutes * 60
            results: dict[str, list[sip.Step]] = {}
            runs.append(results)
            for v in order(n):
                with variant(lab, v, uris) as check:
                    if v not in engines:
                        engines[v] = probe_engines(lab, ours, users[0], callees)
                        log(f"bench media: {v}: numbers per engine {engines[v]}")
                    results[v] = sip.stepped(lab, sip.Target(v, ours.address, ours.port, domain, ours.marker, owner),
                                             "calls", args.call_rates, args.step_seconds, args.call_hold_ms, inf, log,
                                             deadline, args.users, n)
                    notes.extend(f"run {n}: after the {v} steps, not disabled: {bad}" for bad in check())
                time.sleep(3)
    except Exception as err:  # report what was measured, say what stopped the run
        notes.append(f"The run stopped early: {err}")
        log(f"bench media: stopped: {err}")
    finally:
        try:
            log(f"bench media: {sip.cleanup_ours(lab, owner)} bench extensions removed")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info["load_end"] = writer.load_avg()
    base = "./hapbx bench media " + " ".join(shlex.quote(a) for a in argv)
    meta = {"command": f"flock {writer.MEASURE_LOCK} {base.strip()}" if locked else base.strip(),
            "started": t_start, "took": time.monotonic() - started, "info": info, "owner": owner, "lab": lab.spec.name,
            "config": path, "media_nodes": media, "destinations": uris, "engines": engines, "notes": notes,
            "args": {k: v for k, v in vars(args).items() if k != "func"}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    writer.write(args.out, report(runs, meta),
                 data={"meta": meta, "runs": [{v: [s.as_dict() for s in steps] for v, steps in r.items()} for r in runs]})
    log(f"bench media: wrote {args.out}")
    return 0 if runs and not notes else 1

