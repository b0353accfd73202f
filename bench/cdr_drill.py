"""`hapbx lab cdr-drill`: CDRs posted to the VIP while the cluster breaks -> reports/cdr-drill.md (issue 21).

Two faults on the VIP owner, each run --runs times on the running lab:

  poweroff    the VIP owner powered off (lab/drills.py PowerOff, as failover drill 2), started again
              after --hold seconds (PowerOn)
  redis-kill  Redis on the master (the VIP owner) SIGKILLed; systemd restarts it and the HA layer does
              what it does: the nodes' 100 ms samplers (lab/drills.py) record VIP, PostgreSQL role,
              Redis role and lease, and the report says what happened

During a run a poster on the host (the lab bridge address) posts FreeSWITCH-shaped CDRs (bench/loadgen.py
fs_cdr, a unique call UUID each) to https://<VIP>:<cdr.receiverPort>/cdr at a steady rate: one connection
per post, a timeout (5 s: mod_json_cdr's in json_cdr.conf), no retry, so what counts is what was
acknowledged (HTTP 200, whose body says where the record was made safe: "stored": "queue" | "postgres").
After the heal the run waits for the cluster to be healthy again (lab/drills.py settle) and for the queue
on the writer's Redis to be empty (cdr:queue and every cdr:processing:<node>), then reads the run's records
from cdr.calls on the primary: every acknowledged record must be there exactly once.

The poster authenticates as a node's CDR sender (HTTP basic, /etc/hapbx/cdr-sender.env read over the lab's
ssh, kept in memory only, never printed), over HTTPS: the receiver's certificate checked against the cluster
CA (/etc/hapbx/tls/ca.crt, read from the same node) and for the VIP. The host reaches the receivers on the VIP through a drill-only
accept on each node (lab/drills.py allow_host), removed when the command ends; a node's boot drops it too,
and PowerOn puts it back (Scene.rearm).

lab/ may not import bench/ (fs_cdr lives here), so the drill lives here and reuses lab/drills.py: the
health gate before each run, the faults, settle after the heal, the samplers, the host access rule.
"""
from __future__ import annotations

import asyncio
import base64
import errno
import json
import math
import os
import shlex
import ssl
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from lab import drills
from lab import report as writer
from components.releases import RELEASES
from lab.context import LabCommandError, LabContext
from lab.health import REDIS

from .loadgen import fs_cdr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = "reports/cdr-drill.md"
ACCESS_COMMENT = "hapbx-cdr-drill"
#: the records' variable naming their run (the query of cdr.calls afterwards)
TAG = "hapbx_cdr_drill"
SENDER_ENV = "/etc/hapbx/cdr-sender.env"
#: the cluster CA on every node (hapbx_node.layout.TLS_CA): what the receivers' certificates chain to
CLUSTER_CA = "/etc/hapbx/tls/ca.crt"
RATE, TIMEOUT, HOLD = 50.0, 5.0, 10.0
BASELINE_S, TAIL_S = 3.0, 3.0
DRAIN_S = 120.0
DEBIAN = {codename: f"Debian {r.debian}" for codename, r in RELEASES.items()}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fault: Callable[[drills.Scene], float]
    heal: Callable[[drills.Scene], float]
    healed_by: str
    why: str = ""


SCENARIOS = {s.name: s for s in (
    Scenario("poweroff", "power off the VIP owner node", drills.PowerOff(), drills.PowerOn(),
             "the node started again after the hold (PowerOn)",
             why="The VIP reaches the peer within 0.4 s, but its Redis is a replica until the dead leader's lease "
                 "expires and the peer promotes (PostgreSQL, then Redis: the list below the table). Meanwhile the peer's "
                 "receiver finds its local Redis READONLY and the dead master's address silent (a 2 s connect "
                 "timeout per attempt), so it holds the posts: those it cannot push within cdr.redisTimeoutSeconds "
                 "get a 503, and the ones still held when the 2 s attempt ends late are answered only after the "
                 "poster's 5 s (timeouts), some of them stored once Redis is master (\"not acked, stored\": a "
                 "retrying FreeSWITCH posts them again, and cdr.ingest stores them once). Posts in flight to the node "
                 "as it dies are refused, reset or closed. From the promotion until the returned node replicates "
                 "again, WAIT finds no replica: every acknowledgement is a PostgreSQL commit (stored: postgres). The "
                 "longest stretch without an acknowledgement is the promotion time. A lab power-off kills the node's "
                 "processes, not a kernel: what they wrote is still in the host's page cache, so this drill does not "
                 "exercise fsync (see redis-kill)."),
    Scenario("redis-kill", "SIGKILL Redis on the master (the VIP owner)",
             drills.OnOwner("systemctl kill -s KILL redis-server.service"), drills.Nothing(),
             "none: systemd restarts redis-server (Restart=always)",
             why="systemd restarts Redis within 0.3-0.5 s and it reloads its AOF; keepalived's local check (every "
                 "1 s, FAULT after 2 failures) never saw it down long enough, so the HA layer did nothing: no "
                 "failover in any run. The receiver holds the posts of that half second and pushes them once Redis "
                 "answers (p99 and the longest stretch without an acknowledgement). The restarted master has a new "
                 "replication ID, so its replica resyncs in full; the pushes of that moment get no WAIT "
                 "confirmation and are committed to PostgreSQL before their 200 (stored: postgres). Nothing was "
                 "lost or stored twice with `appendfsync always` nor with `everysec`: a SIGKILL ends the process, not "
                 "the kernel, and Redis write(2)s the AOF buffer before it replies in both modes, so every "
                 "acknowledged push is in the page cache and the restarted server reads it back. `everysec` leaves "
                 "an acknowledged push out of the file only when a background fsync is still running as the reply "
                 "goes (Redis then postpones the write up to 2 s; not hit in these runs) or when the kernel goes "
                 "down with the node (power loss, panic: up to ~2 s not on disk), which the lab cannot do. Either "
                 "loses a record only if its other copies go too: the replica's (a power cut of both nodes, or the "
                 "resync above) and PostgreSQL's (not yet moved by the worker). `always` closes that window; its cost on "
                 "loopback is in reports/cdr-bench.md (p99 +20 ms at 2000 CDRs/s)."),
)}


# ------------------------------------------------------------------ the poster


@dataclass
class Post:
    seq: int
    call_uuid: str
    sent: float          # epoch seconds (the host's clock, which is the nodes': nspawn)
    done: float
    status: int          # HTTP status; 0: no answer
    error: str = ""      # timeout | refused | reset | unreachable | ... (no answer), or what was wrong with it
    stored: str = ""     # the 200's "stored": queue | postgres


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def parse_answer(data: bytes, call_uuid: str) -> tuple[int, str, str]:
    """(status, error, stored) of an HTTP/1.1 answer read to its end."""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, "closed without an answer" if not data else "garbled answer", ""
    if status != 200:
        return status, "", ""
    try:
        answer = json.loads(body)
    except ValueError:
        return status, "200 without a JSON body", ""
    if not answer.get("ok") or answer.get("call_uuid") != call_uuid:
        return status, "200 for another record", str(answer.get("stored", ""))
    return status, "", str(answer.get("stored", ""))


class Poster(threading.Thread):
    """Posts at `rate` per second (open loop: on schedule, however many are still in flight), each on
    its own connection with `timeout` for the whole exchange, never retried; `posts` gets each one."""

    def __init__(self, host: str, port: int, auth: str, rate: float, timeout: float, run_id: str, node: str,
                 tls: ssl.SSLContext | None = None):
        super().__init__(daemon=True)
        self.host, self.port, self.auth, self.rate, self.timeout = host, port, auth, rate, timeout
        self.tls = tls          # HTTPS (the receivers beyond loopback): the CA and the host checked
        self.run_id, self.node = run_id, node
        self.stop_ev = threading.Event()
        self.posts: list[Post] = []
        self.started = 0.0

    def body(self, call_uuid: str, seq: int) -> bytes:
        rec = fs_cdr(call_uuid, node=self.node, extra={TAG: self.run_id, "hapbx_cdr_drill_seq": str(seq)})
        return json.dumps(rec, separators=(",", ":")).encode()

    async def _post(self, seq: int) -> None:
        call_uuid = str(uuid.uuid4())
        body = self.body(call_uuid, seq)
        request = (f"POST /cdr HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: {self.auth}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                   ).encode() + body
        conn: list = []

        async def exchange() -> bytes:
            reader, w = await asyncio.open_connection(self.host, self.port, ssl=self.tls,
                                                      server_hostname=self.host if self.tls else None)
            conn.append(w)
            w.write(request)
            await w.drain()
            return await reader.read()     # to the end: the receiver closes after its answer

        sent = time.time()
        try:
            data = await asyncio.wait_for(exchange(), self.timeout)
            status, error, stored = parse_answer(data, call_uuid)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            status, error, stored = 0, _error_name(exc), ""
        finally:
            for w in conn:
                w.close()
        self.posts.append(Post(seq, call_uuid, sent, time.time(), status, error, stored))

    async def _main(self) -> None:
        tasks: set[asyncio.Task] = set()
        self.started = time.time()
        seq = 0
        while not self.stop_ev.is_set():
            due = self.started + seq / self.rate
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.2))
                continue
            task = asyncio.get_running_loop().create_task(self._post(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            seq += 1
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.timeout + 5)

    def run(self) -> None:
        asyncio.run(self._main())

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(self.timeout + 15)


# ------------------------------------------------------------------ the lab side


def sender_auth(ctx: LabContext, node: str) -> str:
    """The Authorization header of the node's CDR sender (cdr-sender.env: never printed or logged)."""
    values = {}
    for line in ctx.sh(node, f"cat {SENDER_ENV}", timeout=20).splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("HAPBX_CDR_POST_USER", "HAPBX_CDR_POST_PASSWORD"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':    # components/render/cdr.py _quote
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            values[key] = value
    if len(values) != 2:
        raise drills.DrillError(f"{node}: {SENDER_ENV} holds no CDR sender credential (apply the stack: ./hapbx lab apply)")
    token = base64.b64encode(f"{values['HAPBX_CDR_POST_USER']}:{values['HAPBX_CDR_POST_PASSWORD']}".encode()).decode()
    return f"Basic {token}"


def cluster_tls(ctx: LabContext, node: str) -> ssl.SSLContext:
    """A client context trusting the cluster CA (read from the node: public) and checking the host."""
    pem = ctx.sh(node, f"cat {CLUSTER_CA}", timeout=20)
    if "BEGIN CERTIFICATE" not in pem:
        raise drills.DrillError(f"{node}: no cluster CA in {CLUSTER_CA} (apply the stack: ./hapbx lab apply)")
    tls = ssl.create_default_context(cadata=pem)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    return tls


def redis_cmd(ctx: LabContext, node: str, *args: str, timeout: float = 20) -> str:
    return ctx.sh(node, f"{REDIS} {' '.join(shlex.quote(a) for a in args)}", timeout=timeout).strip()


def backlog(ctx: LabContext, node: str) -> int:
    """Records in the node's Redis queue and in every node's processing list."""
    keys = ["cdr:queue", *(f"cdr:processing:{n}" for n in ctx.names)]
    out = ctx.sh(node, "; ".join(f"{REDIS} llen {k}" for k in keys), timeout=20)
    return sum(int(x) for x in out.split())


def wait_drained(ctx: LabContext, node: str, seconds: float, what: str) -> float:
    """Seconds until the writer's queue and processing lists are empty (bounded)."""
    t = time.monotonic()
    left = -1
    while time.monotonic() - t < seconds:
        try:
            left = backlog(ctx, node)
        except (LabCommandError, ValueError):
            left = -1
        if left == 0:
            return time.monotonic() - t
        time.sleep(0.5)
    raise drills.DrillError(f"{what}: the CDR queue on {node} is not drained after {seconds:.0f} s ({left} left): "
                            "is hapbx-cdr-worker running there? (journalctl -u hapbx-cdr-worker)")


def stored_rows(ctx: LabContext, primary: str, run_id: str) -> dict[str, int]:
    """call UUID -> rows in cdr.calls of the run's records (primary)."""
    out = ctx.psql(primary, f"SELECT call_uuid, count(*) FROM cdr.calls WHERE raw->'variables'->>'{TAG}' = '{run_id}' "
                            "GROUP BY call_uuid")
    rows = {}
    for line in out.splitlines():
        u, _, c = line.partition("|")
        if c:
            rows[u] = int(c)
    return rows


def conflicts(ctx: LabContext, primary: str, run_id: str) -> int:
    return int(ctx.psql(primary, "SELECT count(*) FROM cdr.conflicts "
                                 f"WHERE record->'raw'->'variables'->>'{TAG}' = '{run_id}'").strip() or 0)


def unit_restarts(ctx: LabContext, node: str, unit: str = "redis-server.service") -> int:
    out = ctx.sh(node, f"systemctl show -p NRestarts --value {unit}", timeout=20, check=False).strip()
    return int(out) if out.isdigit() else -1


@dataclass
class Setup:
    auth: str = field(repr=False)
    port: int
    appendfsync: dict           # node -> Redis appendfsync as running at setup
    override: str = ""          # appendfsync set on both nodes before each run ("" none)
    tls: ssl.SSLContext | None = field(default=None, repr=False)   # the receivers' HTTPS: cluster_tls


def rearm(s: drills.Scene, node: str) -> None:
    """A node that booted: the drill's access rule and its sampler again."""
    drills.allow_host(s.ctx, node, s.ctx.cluster.cdr.receiver_port, ACCESS_COMMENT)
    drills.start_sampler(s.ctx, node, s.run_id)


def setup(ctx: LabContext, override: str = "") -> Setup:
    """On a healthy cluster: the host's access to the receivers on the VIP, the samplers' script, the sender
    credential; one post to the VIP must be acknowledged."""
    owner = drills.wait_healthy(ctx, 120, "before the CDR drill")
    port = ctx.cluster.cdr.receiver_port
    for n in ctx.names:
        drills.allow_host(ctx, n, port, ACCESS_COMMENT)
    drills.install_sampler(ctx)
    st = Setup(auth=sender_auth(ctx, owner), port=port,
               appendfsync={n: redis_cmd(ctx, n, "config", "get", "appendfsync").split()[-1] for n in ctx.names},
               override=override, tls=cluster_tls(ctx, owner))
    probe = Poster(ctx.vip, port, st.auth, 1, TIMEOUT, "setup-check", ctx.names[0], st.tls)
    asyncio.run(probe._post(0))
    p = probe.posts[0]
    if p.status != 200:
        raise drills.DrillError(f"a CDR posted to https://{ctx.vip}:{port}/cdr from {ctx.host} was not acknowledged "
                                f"(status {p.status} {p.error}): does the receiver listen on the VIP "
                                "(HAPBX_CDR_LISTEN in /etc/hapbx/cdr-receiver.env)? Apply the stack: ./hapbx lab apply")
    return st


def cleanup(ctx: LabContext, st: Setup | None = None) -> None:
    from lab import machinery
    for n in ctx.names:
        if machinery.status(ctx.spec).node(n).running:
            drills.stop_sampler(ctx, n)
            drills.disallow_host(ctx, n, ACCESS_COMMENT)
            if st is not None and st.override:
                ctx.sh(n, f"{REDIS} config set appendfsync {shlex.quote(st.appendfsync.get(n, 'always'))}",
                       timeout=20, check=False)


# ------------------------------------------------------------------ one run


def run_one(ctx: LabContext, st: Setup, scenario: str, n: int, rate: float = RATE, timeout: float = TIMEOUT,
            hold: float = HOLD) -> dict:
    """One run: the stream, the fault, the heal, the cluster healthy again, the queue drained; its figures."""
    sc = SCENARIOS[scenario]
    what = f"{scenario} run {n}"
    owner = drills.wait_healthy(ctx, 240, f"{what}: before the fault")
    peer = ctx.peer(owner)
    if st.override:
        for node in ctx.names:
            redis_cmd(ctx, node, "config", "set", "appendfsync", st.override)
    fsync = redis_cmd(ctx, owner, "config", "get", "appendfsync").split()[-1]
    run_id = f"{scenario}-r{n}-{int(time.time())}"
    notes: list[str] = []
    scene = drills.Scene(ctx, owner, peer, run_id, notes, rearm=rearm)
    dead_before = int(redis_cmd(ctx, owner, "llen", "cdr:dead") or 0)
    restarts_before = unit_restarts(ctx, owner)
    for node in ctx.names:
        drills.start_sampler(ctx, node, run_id)
    poster = Poster(ctx.vip, st.port, st.auth, rate, timeout, run_id, ctx.names[0], st.tls)
    poster.start()
    t0 = t_heal = time.time()
    try:
        time.sleep(BASELINE_S)
        ctx.log(f"  {what}: fault on {owner} ({sc.title})")
        t0 = sc.fault(scene)
        time.sleep(max(0.0, t0 + hold - time.time()))
        t_heal = sc.heal(scene)
        rejoin_node, rejoin_s, final_owner = drills.settle(ctx, t_heal, what)
        time.sleep(TAIL_S)
    finally:
        poster.stop()
    t_end = time.time()
    samples = {}
    for node in ctx.names:
        drills.stop_sampler(ctx, node)
        samples[node] = drills.fetch_samples(ctx, node, run_id)
    drained = wait_drained(ctx, final_owner, DRAIN_S, what)
    rows = stored_rows(ctx, final_owner, run_id)
    result = analyse(scenario, n, run_id, owner, peer, final_owner, t0, t_heal, t_end, poster.posts, rows, samples)
    result.update(
        appendfsync=fsync, rate=rate, timeout=timeout, hold=hold, drained_s=round(drained, 2),
        rejoin_node=rejoin_node, rejoin_after_heal_s=rejoin_s,
        conflicts=conflicts(ctx, final_owner, run_id),
        dead_letters=int(redis_cmd(ctx, final_owner, "llen", "cdr:dead") or 0) - dead_before,   # replicated: one list
        notes=notes)
    if scenario == "redis-kill":
        result["redis_restarts"] = (unit_restarts(ctx, owner) - restarts_before) if restarts_before >= 0 else None
    return result


# ------------------------------------------------------------------ analysis (pure)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def longest_gap(posts: list[Post], t0: float) -> tuple[float, float | None]:
    """(seconds, start relative to t0) of the longest stretch without an acknowledgement: between the
    stream's first post and its first acknowledgement, two consecutive acknowledgements, or the last
    one and the stream's end (the last answer or timeout)."""
    if not posts:
        return 0.0, None
    start = min(p.sent for p in posts)
    end = max(p.done for p in posts)
    marks = [start, *sorted(p.done for p in posts if p.status == 200), end]
    best, at = 0.0, None
    for a, b in zip(marks, marks[1:]):
        if b - a > best:
            best, at = b - a, a - t0
    return best, at


def node_events(samples: dict, owner: str, peer: str, t0: float) -> dict:
    """What the HA layer did, from the 100 ms samples (t, vip, pg, redis, hold) after the fault: when the
    peer had the VIP, its Redis master, its PostgreSQL primary; how long the owner's Redis was down
    (its sampler running) and the owner was silent (powered off)."""
    def first(node: str, test) -> float | None:
        return next((round(r[0] - t0, 2) for r in samples.get(node, []) if r[0] >= t0 and test(r)), None)

    def down_spans(rows: list, test) -> list[float]:
        spans, start, last = [], None, None
        for r in rows:
            if r[0] < t0:
                continue
            if test(r) and start is None:
                start = r[0]
            elif not test(r) and start is not None:
                spans.append(r[0] - start)
                start = None
            last = r[0]
        if start is not None and last is not None:
            spans.append(last - start)
        return spans

    own = samples.get(owner, [])
    silent = max((b[0] - a[0] for a, b in zip(own, own[1:]) if b[0] >= t0), default=0.0)
    redis_down = down_spans(own, lambda r: r[3] == "down")
    two_masters = 0
    peer_rows = samples.get(peer, [])
    # samples of both nodes within 50 ms of each other with Redis master on both
    j = 0
    for r in own:
        while j + 1 < len(peer_rows) and peer_rows[j + 1][0] <= r[0]:
            j += 1
        if peer_rows and abs(peer_rows[j][0] - r[0]) <= 0.05 and r[3] == "master" and peer_rows[j][3] == "master":
            two_masters += 1
    return {"peer_vip_s": first(peer, lambda r: r[1] == 1), "peer_redis_master_s": first(peer, lambda r: r[3] == "master"),
            "peer_pg_primary_s": first(peer, lambda r: r[2] == "primary"),
            "owner_redis_down_s": round(max(redis_down, default=0.0), 2), "owner_redis_down_spans": len(redis_down),
            "owner_silent_s": round(silent, 2) if silent > 0.35 else 0.0, "two_redis_master_samples": two_masters}


def analyse(scenario: str, n: int, run_id: str, owner: str, peer: str, final_owner: str, t0: float, t_heal: float,
            t_end: float, posts: list[Post], rows: dict[str, int], samples: dict) -> dict:
    acked = [p for p in posts if p.status == 200 and not p.error]
    acked_ids = {p.call_uuid for p in acked}
    errors: dict[str, int] = {}
    for p in posts:
        if p.status == 200 and not p.error:
            continue
        key = f"http {p.status}" if p.status else p.error
        if p.status and p.error:
            key += f" ({p.error})"
        errors[key] = errors.get(key, 0) + 1
    lat = [p.done - p.sent for p in acked]
    gap, gap_at = longest_gap(posts, t0)
    missing = sorted(acked_ids - set(rows))
    posted = {p.call_uuid for p in posts}
    return {
        "scenario": scenario, "run": n, "run_id": run_id, "failed": owner, "peer": peer, "final_owner": final_owner,
        "failed_over": final_owner != owner, "heal_at_s": round(t_heal - t0, 2), "stream_s": round(t_end - min(
            (p.sent for p in posts), default=t_end), 1),
        "offered": len(posts), "acked": len(acked),
        "http_503": sum(1 for p in posts if p.status == 503),
        "timeouts": sum(1 for p in posts if p.error == "timeout"),
        "refused": sum(1 for p in posts if p.error in ("refused", "reset")),
        "other_errors": sum(v for k, v in errors.items() if k not in ("http 503", "timeout", "refused", "reset")),
        "errors": errors,
        "longest_no_ack_s": round(gap, 2), "longest_no_ack_from_s": None if gap_at is None else round(gap_at, 2),
        "p50_ms": None if not lat else round(percentile(lat, 0.5) * 1000, 1),
        "p99_ms": None if not lat else round(percentile(lat, 0.99) * 1000, 1),
        "max_ms": None if not lat else round(max(lat) * 1000, 1),
        "stored_queue": sum(1 for p in acked if p.stored == "queue"),
        "stored_postgres": sum(1 for p in acked if p.stored == "postgres"),
        "missing": len(missing), "missing_ids": missing[:20],
        # every post not acknowledged: (sent, answered or given up, relative to the fault; status; error)
        "failures": [[round(p.sent - t0, 3), round(p.done - t0, 3), p.status, p.error] for p in posts
                     if not (p.status == 200 and not p.error)][:2000],
        "duplicates": sum(1 for c in rows.values() if c > 1), "extra_rows": sum(c - 1 for c in rows.values() if c > 1),
        "unacked_stored": sum(1 for p in posts if p.call_uuid in rows and p.call_uuid not in acked_ids),
        "unknown_rows": sum(1 for u in rows if u not in posted),
        **node_events(samples, owner, peer, t0),
    }


def ha_summary(r: dict) -> str:
    """What the HA layer did in a run, in a few words."""
    if r["failed_over"]:
        parts = [f"failover to {r['peer']}: VIP +{r['peer_vip_s']} s" if r.get("peer_vip_s") is not None
                 else f"failover to {r['peer']}"]
        if r.get("peer_redis_master_s") is not None:
            parts.append(f"Redis master +{r['peer_redis_master_s']} s")
        if r.get("peer_pg_primary_s") is not None:
            parts.append(f"PostgreSQL primary +{r['peer_pg_primary_s']} s")
    else:
        parts = [f"no failover: VIP stayed on {r['failed']}"]
    if r["scenario"] == "redis-kill":
        parts.append(f"Redis down on {r['failed']} {r['owner_redis_down_s']} s (restarts {r.get('redis_restarts')})")
    if r.get("owner_silent_s"):
        parts.append(f"{r['failed']} silent {r['owner_silent_s']} s")
    if r.get("rejoin_after_heal_s") is not None and (r["failed_over"] or r["scenario"] == "poweroff"):
        parts.append(f"{r['rejoin_node']} streaming {r['rejoin_after_heal_s']:.1f} s after the heal")
    if r.get("two_redis_master_samples"):
        parts.append(f"two Redis masters in {r['two_redis_master_samples']} samples")
    return "; ".join(parts)


# ------------------------------------------------------------------ the report


def _mmm(values: list) -> tuple:
    v = [x for x in values if x is not None]
    if not v:
        return (None, None, None)
    return (min(v), statistics.median(v), max(v))


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not digits:      # a count (a median of two may fall between)
            return f"{v:.0f}" if v == int(v) else f"{v:.1f}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


COLUMNS = [  # (key, header, digits)
    ("offered", "offered", 0), ("acked", "acknowledged", 0), ("http_503", "503", 0), ("timeouts", "timeouts", 0),
    ("refused", "refused / reset", 0), ("other_errors", "other errors", 0),
    ("longest_no_ack_s", "longest without an ack (s)", 2), ("p50_ms", "p50 (ms)", 1), ("p99_ms", "p99 (ms)", 1),
    ("stored_queue", "stored: queue", 0), ("stored_postgres", "stored: postgres", 0),
    ("missing", "acked, missing", 0), ("duplicates", "duplicates", 0), ("unacked_stored", "not acked, stored", 0),
]


def errors_by_kind(r: dict) -> str:
    """'http 503 ×69 (+3.1…+5.2 s), timeout ×12 (…)': each kind of failure, how many, when sent."""
    kinds: dict[str, list[float]] = {}
    for sent, _, status, error in r.get("failures", []):
        key = f"http {status}" if status else error
        if status and error:
            key += f" ({error})"
        kinds.setdefault(key, []).append(sent)
    return ", ".join(f"{k} ×{len(v)} ({_signed(min(v))}…{_signed(max(v))} s)" for k, v in sorted(kinds.items()))


def _signed(x: float) -> str:
    return f"{x:+.2f}" if round(x, 2) != 0 else "0.00"


def scenario_section(name: str, rows: list[dict]) -> list[str]:
    sc = SCENARIOS[name]
    fsync = sorted({r["appendfsync"] for r in rows})
    lines = [f"## {name}: {sc.title} (Redis appendfsync {', '.join(f'`{x}`' for x in fsync)})", "",
             f"Fault on the VIP owner {rows[0]['hold']:g} s, then {sc.healed_by}; the stream runs {BASELINE_S:g} s "
             f"before the fault until the cluster is healthy again (+{TAIL_S:g} s).", ""]
    if sc.why:
        lines += [sc.why, ""]
    lines += ["| run | failed node | " + " | ".join(h for _, h, _ in COLUMNS) + " | longest window from (s after fault) |",
              "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['failed']} | " + " | ".join(_f(r.get(k), d) for k, _, d in COLUMNS)
                     + f" | {'–' if r.get('longest_no_ack_from_s') is None else _signed(r['longest_no_ack_from_s'])} |")
    for label, i in (("min", 0), ("median", 1), ("max", 2)):
        lines.append(f"| **{label}** | | " + " | ".join(_f(_mmm([r.get(k) for r in rows])[i], d) for k, _, d in COLUMNS)
                     + " | |")
    lines += ["", "What the HA layer did (the nodes' 100 ms samplers), and the posts not acknowledged by kind (when "
                  "they were sent, seconds after the fault):", ""]
    for r in rows:
        errs = errors_by_kind(r) or "none"
        extra = []
        if r.get("conflicts"):
            extra.append(f"{r['conflicts']} in cdr.conflicts")
        if r.get("dead_letters"):
            extra.append(f"{r['dead_letters']} new dead letters")
        if r.get("unknown_rows"):
            extra.append(f"{r['unknown_rows']} rows of the run never posted")
        if r.get("missing_ids"):
            extra.append("missing: " + ", ".join(r["missing_ids"][:5]))
        lines.append(f"- run {r['run']}: {ha_summary(r)}. Errors: {errs}. Queue drained {r['drained_s']} s after the "
                     f"stream{'; ' + '; '.join(extra) if extra else ''}"
                     f"{'; ' + '; '.join(r['notes']) if r.get('notes') else ''}.")
    return lines + [""]


def render(data: dict) -> str:
    results = data["results"]
    meta = data["meta"]
    invocations = meta.get("invocations", [meta])
    total_acked = sum(r["acked"] for r in results)
    missing = sum(r["missing"] for r in results)
    dups = sum(r["duplicates"] for r in results)
    ok = missing == 0 and dups == 0
    h = meta["host"]
    lines = ["# CDR drill: CDRs posted to the VIP while the cluster breaks", "",
             "Generated by " + "; ".join(f"`{m['command']}` on {m['started']} ({m['seconds']:.0f} s)"
                                         for m in invocations)
             + f", on lab {meta['lab']} ({DEBIAN.get(meta['release'], meta['release'])}, {meta['release']}).",
             "",
             f"**Every acknowledged CDR in PostgreSQL exactly once: {'yes' if ok else '**NO**'}** — "
             f"{len(results)} run{'s' if len(results) != 1 else ''}, "
             f"{total_acked} acknowledged, {missing} missing, {dups} stored twice.", "",
             "How: a poster on the host posts FreeSWITCH-shaped CDRs (unique call UUIDs) to "
             f"`https://<VIP>:{meta['receiver_port']}/cdr` (the cluster CA checked) at a steady {_f(meta['rate'])}/s with the lab's "
             "CDR sender credential, one connection per post, a "
             f"{_f(meta['timeout'])} s timeout (mod_json_cdr's) and no retry: a 200 is an acknowledgement, "
             "its body says where the receiver made the record safe (`stored`: `queue` = in Redis on the master and "
             "confirmed by the replica (WAIT), `postgres` = committed to PostgreSQL because the replica did not "
             "confirm). After the heal and the queue drained on the writer (`cdr:queue` and every "
             "`cdr:processing:<node>` empty), the run's rows in `cdr.calls` on the primary are compared with "
             "what was acknowledged. Latency is per post, connection included; \"longest without an ack\" is the "
             "longest stretch between two acknowledgements (or the stream's start or end).", "",
             "## Summary (min / median / max over the runs)", "",
             "| drill | runs | " + " | ".join(h_ for _, h_, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    groups: dict[tuple, list] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["appendfsync"]), []).append(r)
    for (name, fsync), rows in groups.items():
        cells = []
        for k, _, d in COLUMNS:
            lo, mid, hi = _mmm([r.get(k) for r in rows])
            cells.append(" / ".join(_f(x, d) for x in (lo, mid, hi)))
        lines.append(f"| {name} (appendfsync `{fsync}`) | {len(rows)} | " + " | ".join(cells) + " |")
    lines.append("")
    for (name, fsync), rows in groups.items():
        lines += scenario_section(name, sorted(rows, key=lambda r: r["run"]))
    stack = meta["stack"]
    lines += ["## Setup", "",
              f"- Receiver: `cdr.waitReplicaMs` {stack['wait_replica_ms']}, `cdr.redisTimeoutSeconds` "
              f"{_f(stack['redis_timeout_s'])}; HA: leader lease {stack['lease_ttl_s']} s renewed every "
              f"{stack['renew_s']} s, VRRP adverts every {stack['advert_s']} s.",
              f"- Machine: {h.get('cpu')}, nproc {h.get('cores')}, {h.get('memory')} memory, kernel {h.get('kernel')}, "
              f"Debian {h.get('debian')}, shared with other work (load averages below).",
              f"- Nodes: {'; '.join(meta.get('versions', []))}.",
              *(f"- `{m['command']}` ({m['started']}, {', '.join(m.get('only', []))}): Redis appendfsync on the nodes "
                + ", ".join(f"{n} `{v}`" for n, v in m.get("appendfsync", {}).items())
                + (f", set to `{m['override']}` before each run" if m.get("override") else "")
                + f"; load average (1, 5, 15 min) {m.get('load_start')} at the start, {m.get('load_end')} at the end."
                for m in invocations),
              f"- Every figure is in `{meta.get('data_file', 'cdr-drill.json')}` beside this report (`--report-only` "
              "writes the report again from it)."]
    if any(m.get("note") for m in invocations):
        lines += ["", "Notes: " + " ".join(m["note"] for m in invocations if m.get("note"))]
    if any(m.get("error") for m in invocations):
        lines += ["", "**Stopped early:** " + "; ".join(m["error"] for m in invocations if m.get("error"))]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command


def _paths(out: str) -> str:
    return out if os.path.isabs(out) else os.path.join(ROOT, out)


def report_only(out: str) -> int:
    out = _paths(out)
    with open(writer.beside(out, ".json"), encoding="utf-8") as fh:
        data = json.load(fh)
    writer.write(out, render(data), data)
    print(f"hapbx lab cdr-drill: wrote {os.path.relpath(out, ROOT)}")
    return 0


def run(cluster, spec, *, out: str, only: list[str], runs: int, rate: float = RATE, timeout: float = TIMEOUT,
        hold: float = HOLD, override: str = "", note: str = "", merge: bool = False) -> int:
    from lab import machinery
    out = _paths(out)
    if not machinery.status(spec).up:
        print(f"hapbx lab cdr-drill: lab {spec.name} is not up: run ./hapbx lab up first", file=sys.stderr)
        return 1
    ctx = LabContext.from_cluster(spec, cluster)
    command = writer.with_flock(" ".join(["./hapbx", *(shlex.quote(a) for a in sys.argv[1:])]))
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_start": writer.load_avg(), "host": writer.host(), "lab": spec.name, "release": cluster.os.release,
            "only": only, "runs": runs, "rate": rate, "timeout": timeout, "note": note, "override": override,
            "receiver_port": cluster.cdr.receiver_port,
            "stack": {"wait_replica_ms": cluster.cdr.wait_replica_ms, "redis_timeout_s": cluster.cdr.redis_timeout_seconds,
                      "lease_ttl_s": cluster.etcd.lease_ttl_seconds, "renew_s": cluster.etcd.renew_interval_seconds,
                      "advert_s": cluster.vip.advert_interval}}
    started = time.monotonic()
    results: list[dict] = []
    error = ""
    st = None
    try:
        st = setup(ctx, override)
        meta["appendfsync"] = st.appendfsync
        meta["versions"] = ctx.sh(ctx.names[0], "dpkg-query -W -f='${Package} ${Version}\\n' redis-server "
                                  "postgresql-15 postgresql-17 python3-aiohttp 2>/dev/null", check=False).split("\n")
        meta["versions"] = [v for v in meta["versions"] if v.strip()]
        for name in only:
            for n in range(1, runs + 1):
                t = time.monotonic()
                r = run_one(ctx, st, name, n, rate=rate, timeout=timeout, hold=hold)
                results.append(r)
                print(f"[{name} run {n}] {r['failed']}: offered {r['offered']}, acked {r['acked']} "
                      f"(queue {r['stored_queue']}, postgres {r['stored_postgres']}), 503 {r['http_503']}, "
                      f"timeouts {r['timeouts']}, refused {r['refused']}, other {r['other_errors']}, longest without "
                      f"ack {r['longest_no_ack_s']} s, p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms, MISSING "
                      f"{r['missing']}, duplicates {r['duplicates']}; {ha_summary(r)} ... "
                      f"{time.monotonic() - t:.0f}s", flush=True)
    except LabCommandError as err:
        error = str(err)
        print(f"hapbx lab cdr-drill: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        try:
            cleanup(ctx, st)
        except Exception as exc:  # noqa: BLE001 - the report of what ran still gets written
            print(f"hapbx lab cdr-drill: cleanup: {exc}", file=sys.stderr)
    meta.setdefault("appendfsync", {})
    meta.setdefault("versions", [])
    meta["load_end"] = writer.load_avg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["error"] = error
    meta["data_file"] = os.path.basename(writer.beside(out, ".json"))
    if results:
        data = {"meta": meta, "results": results}
        path = writer.beside(out, ".json")
        if merge and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
            data = merged(old, data)
        writer.write(out, render(data), data)
        print(f"hapbx lab cdr-drill: {len(results)} runs in {meta['seconds']:.0f}s; wrote {os.path.relpath(out, ROOT)}")
    bad = sum(r["missing"] + r["duplicates"] for r in results)
    return 1 if error or bad else 0


def merged(old: dict, new: dict) -> dict:
    """This invocation's runs into the results on record: a (drill, appendfsync) run again replaces its own runs."""
    mine = {(r["scenario"], r["appendfsync"]) for r in new["results"]}
    kept = [r for r in old["results"] if (r["scenario"], r["appendfsync"]) not in mine]
    meta = dict(new["meta"])
    earlier = old["meta"].get("invocations", [{k: v for k, v in old["meta"].items() if k != "invocations"}])
    meta["invocations"] = [*earlier, {k: v for k, v in new["meta"].items() if k != "invocations"}]
    return {"meta": meta, "results": kept + new["results"]}

