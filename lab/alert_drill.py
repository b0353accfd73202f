"""`hapbx lab alert-drill`: faults on the running lab, and the notifications they cause at a
webhook receiver on the lab host (lab/alert_inbox.py) -> reports/alerts.md (issue 22).

Per scenario: the fault (failover drills 1, 2 and 5 from lab/drills.py, whole, heal included; or a
password-guessing attack from the attacker namespace), then the expected alert must reach the
receiver exactly once as firing and then once as resolved. Both Prometheus servers evaluate the
same rules and send to both Alertmanagers, which gossip: one notification, not two or four.
Measured: fault -> first firing notification, heal -> resolved notification, firing notifications
of the alert (must be 1).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass

from . import drills, machinery, monitor_view
from .alert_inbox import AlertInbox
from .attacker import AttackRange, Uac
from .context import LabCommandError, LabContext
from .report import host, with_flock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = "reports/alerts.md"
#: the attack's sources: addresses of the lab subnet nobody has (the SIP abuse tests use 66-77)
ATTACKERS = tuple(range(81, 89))   # 8 sources x authFailLimit (10): 80 failures, above 30/min over 2 min
SINK = 89
FIRING_WITHIN = 120.0     # seconds a notification may take before the scenario counts it missing
RESOLVED_WITHIN = 360.0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    expect: str               # the alert that must arrive
    drill: int = 0            # a failover drill of lab/drills.py, or 0: the SIP attack


SCENARIOS = (
    # keepalived is stopped for 10 s, ServiceDown needs it down for monitoring.nodeDownSeconds (10 s):
    # what the operator must learn here is that the roles moved
    Scenario("drill1", "failover drill 1: stop keepalived on the VIP owner", "Failover", drill=1),
    Scenario("drill2", "failover drill 2: power off the VIP owner node", "NodeDown", drill=2),
    Scenario("drill5", "failover drill 5: isolate the VIP owner completely", "NodeDown", drill=5),
    Scenario("attack", "password guessing: 8 addresses of the attacker namespace, authFailLimit wrong "
                       "passwords each", "SipAuthFailureBurst"),
)


def _attack(ctx: LabContext, cluster, spec) -> tuple[float, float]:
    """Wrong passwords from several attacker addresses until each is banned; (fault, heal) times.
    The bans are lifted at the end (the heal)."""
    subnet = str(cluster.subnet)
    base = subnet.rsplit(".", 1)[0]
    addresses = [f"{base}.{a}" for a in ATTACKERS]
    user = drills.USERS[1]
    t0 = time.time()
    with AttackRange(spec.bridge, subnet, addresses, f"{base}.{SINK}", names=("hapbx-alert-atk", "hapbx-alert-snk"),
                     veths=("hapbx-aatk0", "hapbx-asnk0"), label=spec.name) as rng:
        for a in addresses:
            ep = rng.endpoint(a)
            uac = Uac(ep, user, None, ctx.vip, (ctx.vip, cluster.kamailio.sip_port))
            # authFailLimit wrong passwords: the last one bans the source (a request after it would
            # only wait for an answer that never comes)
            for _ in range(cluster.kamailio.auth_fail_limit):
                first, _second = uac.register(password=f"guess-{secrets.token_hex(6)}")
                if not first:       # banned already: no answer any more
                    break
            rng.release(ep)
    t_heal = time.time()
    for n in cluster.nodes:
        for a in addresses:
            for table in ("ipban", "authfail"):
                ctx.sh(n.name, f"kamcmd -s unix:/run/kamailio/kamailio_ctl htable.delete {table} {a}")
    return t0, t_heal


def run_scenario(ctx: LabContext, cluster, spec, inbox: AlertInbox, sc: Scenario, n: int) -> dict:
    started = time.time()
    if sc.drill:
        rd = drills.run_one(ctx, sc.drill, n)
        t0, t_heal, note = rd.t0, rd.t_heal, f"VIP owner {rd.failed}"
    else:
        t0, t_heal = _attack(ctx, cluster, spec)
        note = f"{len(ATTACKERS)} sources"
    got = inbox.wait(sc.expect, "firing", since=t0, timeout=max(0.0, FIRING_WITHIN - (time.time() - t0)))
    fired, prints = (got[0], got[1]) if got else (None, set())
    back = inbox.wait(sc.expect, "resolved", since=t_heal, fingerprints=prints,
                      timeout=max(0.0, RESOLVED_WITHIN - (time.time() - t_heal))) if fired else None
    resolved = back[0] if back else None
    end = resolved or time.time()
    # notifications that said this alert instance was firing: one, unless it was sent twice
    firing = {t for t, a in inbox.firing(sc.expect, since=t0) if t <= end and a.get("fingerprint") in prints}
    # what else was notified as firing meanwhile (a resolution of an earlier scenario's alert is not)
    others = sorted({a.get("labels", {}).get("alertname", "?") for nt in inbox.received(started) for a in nt.alerts
                     if nt.arrived <= end and a.get("status") == "firing"} - {sc.expect})
    return {"scenario": sc.key, "run": n, "title": sc.title, "expect": sc.expect, "note": note,
            "fault_to_firing_s": round(fired - t0, 1) if fired else None,
            "heal_to_resolved_s": round(resolved - t_heal, 1) if resolved else None,
            "fault_to_resolved_s": round(resolved - t0, 1) if resolved else None,
            "firing_notifications": len(firing), "also_notified": others,
            # every notification that carried the expected alert: seconds after the fault, its status,
            # the alert's labels and fingerprint (what tells a second notification's cause)
            "notifications": [{"at_s": round(nt.arrived - t0, 1), "sender": nt.body.get("externalURL", ""),
                               "group": nt.body.get("groupKey", ""), "status": a.get("status"),
                               "node": a.get("labels", {}).get("node", ""), "fingerprint": a.get("fingerprint"),
                               "startsAt": a.get("startsAt")}
                              for nt in inbox.received(t0) if nt.arrived <= end for a in nt.alerts
                              if a.get("labels", {}).get("alertname") == sc.expect]}


def wait_quiet(ctx: LabContext, cluster, alerts: tuple[str, ...], seconds: float = 300) -> None:
    """Until the cluster is healthy and none of `alerts` is active (resolved and sent): the next
    scenario's notification must be a new one, not a group already firing."""
    drills.wait_healthy(ctx, 120, "between alert scenarios")
    m = cluster.monitoring
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            active = monitor_view.get(f"http://{cluster.nodes[0].address}:{m.alertmanager_port}"
                                      "/api/v2/alerts?active=true")
            if not [a for a in active if a["labels"].get("alertname") in alerts]:
                return
        except (OSError, ValueError):
            pass
        time.sleep(5)
    raise LabCommandError(f"alerts {', '.join(alerts)} still active {seconds:.0f} s after the last scenario")


def run(cluster, spec, *, out: str, runs: int, only: list[str], merge: bool = False) -> int:
    out = out if os.path.isabs(out) else os.path.join(ROOT, out)
    if not machinery.status(spec).up:
        print(f"hapbx lab alert-drill: lab {spec.name} is not up: run ./hapbx lab up first", file=sys.stderr)
        return 1
    if not cluster.monitoring.webhook_urls:
        print("hapbx lab alert-drill: the stack has no monitoring.webhookUrls to receive alerts on", file=sys.stderr)
        return 2
    ctx = LabContext.from_cluster(spec, cluster)
    t_start = time.monotonic()
    results: list[dict] = []
    error = ""
    meta = {"command": with_flock(" ".join(["./hapbx", *(shlex.quote(a) for a in sys.argv[1:])])),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": host(), "lab": spec.name,
            "release": cluster.os.release, "receiver": cluster.monitoring.webhook_urls[0],
            "scrape_s": cluster.monitoring.scrape_interval_seconds, "node_down_s": cluster.monitoring.node_down_seconds}
    try:
        with AlertInbox.for_url(cluster.monitoring.webhook_urls[0]) as inbox:
            drills.setup(ctx)
            for sc in [s for s in SCENARIOS if not only or s.key in only]:
                for n in range(1, runs + 1):
                    wait_quiet(ctx, cluster, (sc.expect,))
                    r = run_scenario(ctx, cluster, spec, inbox, sc, n)
                    r.update(started=meta["started"], command=meta["command"])   # which invocation (--merge)
                    results.append(r)
                    print(f"[{sc.key} run {n}] {sc.expect}: firing after {r['fault_to_firing_s']} s, "
                          f"{r['firing_notifications']} firing notification(s), resolved {r['heal_to_resolved_s']} s "
                          f"after the heal; also {', '.join(r['also_notified']) or 'nothing else'}", flush=True)
    except (LabCommandError, OSError) as err:
        error = str(err)
        print(f"hapbx lab alert-drill: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        drills.cleanup(ctx)
    meta["seconds"] = round(time.monotonic() - t_start)
    if merge:   # the other scenarios' results on record stay
        from .report import beside
        ran = {r["scenario"] for r in results}
        try:
            with open(beside(out, ".json")) as fh:
                before = json.load(fh)
            kept = [r for r in before["results"] if r["scenario"] not in ran]
            meta["merged"] = sorted({r["scenario"] for r in kept})
            results = kept + results
        except (OSError, ValueError, KeyError):
            pass
    write_report(out, meta, results, error)
    print(f"hapbx lab alert-drill: wrote {os.path.relpath(out, ROOT)}")
    ok = results and all(r["firing_notifications"] == 1 and r["heal_to_resolved_s"] is not None for r in results)
    return 0 if ok and not error else 1


def _median(values: list[float]) -> str:
    v = sorted(x for x in values if x is not None)
    return f"{v[len(v) // 2]:.1f}" if v else "—"


def write_report(out: str, meta: dict, results: list[dict], error: str) -> None:
    from .report import write
    lines = ["# Alerts: from a fault to the operator's webhook (issue 22)", "",
             f"Command: `{meta['command']}`  ", f"Started: {meta['started']} on {meta['host']}; lab `{meta['lab']}` "
             f"(Debian {meta['release']}); receiver {meta['receiver']} on the lab host; {meta['seconds']} s in all.  ",
             f"Scrape and rule evaluation every {meta['scrape_s']} s; a target down for {meta['node_down_s']} s is "
             "TargetDown (NodeDown: every target of a node failed a scrape, for one more interval); Alertmanager groups "
             "per cluster, alert and node, group_wait 5 s, group_interval 1 m; two Prometheus servers, two "
             "Alertmanagers in one gossip cluster.", "",
             "Goal: the expected alert reaches the receiver exactly once, within 30 s of the fault.", "",
             "| scenario | expected alert | runs | fault → notification (s), median [each] | firing notifications "
             "per run | heal → resolved (s), median [each] | also notified (firing) |", "|---|---|---|---|---|---|---|"]
    for sc in SCENARIOS:
        rs = [r for r in results if r["scenario"] == sc.key]
        if not rs:
            continue
        fire = [r["fault_to_firing_s"] for r in rs]
        res = [r["heal_to_resolved_s"] for r in rs]
        also = sorted({a for r in rs for a in r["also_notified"]})
        lines.append(f"| {sc.title} | {sc.expect} | {len(rs)} | {_median(fire)} {fire} | "
                     f"{[r['firing_notifications'] for r in rs]} | {_median(res)} {res} | {', '.join(also) or '—'} |")
    lines += ["", "Each notification of the expected alert (seconds after the fault, the Alertmanager that sent it, "
              "what it said):", ""]
    for r in results:
        said = "; ".join(f"{n['at_s']} s {n['sender'].split('//')[-1].rstrip('/')} {n['status']}"
                         for n in r.get("notifications", [])) or "none"
        lines.append(f"- {r['scenario']} run {r['run']} ({r['note']}): {said}")
    if error:
        lines += ["", f"**The run stopped early:** {error}"]
    if meta.get("merged"):
        lines += ["", f"Kept from the previous runs on record: {', '.join(meta['merged'])} (`--merge`). Each "
                  "scenario's runs came from:", ""]
        for sc in SCENARIOS:
            rs = [r for r in results if r["scenario"] == sc.key]
            if rs:
                lines.append(f"- {sc.key}: `{rs[0].get('command', '?')}` started {rs[0].get('started', '?')}"
                             + (f" ({rs[0]['record_note']})" if rs[0].get("record_note") else ""))
    lines += ["", "The heal of a failover drill is the drill's own (keepalived started, node powered on, network "
              "restored); of the attack, the bans lifted. The resolved notification comes at the Alertmanager's "
              "next group interval (1 min) after the rule stops firing.", ""]
    write(out, "\n".join(lines), {"meta": meta, "results": results})
