"""`hapbx bench sip`: SIPp against the running lab, ours side by side with stock Kamailio (issues 10, 24).

On a running lab (`./hapbx lab up`), from the host's lab address, to the lab's own addresses only:

  ours   the deployed Kamailio, through the VIP (sip port of the stack)
  stock  Kamailio's own sample configuration as the node's package ships it (the conffile,
         checked against dpkg's checksum), with auth and usrloc in the database enabled as its
         comments say (WITH_MYSQL + WITH_AUTH + WITH_USRLOCDB, db_postgres for db_mysql, DBURL to a
         database made from the package's own SQL files), started on the VIP node's own address on
         --stock-port for the run, and removed after it (unit, firewall rule, database, role)

Scenarios (bench/scenarios), the same for both:
  register  REGISTER with digest auth (N users provisioned through the schema), rate stepped up
            until more than 0.1 % fail because of Kamailio, p95 passes 50 ms or the rate is not reached
  hold      calls to the media stand-in, ramped to --concurrent calls and held for --hold-seconds
  calls     calls/s stepped up (each held --call-hold-ms) until more than 0.1 % fail because of
            Kamailio or the rate is not reached
The scenarios do not fail on their own: each request is a SIPp transaction, so a late or
retransmitted 100/180/183/200/401/407 is ignored or ACKed again as a phone would (see their comments).

Each failed call is classified from SIPp's error log (bench/sip_failures.py): `kamailio` (a final
error response Kamailio generated), `timeout` (no answer), `stand-in` (a response of the media
stand-in, relayed), `scenario` (SIPp aborting on a message that is no failure of a server). A
step's verdict counts only the Kamailio-caused ones (kamailio + timeout); every class is in the
tables. Each step: attempts, failures per class, p50/p95/p99 of the phone's view (first request ->
final 200), Kamailio CPU and memory (PSS of all its processes) on the VIP node.

The whole bench runs --runs times (default 3; ours then stock in each run, the stock baseline
deployed once): each headline figure (highest REGISTER/s passed, REGISTER p95 at 500/s, highest
calls/s passed, call-setup p95 at the target rate, concurrent calls held) is the median of the runs
with their spread (min-max) beside it (bench/sip_runs.py); the step tables show every run.

Every SIPp run, wait and each of the runs (--max-minutes) are bounded in time; users, the stock
database and role, the firewall rule and the stock unit are removed in every case. Writes
reports/sip-bench.md, .png and .json (`--from-json` writes the report again from the .json, of
this format or of the single-run one before it).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import sip_failures, sip_runs
from lab import report as writer, sipp
from lab.sipp import parse_rtt_rows, parse_stat_csv, screen_counts, start_span, stat_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the bench's load scenarios, beside this module
SCENARIOS = os.path.join(ROOT, "bench", "scenarios")
REPORT = "reports/sip-bench.md"

#: the issue's targets
TARGET_CONCURRENT, TARGET_CPS, TARGET_SETUP_P95 = 800, 200, 50.0
TARGET_REG_P95, TARGET_REG_RATE = 20.0, 500
#: stop rules (MAX_FAIL_RATIO: of the Kamailio-caused failures)
MAX_FAIL_RATIO, REG_P95_LIMIT, RATE_REACHED = 0.001, 50.0, 0.95
#: runs of the whole bench by default; headline figures are their medians
RUNS, MAX_RUNS = 3, 5
#: the most of SIPp's error log read per run (it holds only unexpected messages and aborts)
ERROR_LOG_LIMIT = 64 * 1024 * 1024

USER_BASE = 7900000          # bench users 7900000.. (7 digits: no clash with a real dial plan here)
CALLEE = "7989999"           # the first number called (a queue extension: ours sends it to dispatcher)
#: queue numbers called by default: dispatcher picks a media engine by hashing the called number, so
#: one number would send every call to one engine; a dozen spreads them as a dial plan does
QUEUES, MAX_QUEUES = 12, 99
MARK = "hapbx bench"         # display name of every extension the bench creates
STOCK = "hapbx_bench_stock"  # database and role of the stock baseline
STOCK_UNIT = "hapbx-bench-stock"
STOCK_DIR = "/run/hapbx-bench-stock"
STOCK_SQL = ("standard-create.sql", "auth_db-create.sql", "usrloc-create.sql")
NFT_COMMENT = "hapbx-bench-stock"

if TYPE_CHECKING:
    from lab.context import LabContext


# ---------------------------------------------------------------- pure parts (unit tested)

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Step:
    scenario: str          # register | hold | calls
    target: str            # ours | stock
    rate: float            # offered (per second)
    seconds: float         # length of the offered load
    hold_ms: int = 0
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max_concurrent: int = 0
    held_seconds: int = 0   # seconds (stat samples) with max_concurrent calls up
    retransmissions: int = 0
    elapsed: float = 0.0    # seconds from the first call to the last call started
    kam_cores: float | None = None
    kam_pss_mb: float | None = None
    sipp_cores: float | None = None
    note: str = ""
    run: int = 1                # which of the runs (1..N)
    # failed calls per class (bench/sip_failures.py); classified False: a result of the bench
    # before the classes (every failure then counts against Kamailio)
    kamailio_failed: int = 0
    timeout_failed: int = 0
    standin_failed: int = 0
    scenario_failed: int = 0
    classified: bool = False
    failure_samples: dict | None = None   # class -> its first failure, one line

    @property
    def fail_ratio(self) -> float:
        return self.failed / self.attempted if self.attempted else 1.0

    @property
    def server_failed(self) -> int:
        """Failures Kamailio caused: its error responses and the calls it left unanswered."""
        return self.kamailio_failed + self.timeout_failed if self.classified else self.failed

    @property
    def server_fail_ratio(self) -> float:
        return self.server_failed / self.attempted if self.attempted else 1.0

    @property
    def achieved(self) -> float:
        """Calls (registrations) started per second while the load was offered."""
        return self.attempted / self.elapsed if self.elapsed else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(fail_ratio=self.fail_ratio, achieved=self.achieved, server_failed=self.server_failed,
                 server_fail_ratio=self.server_fail_ratio)
        return d


#: the results of the runs, one {target: {scenario: [Step]}} each
Runs = list


def stop_reason(step: Step) -> str | None:
    """Why stepping stops after this step (None: go on to the next rate)."""
    if not step.attempted:
        return "nothing was sent"
    if step.server_fail_ratio > MAX_FAIL_RATIO:
        return f"Kamailio-caused failures {step.server_fail_ratio * 100:.2f} % > {MAX_FAIL_RATIO * 100:g} %"
    if step.scenario == "register" and (step.p95 is None or step.p95 > REG_P95_LIMIT):
        return f"p95 {fmt_ms(step.p95)} > {REG_P95_LIMIT:g} ms"
    if step.achieved < RATE_REACHED * step.rate:
        return f"rate not reached ({step.achieved:.0f}/s of {step.rate:g}/s offered)"
    return None


def passed(step: Step) -> bool:
    return stop_reason(step) is None


def best(steps: list[Step]) -> Step | None:
    """The highest offered rate that passed, among steps up to the first one that did not."""
    good = None
    for s in steps:
        if not passed(s):
            break
        good = s
    return good


def at_rate(steps: list[Step], rate: float) -> Step | None:
    """The step at the lowest offered rate >= rate (the figure 'at rate')."""
    return next((s for s in sorted(steps, key=lambda s: s.rate) if s.rate >= rate), None)


def classify_failures(step: Step, errors: str) -> None:
    """The step's failed calls per class, from SIPp's error log."""
    found = sip_failures.classify_log(errors)
    counts = sip_failures.attribute(step.failed, found)
    step.failed = max(step.failed, sum(counts.values()))
    step.kamailio_failed = counts[sip_failures.KAMAILIO]
    step.timeout_failed = counts[sip_failures.TIMEOUT]
    step.standin_failed = counts[sip_failures.STAND_IN]
    step.scenario_failed = counts[sip_failures.SCENARIO]
    step.failure_samples = found.samples
    step.classified = True


def failed_by_class(step: Step) -> str:
    return (f"Kamailio {step.kamailio_failed}, timeout {step.timeout_failed}, stand-in {step.standin_failed}, "
            f"scenario {step.scenario_failed}")


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def ratio(ours: float | None, stock: float | None) -> str:
    if ours is None or stock is None or stock == 0:
        return "-"
    return f"{ours / stock:.2f}x"


def stock_config(shipped: str, listen: str, dburl_include: str) -> str:
    """The stock sample configuration with auth + usrloc in the database, as its comments describe
    ("define WITH_MYSQL", "define WITH_AUTH", "define WITH_USRLOCDB"), PostgreSQL's db module loaded
    where the MySQL one is, DBURL (the trydef's own name) from an include, one listen socket."""
    if not shipped.startswith("#!KAMAILIO"):
        raise ValueError("not a Kamailio configuration (no #!KAMAILIO first line)")
    if shipped.count('loadmodule "db_mysql.so"') != 1:
        raise ValueError('the stock configuration does not load "db_mysql.so" exactly once')
    head, rest = shipped.split("\n", 1)
    defines = ("#\n# hapbx bench sip: stock baseline. Only these lines, the module swap below and the listen\n"
               "# line differ from the package's file.\n"
               "#!define WITH_MYSQL\n#!define WITH_AUTH\n#!define WITH_USRLOCDB\n"
               f'include_file "{dburl_include}"\n')
    rest = rest.replace('loadmodule "db_mysql.so"', 'loadmodule "db_postgres.so"  # hapbx bench: PostgreSQL')
    marker = "# listen=udp:10.0.0.10:5060\n"
    if marker not in rest:
        raise ValueError(f"no {marker.strip()!r} line to put the listen socket after")
    rest = rest.replace(marker, marker + f"listen={listen}  # hapbx bench\n", 1)
    return f"{head}\n{defines}{rest}"


# ---------------------------------------------------------------- the lab

def open_lab(path: str, log=print) -> LabContext:
    """The running lab of a stack file, as the bench drives it: commands from /tmp, 60 s each unless told."""
    from lab.context import LabContext   # not at import: `./hapbx` builds its parser from bench/
    return LabContext.from_stack(path, log=log, workdir="/tmp", timeout=60)


NODE_PROBE = r"""
import json, os, sys, time
marker = sys.argv[1]
ticks = pss = rss = n = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip() != "kamailio":
                continue
        with open(f"/proc/{pid}/cmdline") as fh:
            if marker not in fh.read().split("\0"):
                continue
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        t = int(parts[11]) + int(parts[12])
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            mem = {l.split(":")[0]: int(l.split()[1]) for l in fh if l.split()[-1:] == ["kB"]}
    except (OSError, ValueError, IndexError):
        continue
    ticks += t; pss += mem.get("Pss", 0); rss += mem.get("Rss", 0); n += 1
print(json.dumps({"t": time.time(), "ticks": ticks, "hz": os.sysconf("SC_CLK_TCK"), "pss_kb": pss,
                  "rss_kb": rss, "processes": n}))
"""


class Sampler:
    """Kamailio's CPU ticks and PSS on the VIP node (every `every` s) and SIPp's CPU on the host."""

    def __init__(self, lab: LabContext, node: str, marker: str, every: float = 3.0):
        self.lab, self.node, self.marker, self.every = lab, node, marker, every
        self.samples: list[dict] = []
        self.sipp_ticks = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        try:
            out = self.lab.sh(self.node, f"python3 - {shlex.quote(self.marker)}", input=NODE_PROBE, timeout=20)
            self.samples.append(json.loads(out))
        except (RuntimeError, ValueError, subprocess.SubprocessError):
            pass
        if self.pid:
            try:
                with open(f"/proc/{self.pid}/stat") as fh:
                    parts = fh.read().rsplit(")", 1)[1].split()
                self.sipp_ticks = max(self.sipp_ticks, int(parts[11]) + int(parts[12]))
            except (OSError, ValueError, IndexError):
                pass

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self, step: Step) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()
        s = [x for x in self.samples if x.get("processes")]
        if len(s) >= 2 and s[-1]["t"] > s[0]["t"]:
            step.kam_cores = round((s[-1]["ticks"] - s[0]["ticks"]) / s[0]["hz"] / (s[-1]["t"] - s[0]["t"]), 2)
        if s:
            step.kam_pss_mb = round(max(x["pss_kb"] for x in s) / 1024, 1)
        if step.elapsed and self.sipp_ticks:
            step.sipp_cores = round(self.sipp_ticks / os.sysconf("SC_CLK_TCK") / max(step.elapsed, 1e-3), 2)


@dataclass
class Target:
    name: str       # ours | stock
    address: str    # where SIPp sends
    port: int
    domain: str     # From/To domain (the digest realm)
    marker: str     # the -f argument of its Kamailio processes
    node: str       # the node it runs on (the VIP node)
    before_calls: object = None   # stock: (re)registers the callee's contact before its calls


def sipp_run(lab: LabContext, target: Target, scenario: str, step: Step, inf: str, log, *, calls: int, limit: int,
             service: str = "s", extra: tuple[str, ...] = (), keys: dict | None = None,
             sampler: bool = True) -> Step:
    """One bounded SIPp run; fills step from its stat and rtt files."""
    with sipp.Workdir("hapbx-bench-sipp-") as d:
        options = ["-inf", inf, "-key", "domain", target.domain, "-key", "expires", str((keys or {}).get("expires", 120)),
                   "-l", str(limit), "-r", f"{step.rate:g}", "-rp", "1000", "-trace_screen", "-trace_stat", "-stf",
                   "stat.csv", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", "-recv_timeout", "8000", "-max_socket",
                   "16000"]
        for k, v in (keys or {}).items():
            if k != "expires":
                options += ["-key", k, str(v)]
        if step.hold_ms:
            options += ["-d", str(step.hold_ms)]
        bound = calls / max(step.rate, 1) + step.hold_ms / 1000 + 30
        options += ["-timeout", f"{int(bound)}s", *extra]
        cmd = sipp.command(f"{target.address}:{target.port}", os.path.join(SCENARIOS, scenario), lab.host,
                           service=service, calls=calls, options=options)
        meter = Sampler(lab, target.node, target.marker) if sampler else None
        if meter:
            meter.start()

        def started(proc) -> None:
            if meter:
                meter.pid = proc.pid
        x = sipp.launch(cmd, d.path, bound + 20, stdout=False, on_start=started)
        if x.killed:
            step.note = "SIPp killed at its time bound"
        stat = d.file("stat.csv")
        rows = parse_stat_csv(open(stat).read()) if os.path.exists(stat) else []
        rtt = d.read("_rtt.csv")
        errors = d.read("_errors.log", tail=ERROR_LOG_LIMIT)
        if rows:
            last = rows[-1]
            step.attempted = stat_int(last, "OutgoingCall(C)")
            step.ok = stat_int(last, "SuccessfulCall(C)")
            step.failed = stat_int(last, "FailedCall(C)")
            step.retransmissions = stat_int(last, "Retransmissions(C)")
            final = screen_counts(d.read("_screen.log"))
            if final:   # the final screen is written at exit, the stat file only every second
                step.ok, step.failed = final
                step.attempted = max(step.attempted, step.ok + step.failed)
            # calls that never ended (SIPp stopped at its bound) count as failed
            step.failed += max(0, step.attempted - step.ok - step.failed)
            conc = [stat_int(r, "CurrentCall") for r in rows]
            step.max_concurrent = max(conc)
            step.held_seconds = sum(1 for c in conc if c >= step.max_concurrent)
        pairs = parse_rtt_rows(rtt)
        values = [v for _, v in pairs]
        step.elapsed = start_span(pairs) or (len(rows) or 1.0)
        step.p50, step.p95, step.p99 = (percentile(values, q) for q in (50, 95, 99))
        if meter:
            meter.stop(step)
        if x.rc not in (0, 1) and not rows:
            raise RuntimeError(f"sipp exited {x.rc}: {x.stderr.strip()[-800:]} {errors[-800:]}")
        classify_failures(step, errors)
        log(f"  {target.name:5} {step.scenario:8} {step.rate:>6g}/s: {step.ok}/{step.attempted} ok, "
            f"{step.failed} failed ({failed_by_class(step)}), p50 {fmt_ms(step.p50)} p95 {fmt_ms(step.p95)} p99 {fmt_ms(step.p99)}, "
            f"max {step.max_concurrent} up, kamailio {step.kam_cores} cores {step.kam_pss_mb} MB"
            + (f" ({step.note})" if step.note else ""))
        return step


# ---------------------------------------------------------------- provisioning and the stock baseline

def queue_numbers(n: int) -> list[str]:
    """The n queue numbers the bench calls: CALLEE and the ones below it."""
    if not 1 <= n <= MAX_QUEUES:
        raise ValueError(f"queues: 1..{MAX_QUEUES}, not {n}")
    return [str(int(CALLEE) - i) for i in range(n)]


def users_file(directory: str, users: list[tuple[str, str]], callees: list[str] | tuple[str, ...] = (CALLEE,),
               name: str = "users.csv") -> str:
    """SIPp's injection file of the bench users (user; its [authentication] keyword; the number it
    calls, the callees in turn), 0600."""
    path = os.path.join(directory, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write("SEQUENTIAL\n" + "".join(f"{u};[authentication username={u} password={p}];{callees[i % len(callees)]}\n"
                                          for i, (u, p) in enumerate(users)))
    return path


def provision_ours(lab: LabContext, primary: str, users: list[tuple[str, str]], domain: str,
                   callees: list[str] | tuple[str, ...] = (CALLEE,)) -> None:
    """Bench users (and the called queues) through the PBX schema: pbx.extensions + pbx.set_sip_password."""
    values = ",".join(f"('{u}','{p}')" for u, p in users)
    queues = ",".join(f"('{c}', 'queue', '{MARK}')" for c in callees)
    lab.psql(primary, f"""
BEGIN;
DELETE FROM pbx.extensions WHERE display_name = '{MARK}';
INSERT INTO pbx.extensions (number, type, display_name) SELECT u, 'user', '{MARK}' FROM (VALUES {values}) v(u, p);
SELECT count(pbx.set_sip_password(u, p, '{domain}')) FROM (VALUES {values}) v(u, p);
-- a load generator's users: limits at their ceilings, so the bench measures the checks, not refusals
UPDATE pbx.calling_limits SET max_calls = 100, calls_per_minute = 600
 WHERE extension_id IN (SELECT id FROM pbx.extensions WHERE display_name = '{MARK}');
INSERT INTO pbx.extensions (number, type, display_name) VALUES {queues};
COMMIT;
""")


def cleanup_ours(lab: LabContext, primary: str) -> str:
    return lab.psql(primary, f"DELETE FROM pbx.extensions WHERE display_name = '{MARK}' RETURNING 1;").count("1")


def shipped_stock_cfg(lab: LabContext, node: str) -> tuple[str, str, str]:
    """The package's own kamailio.cfg for the node's installed version: (text, version, source).
    The node's /etc copy is ours, so it comes from the host's copy or the .deb, checked against the
    md5 dpkg recorded for the conffile on the node."""
    version = lab.sh(node, "dpkg-query -W -f='${Version}' kamailio").strip()
    want = lab.sh(node, "dpkg-query -W -f='${Conffiles}' kamailio").split("/etc/kamailio/kamailio.cfg ")[1].split()[0]
    candidates = []
    if os.path.exists("/etc/kamailio/kamailio.cfg"):
        candidates.append(("host /etc/kamailio/kamailio.cfg", open("/etc/kamailio/kamailio.cfg", "rb").read()))
    for cache in ("/var/cache/apt/archives", "/var/cache/hapbx"):
        for dirpath, _, files in os.walk(cache):
            for f in files:
                if f.startswith(f"kamailio_{version.split(':')[-1]}_") and f.endswith(".deb"):
                    deb = os.path.join(dirpath, f)
                    out = subprocess.run(f"dpkg-deb --fsys-tarfile {shlex.quote(deb)} | tar -xO ./etc/kamailio/kamailio.cfg",
                                         shell=True, capture_output=True, timeout=60)
                    if out.returncode == 0:
                        candidates.append((deb, out.stdout))
    for source, data in candidates:
        if hashlib.md5(data).hexdigest() == want:
            return data.decode(), version, source
    raise RuntimeError(f"no copy of kamailio {version}'s shipped kamailio.cfg (md5 {want}) on this host "
                       "(looked at /etc/kamailio/kamailio.cfg and the kamailio .deb in the apt cache)")


class Stock:
    """The stock baseline on the VIP node: database + role, config, firewall rule, transient unit."""

    def __init__(self, lab: LabContext, node: str, port: int, shm_mb: int, pkg_mb: int, log):
        self.lab, self.node, self.port, self.log = lab, node, port, log
        self.shm_mb, self.pkg_mb = shm_mb, pkg_mb
        self.address = lab.address(node)
        self.cfg_path = f"{STOCK_DIR}/kamailio.cfg"
        self.password = secrets.token_hex(16)
        self.version = self.source = ""
        self.changes: list[str] = []

    def deploy(self, users: list[tuple[str, str]]) -> None:
        shipped, self.version, self.source = shipped_stock_cfg(self.lab, self.node)
        cfg = stock_config(shipped, f"udp:{self.address}:{self.port}", f"{STOCK_DIR}/dburl.cfg")
        self.changes = [line for line in cfg.splitlines() if "hapbx bench" in line or line.startswith(("#!define WITH_", "include_file"))]
        self.cleanup(quiet=True)
        lab, n = self.lab, self.node
        lab.psql(n, f"CREATE ROLE {STOCK} LOGIN PASSWORD '{self.password}';\nCREATE DATABASE {STOCK} OWNER {STOCK};\n",
                 db="postgres")
        sql = "".join(lab.sh(n, f"cat /usr/share/kamailio/postgres/{f}") for f in STOCK_SQL)
        values = ",".join(f"('{u}','{self.address}','{p}','{md5(f'{u}:{self.address}:{p}')}',"
                          f"'{md5(f'{u}@{self.address}:{self.address}:{p}')}')" for u, p in users)
        lab.psql(n, f"SET ROLE {STOCK};\n{sql}\nINSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                    f"VALUES {values};\n", db=STOCK)
        dburl = f'#!define DBURL "postgres://{STOCK}:{self.password}@127.0.0.1/{STOCK}"\n'
        lab.sh(n, f"install -d -m 0770 -g kamailio {STOCK_DIR} && install -m 0640 -g kamailio /dev/stdin {STOCK_DIR}/dburl.cfg",
               input=dburl)
        lab.sh(n, f"install -m 0640 -g kamailio /dev/stdin {self.cfg_path} && "
                  f"{{ kamailio -c -f {self.cfg_path} > {STOCK_DIR}/check.log 2>&1 || {{ tail -20 {STOCK_DIR}/check.log >&2; exit 1; }}; }}",
               input=cfg)
        lab.sh(n, f"nft insert rule inet hapbx input ip saddr {lab.host} udp dport {self.port} accept "
                  f"comment '\"{NFT_COMMENT}\"'")
        lab.sh(n, f"systemd-run --unit={STOCK_UNIT} --property=LimitNOFILE=16384 /usr/sbin/kamailio -DD "
                  f"-P {STOCK_DIR}/kamailio.pid -Y {STOCK_DIR} -f {self.cfg_path} -m {self.shm_mb} -M {self.pkg_mb} "
                  "-u kamailio -g kamailio")
        deadline = time.monotonic() + 30
        while f"{self.address}:{self.port} " not in lab.sh(n, "ss -lunH"):
            if time.monotonic() > deadline or "active" != lab.sh(n, f"systemctl is-active {STOCK_UNIT}", check=False).strip():
                raise RuntimeError("stock Kamailio did not start: " +
                                   lab.sh(n, f"journalctl -u {STOCK_UNIT} -n 20 --no-pager", check=False)[-1500:])
            time.sleep(0.3)
        self.log(f"bench sip: stock Kamailio {self.version} ({self.source}) on {self.address}:{self.port}")

    def cleanup(self, quiet: bool = False) -> None:
        lab, n = self.lab, self.node
        lab.sh(n, f"systemctl stop {STOCK_UNIT} 2>/dev/null; systemctl reset-failed {STOCK_UNIT} 2>/dev/null; "
                  f"for h in $(nft -a list chain inet hapbx input | sed -n 's/.*\"{NFT_COMMENT}\" # handle \\([0-9]*\\)$/\\1/p'); "
                  f"do nft delete rule inet hapbx input handle $h; done; rm -rf {STOCK_DIR}", check=False)
        lab.psql(n, f"DROP DATABASE IF EXISTS {STOCK} WITH (FORCE);\nDROP ROLE IF EXISTS {STOCK};\n", db="postgres")
        if not quiet:
            self.log("bench sip: stock baseline removed (unit, firewall rule, database, role)")


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


# ---------------------------------------------------------------- the run

def machine() -> dict[str, str]:
    return {**writer.host(), "sipp": writer.version(["sipp", "-v"])}


def command(meta: dict) -> str:
    base = "./hapbx bench sip " + " ".join(shlex.quote(a) for a in meta["argv"])
    return f"flock {writer.MEASURE_LOCK} {base.strip()}" if meta.get("locked") else base.strip()


class BenchRefused(Exception):
    """A bench cannot start on this lab: the message for stderr, the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def running_lab(args, bench: str, max_rate: float, check=None) -> tuple[LabContext, str]:
    """The running lab of the stack `args` name, ready for SIPp at up to max_rate/s: (lab, its
    config path). `check(lab, path)` may refuse more (raise BenchRefused). BenchRefused names what
    is missing, prefixed `hapbx bench <bench>:` where it is not the config's own list of problems."""
    path = args.config or os.path.join(ROOT, f"Pulumi.{args.stack}.yaml")
    try:
        lab = open_lab(path)
    except Exception as err:  # ConfigError carries every problem
        raise BenchRefused(str(err)) from err
    if check:
        check(lab, path)
    if not lab.up():
        raise BenchRefused(f"hapbx bench {bench}: lab {lab.spec.name} is not running (./hapbx lab --config {path} up)")
    try:
        check_exempt(lab, max_rate)
    except RuntimeError as err:
        raise BenchRefused(f"hapbx bench {bench}: {err}") from err
    return lab, path


def check_exempt(lab: LabContext, max_rate: float) -> None:
    """Our Kamailio bans an address sending more than floodRequests per window (pike): the host
    must be in kamailio.floodExemptNetworks (the lab stack has it) or the bench measures the ban."""
    k = lab.cluster.kamailio
    host = ipaddress.ip_address(lab.host)
    if any(host in ipaddress.ip_network(n, strict=False) for n in k.flood_exempt_networks):
        return
    if k.flood_requests / k.flood_window_seconds >= max_rate * 4:
        return
    raise RuntimeError(f"the lab host {lab.host} is not in kamailio.floodExemptNetworks of {lab.path}: "
                       "Kamailio would ban it as a flood within seconds. Add it there (the shipped lab stack has "
                       "it) and `./hapbx lab apply`.")


def stepped(lab, target, scenario, rates, seconds, hold_ms, inf, log, deadline, users, run_no=1) -> list[Step]:
    steps = []
    for rate in rates:
        if time.monotonic() + seconds + hold_ms / 1000 + 30 > deadline:
            log(f"  {target.name} {scenario}: time budget reached, no step at {rate}/s")
            break
        calls = int(rate * seconds)
        step = sipp_run(lab, target, "register.xml" if scenario == "register" else "call.xml",
                        Step(scenario, target.name, rate, seconds, hold_ms, run=run_no), inf, log, calls=calls,
                        limit=max(int(rate * (hold_ms / 1000 + 2) * 2), 200), service=CALLEE)
        steps.append(step)
        reason = stop_reason(step)
        if reason:
            step.note = (step.note + f" stop: {reason}").strip()
            break
        time.sleep(2)   # let retransmission timers and the DMQ queue settle between steps
    return steps


def run_target(lab, target, args, inf, log, deadline, run_no=1) -> dict[str, list[Step]]:
    out: dict[str, list[Step]] = {}
    warm = sipp_run(lab, target, "register.xml", Step("warm-up", target.name, 50, 2), inf, log, calls=min(100, args.users),
                    limit=100, sampler=False)
    if warm.ok == 0:
        raise RuntimeError(f"{target.name}: no REGISTER succeeded in the warm-up ({warm.note})")
    if target.before_calls:
        target.before_calls()
    probe = sipp_run(lab, target, "call.xml", Step("warm-up", target.name, 5, 1, 200), inf, log, calls=5, limit=5,
                     service=CALLEE, sampler=False)
    if probe.ok == 0:
        raise RuntimeError(f"{target.name}: no call succeeded in the warm-up ({probe.note})")
    out["register"] = stepped(lab, target, "register", args.register_rates, args.step_seconds, 0, inf, log, deadline,
                              args.users, run_no)
    time.sleep(2)
    hold = Step("hold", target.name, args.ramp_rate, args.concurrent / args.ramp_rate, args.hold_seconds * 1000,
                run=run_no)
    out["hold"] = [sipp_run(lab, target, "call.xml", hold, inf, log, calls=args.concurrent, limit=args.concurrent,
                            service=CALLEE)]
    time.sleep(3)
    out["calls"] = stepped(lab, target, "calls", args.call_rates, args.step_seconds, args.call_hold_ms, inf, log,
                           deadline, args.users, run_no)
    return out


def media_engine_of_ours(lab: LabContext, target: Target, user: tuple[str, str], callee: str) -> str:
    """Which media stand-in dispatcher gives a called queue number (the 200 OK's Contact)."""
    with sipp.Workdir("hapbx-bench-probe-") as d:
        inf = users_file(d.path, [user], [callee], name="probe.csv")
        cmd = sipp.command(f"{target.address}:{target.port}", os.path.join(SCENARIOS, "call.xml"), lab.host,
                           service=callee, options=["-inf", inf, "-key", "domain", target.domain, "-d", "100",
                                                    "-trace_msg", "-timeout", "15s", "-recv_timeout", "5000"])
        sipp.launch(cmd, d.path, 30)
        text = d.read("_messages.log")
        m = re.search(r"Contact: <sip:media@([0-9.]+):(\d+)", text)
        if not m:
            raise RuntimeError(f"a call to {callee} through our Kamailio reached no media stand-in: {text[-1500:]}")
        return f"{m.group(1)}:{m.group(2)}"


def engine_shares(engines: dict[str, str]) -> dict[str, int]:
    """How many of the called queue numbers each media engine answers: {engine: numbers}."""
    out: dict[str, int] = {}
    for e in engines.values():
        out[e] = out.get(e, 0) + 1
    return dict(sorted(out.items()))


def _queues(meta: dict) -> str:
    """The called queue numbers as the report tells them, with the media engine each went to."""
    n = meta["args"].get("queues", 1)
    engines = meta["info"].get("engines")
    said = (f"the called queue {CALLEE}" if n == 1 else
            f"{n} called queue numbers ({int(CALLEE) - n + 1}..{CALLEE}, the users calling them in turn)")
    if engines:
        said += (" — dispatcher hashes the called number, so the media stand-ins answered these numbers: "
                 + ", ".join(f"{e} {k}" for e, k in engines.items()))
    return said


def load_runs(data: dict) -> Runs:
    """The runs of a saved result: {"runs": [...]}, or the single run {"results": ...} written before."""
    names = set(Step.__dataclass_fields__)
    raw = data["runs"] if "runs" in data else [data["results"]]
    return [{t: {s: [Step(**{k: v for k, v in x.items() if k in names}) for x in v] for s, v in r.items()}
             for t, r in run.items()} for run in raw]


def rerender(args) -> int:
    """The report and chart again from the results a run saved beside its report (no traffic)."""
    with open(args.from_json) as fh:
        data = json.load(fh)
    runs = load_runs(data)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    png = writer.beside(args.out, ".png")
    chart(runs, png)
    writer.write(args.out, report(runs, data["meta"], os.path.basename(png)))
    print(f"bench sip: wrote {args.out} and {png} from {args.from_json}")
    return 0


def run(args) -> int:
    log = lambda m: print(m, flush=True)  # noqa: E731
    if getattr(args, "from_json", None):
        return rerender(args)
    bounded(args)
    argv = sys.argv[sys.argv.index("sip") + 1:] if "sip" in sys.argv else []
    started, load_start, t_start = time.monotonic(), writer.load_avg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        lab, path = running_lab(args, "sip", max(args.register_rates + args.call_rates))
        idle_cpu = writer.cpu_busy()   # the lab's daemons alone, before any step
    except BenchRefused as err:
        print(err, file=sys.stderr)
        return err.code
    locked = writer.under_measure_lock()
    owner = lab.vip_owner()
    if owner is None:
        print("hapbx bench sip: the VIP is on no node", file=sys.stderr)
        return 1
    if lab.psql(owner, "SELECT pg_is_in_recovery();").strip() != "f":
        print(f"hapbx bench sip: {owner} holds the VIP but is not the PostgreSQL primary", file=sys.stderr)
        return 1
    domain = lab.psql(owner, "SELECT value FROM pbx.settings WHERE key = 'sip.domain';").strip() or lab.vip
    users = [(str(USER_BASE + i), secrets.token_hex(8)) for i in range(args.users)]
    callees = queue_numbers(args.queues)
    callee_pw = {c: secrets.token_hex(8) for c in callees}
    k = lab.cluster.kamailio
    ours = Target("ours", lab.vip, lab.sip_port, domain, "/etc/kamailio/kamailio.cfg", owner)
    stock = Stock(lab, owner, args.stock_port, args.stock_shm_mb, args.stock_pkg_mb, log)
    # the From domain carries the port: the stock `from_uri==myself` (which decides whether a call is
    # authenticated) takes a URI without a port as 5060, not the stock listener's port
    stock_target = Target("stock", stock.address, args.stock_port, f"{stock.address}:{args.stock_port}",
                          stock.cfg_path, owner)
    tmp = tempfile.mkdtemp(prefix="hapbx-bench-sip-")
    runs: Runs = []
    info = machine()
    notes: list[str] = []
    try:
        inf = users_file(tmp, users, callees)
        log(f"bench sip: lab {lab.spec.name}, VIP {lab.vip} on {owner}; {args.users} users through the PBX schema, "
            f"calling {len(callees)} queue numbers")
        provision_ours(lab, owner, users, domain, callees)
        info["kamailio"] = lab.sh(owner, "kamailio -v | head -1").strip()
        info["postgresql"] = lab.psql(owner, "SHOW server_version;").strip()
        engines = {c: media_engine_of_ours(lab, ours, users[0], c) for c in callees}
        info["engines"] = engine_shares(engines)
        log(f"bench sip: our calls reach the media stand-ins by dispatcher: {info['engines']}")
        if not args.no_stock:
            stock.deploy(users + list(callee_pw.items()))

            def contact() -> None:
                # stock has no dispatcher: each queue number is registered with the engine ours gives it
                for c, engine in engines.items():
                    reg = Step("contact", "stock", 1, 1)
                    sipp_run(lab, stock_target, "register-contact.xml", reg, inf, log, calls=1, limit=1, sampler=False,
                             extra=("-au", c, "-ap", callee_pw[c]),
                             keys={"user": c, "contact": f"sip:media@{engine}", "expires": "3600"})
                    if not reg.ok:
                        raise RuntimeError(f"stock: the contact of {c} could not be registered ({reg.note})")
            stock_target.before_calls = contact
        order = [ours] + ([] if args.no_stock else [stock_target])
        for n in range(1, args.runs + 1):
            deadline = time.monotonic() + args.max_minutes * 60   # each run bounded on its own
            results: dict[str, dict[str, list[Step]]] = {}
            runs.append(results)
            for t in order:
                log(f"bench sip: run {n}/{args.runs}: {t.name} at {t.address}:{t.port}")
                results[t.name] = run_target(lab, t, args, inf, log, deadline, n)
    except Exception as err:  # report what was measured, say what stopped the run
        notes.append(f"The run stopped early: {err}")
        log(f"bench sip: stopped: {err}")
    finally:
        try:
            if not args.no_stock:
                stock.cleanup()
            removed = cleanup_ours(lab, owner)
            log(f"bench sip: {removed} bench extensions removed")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info["load_start"], info["load_end"] = load_start, writer.load_avg()
    info["idle_cpu"] = idle_cpu
    took = time.monotonic() - started
    meta = {"argv": argv, "started": t_start, "took": took, "info": info, "owner": owner, "domain": domain,
            "kamailio": {"children": k.children, "shm_mb": k.shm_mb, "pkg_mb": k.pkg_mb},
            "stock": {"version": stock.version, "source": stock.source, "changes": stock.changes, "port": args.stock_port,
                      "shm_mb": args.stock_shm_mb, "pkg_mb": args.stock_pkg_mb},
            "args": {k2: v for k2, v in vars(args).items() if k2 != "func"}, "notes": notes, "lab": lab.spec.name,
            "config": path, "locked": locked}
    out_md = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    png = writer.beside(out_md, ".png")
    chart(runs, png)
    writer.write(out_md, report(runs, meta, os.path.basename(png)),
                data={"meta": meta, "runs": [{t: {s: [x.as_dict() for x in v] for s, v in r.items()}
                                              for t, r in results.items()} for results in runs]})
    log(f"bench sip: wrote {out_md} and {png} ({took:.0f} s)")
    return 0 if runs and runs[0] and not notes else 1


# ---------------------------------------------------------------- report


def figures(results: dict[str, list[Step]]) -> dict[str, float | None]:
    """One run's headline figures for one Kamailio (its scenario -> steps); None: not measured.
    The *_ok figures are 1.0 when the step the figure comes from passed."""
    reg, calls = results.get("register", []), results.get("calls", [])
    hold = (results.get("hold") or [None])[0]
    r500, c200 = at_rate(reg, TARGET_REG_RATE), at_rate(calls, TARGET_CPS)

    def highest(steps):
        b = best(steps)
        return (b.rate if b else 0.0) if steps else None

    def ok(step):
        return None if step is None else float(passed(step))
    return {
        "register_rate": highest(reg),
        "register_p95": r500.p95 if r500 else None, "register_p95_ok": ok(r500),
        "calls_rate": highest(calls),
        "setup_p95": c200.p95 if c200 else None, "setup_p95_ok": ok(c200),
        "kam_cores": c200.kam_cores if c200 else None,
        "held": float(hold.max_concurrent) if hold else None,
        "held_seconds": float(hold.held_seconds) if hold else None,
        "held_failed_pct": hold.server_fail_ratio * 100 if hold else None,
        "held_ok": (float(hold.max_concurrent >= TARGET_CONCURRENT and hold.server_fail_ratio <= MAX_FAIL_RATIO)
                    if hold else None),
        "kam_pss_held": hold.kam_pss_mb if hold else None,
    }


def headline(runs: Runs, name: str) -> dict[str, sip_runs.Figure]:
    """The figures of one Kamailio over the runs (median, spread)."""
    return sip_runs.aggregate([figures(r.get(name, {})) for r in runs])


def mostly(fig: sip_runs.Figure | None) -> bool:
    """An *_ok figure: true in most runs."""
    return fig is not None and fig.median is not None and fig.median > 0.5


def class_totals(runs: Runs, name: str) -> dict[str, int]:
    """Failed calls per class over every step of every run of one Kamailio."""
    out = dict.fromkeys(("kamailio", "timeout", "stand-in", "scenario", "unclassified"), 0)
    for r in runs:
        for steps in r.get(name, {}).values():
            for s in steps:
                if not s.classified:
                    out["unclassified"] += s.failed
                    continue
                out["kamailio"] += s.kamailio_failed
                out["timeout"] += s.timeout_failed
                out["stand-in"] += s.standin_failed
                out["scenario"] += s.scenario_failed
    return out


def chart(runs: Runs, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, scenario, title in ((axes[0], "register", "REGISTER with digest auth"),
                                (axes[1], "calls", "calls through the proxy to the media stand-in")):
        for name, style, color in (("ours", "-o", "tab:blue"), ("stock", "--s", "tab:orange")):
            for i, results in enumerate(runs):
                steps = results.get(name, {}).get(scenario, [])
                if not steps:
                    continue
                x = [s.rate for s in steps]
                first = i == 0
                ax.plot(x, [s.p95 or 0 for s in steps], style, color=color, alpha=0.9 if first else 0.5,
                        label=f"{name} p95 (each run)" if first else None)
                ax.plot(x, [s.p50 or 0 for s in steps], style, color=color, alpha=0.25,
                        label=f"{name} p50" if first else None)
                for s in steps:
                    if not passed(s):
                        ax.annotate("stop", (s.rate, s.p95 or 0), textcoords="offset points", xytext=(4, 6), fontsize=8)
        target = TARGET_REG_P95 if scenario == "register" else TARGET_SETUP_P95
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target p95 {target:g} ms")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("offered rate (per second)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analysis(runs: Runs, meta: dict) -> list[str]:
    """What the medians say against the targets, the failures by origin, ours against stock."""
    o, s = headline(runs, "ours"), headline(runs, "stock")
    none = sip_runs.Figure([None])
    g = lambda figs, k: figs.get(k, none)  # noqa: E731
    n = len(runs)
    out = ["## Reading", "", f"Figures are the medians of {n} run{'s' if n != 1 else ''}, the spread (min-max) "
           "in brackets."]
    p95 = g(o, "register_p95")
    met = p95.median is not None and p95.median < TARGET_REG_P95 and mostly(g(o, "register_p95_ok"))
    out.append(f"- REGISTER at {TARGET_REG_RATE}/s: p95 {p95.show(' ms')} (target < {TARGET_REG_P95:g} ms, the step "
               f"passing in most runs): {'met' if met else 'missed'}; highest rate passing the stop rule "
               f"{g(o, 'register_rate').show('/s')}.")
    rate = g(o, "calls_rate")
    out.append(f"- calls/s: highest passing {rate.show('/s')} (target {TARGET_CPS}): "
               f"{'met' if rate.median is not None and rate.median >= TARGET_CPS else 'missed'}.")
    sp = g(o, "setup_p95")
    met = sp.median is not None and sp.median < TARGET_SETUP_P95 and mostly(g(o, "setup_p95_ok"))
    out.append(f"- call-setup p95 at {TARGET_CPS} calls/s: {sp.show(' ms')} (target < {TARGET_SETUP_P95:g} ms): "
               f"{'met' if met else 'missed'}.")
    held = g(o, "held")
    if held.median is not None:
        out.append(f"- {held.show()} calls up at once for {g(o, 'held_seconds').show(' s')}, Kamailio-caused failures "
                   f"{g(o, 'held_failed_pct').show(' %', 2)}: {'met' if mostly(g(o, 'held_ok')) else 'missed'} "
                   f"(target {TARGET_CONCURRENT}, < 0.1 %).")
    for name in ("ours", "stock"):
        c = class_totals(runs, name)
        if any(c.values()):
            out.append(f"- Failed calls by origin, {name}, all steps of all runs: Kamailio {c['kamailio']}, "
                       f"no answer {c['timeout']} (both count against Kamailio), media stand-in {c['stand-in']}, "
                       f"SIPp scenario {c['scenario']}" + (f", unclassified {c['unclassified']} (counted against "
                                                            "Kamailio)" if c["unclassified"] else "") + ".")
    worse = []
    for key, label, unit, higher_better in (("register_rate", "highest REGISTER/s", "/s", True),
                                            ("calls_rate", "highest calls/s", "/s", True),
                                            ("register_p95", f"REGISTER p95 at {TARGET_REG_RATE}/s", " ms", False),
                                            ("setup_p95", f"call-setup p95 at {TARGET_CPS}/s", " ms", False)):
        a, b = g(o, key).median, g(s, key).median
        if a is not None and b is not None and (a < b if higher_better else a > b):
            worse.append(f"{label} {g(o, key).show(unit)} vs stock {g(s, key).show(unit)}")
    if worse:
        out.append("- Worse than stock (medians): " + "; ".join(worse) + ". Ours does more per request than the stock "
                   "configuration: each REGISTER is also replicated to the peer over DMQ (measured +0.12 ms CPU per "
                   "REGISTER, and the peer's Kamailio runs on the same 2 cores), the flood, scanner and ban checks run "
                   "on every request, and calls go through dispatcher with a failure route; the stock configuration "
                   "writes contacts back to PostgreSQL every timer tick instead (db_mode 2) and relays straight from "
                   "usrloc.")
    elif s:
        out.append("- No median was worse than the stock baseline's.")
    info = meta["info"]
    out += ["", f"This machine has {info.get('cores')} cores shared by everything in the run: SIPp (the phones, "
            "on the host), both lab nodes' Kamailio (the VIP node's plus its DMQ peer), PostgreSQL, the media "
            "stand-in (another SIPp) and whatever else runs on the host (load average "
            f"{info.get('load_start')} at the start, {info.get('load_end')} at the end). A step fails as soon as "
            "Kamailio is short of CPU, so these are lower bounds for dedicated 2-node hardware.", ""]
    return out


def _cls(s: Step, n: int) -> str:
    return str(n) if s.classified else "-"


def step_row(s: Step) -> str:
    """One step as a row of the step tables (HEAD)."""
    return (f"| {s.target} | {s.run} | {s.rate:g} | {s.achieved:.0f} | {s.ok}/{s.attempted} | "
            f"{s.server_failed} ({s.server_fail_ratio * 100:.2f} %) | {_cls(s, s.kamailio_failed)} | "
            f"{_cls(s, s.timeout_failed)} | {_cls(s, s.standin_failed)} | {_cls(s, s.scenario_failed)} | "
            f"{fmt_ms(s.p50)} | {fmt_ms(s.p95)} | {fmt_ms(s.p99)} | {s.max_concurrent} | {s.retransmissions} | "
            f"{'-' if s.kam_cores is None else s.kam_cores} | {'-' if s.kam_pss_mb is None else s.kam_pss_mb} | "
            f"{'-' if s.sipp_cores is None else s.sipp_cores} | {s.note or ('pass' if passed(s) else '')} |")


HEAD = ("| Kamailio | run | offered/s | started/s | ok/attempted | Kamailio-caused failed | of them Kamailio's reply | "
        "of them no answer | stand-in | scenario | p50 | p95 | p99 | max up | retrans | Kamailio cores | "
        "Kamailio PSS MB | SIPp cores | result |\n" + "|---" * 19 + "|")


def samples(steps: list[Step]) -> list[str]:
    """The first failure of each class, for every step that had failures."""
    out = []
    for s in steps:
        for cls, what in (s.failure_samples or {}).items():
            out.append(f"- {s.target} run {s.run}, {s.rate:g}/s, {cls}: `{what}`")
    return out


def report(runs: Runs, meta: dict, png: str) -> str:
    o, s = headline(runs, "ours"), headline(runs, "stock")
    none = sip_runs.Figure([None])
    g = lambda figs, k: figs.get(k, none)  # noqa: E731

    def yn(ok):
        return "**met**" if ok else "**missed**"

    def row(label, key, unit="", digits=0, target=""):
        return (f"| {label} | {g(o, key).show(unit, digits)} | {g(s, key).show(unit, digits)} | "
                f"{sip_runs.ratio(g(o, key), g(s, key))} | {target} |")

    n, info = len(runs), meta["info"]
    held, calls, sp = g(o, "held"), g(o, "calls_rate"), g(o, "setup_p95")
    regr, rp95 = g(o, "register_rate"), g(o, "register_p95")
    lines = [
        "# SIP benchmark: the deployed Kamailio against stock Kamailio",
        "",
        f"Generated by `{command(meta)}` on {meta['started']} "
        f"({meta['took']:.0f} s, {n} run{'s' if n != 1 else ''}), on the lab `{meta['lab']}` ({meta['config']}). "
        f"SIPp runs on the lab host and sends only to the lab's own addresses: ours through the VIP (on {meta['owner']}), "
        f"the stock baseline to {meta['owner']}'s own address, port {meta['stock']['port']}.",
        "",
        "Latency is what a phone sees, measured by SIPp: REGISTER from the first REGISTER to the 200 after the "
        "401 challenge (two round trips and one digest check); call setup from the first INVITE to the 200 OK "
        "(INVITE, 407, ACK, INVITE with credentials, relay to the media stand-in, 100/180/200 back). SIPp's clock "
        "has 1 ms resolution. Every failed call is classified by where it came from (SIPp's error log): a final "
        "error response Kamailio generated, no answer, a response of the media stand-in, or SIPp's scenario "
        "aborting on a message that is no server's failure (the scenarios take late and retransmitted answers as "
        "a phone does, so this should stay 0). A step fails when more than 0.1 % of its calls failed because of "
        "Kamailio (its error responses and the calls left unanswered), when fewer than 95 % of the offered rate "
        "could be started, or (REGISTER) when p95 passed 50 ms; stepping stops at the first failed step.",
        "",
        f"## Summary against the targets (median of {n} run{'s' if n != 1 else ''}, min-max in brackets)",
        "",
        "| target | ours | stock | ours/stock | target |",
        "|---|---|---|---|---|",
        row("concurrent calls held", "held", target=f"{TARGET_CONCURRENT} with < 0.1 % Kamailio-caused failures: "
            f"{yn(held.median is not None and held.median >= TARGET_CONCURRENT and mostly(g(o, 'held_ok')))}"),
        row("Kamailio-caused failures with the calls held (%)", "held_failed_pct", digits=2),
        row("highest calls/s passed", "calls_rate",
            target=f">= {TARGET_CPS}: {yn(calls.median is not None and calls.median >= TARGET_CPS)}"),
        row(f"call-setup p95 at {TARGET_CPS} calls/s", "setup_p95", " ms",
            target=f"< {TARGET_SETUP_P95:g} ms: "
                   f"{yn(sp.median is not None and sp.median < TARGET_SETUP_P95 and mostly(g(o, 'setup_p95_ok')))}"),
        row("highest REGISTER/s passed", "register_rate",
            target=f">= {TARGET_REG_RATE}: {yn(regr.median is not None and regr.median >= TARGET_REG_RATE)}"),
        row(f"REGISTER p95 at {TARGET_REG_RATE}/s", "register_p95", " ms",
            target=f"< {TARGET_REG_P95:g} ms: "
                   f"{yn(rp95.median is not None and rp95.median < TARGET_REG_P95 and mostly(g(o, 'register_p95_ok')))}"),
        row(f"Kamailio CPU at {TARGET_CPS} calls/s (cores)", "kam_cores", digits=2),
        row("Kamailio PSS with the calls held (MB)", "kam_pss_held", digits=1),
        "",
        "Ratios are ours divided by stock, of the medians: above 1 is more for rates, calls and resources, slower "
        "for latency. A p95 target is met when its median is under the target and the step passed in most runs.",
        "",
        *analysis(runs, meta),
        "",
        f"![latency against load, each run]({png})",
        "",
    ]
    args = meta["args"]
    for scenario, title in (("register", "REGISTER with digest auth, stepped"),
                            ("hold", f"Calls ramped to {args['concurrent']} concurrent and held "
                                     f"{args['hold_seconds']} s (ramp {args['ramp_rate']} calls/s)"),
                            ("calls", f"Calls/s stepped, each call held {args['call_hold_ms']} ms")):
        lines += [f"## {title}", "", HEAD]
        steps = [st for name in ("ours", "stock") for r in runs for st in r.get(name, {}).get(scenario, [])]
        lines += [step_row(st) for st in steps]
        if scenario == "hold":
            lines += ["", "max up = the most calls SIPp had up at once (its CurrentCall, sampled every second); "
                          "held for " + ", ".join(f"{st.target} run {st.run} {st.held_seconds} s" for st in steps)
                      + " at that level."]
        first = samples(steps)
        if first:
            lines += ["", "The first failure of each class, per step:", "", *first]
        lines.append("")
    st = meta["stock"]
    lines += [
        "## Setup",
        "",
        f"- Ours: the deployed `/etc/kamailio/kamailio.cfg` ({info.get('kamailio')}), children {meta['kamailio']['children']}, "
        f"-m {meta['kamailio']['shm_mb']} -M {meta['kamailio']['pkg_mb']}, digest auth against `kamailio.subscriber` "
        "(the PBX schema's view), usrloc in memory replicated to the peer over DMQ, calls to a queue number "
        "sent by dispatcher to a node's media stand-in (SIPp UAS). The lab host is in `kamailio.floodExemptNetworks` "
        "(Pulumi.lab.yaml), so the flood ban (pike) is skipped for it: it is the lab's load generator.",
        f"- Stock: Kamailio {st['version']} `kamailio.cfg` as the package ships it (taken from {st['source']}, its md5 "
        f"equal to the conffile checksum dpkg recorded on the node), started by `systemd-run` on {meta['owner']} "
        f"for the run with Debian's default -m {st['shm_mb']} -M {st['pkg_mb']}, then removed. Changes, all of them:",
        "",
        "```",
        *st["changes"],
        "```",
        "",
        "  The database `hapbx_bench_stock` was made from the package's "
        f"{', '.join(STOCK_SQL)} (kamdbctl's tables), on the same PostgreSQL primary, with the same users in "
        "`subscriber` (cleartext password, as the stock `calculate_ha1 yes` expects) and usrloc `db_mode 2` "
        "(write-back) as WITH_USRLOCDB sets it. The stock configuration has no dispatcher: its calls go to the same "
        "media stand-in through usrloc (the callee registered with the stand-in as contact), the stock way to "
        "reach a destination.",
        f"- Users: {meta['args']['users']} user extensions ({USER_BASE}..) and {_queues(meta)} created "
        "through the PBX schema (`pbx.extensions` + `pbx.set_sip_password`) on the primary, each with its own "
        "random password, used in turn by SIPp (injection file); all removed at the end. REGISTERs use Expires 120, "
        "so the bench contacts expire two minutes after the run.",
        f"- Machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory')}, Debian {info.get('debian')}, "
        f"kernel {info.get('kernel')}. The lab nodes (systemd-nspawn) and SIPp share these cores: SIPp, Kamailio, "
        "the peer's Kamailio (DMQ), PostgreSQL and the media stand-in all run on the same 2 cores. Load average "
        f"(1, 5, 15 min): {info.get('load_start')} at the start, {info.get('load_end')} at the end."
        + (f" The lab idle before the run (its daemons, no SIP load): {info['idle_cpu']}." if info.get("idle_cpu") else ""),
        f"- Versions: {info.get('kamailio')}, PostgreSQL {info.get('postgresql')}, {info.get('sipp')}.",
        f"- Command: `{command(meta)}`; "
        f"REGISTER rates {meta['args']['register_rates']}, calls/s {meta['args']['call_rates']}, "
        f"{meta['args']['step_seconds']:g} s per step, each run bounded to {meta['args']['max_minutes']:g} min.",
        "",
    ]
    for note in meta["notes"]:
        lines += [f"**{note}**", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the arguments

def bounded(args) -> None:
    """Every loop bounded: a typo cannot start an hour-long run or an unbounded flood."""
    args.users = min(max(args.users, 10), 20000)
    args.register_rates = sorted(min(max(r, 1), 5000) for r in args.register_rates)[:12]
    args.call_rates = sorted(min(max(r, 1), 2000) for r in args.call_rates)[:12]
    args.step_seconds = min(max(args.step_seconds, 3), 120)
    args.call_hold_ms = min(max(args.call_hold_ms, 0), 60000)
    args.concurrent = min(max(args.concurrent, 1), 5000)
    args.ramp_rate = min(max(args.ramp_rate, 1), 1000)
    args.hold_seconds = min(max(args.hold_seconds, 1), 300)
    args.max_minutes = min(max(args.max_minutes, 1), 60)
    args.queues = min(max(int(getattr(args, "queues", None) or QUEUES), 1), MAX_QUEUES)
    # `--runs` (cli/bench_cmd.py); RUNS when the command line has no such option
    args.runs = min(max(int(getattr(args, "runs", None) or RUNS), 1), MAX_RUNS)
