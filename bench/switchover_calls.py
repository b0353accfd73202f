"""`hapbx bench switchover`: calls held through a planned switchover and back (issue 24).

On a running lab, from the host's lab address to the VIP only. Each run has legs; in each leg SIPp
sets up --calls calls (phone -> the bench queue -> dispatcher -> a media stand-in on either node)
at --rate calls/s through the VIP and holds each --hold-seconds; once every call is up, the move
runs, and the calls then end with their BYE sent to the VIP, i.e. to the node that leads after the
move, which is not the node that saw the INVITE: an in-dialog request of a dialog set up on the
other node (Kamailio's dialogs shared over DMQ, the Record-Route signed with the cluster's secret).
A call counts as kept when SIPp saw its 200 OK to the BYE (the scenario fails a call otherwise).

--during switchover (default): two legs, the operator's switchover (`hapbx-ha switchover --to
<peer>` on the leader, as lab/drills.switch_to runs it) to the peer, then back. --during upgrade:
one leg, `./hapbx upgrade`'s order (ops/rolling_upgrade.py: the standby, a switchover, the old
leader), the lab's upgrade being the restarts a package upgrade makes (LAB_UPGRADE: the lab's
nodes reach no archive). Writes reports/switchover-calls.md or reports/upgrade-calls.md (and its
JSON beside it): per leg the calls up before the move, its duration, kept / dropped calls,
SIPp's retransmissions and the first error SIPp logged.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from bench import sip
from lab import drills, machinery, report as writer, sipp
from ops import rolling_upgrade
from lab.sipp import first_error, parse_stat_csv, screen_counts, stat_int

REPORTS = {"switchover": "reports/switchover-calls.md", "upgrade": "reports/upgrade-calls.md"}


@dataclass
class Run:
    number: str                        # run, and leg of it (1a: there, 1b: back)
    calls: int
    first_owner: str = ""
    up_before_switch: int = 0          # SIPp's CurrentCall when the first switch started
    switch_seconds: list[float] = field(default_factory=list)   # command + healthy, each move
    owners: list[str] = field(default_factory=list)             # VIP owner after each move
    ok: int = 0
    failed: int = 0
    max_up: int = 0
    retransmissions: int = 0
    errors: str = ""
    note: str = ""

    @property
    def kept(self) -> bool:
        return self.ok == self.calls and self.failed == 0


def _stat(d: sipp.Workdir) -> list[dict[str, str]]:
    path = d.file("stat.csv")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_stat_csv(fh.read())
    except OSError:
        return []


def current_calls(d: sipp.Workdir) -> int:
    rows = _stat(d)
    return stat_int(rows[-1], "CurrentCall") if rows else 0


#: what the lab runs as its "upgrade" on each node: the lab's nodes have no archive to upgrade from
#: (they reach only the lab's own addresses), so the restarts a package upgrade's maintainer scripts
#: make (postinst: deb-systemd-invoke restart; postgresql-common restarts the cluster)
LAB_UPGRADE = "systemctl restart etcd.service redis-server.service postgresql.service keepalived.service kamailio.service"


def switch_to_the_other(lab, args):
    """One planned switchover to the node that does not lead."""
    target = lab.peer(drills.wait_healthy(lab, 120, "switchover"))
    t0 = time.monotonic()
    drills.switch_to(lab, target)
    return f"switched to {target}", time.monotonic() - t0, lab.vip_owner() or "none"


def rolling_upgrade_both(lab, args):
    """./hapbx upgrade's order: the standby, a switchover, the old leader (the lead stays moved)."""
    t0 = time.monotonic()
    done = rolling_upgrade.main(lab.cluster, machinery.script_runner(lab.spec), command=args.upgrade_command,
                                log=lambda m: print(f"    {m}", flush=True))
    return (f"upgraded {' then '.join(done.order)} ({', '.join(f'{n} {s} s' for n, s in done.seconds.items())})",
            time.monotonic() - t0, done.leader_after)


#: what a run does while its calls are up, as legs: each leg's calls are set up through the VIP,
#: the move runs, and they end (BYE) through the node that leads after it, i.e. the other node
MOVES = {"switchover": (switch_to_the_other, switch_to_the_other), "upgrade": (rolling_upgrade_both,)}
#: how long each call is held, by what moves: longer than the move itself
HOLD_SECONDS = {"switchover": 60, "upgrade": 420}


def one_leg(lab, name: str, move, args, inf: str, domain: str, log) -> Run:
    run = Run(name, args.calls)
    owner = drills.wait_healthy(lab, 120, "before the calls")
    run.first_owner = owner
    hold = args.hold_seconds or HOLD_SECONDS[args.during]
    bound = args.calls / args.rate + hold + 60
    with sipp.Workdir("hapbx-bench-switch-") as d:
        cmd = sipp.command(f"{lab.vip}:{lab.sip_port}", os.path.join(sip.SCENARIOS, "call.xml"), lab.host,
                           service=sip.CALLEE, calls=args.calls,
                           options=["-inf", inf, "-key", "domain", domain, "-key", "expires", "120",
                                    "-l", str(args.calls), "-r", f"{args.rate:g}", "-rp", "1000", "-d", str(hold * 1000),
                                    "-trace_screen", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
                                    "-trace_err", "-recv_timeout", "8000", "-timeout", f"{int(bound)}s"])
        box: dict = {}
        launched = time.monotonic()
        t = threading.Thread(target=lambda: box.update(x=sipp.launch(cmd, d.path, bound + 20, stdout=False)),
                             daemon=True)
        t.start()
        deadline = time.monotonic() + args.calls / args.rate + 30
        while time.monotonic() < deadline and current_calls(d) < args.calls and t.is_alive():
            time.sleep(0.5)
        run.up_before_switch = current_calls(d)
        log(f"  {name}: {run.up_before_switch} of {args.calls} calls up through the VIP on {owner}")
        try:
            what, seconds, leader = move(lab, args)
            run.switch_seconds.append(round(seconds, 1))
            run.owners.append(leader)
            log(f"  {name}: {what} in {seconds:.1f} s, {leader} leads")
            if time.monotonic() - launched > hold:
                run.note = f"the move outlasted the calls' hold ({hold} s): some BYEs went before it ended"
        except (drills.DrillError, rolling_upgrade.UpgradeError) as err:
            run.note = f"{args.during} failed: {err}"
            log(f"  {name}: {run.note}")
        t.join(max(bound + 25 - (time.monotonic() - launched), 1))
        x = box.get("x")
        rows = _stat(d)
        if rows:
            last = rows[-1]
            run.ok, run.failed = stat_int(last, "SuccessfulCall(C)"), stat_int(last, "FailedCall(C)")
            run.retransmissions = stat_int(last, "Retransmissions(C)")
            run.max_up = max(stat_int(r, "CurrentCall") for r in rows)
        final = screen_counts(d.read("_screen.log"))
        if final:
            run.ok, run.failed = final
        run.failed = max(run.failed, args.calls - run.ok)     # a call that never ended did not survive
        errors = d.read("_errors.log", tail=4000)
        # SIPp logs late copies of answers too ("Dead call ... (successful)"): an error only for a dropped call
        run.errors = first_error(errors) if errors and run.failed else ""
        if x is None or x.killed:
            run.note = (run.note + " SIPp did not finish within its bound").strip()
    log(f"  {name}: {run.ok} of {args.calls} calls ended with their BYE answered, {run.failed} dropped"
        + (f" ({run.errors})" if run.errors else ""))
    return run


def report(runs: list[Run], meta: dict) -> str:
    info = meta["info"]
    kept = sum(r.ok for r in runs)
    total = sum(r.calls for r in runs)
    switches = sorted(s for r in runs for s in r.switch_seconds)
    upgrade = meta.get("during") == "upgrade"
    move = (f"`./hapbx upgrade`'s order (ops/rolling_upgrade.py) with `{meta.get('upgrade_command')}` as the "
            "upgrade: the standby first, a switchover, then the old leader"
            if upgrade else "`hapbx-ha switchover --to <peer>` on the leader until the cluster is healthy on the "
            "peer (leg a), then the same back with new calls (leg b)")
    lines = [
        "# Calls held through a rolling upgrade of both nodes" if upgrade else
        "# Calls held through a planned switchover and back",
        "",
        f"Generated by `{meta['command']}` on {meta['started']} ({meta['took']:.0f} s), on the lab "
        f"`{meta['lab']}`. SIPp runs on the lab host and sends only to the VIP.",
        "",
        f"- machine: {info.get('cores')} cores ({info.get('cpu')}), {info.get('memory')}, kernel "
        f"{info.get('kernel')}; load average at start {meta['load_start']}, at end {meta['load_end']}",
        f"- on the nodes: {meta.get('kamailio', '?')}",
        f"- each leg: {meta['calls']} calls set up at {meta['rate']:g}/s through the VIP (phone -> queue -> "
        f"dispatcher -> the media stand-in of either node), held {meta['hold_seconds']} s; once all are up, "
        f"{move}; then each call's BYE goes to the VIP, i.e. to the node that leads after the move, not the one "
        "that saw the call's INVITE",
        "- kept = SIPp saw the 200 OK to the call's BYE; dropped = anything else (a failed in-dialog request, "
        "no answer to the BYE, a call that never ended)",
        "",
        "## Summary",
        "",
        f"- **{kept} of {total} calls kept** over {len(runs)} legs, {total - kept} dropped; "
        f"target: 0 dropped, every BYE answered: **{'met' if kept == total and total else 'not met'}**",
        ("- the whole rolling upgrade: " if upgrade else
         "- a switchover (command until the cluster is healthy on the other node): ")
        + (f"{switches[0]} / {switches[len(switches) // 2]} / {switches[-1]} s (min / median / max of "
           f"{len(switches)})" if switches else "none completed"),
        "",
        "## Runs and legs",
        "",
        "| run, leg | calls up before the move | VIP owner at setup | the move (s) | leader after it | kept | dropped "
        "| retransmissions | first error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r.number} | {r.up_before_switch} of {r.calls} | {r.first_owner} | "
                     f"{', '.join(str(s) for s in r.switch_seconds) or '-'} | {', '.join(r.owners) or '-'} | "
                     f"{r.ok} | {r.failed} | {r.retransmissions} | {(r.errors or r.note or '-')[:160]} |")
    notes = [r.note for r in runs if r.note]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    argv = sys.argv[sys.argv.index("switchover") + 1:] if "switchover" in sys.argv else []
    started, load_start = time.monotonic(), writer.load_avg()
    t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        lab, _ = sip.running_lab(args, "switchover", args.rate)
    except sip.BenchRefused as err:
        print(err, file=sys.stderr)
        return err.code
    owner = drills.wait_healthy(lab, 120, "bench switchover")
    domain = lab.psql(owner, "SELECT value FROM pbx.settings WHERE key = 'sip.domain';").strip() or lab.vip
    users = [(str(sip.USER_BASE + i), secrets.token_hex(8)) for i in range(args.calls)]
    tmp = tempfile.mkdtemp(prefix="hapbx-bench-switch-")
    runs: list[Run] = []
    kamailio = "?"
    try:
        inf = sip.users_file(tmp, users)
        sip.provision_ours(lab, owner, users, domain)
        kamailio = lab.sh(owner, "kamailio -v | head -1").strip()
        for n in range(1, args.runs + 1):
            legs = MOVES[args.during]
            for i, move in enumerate(legs):
                name = f"{n}{'abcdefgh'[i]}" if len(legs) > 1 else str(n)
                runs.append(one_leg(lab, name, move, args, inf, domain, log))
    finally:
        try:
            primary = drills.wait_healthy(lab, 120, "bench switchover cleanup")
            log(f"bench switchover: {sip.cleanup_ours(lab, primary)} bench extensions removed")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {"command": writer.with_flock(" ".join(["./hapbx", "bench", "switchover", *map(shlex.quote, argv)])), "started": t_start, "took": time.monotonic() - started,
            "info": writer.host(), "load_start": load_start, "load_end": writer.load_avg(), "lab": lab.spec.name,
            "calls": args.calls, "rate": args.rate, "hold_seconds": args.hold_seconds or HOLD_SECONDS[args.during],
            "kamailio": kamailio,
            "during": args.during, "upgrade_command": args.upgrade_command}
    out = args.out or os.path.join(sip.ROOT, REPORTS[args.during])
    writer.write(out, report(runs, meta), data={"meta": meta, "runs": [asdict(r) for r in runs]})
    log(f"bench switchover: wrote {out}")
    return 0 if runs and all(r.kept for r in runs) else 1


def add_parser(bsub) -> None:
    s = bsub.add_parser("switchover", help="calls held through a planned switchover and back on the running lab")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--stack", default="lab", help="lab stack (reads Pulumi.<stack>.yaml; default lab)")
    g.add_argument("--config", help="a lab stack file instead")
    s.add_argument("--calls", type=int, default=200, help="calls held through the switchover (200)")
    s.add_argument("--rate", type=float, default=20, help="calls/s of their setup (20)")
    s.add_argument("--hold-seconds", type=int, help="how long each call is held (switchover "
                   f"{HOLD_SECONDS['switchover']}, upgrade {HOLD_SECONDS['upgrade']}): longer than the move")
    s.add_argument("--runs", type=int, default=3, help="runs (3)")
    s.add_argument("--during", choices=sorted(MOVES), default="switchover",
                   help="switchover: there, then back, each with its own calls (default); upgrade: ./hapbx "
                        "upgrade's rolling order")
    s.add_argument("--upgrade-command", default=LAB_UPGRADE, help=f"the upgrade on each node ({LAB_UPGRADE})")
    s.add_argument("--out", help=f"report file ({', '.join(f'{k}: {v}' for k, v in REPORTS.items())})")
    s.set_defaults(func=run)
