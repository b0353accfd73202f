"""`hapbx bench cdr`: receiver -> Redis -> worker -> PostgreSQL on loopback, measured.

Starts its own PostgreSQL (project migrations, fsync and synchronous_commit on,
track_commit_timestamp on), a Redis master with a replica (the receiver WAITs for the replica
as deployed), the receiver and the worker under Debian's python3, and a load generator in its
own process. Every phase is bounded in time; everything started is stopped at the end.

  sustained  open loop at --rate for --seconds, --repeat times: accepted/s, stored/s, end-to-end latency (the
             record's scheduled send time -> the commit time of the transaction that stored it,
             both wall clock on this machine), the largest backlog, the drain after the load
  steps      open loop at higher rates (--steps of --step-seconds): the highest rate still
             sustained (all accepted, p99 < 1 s, backlog drained within 2 s)
  receiver   closed loop for 10 s without the worker: how fast posts are accepted
  worker     the backlog from `receiver` drained: records stored per second
Redis' AOF fsync policy is the deployed one (components/render/redis.py APPENDFSYNC: always) unless
--appendfsync says otherwise; with --baseline (everysec unless that is the policy measured) every phase
runs under the baseline policy too (CONFIG SET on master and replica, the sustained runs interleaved),
and the report sets the two side by side: what the policy costs.
Writes reports/cdr-bench.md (numbers, the command, the machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from . import devstack

from lab import report as writer
from .loadgen import fs_cdr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: run as its own process by Debian's python3
LOADGEN = os.path.join(ROOT, "bench", "loadgen.py")
REPORT = os.path.join(ROOT, "reports", "cdr-bench.md")
TARGET_RATE, TARGET_P99 = 2000, 1.0


@dataclass
class Phase:
    name: str
    rate: float | None
    seconds: float
    appendfsync: str = ""
    offered: int = 0
    accepted: int = 0
    errors: int = 0
    refused: dict = field(default_factory=dict)
    accept_seconds: float = 0.0
    stored: int = 0
    drain_seconds: float = 0.0
    max_backlog: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    cpu: dict = field(default_factory=dict)

    @property
    def stored_per_second(self) -> float:
        total = self.accept_seconds + self.drain_seconds
        return self.stored / total if total else 0.0

    @property
    def sustained(self) -> bool:
        return (self.accepted == self.offered and self.stored == self.accepted and self.p99 is not None
                and self.p99 < TARGET_P99 and self.drain_seconds <= 2.0)


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_pids(pg: devstack.Postgres) -> list[int]:
    try:
        with open(os.path.join(pg.data, "postmaster.pid")) as fh:
            master = int(fh.readline())
    except (OSError, ValueError):
        return []
    pids = [master]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids


class CpuMeter:
    def __init__(self, st: devstack.Stack, extra: dict[str, int]):
        self.st, self.extra = st, extra
        self.start = self._sample()
        self.t0 = time.monotonic()
        self.last, self.t_last = dict(self.start), self.t0

    def tick(self) -> None:
        """Sample while the processes live (a finished load generator has no /proc entry)."""
        sample = self._sample()
        self.last = {k: max(v, self.last.get(k, 0.0)) for k, v in sample.items()}
        self.t_last = time.monotonic()

    def _sample(self) -> dict[str, float]:
        st = self.st
        out = {"receiver": cpu_seconds(st.receiver.proc.pid) if st.receiver and st.receiver.proc else 0.0,
               "worker": cpu_seconds(st.worker.proc.pid) if st.worker and st.worker.proc else 0.0,
               "redis": cpu_seconds(st.redis.proc.pid) if st.redis.proc else 0.0,
               "postgres": sum(cpu_seconds(p) for p in postgres_pids(st.pg))}
        for name, pid in self.extra.items():
            out[name] = cpu_seconds(pid)
        return out

    def cores(self) -> dict[str, float]:
        wall = max(self.t_last - self.t0, 1e-3)
        return {k: round((self.last[k] - self.start.get(k, 0.0)) / wall, 2) for k in self.last}


def latencies(st: devstack.Stack, tag: str) -> tuple[int, list[float | None]]:
    out = st.pg.psql(
        "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat), max(lat) FROM ("
        "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) - "
        "(raw->'variables'->>'hapbx_bench_sent_us')::numeric / 1e6 AS lat FROM cdr.calls "
        f"WHERE raw->'variables'->>'hapbx_bench_phase' = '{tag}') x")
    count, pcts, mx = out.split("|")
    values = [float(x) for x in pcts.strip("{}").split(",")] if pcts else [None, None, None]
    return int(count), values + [float(mx) if mx else None]


def stored_with(st: devstack.Stack, tag: str) -> int:
    return int(st.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE raw->'variables'->>'hapbx_bench_phase' = '{tag}'"))


def backlog(st: devstack.Stack) -> int:
    q = st.queue_lengths()
    return q["queue"] + q["processing"]


def run_phase(st: devstack.Stack, phase: Phase, connections: int, log) -> Phase:
    tag = f"{phase.name}-{int(time.time())}"
    args = [devstack.SYSTEM_PYTHON, LOADGEN, "--url", st.receiver_url, "--seconds", str(phase.seconds),
            "--connections", str(connections), "--tag", tag]
    if phase.rate:
        args += ["--rate", str(phase.rate)]
    gen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meter = CpuMeter(st, {"loadgen": gen.pid})
    peak = 0
    stop = threading.Event()

    def watch():
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, backlog(st))
            except (ValueError, subprocess.SubprocessError):
                pass
            if gen.poll() is None:
                meter.tick()
            stop.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = gen.communicate(timeout=phase.seconds + 120)
    phase.cpu = meter.cores()
    if gen.returncode:
        raise RuntimeError(f"load generator failed: {err[-500:]}")
    result = json.loads(out)
    phase.offered, phase.accepted, phase.errors = result["issued"], result["ok"], result["errors"]
    phase.refused = {k: v for k, v in result.items() if k.startswith("http_")}
    phase.accept_seconds = result["seconds"]
    t0 = time.monotonic()
    deadline = t0 + 120
    while time.monotonic() < deadline and (stored_with(st, tag) < phase.accepted or backlog(st) > 0):
        time.sleep(0.05)
    phase.drain_seconds = round(time.monotonic() - t0, 2)
    stop.set()
    watcher.join()
    phase.max_backlog = peak
    phase.stored, (phase.p50, phase.p95, phase.p99, phase.max) = latencies(st, tag)
    log(f"  {phase.name}: offered {phase.offered}, accepted {phase.accepted} in {phase.accept_seconds:.1f}s, "
        f"stored {phase.stored} ({phase.stored_per_second:.0f}/s), p50 {fmt(phase.p50)} p99 {fmt(phase.p99)}, "
        f"backlog max {phase.max_backlog}, drained {phase.drain_seconds:.2f}s after the load")
    return phase


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def machine() -> dict[str, str]:
    info = {**writer.host(), "load": writer.load_avg()}
    info["postgresql"] = writer.version([f"{devstack.pg_bin()}/postgres", "--version"])
    info["redis"] = writer.version(["redis-server", "--version"])
    info["python3"] = writer.version([devstack.SYSTEM_PYTHON, "--version"])
    info["packages"] = writer.version(["dpkg-query", "-W", "-f=${Package} ${Version}, ", "python3-aiohttp", "python3-redis",
                                "python3-psycopg2"]).rstrip(", ")
    return info


def worker_drain(st: devstack.Stack, log) -> tuple[int, float, int, float]:
    """Stop the worker, fill the queue through the receiver (closed loop), start the worker: its rate."""
    st.worker.stop()
    receiver = Phase("receiver", None, 10)
    tag = f"receiver-{int(time.time())}"
    gen = subprocess.run([devstack.SYSTEM_PYTHON, LOADGEN, "--url", st.receiver_url, "--seconds", "10",
                          "--connections", "32", "--tag", tag], capture_output=True, text=True, timeout=130)
    result = json.loads(gen.stdout)
    receiver.offered, receiver.accepted, receiver.accept_seconds = result["issued"], result["ok"], result["seconds"]
    queued = backlog(st)
    log(f"  receiver alone: {receiver.accepted} accepted in {receiver.accept_seconds:.1f}s "
        f"({receiver.accepted / receiver.accept_seconds:.0f}/s), {queued} queued")
    t0 = time.monotonic()
    st.start_worker()
    deadline = t0 + 300
    while time.monotonic() < deadline and backlog(st) > 0:
        time.sleep(0.05)
    took = time.monotonic() - t0
    drained = stored_with(st, tag)
    log(f"  worker alone: {drained} stored in {took:.1f}s ({drained / took:.0f}/s)")
    return receiver.accepted, receiver.accept_seconds, drained, took


def median_run(phases: list[Phase]) -> Phase:
    """The run of median p99."""
    return sorted(phases, key=lambda p: p.p99 if p.p99 is not None else float("inf"))[len(phases) // 2]


def highest_sustained(phases: list[Phase]) -> Phase | None:
    return max([p for p in phases if p.sustained], key=lambda p: p.rate or 0, default=None)


def phase_rows(phases: list[Phase], label: bool) -> list[str]:
    return [f"| {p.name}{f' ({p.appendfsync})' if label else ''} | {p.rate:.0f} | {p.accepted}/{p.offered} | {p.stored} | "
            f"{p.stored_per_second:.0f} | {fmt(p.p50)} | {fmt(p.p95)} | {fmt(p.p99)} | {fmt(p.max)} | {p.max_backlog} | "
            f"{p.drain_seconds:.2f} s | {'yes' if p.sustained else 'no'} |" for p in phases]


def comparison(runs: dict[str, dict], main: str) -> list[str]:
    """The AOF fsync policies side by side (runs: policy -> its phases, steps, receiver/worker alone)."""
    order = [main] + [k for k in runs if k != main]
    lines = [f"## Redis AOF fsync: {' against '.join(f'`{k}`' for k in order)}", "",
             f"The same phases under each policy on the same stack (`CONFIG SET appendfsync` on master and replica "
             f"between phases; the sustained runs interleaved, so load from other work on the machine falls on both). "
             f"`{main}` is what the nodes run.", "",
             "| appendfsync | sustained runs: p50 / p99 (median run) | p99 of each run | highest rate sustained (p99) | "
             "receiver alone (closed loop) | Redis CPU (cores, median run) |",
             "|---|---|---|---|---|---|"]
    for k in order:
        r = runs[k]
        m = median_run(r["phases"])
        best = highest_sustained([*r["phases"], *r["steps"]])
        accepted, accept_s, _, _ = r["recv"]
        lines.append(f"| `{k}` | {fmt(m.p50)} / {fmt(m.p99)} | {', '.join(fmt(p.p99) for p in r['phases'])} | "
                     f"{f'{best.rate:.0f}/s ({fmt(best.p99)})' if best else 'none'} | "
                     f"{accepted / accept_s:.0f}/s | {m.cpu.get('redis', '-')} |")
    return lines + [""]


def report(args, runs: dict[str, dict], main_policy: str, info: dict, config: dict, took: float) -> str:
    ours = runs[main_policy]
    phases, steps, recv = ours["phases"], ours["steps"], ours["recv"]
    label = len(runs) > 1
    main = median_run(phases)
    best = highest_sustained([*phases, *steps])
    met = sum(1 for p in phases if p.sustained)
    accepted, accept_s, drained, drain_s = recv
    verdict = (f"met in {met} of {len(phases)} runs" if (main.rate or 0) >= TARGET_RATE else
               f"not measured (rate {main.rate})")
    lines = [
        "# CDR pipeline benchmark",
        "",
        f"Generated by `{' '.join(['./hapbx', 'bench', 'cdr', *args.argv])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({took:.0f} s). Receiver -> Redis -> worker -> PostgreSQL, everything on this machine's loopback, "
        "sharing its cores with the load generator.",
        "",
        f"**Target: {TARGET_RATE} records/s sustained with end-to-end p99 under {TARGET_P99:g} s "
        f"(Redis AOF fsync `{main_policy}`, as deployed): {verdict}.**",
        "",
    ]
    if label:
        lines += comparison(runs, main_policy)
    lines += [
        f"## Sustained load (appendfsync `{main_policy}`)",
        "",
        "| phase | offered/s | accepted | stored | stored/s | p50 | p95 | p99 | max | largest backlog | drained after load | sustained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *phase_rows([*phases, *steps], False),
        "",
        f"Highest rate sustained here: **{best.rate:.0f} records/s** (p99 {fmt(best.p99)})." if best else
        "No rate was sustained.",
        "",
        "Latency is end to end: from the record's *scheduled* send time (open loop, so a stalled "
        "receiver shows up as latency instead of a lower rate) to the commit time of the PostgreSQL "
        "transaction that stored it (`track_commit_timestamp`), both on this machine's clock. "
        "A phase counts as sustained when every offered record was accepted and stored, p99 stayed "
        f"under {TARGET_P99:g} s and the queue drained within 2 s after the load stopped.",
        "",
        f"The sustained rate is run {len(phases)} times because this machine is shared: other work "
        "running at the same moment shows up as latency; the median run by p99 is " + main.name + ".",
        "",
        "CPU during " + main.name + " (cores busy, of " + info.get("cores", "?") + "): " +
        ", ".join(f"{k} {v}" for k, v in main.cpu.items()) + ".",
        "",
    ]
    for k, r in runs.items():
        if k == main_policy:
            continue
        lines += [f"## Sustained load (appendfsync `{k}`, the baseline)", "",
                  "| phase | offered/s | accepted | stored | stored/s | p50 | p95 | p99 | max | largest backlog | drained after load | sustained |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|",
                  *phase_rows([*r["phases"], *r["steps"]], False), ""]
    lines += [
        "## Each side alone",
        "",
        "| side | appendfsync | records | seconds | records/s |",
        "|---|---|---|---|---|",
    ]
    for k, r in runs.items():
        a, a_s, d, d_s = r["recv"]
        lines += [f"| receiver (closed loop, 32 connections, worker stopped) | `{k}` | {a} | {a_s:.1f} | {a / a_s:.0f} |",
                  f"| worker (draining that backlog, batches of {config['batch']}) | `{k}` | {d} | {d_s:.1f} | {d / d_s:.0f} |"]
    lines += [
        "",
        "## Setup",
        "",
        f"- PostgreSQL: {info.get('postgresql')}, fsync on, synchronous_commit on, the project's migrations "
        "(cdr.calls partitioned by month, cdr.ingest() idempotent on the call UUID).",
        f"- Redis: {info.get('redis')}, AOF (appendfsync `{main_policy}`"
        + (f"; baseline {', '.join(f'`{k}`' for k in runs if k != main_policy)}" if label else "")
        + f"), a replica; the receiver WAITs up to {config['wait_ms']} ms "
        "for its ack after each push (as deployed, `cdr.waitReplicaMs`).",
        f"- Services: {info.get('python3')} (Debian), {info.get('packages')}; one receiver process, one worker "
        f"(batch {config['batch']}).",
        f"- Records: FreeSWITCH mod_json_cdr shape, about {config['record_bytes']} bytes each, posted as JSON over "
        f"keep-alive HTTP/1.1 by {config['connections']} connections.",
        f"- Machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory')}, Debian {info.get('debian')}, "
        f"kernel {info.get('kernel')}; load average (1, 5, 15 min) {info.get('load_start')} at the start of the run, "
        f"{info.get('load')} at the end: other work on the machine shares the cores and shows up in these numbers.",
        "",
    ]
    return "\n".join(lines)


def run(args) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    bounded(args)
    args.argv = sys.argv[sys.argv.index("cdr") + 1:] if "cdr" in sys.argv else []
    need = devstack.missing_packages()
    if need:
        from lab import hostdeps
        hostdeps.ensure(need, "the CDR bench")
    started = time.monotonic()
    load_start = writer.load_avg()
    policies = [args.appendfsync] + ([args.baseline] if args.baseline not in ("none", args.appendfsync) else [])
    st = devstack.Stack(fsync=True, commit_timestamps=True,
                        worker_env={"HAPBX_CDR_BATCH": str(args.batch), "HAPBX_CDR_BACKOFF_MAX": "1"},
                        receiver_env={"HAPBX_CDR_WAIT_REPLICA_MS": str(args.wait_ms),
                                      "HAPBX_CDR_MAX_BODY": str(256 * 1024)})
    replica = None
    try:
        log("bench cdr: starting PostgreSQL, Redis (+ replica), receiver, worker on loopback")
        st.start_data()
        st.redis.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        replica = devstack.Redis(os.path.join(st.base, "replica"))
        replica.start()
        replica.cli("CONFIG", "SET", "masteruser", "default")
        replica.cli("CONFIG", "SET", "masterauth", devstack.REDIS_DEFAULT_PASSWORD)
        replica.cli("REPLICAOF", "127.0.0.1", str(st.redis.port))
        devstack._wait(lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 20, "Redis replica")
        st.start_receiver()
        st.start_worker()

        def use(policy: str) -> None:
            for server in (st.redis, replica):
                server.set_appendfsync(policy)

        use(args.appendfsync)
        run_phase(st, Phase("warm-up", 500, 3), args.connections, log)
        runs = {k: {"phases": [], "steps": []} for k in policies}
        for i in range(args.repeat):       # interleaved: a busy moment of the machine falls on both
            for k in policies:
                use(k)
                log(f"  appendfsync {k}")
                runs[k]["phases"].append(run_phase(st, Phase(f"sustained #{i + 1}", args.rate, args.seconds, k),
                                                   args.connections, log))
        rate = args.rate
        stepping = list(policies)        # interleaved too; a policy stops at its first rate not sustained
        for _ in range(args.steps):
            rate += args.step
            for k in list(stepping):
                use(k)
                log(f"  appendfsync {k}")
                p = run_phase(st, Phase(f"step {rate}/s", rate, args.step_seconds, k), args.connections, log)
                runs[k]["steps"].append(p)
                if not p.sustained:
                    stepping.remove(k)
        for k in policies:
            use(k)
            log(f"  appendfsync {k}")
            runs[k]["recv"] = worker_drain(st, log)
        record_bytes = len(json.dumps(fs_cdr("00000000-0000-4000-8000-000000000000",
                                                      extra={"hapbx_bench_sent_us": "1" * 16,
                                                             "hapbx_bench_phase": "sustained-1700000000"})))
        config = {"batch": args.batch, "wait_ms": args.wait_ms, "connections": args.connections,
                  "record_bytes": record_bytes}
        info = machine()
        info["load_start"] = load_start
        text = report(args, runs, args.appendfsync, info, config, time.monotonic() - started)
    finally:
        if replica is not None:
            replica.stop()
        st.close()
    writer.write(args.out, text)
    log(f"bench cdr: wrote {args.out}")
    phases = runs[args.appendfsync]["phases"]
    return 0 if sum(p.sustained for p in phases) * 2 > len(phases) else 1


def bounded(args) -> None:
    """Keep every phase bounded: a typo cannot start an hour-long run."""
    args.seconds = min(max(args.seconds, 5), 300)
    args.step_seconds = min(max(args.step_seconds, 5), 120)
    args.steps = min(max(args.steps, 0), 10)
    args.repeat = min(max(args.repeat, 1), 10)
