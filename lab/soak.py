"""`hapbx lab soak` (issue 24): the failover drills' faults at random, one at a time, for N minutes,
while a writer, SIP probes, a registered phone and calls run the whole time; then every
acknowledged write is checked (lab/soak_history.py) and reports/soak.md written (lab/soak_report.py).

The schedule comes from random.Random(seed) alone (printed at the start and in the report): a fault
kind drawn from drills.DRILLS (the long ones, both nodes off and the flapping link, drawn less
often), its hold (uniform 3-20 s, at least the drill's own where it needs one: the flapping drill's
60 s), and a quiet gap (uniform 5-20 s) after the cluster is healthy again. A fault acts and heals
with the drill's own callables on a Scene as drills.run_one does; after the heal the soak waits
(240 s at most) until drills.wait_healthy says healthy, else records it as a finding and stops.

Workload (threads, from the host, the whole soak):
- writer: one INSERT through the VIP every 50 ms into hapbx_drill.soak_writes (no unique key: a
  duplicate would show), whose RETURNING gives the node and PostgreSQL timeline that acknowledged
  it (SECURITY DEFINER functions: the node's name from its primary_conninfo's application_name,
  which postgresql.conf sets to the node's own name on both roles; listen_addresses is '*' and
  inet_server_addr() the VIP, so neither tells the nodes apart);
- drills.OptionsProbe (OPTIONS every 100 ms) and drills.RegisterProbe (digest REGISTER every 0.5 s);
- a phone (drills.USERS[1]) registered through the VIP, looked up on both Kamailios after every
  heal (a registration lost);
- a call every 2 s (SIPp, call.xml, 1901 -> a queue: the media stand-in on a node answers and posts
  the call's CDR); each Call-ID recorded, its CDR looked up in cdr.calls at the end.
Samplers on both nodes (drills.start_sampler) record VIP, PostgreSQL and Redis roles every 100 ms.
"""
from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field

from . import drills, sipp
from .context import LabCommandError, LabContext
from .soak_history import Write

TABLE = "hapbx_drill.soak_writes"
QUEUE = "8901"                  # the soak's queue extension: calls to it are answered by a media stand-in
CALL_EVERY = 2.0
HOLD = (3.0, 20.0)
GAP = (5.0, 20.0)
HEALTHY_WITHIN = 240.0
#: a drill's own minimum hold (the flapping drill flaps for its own 60 s)
MIN_HOLD = {11: 60.0}
#: how often each drill is drawn, relative: the long ones less often
WEIGHT = {11: 0.25, 12: 0.35}
REREGISTER_AFTER = 1200.0        # the phone registers for 3600 s (register.xml): refreshed every 20 min

_SETUP_SQL = f"""
CREATE SCHEMA IF NOT EXISTS hapbx_drill;
CREATE TABLE IF NOT EXISTS {TABLE} (run text NOT NULL, id integer NOT NULL, t_client double precision,
    node text, timeline integer, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS soak_writes_run ON {TABLE} (run, id);
-- the node's own name: postgresql.conf's primary_conninfo carries application_name=<node> on both roles
CREATE OR REPLACE FUNCTION hapbx_drill.soak_node() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog AS
    $$ SELECT substring(current_setting('primary_conninfo') from 'application_name=([^ ]+)') $$;
-- the timeline this primary writes on (a promotion starts a new one): the WAL file name's first 8 hex digits
CREATE OR REPLACE FUNCTION hapbx_drill.soak_timeline() RETURNS integer LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog AS
    $$ SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer $$;
REVOKE ALL ON FUNCTION hapbx_drill.soak_node(), hapbx_drill.soak_timeline() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hapbx_drill.soak_node(), hapbx_drill.soak_timeline() TO pbx_admin;
GRANT USAGE ON SCHEMA hapbx_drill TO pbx_admin;
GRANT SELECT, INSERT ON {TABLE} TO pbx_admin;
INSERT INTO pbx.extensions (number, type, display_name) VALUES ('{QUEUE}', 'queue', 'Soak queue')
    ON CONFLICT (number) DO NOTHING;
-- the caller places 30 calls a minute: above a user extension's default 10 (403 Call Rate Exceeded)
UPDATE pbx.calling_limits SET calls_per_minute = 120, max_calls = 8
    WHERE extension_id = (SELECT id FROM pbx.extensions WHERE number = '{drills.USERS[0]}');
"""
_INSERT = (f"INSERT INTO {TABLE} (run, id, t_client, node, timeline) "
           "VALUES (%s, %s, %s, hapbx_drill.soak_node(), hapbx_drill.soak_timeline()) RETURNING node, timeline")


class SoakError(LabCommandError):
    """The soak could not start (or its lab is not there)."""


# ------------------------------------------------------------------ workload


class SoakWriter(drills.Writer):
    """drills.Writer (an INSERT through the VIP every 50 ms, abandoned after 5 s), each
    acknowledgement with the node and timeline the INSERT returned."""

    def insert(self, conn, i: int, t: float):
        return conn.execute(_INSERT, (self.run_id, i, t)).fetchone()

    def record(self, i: int, sent: float, done: float, ok: bool, error: str = "", answer=None):
        node, tl = answer if answer else (None, None)
        self.records.append(Write(i, sent, done, ok, node or "?", int(tl or 0)) if ok
                            else Write(i, sent, done, False, error=error))


@dataclass
class Call:
    n: int
    call_id: str
    sent: float
    done: float
    ok: bool
    error: str = ""


class Caller(threading.Thread):
    """A call through the VIP every `every` s (SIPp call.xml, user 1901 -> QUEUE, 0.5 s long); one
    record per call, its Call-ID fixed (-cid_str) so its CDR can be found."""

    def __init__(self, ctx: LabContext, run_id: str, every: float = CALL_EVERY):
        super().__init__(daemon=True)
        self.ctx, self.run_id, self.every = ctx, run_id, every
        self.stop_ev = threading.Event()
        self.calls: list[Call] = []
        self.text = sipp.scenario("call.xml")

    def run(self) -> None:
        c = self.ctx
        n = 0
        nxt = time.time()
        while not self.stop_ev.is_set():
            n += 1
            cid = f"soak-{self.run_id}-{n}-%u@{c.host}"
            t = time.time()
            try:
                r = sipp.run(self.text, f"{c.vip}:{c.sip_port}", c.host, service=QUEUE,
                             keys={"domain": c.vip, "user": drills.USERS[0]},
                             auth=(drills.USERS[0], c.passwords[drills.USERS[0]]),
                             extra=("-d", "500", "-cid_str", cid), timeout=8)
                ok, err = r.ok, "" if r.ok else sipp.first_error(r.errors) or f"rc {r.rc}"
            except Exception as exc:  # SIPp outlived its bound
                ok, err = False, type(exc).__name__
            # SIPp's error line without its timestamps and Call-ID (so the report can count alike ones)
            err = re.sub(r"Call-Id:? '?[^\s',]+'?", "", re.sub(r"^[\d-]+\s+[\d:.]+\s+[\d.]+:\s*", "", err)).strip(" ,")
            self.calls.append(Call(n, cid.replace("%u", "1"), t, time.time(), ok, err[:100]))
            nxt = max(nxt + self.every, time.time())
            self.stop_ev.wait(max(0.0, nxt - time.time()))


class RegisteredPhone:
    """A phone (drills.USERS[1]) registered through the VIP from its own port; `missing` asks both
    Kamailios whether they still know its contact."""

    def __init__(self, ctx: LabContext):
        self.ctx = ctx
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ctx.host, 0))
            self.port = s.getsockname()[1]
        for node in ctx.names:   # an earlier run's contacts (another port each) would hit the contact limit
            ctx.sh(node, f"kamcmd -s unix:/run/kamailio/kamailio_ctl ul.rm location s:{drills.USERS[1]} >/dev/null 2>&1; "
                         "true", timeout=20, check=False)
        self.at = 0.0
        self.register()

    def register(self) -> bool:
        c = self.ctx
        r = sipp.run(sipp.scenario("register.xml"), f"{c.vip}:{c.sip_port}", c.host, port=self.port,
                     keys={"domain": c.vip, "user": drills.USERS[1]},
                     auth=(drills.USERS[1], c.passwords[drills.USERS[1]]), timeout=10)
        if r.ok:
            self.at = time.time()
        return r.ok

    def missing(self) -> list[str]:
        """The PBX nodes whose Kamailio does not have the phone's contact (DMQ replicates it; give it
        10 s after a heal, as drills.health waits for DMQ)."""
        out = []
        for node in self.ctx.names:
            seen = False
            for _ in range(20):
                got = self.ctx.sh(node, f"kamcmd -s unix:/run/kamailio/kamailio_ctl ul.lookup location "
                                        f"s:{drills.USERS[1]} 2>&1", timeout=10, check=False)
                if f":{self.port}" in got:
                    seen = True
                    break
                time.sleep(0.5)
            if not seen:
                out.append(node)
        return out


# ------------------------------------------------------------------ the schedule


@dataclass
class Planned:
    drill: int
    hold: float
    gap: float


class Schedule:
    """The faults of a soak, drawn one at a time from random.Random(seed): the same seed, the same
    faults, holds and gaps in the same order (which node each hits is the cluster's: the VIP owner)."""

    def __init__(self, seed: int, drill_numbers: list[int] | None = None):
        self.rnd = random.Random(seed)
        self.numbers = sorted(drill_numbers or drills.DRILLS)
        self.weights = [WEIGHT.get(d, 1.0) for d in self.numbers]

    def next(self) -> Planned:
        d = self.rnd.choices(self.numbers, weights=self.weights)[0]
        hold = max(round(self.rnd.uniform(*HOLD), 1), MIN_HOLD.get(d, 0.0))
        return Planned(d, hold, round(self.rnd.uniform(*GAP), 1))


# ------------------------------------------------------------------ the run


@dataclass
class Fault:
    n: int
    drill: int
    kind: str
    owner: str
    hold: float
    gap: float
    t_fault: float = 0.0
    t_heal: float = 0.0
    t_healthy: float = 0.0     # 0: never
    owner_after: str = ""
    notes: list = field(default_factory=list)
    phone_missing: list = field(default_factory=list)
    error: str = ""


@dataclass
class SoakData:
    run_id: str
    seed: int
    minutes: float
    t_start: float
    t_end: float
    faults: list
    writes: list
    options: list
    registers: list
    calls: list
    samples: dict
    stored: dict          # id -> rows
    stored_node: dict     # id -> node of the (first) row
    cdrs: dict            # call uuid -> rows in cdr.calls
    cdr_error: str
    findings: list
    phone_missing_start: list
    cdrs_kept: dict = field(default_factory=dict)   # call uuid -> node whose poster kept it for a replay


def kind_of(drill: int) -> str:
    return f"{drill}. {drills.DRILLS[drill].name}"


def soak_rearm(run_id: str):
    """What a node that booted needs again: the writer's access rule, the sampler (appending to the
    soak's file)."""
    def rearm(s: drills.Scene, node: str) -> None:
        drills.ensure_access(s.ctx, node)
        drills.start_sampler(s.ctx, node, run_id)
    return rearm


def run(ctx: LabContext, *, minutes: float, seed: int, log=print, drill_numbers: list[int] | None = None) -> SoakData:
    """The soak on the running lab (set up by drills.setup first); SoakData for the history check,
    whatever happened (an error stops the fault loop and is a finding)."""
    run_id = f"soak{seed}-{int(time.time())}"
    log(f"soak {run_id}: seed {seed}, {minutes:g} minutes")
    ctx.psql(ctx.vip_owner() or ctx.names[0], _SETUP_SQL)
    for node in ctx.names:
        drills.start_sampler(ctx, node, run_id)
    findings: list[str] = []
    phone = RegisteredPhone(ctx)
    if not phone.at:
        findings.append("the phone could not register through the VIP at the start")
    time.sleep(2.0)
    missing_start = phone.missing()
    writer, opts, caller = SoakWriter(ctx, run_id), drills.OptionsProbe(ctx), Caller(ctx, run_id)
    reg = drills.RegisterProbe(ctx, drills.USERS[2], ctx.passwords[drills.USERS[2]])
    threads = (writer, opts, reg, caller)
    t_start = time.time()
    for t in threads:
        t.start()
    schedule = Schedule(seed, drill_numbers)
    faults: list[Fault] = []
    end = t_start + minutes * 60
    try:
        time.sleep(5.0)   # baseline
        while time.time() < end:
            p = schedule.next()
            owner = drills.wait_healthy(ctx, HEALTHY_WITHIN, f"soak fault {len(faults) + 1}: before it")
            if time.time() - phone.at > REREGISTER_AFTER:
                phone.register()
            f = Fault(len(faults) + 1, p.drill, kind_of(p.drill), owner, p.hold, p.gap)
            faults.append(f)
            d = drills.DRILLS[p.drill]
            scene = drills.Scene(ctx, owner, ctx.peer(owner), f"d{p.drill}r{f.n}-{run_id}", f.notes,
                                 rearm=soak_rearm(run_id))
            log(f"[{time.strftime('%H:%M:%S')}] fault {f.n}: {f.kind} on {owner}, hold {p.hold:.1f} s")
            try:
                f.t_fault = d.fault(scene)
                time.sleep(max(0.0, f.t_fault + p.hold - time.time()))
                f.t_heal = d.heal(scene)
            except Exception as err:  # noqa: BLE001 (a node command, machinery, the host's nft): a finding
                f.error = f"fault or heal failed: {err}"
                findings.append(f"fault {f.n} ({f.kind}): {f.error}")
                drills.host_cut(ctx, None)
                f.t_heal = f.t_heal or time.time()
                # a heal that failed midway (e.g. a node booted but its start step raised) skipped the
                # rearm: without the access rule the writer is refused on that node once it owns the VIP
                # (the 60-minute run of seed 24 lost 126 s of writes so), without the sampler it is unseen
                for node in ctx.names:
                    try:
                        if drills.machinery.status(ctx.spec).node(node).running:
                            soak_rearm(run_id)(scene, node)
                    except Exception as exc:  # noqa: BLE001 (wait_healthy below decides)
                        f.notes.append(f"rearm {node} after the failed heal: {exc}")
            try:
                f.owner_after = drills.wait_healthy(ctx, HEALTHY_WITHIN, f"soak fault {f.n} ({f.kind}): after the heal")
                f.t_healthy = time.time()
            except drills.DrillError as err:
                f.error = (f.error + "; " if f.error else "") + str(err)
                findings.append(f"fault {f.n} ({f.kind} on {owner}): not healthy {HEALTHY_WITHIN:.0f} s after the "
                                f"heal: {err}")
                break
            f.phone_missing = phone.missing()
            if f.phone_missing:
                findings.append(f"fault {f.n} ({f.kind}): the phone's registration missing on "
                                f"{', '.join(f.phone_missing)} after the heal")
                phone.register()
            log(f"[{time.strftime('%H:%M:%S')}]   healed, healthy {f.t_healthy - f.t_heal:.1f} s after the heal, "
                f"owner {f.owner_after}; writes {sum(1 for w in writer.records if w.ok)} acknowledged, calls "
                f"{sum(1 for c in caller.calls if c.ok)}/{len(caller.calls)}")
            if time.time() + p.gap >= end:
                break
            time.sleep(p.gap)
        time.sleep(max(0.0, min(end - time.time(), 30.0)))
    except (LabCommandError, OSError) as err:
        findings.append(f"the soak stopped: {err}")
        log(f"soak: {err}")
    except KeyboardInterrupt:
        findings.append("the soak was interrupted (Ctrl-C)")
    except Exception as err:  # noqa: BLE001 (a report of what ran is still written)
        findings.append(f"the soak stopped on an error: {err!r}")
        traceback.print_exc()
    finally:
        for t in threads:
            t.stop_ev.set()
        for t in threads:
            t.join(20)
        drills.host_cut(ctx, None)
    t_end = time.time()
    samples = {}
    for node in ctx.names:
        try:
            drills.stop_sampler(ctx, node)
            samples[node] = drills.fetch_samples(ctx, node, run_id)
        except LabCommandError as err:
            findings.append(f"samples of {node} not fetched: {err}")
            samples[node] = []
    stored, stored_node = read_back(ctx, run_id)
    cdrs, cdr_error = cdr_rows(ctx, [c for c in caller.calls if c.ok], log)
    kept = {}
    if not cdr_error:
        from components.render import sipp_uas
        missing = [u for u in (sipp_uas.call_uuid(c.call_id) for c in caller.calls if c.ok) if u not in cdrs]
        kept = cdrs_kept(ctx, missing) if missing else {}
    return SoakData(run_id, seed, minutes, t_start, t_end, faults, writer.records, opts.records(), reg.out,
                    caller.calls, samples, stored, stored_node, cdrs, cdr_error, findings, missing_start, kept)


def read_back(ctx: LabContext, run_id: str) -> tuple[dict[int, int], dict[int, str]]:
    """id -> rows, id -> node, of the soak's writes read back through the VIP (as the writer wrote them)."""
    import psycopg
    last = None
    for _ in range(40):
        try:
            with psycopg.connect(**ctx.dsn(), autocommit=True) as conn:
                rows = conn.execute(f"SELECT id, count(*), min(node) FROM {TABLE} WHERE run = %s GROUP BY id",
                                    (run_id,)).fetchall()
            return {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows}
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    raise drills.DrillError(f"cannot read the soak's rows through the VIP: {last}")


def cdr_rows(ctx: LabContext, answered: list[Call], log=print, wait: float = 60.0) -> tuple[dict[str, int], str]:
    """call uuid -> rows in cdr.calls (on the primary) for the answered calls, once the count stops
    growing (the stand-ins post within seconds; a record kept by a poster is replayed later); ({}, why)
    when it cannot be read."""
    from components.render import sipp_uas
    if not answered:
        return {}, ""
    uuids = [sipp_uas.call_uuid(c.call_id) for c in answered]
    owner = ctx.vip_owner()
    if owner is None:
        return {}, "no VIP owner at the end: cdr.calls not read"
    last, stable_since, out = -1, time.monotonic(), {}
    deadline = time.monotonic() + wait
    body = ",".join(f"('{u}')" for u in uuids)
    while time.monotonic() < deadline:
        text = ctx.psql(owner, f"SELECT c.call_uuid, count(*) FROM cdr.calls c JOIN (VALUES {body}) v(u) "
                               "ON c.call_uuid::text = v.u GROUP BY 1", timeout=120)
        out = {line.split("|")[0]: int(line.split("|")[1]) for line in text.splitlines() if "|" in line}
        if len(out) == len(uuids):
            break
        if len(out) != last:
            last, stable_since = len(out), time.monotonic()
        elif time.monotonic() - stable_since > 20:
            break
        time.sleep(2)
    log(f"soak: CDRs of answered calls: {len(out)} of {len(uuids)} in cdr.calls")
    return out, ""


def cdrs_kept(ctx: LabContext, uuids: list[str]) -> dict[str, str]:
    """call uuid -> node, of the CDRs a media stand-in's poster could not post and kept in its error
    directory for a replay (as mod_json_cdr keeps them): not lost, not in cdr.calls either."""
    from components.render import sipp_uas
    want, out = set(uuids), {}
    for node in ctx.names:
        for name in ctx.sh(node, f"ls {sipp_uas.ERROR_DIR} 2>/dev/null; true", timeout=20, check=False).split():
            u = name.split(".")[0]
            if u in want:
                out[u] = node
    return out


def to_json(data: SoakData) -> dict:
    """What the report is written from, without the raw per-attempt records (72 000 writes an hour)."""
    return {"run_id": data.run_id, "seed": data.seed, "minutes": data.minutes, "t_start": data.t_start,
            "t_end": data.t_end, "findings": data.findings,
            "faults": [f.__dict__ for f in data.faults]}


def dump(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, default=str)



# ------------------------------------------------------------------ the command


def windows(data: SoakData) -> list:
    """Each fault's window: from the fault until the cluster was healthy again (the end, if never)."""
    from .soak_history import FaultWindow
    return [FaultWindow(f.kind, f.t_fault, f.t_healthy or data.t_end) for f in data.faults if f.t_fault]


def figures(data: SoakData) -> dict:
    from components.render import sipp_uas

    from .soak_history import summarise
    answered = {c.n: sipp_uas.call_uuid(c.call_id) for c in data.calls if c.ok}
    found = None if data.cdr_error else set(data.cdrs)
    return summarise(writes=data.writes, stored=data.stored, stored_node=data.stored_node, options=data.options,
                     registers=data.registers, calls=[(c.n, c.sent, c.done, c.ok, c.error) for c in data.calls],
                     windows=windows(data), samples=data.samples, t0=data.t_start, cdr_found=found,
                     call_uuids=answered)


def command(cluster, spec, *, minutes: float, seed: int, out: str, stack: str, argv: list[str]) -> int:
    """The soak on the running lab, its report at `out` and the figures beside it (.json); 0 when the
    history check passed and every fault healed."""
    import shlex
    import sys

    from . import soak_report
    from .report import host, with_flock
    if not machinery_up(spec):
        print(f"hapbx lab soak: lab {spec.name} is not up: run ./hapbx lab --stack {stack} up first", file=sys.stderr)
        return 1
    ctx = LabContext.from_cluster(spec, cluster)
    print(f"hapbx lab soak: seed {seed}", flush=True)
    meta = {"command": with_flock(" ".join(["./hapbx", *(shlex.quote(a) for a in argv)])),
            "seed": seed, "minutes": minutes, "stack": stack, "lab": spec.name, "release": cluster.os.release,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_start": os.getloadavg(),
            "host": host(), "hold": HOLD, "gap": GAP, "weights": WEIGHT, "healthy_within": HEALTHY_WITHIN,
            "error": ""}
    started = time.monotonic()
    data = None
    try:
        drills.setup(ctx)
        meta["versions"] = ctx.sh(ctx.names[0], "keepalived --version 2>&1 | head -1; dpkg-query -W -f='${Package} "
                                  "${Version}\\n' postgresql-15 postgresql-17 redis-server kamailio etcd-server "
                                  "sip-tester 2>/dev/null", check=False).strip().splitlines()
        data = run(ctx, minutes=minutes, seed=seed, log=lambda m: print(m, flush=True))
    except LabCommandError as err:
        meta["error"] = str(err)
        print(f"hapbx lab soak: {err}", file=sys.stderr)
    finally:
        try:
            drills.cleanup(ctx)
        except Exception as exc:  # the report of what ran still gets written
            print(f"hapbx lab soak: cleanup: {exc}", file=sys.stderr)
    meta["load_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    if data is None:
        return 1
    meta.update(run_id=data.run_id, t_start=data.t_start, cdr_error=data.cdr_error,
                phone_missing_start=data.phone_missing_start, cdrs_kept=data.cdrs_kept)
    r = figures(data)
    if r["cdr_missing"]:
        from components.render import sipp_uas

        from .soak_history import kind_at
        calls = {c.n: c for c in data.calls}
        wins = windows(data)
        data.findings.append(
            f"{len(r['cdr_missing'])} answered calls have no CDR in cdr.calls: " + "; ".join(
                f"call {n} at +{calls[n].sent - data.t_start:.1f} s ({kind_at(calls[n].sent, wins)}), "
                + (f"kept in {data.cdrs_kept[u]}'s error directory" if (u := sipp_uas.call_uuid(calls[n].call_id))
                   in data.cdrs_kept else "in no error directory")
                for n in r["cdr_missing"][:20]))
    faults = [dict(f.__dict__) for f in data.faults]
    soak_report.write(out, meta, r, faults, data.findings)
    dump(os.path.splitext(out)[0] + ".json", {"meta": meta, "figures": r, "faults": faults,
                                              "findings": data.findings})
    bad = (r["lost"] or r["duplicated"] or r["overlapping"] or r["split_timelines"] or r["sampler_violations"]
           or any(not f.t_healthy for f in data.faults) or meta["error"])
    print(f"hapbx lab soak: {len(data.faults)} faults; writes {r['acked']} acknowledged, lost {len(r['lost'])}, "
          f"duplicated {len(r['duplicated'])}, overlapping writers {len(r['overlapping'])}; calls "
          f"{r['calls'] - r['calls_failed']}/{r['calls']}, CDRs missing "
          f"{'not measured' if r['cdr_missing'] is None else len(r['cdr_missing'])}; wrote {out}", flush=True)
    return 1 if bad else 0


def report_only(out: str) -> int:
    """The report again from the .json beside it (the figures of the run on record)."""
    from . import soak_report
    with open(os.path.splitext(out)[0] + ".json", encoding="utf-8") as fh:
        d = json.load(fh)
    soak_report.write(out, d["meta"], d["figures"], d["faults"], d["findings"])
    print(f"hapbx lab soak: wrote {out} from {os.path.splitext(out)[0]}.json")
    return 0


def machinery_up(spec) -> bool:
    from . import machinery
    return machinery.status(spec).up
