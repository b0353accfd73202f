"""Failover drills on a running lab (issue 9): break the cluster the ways production breaks,
measure what clients see, heal, and check the failed node is a streaming standby again.

During every run:
- a sampler on each node (python3 + Debian's psycopg2/redis, a transient systemd unit) writes
  every 100 ms: VIP present, PostgreSQL role (primary / streaming standby / standby / down),
  Redis role, leader-lease holder flag; to a file on the node's disk, so an isolated or
  powered-off node keeps its record (fetched after the heal);
- from the host (the lab bridge address): a writer inserts rows through the VIP with
  psycopg and records every acknowledgement; SIP OPTIONS every 100 ms and a digest-auth
  REGISTER every 0.5 s probe the VIP (together 14 requests/s, under the pike limit of
  20/s from one address);
- a SIPp phone registered before the fault is called through the VIP before the heal.

The host reaches PostgreSQL on the VIP through a drill-only rule on each node (an accept for
the host address on the PostgreSQL port in the node's firewall, and a source NAT to the VIP
so pg_hba's "VIP" line admits it); it is removed when the drill command ends, and a node's
firewall reload removes it too (it is put back after a node boots).

Every wait is bounded; a run that cannot bring the cluster back to health stops the command
with the reason.

The drills are one table (DRILLS, below the actions they are made of): what each breaks on the
VIP owner, how long, how it heals, and which of issue 9's targets it must meet; `run_one` and the
report (lab/drill_report.py) are driven by it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import secrets
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

from components.sip_layer import dmq_peer_active
from hapbx_node.layout import HA_ENV, HA_SECRETS_ENV, HA_STATUS, TLS_CA, parse_status
from lab import sipp

from . import machinery
from .context import LabCommandError, LabContext
from .health import options_request
from .host import command

DRILL_DIR = "/var/lib/hapbx-drill"
SAMPLER_UNIT = "hapbx-drill-sampler"
ACCESS_COMMENT = "hapbx-drill-writer"
USERS = ("1901", "1902", "1903")   # caller, the phone registered before the fault, the REGISTER probe
SAMPLE_S = 0.1

_SAMPLER = r'''
import os, pwd, subprocess, sys, time
@LAYOUT@
out, vip, iface, period = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pw = ""
for line in open("/etc/redis/admin.env"):
    if line.startswith("REDISCLI_AUTH="):
        pw = line.split("=", 1)[1].strip().strip("'\"")
f = open(out, "a", buffering=1)
u = pwd.getpwnam("postgres")
os.setgid(u.pw_gid); os.setuid(u.pw_uid)
import psycopg2, redis
r = redis.Redis(host="127.0.0.1", port=6379, password=pw or None, socket_timeout=0.3, socket_connect_timeout=0.3,
                ssl=True, ssl_ca_certs=TLS_CA, ssl_cert_reqs="required", ssl_check_hostname=True)   # TLS only
conn = None
def pg_role():
    global conn
    try:
        if conn is None:
            conn = psycopg2.connect(host="/var/run/postgresql", dbname="postgres", user="postgres",
                                    connect_timeout=1, options="-c statement_timeout=300")
            conn.autocommit = True
        cur = conn.cursor()
        cur.execute("select pg_is_in_recovery(), (select status from pg_stat_wal_receiver limit 1)")
        rec, st = cur.fetchone()
        return "primary" if not rec else ("streaming" if st == "streaming" else "standby")
    except Exception:
        try:
            conn and conn.close()
        except Exception:
            pass
        conn = None
        return "down"
def redis_role():
    try:
        return r.execute_command("ROLE")[0].decode()
    except Exception:
        return "down"
def hold():
    try:
        with open(HA_STATUS) as fh:
            return parse_status(fh.read()).get("hold", "-")
    except Exception:
        pass
    return "-"
nxt = time.time()
while True:
    t = time.time()
    try:
        a = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", iface], capture_output=True, text=True,
                           timeout=1).stdout
        v = 1 if (" %s/" % vip) in a else 0
    except Exception:
        v = -1
    f.write("%.3f %d %s %s %s\n" % (t, v, pg_role(), redis_role(), hold()))
    nxt += period
    d = nxt - time.time()
    if d > 0:
        time.sleep(d)
    else:
        nxt = time.time()
'''
# the node's HA status file and its parser, from hapbx_node/layout.py (standard library only)
SAMPLER = _SAMPLER.replace("@LAYOUT@", f"HA_STATUS = {HA_STATUS!r}\nTLS_CA = {TLS_CA!r}\n" + inspect.getsource(parse_status))


class DrillError(LabCommandError):
    """A drill could not run or could not bring the cluster back: says what and what to do."""


# ------------------------------------------------------------------ the cluster (lab/context.py's LabContext)


def status(ctx: LabContext, node: str) -> dict[str, str]:
    """The node's HA status (etcd_sync included) plus the primary-side sync state and whether its
    Kamailio lists the peer active in DMQ, in one call."""
    peer = ctx.addresses[ctx.peer(node)]
    return ctx.ha_status(node, extra=(
        ". /etc/hapbx/ha.env; "
        "echo sync_state=$(runuser -u postgres -- psql -X -A -t -h /var/run/postgresql -d postgres -c "
        "\"select sync_state from pg_stat_replication where application_name = '$HAPBX_PEER'\" 2>/dev/null); "
        f"if {dmq_peer_active(peer)}; then echo dmq_peer=active; else echo dmq_peer=inactive; fi; true"))


def both(ctx: LabContext, fn) -> dict:
    res: dict = {}
    ts = [threading.Thread(target=lambda n=n: res.__setitem__(n, fn(n))) for n in ctx.names]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return res


def health(ctx: LabContext) -> tuple[str | None, list[str]]:
    """(VIP owner, problems); no problems = one VIP owner that leads and writes, the peer a
    synchronous streaming standby and Redis replica."""
    st = both(ctx, lambda n: status(ctx, n))
    owners = [n for n in ctx.names if st[n].get("vip") == "present"]
    if len(owners) != 1:
        return None, [f"VIP on {owners or 'no node'}"]
    o = owners[0]
    p = ctx.peer(o)
    bad = []
    want = {(o, "daemon_hold"): "1", (o, "postgres"): "primary", (o, "redis"): "master",
            (p, "postgres"): "standby", (p, "postgres_streaming"): "yes", (p, "redis"): "slave",
            (o, "sync_state"): "sync",
            # the peer can take over: its keepalived out of FAULT (its local checks pass: a node
            # just rebooted may still be starting Kamailio)
            (p, "vrrp_state"): "BACKUP",
            # the registrations reach both Kamailios again (DMQ marks a peer back active at its
            # next ping, up to 10 s after a heal): a phone registered now is known to the peer
            (o, "dmq_peer"): "active", (p, "dmq_peer"): "active"}
    for (n, k), v in want.items():
        if st[n].get(k) != v:
            bad.append(f"{n} {k}={st[n].get(k)!r} (want {v})")
    if st[o].get("etcd_sync", "").startswith("relaxed"):
        bad.append(f"etcd sync key {st[o]['etcd_sync']}")
    return o, bad


def wait_healthy(ctx: LabContext, seconds: float, what: str) -> str:
    deadline = time.monotonic() + seconds
    problems: list[str] = []
    while time.monotonic() < deadline:
        owner, problems = health(ctx)
        if owner and not problems:
            return owner
        time.sleep(0.5)
    raise DrillError(f"{what}: the cluster is not healthy after {seconds:.0f} s: {'; '.join(problems)}. "
                     "Look at `hapbx-ha status` and `journalctl -u hapbx-leader` on the nodes "
                     "(./hapbx lab ssh pbx1), or rebuild: ./hapbx lab down && ./hapbx lab up")


# ------------------------------------------------------------------ setup on the nodes


def _drop_rules(comment: str) -> str:
    """Shell: delete the rules of the node's input chain that carry `comment`."""
    return (f"for h in $(nft -a list chain inet hapbx input | sed -n 's/.*\"{comment}\".*# handle //p'); "
            "do nft delete rule inet hapbx input handle $h; done")


def allow_host(ctx: LabContext, node: str, port: int, comment: str) -> None:
    """The host (its bridge address) may reach the VIP on a TCP port of the node: an accept inserted
    first in the node's input chain, tagged with `comment` (a rule with that comment replaced). Gone at
    the node's next firewall reload or boot; disallow_host removes it."""
    ctx.sh(node, f"{_drop_rules(comment)}; nft insert rule inet hapbx input ip saddr {ctx.host} ip daddr {ctx.vip} "
                 f"tcp dport {port} accept comment '\"{comment}\"'", timeout=20)


def disallow_host(ctx: LabContext, node: str, comment: str) -> None:
    ctx.sh(node, f"{_drop_rules(comment)}; true", timeout=20, check=False)


def ensure_access(ctx: LabContext, node: str) -> None:
    """The host may reach PostgreSQL on the VIP (drill writer): accept + SNAT to the VIP."""
    nat = (f"table ip hapbx_drill\ndelete table ip hapbx_drill\ntable ip hapbx_drill {{\n"
           f"  chain writer_in {{\n    type nat hook input priority 100; policy accept;\n"
           f"    ip saddr {ctx.host} ip daddr {ctx.vip} tcp dport {ctx.pg_port} snat ip to {ctx.vip}\n  }}\n}}\n")
    allow_host(ctx, node, ctx.pg_port, ACCESS_COMMENT)
    machinery.run(ctx.spec, node, "nft -f -", input=nat, timeout=20)


def remove_access(ctx: LabContext, node: str) -> None:
    ctx.sh(node, f"{_drop_rules(ACCESS_COMMENT)}; nft delete table ip hapbx_drill 2>/dev/null; true",
           timeout=20, check=False)


def setup(ctx: LabContext) -> None:
    """Writer table, SIP users (fresh random passwords), samplers, host access; on a healthy cluster."""
    owner = wait_healthy(ctx, 120, "before the drills")
    peer = ctx.peer(owner)
    for n in ctx.names:
        ensure_access(ctx, n)
    install_sampler(ctx)
    env = ctx.sh(owner, "grep '^HAPBX_PG_PASSWORD=' /etc/hapbx/admin.env")
    ctx.pg_password = env.split("=", 1)[1].strip().strip("'\"")
    ctx.psql(owner, "CREATE SCHEMA IF NOT EXISTS hapbx_drill; "
                     "CREATE TABLE IF NOT EXISTS hapbx_drill.writes (run text NOT NULL, id integer NOT NULL, "
                     "t_client double precision, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, id)); "
                     "GRANT USAGE ON SCHEMA hapbx_drill TO pbx_admin; "
                     "GRANT SELECT, INSERT ON hapbx_drill.writes TO pbx_admin")
    for u in USERS:
        ctx.passwords[u] = secrets.token_hex(12)
        ctx.psql(owner, f"INSERT INTO pbx.extensions (number, type, display_name) VALUES ('{u}', 'user', "
                         f"'Drill {u}') ON CONFLICT (number) DO NOTHING")
        ctx.psql(owner, f"SELECT pbx.set_sip_password('{u}', '{ctx.passwords[u]}')")
    # the standby's Kamailio authenticates from its replica
    q = "SELECT username || ' ' || ha1 FROM kamailio.subscriber WHERE username IN (%s) ORDER BY 1" % (
        ", ".join(f"'{u}'" for u in USERS))
    want = ctx.psql(owner, q)
    deadline = time.monotonic() + 20
    while ctx.psql(peer, q) != want:
        if time.monotonic() > deadline:
            raise DrillError(f"drill users not on the standby {peer} after 20 s")
        time.sleep(0.3)


def install_sampler(ctx: LabContext) -> None:
    """The sampler's script on both nodes (start_sampler runs it)."""
    for n in ctx.names:
        machinery.run(ctx.spec, n, f"mkdir -p {DRILL_DIR} && cat > {DRILL_DIR}/sampler.py", input=SAMPLER, timeout=20)


def cleanup(ctx: LabContext) -> None:
    host_cut(ctx, None)
    for n in ctx.names:
        st = machinery.status(ctx.spec).node(n)
        if st.running:
            stop_sampler(ctx, n)
            remove_access(ctx, n)


def start_sampler(ctx: LabContext, node: str, run_id: str) -> None:
    ctx.sh(node, f"systemctl stop {SAMPLER_UNIT} 2>/dev/null; systemctl reset-failed {SAMPLER_UNIT} 2>/dev/null; "
                 f"systemd-run --quiet --collect --unit={SAMPLER_UNIT} -p Nice=-5 python3 {DRILL_DIR}/sampler.py "
                 f"{DRILL_DIR}/{run_id}.{node}.tsv {ctx.vip} {ctx.iface} {SAMPLE_S}", timeout=20)


def stop_sampler(ctx: LabContext, node: str) -> None:
    ctx.sh(node, f"systemctl stop {SAMPLER_UNIT} 2>/dev/null; true", timeout=20, check=False)


def fetch_samples(ctx: LabContext, node: str, run_id: str) -> list[tuple]:
    out = ctx.sh(node, f"cat {DRILL_DIR}/{run_id}.{node}.tsv && rm -f {DRILL_DIR}/{run_id}.{node}.tsv",
                 timeout=30, check=False)
    rows = []
    for line in out.splitlines():
        p = line.split()
        if len(p) == 5:
            rows.append((float(p[0]), int(p[1]), p[2], p[3], p[4]))
    return rows


# ------------------------------------------------------------------ host bridge faults


def _table(ctx: LabContext) -> str:
    return "hapbx_drill_" + re.sub(r"[^a-z0-9]", "_", ctx.spec.name)


def bridge_port(ctx: LabContext, node: str) -> str:
    mac = ctx.sh(node, f"cat /sys/class/net/{ctx.iface}/address", timeout=20).strip()
    for _ in range(20):
        fdb = json.loads(command(["bridge", "-j", "fdb", "show", "br", ctx.spec.bridge]).stdout)
        for e in fdb:
            if e.get("mac") == mac and "permanent" not in (e.get("state") or "") and e.get("ifname", "").startswith("vb-"):
                return e["ifname"]
        command(["ping", "-c", "1", "-W", "1", ctx.addresses[node]], check=False)
        time.sleep(0.2)
    raise DrillError(f"no bridge port of {ctx.spec.bridge} carries {node}'s MAC {mac}")


def host_cut(ctx: LabContext, rules: list[str] | None) -> None:
    """Drop frames on the lab bridge (rules: nft statements per hook) or remove the drill table."""
    t = _table(ctx)
    if rules is None:
        if command(["nft", "list", "table", "bridge", t], check=False).returncode == 0:
            command(["nft", "delete", "table", "bridge", t])
        return
    chains = {"forward": [], "input": [], "output": []}
    for r in rules:
        hook, stmt = r.split(":", 1)
        chains[hook].append(stmt)
    body = "".join(f"  chain {h} {{\n    type filter hook {h} priority -200; policy accept;\n"
                   + "".join(f"    {s}\n" for s in stmts) + "  }\n" for h, stmts in chains.items())
    command(["nft", "-f", "-"], input=f"table bridge {t}\ndelete table bridge {t}\ntable bridge {t} {{\n{body}}}\n")


# ------------------------------------------------------------------ probes from the host


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


class Writer(threading.Thread):
    """Inserts a row through the VIP every 50 ms; one record per attempt: (id, sent, done, ok, error).
    A statement not answered within 5 s is abandoned (socket shut down): not acknowledged.
    insert() and record() are what a writer with more to say changes (lab/soak.py's)."""
    period = 0.05

    def __init__(self, ctx: LabContext, run_id: str):
        super().__init__(daemon=True)
        self.ctx, self.run_id = ctx, run_id
        self.stop_ev = threading.Event()
        self.records: list = []

    def insert(self, conn, i: int, t: float):
        """One attempt's statement; what it returns goes to record()."""
        conn.execute("INSERT INTO hapbx_drill.writes (run, id, t_client) VALUES (%s, %s, %s)", (self.run_id, i, t))

    def record(self, i: int, sent: float, done: float, ok: bool, error: str = "", answer=None):
        self.records.append((i, sent, done, ok, error))

    def run(self) -> None:
        import psycopg
        conn = None
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            t = time.time()
            timer = None
            try:
                if conn is None:
                    conn = psycopg.connect(**self.ctx.dsn(), autocommit=True)
                fd = conn.fileno()
                timer = threading.Timer(5.0, _shutdown, (fd,))
                timer.start()
                answer = self.insert(conn, i, t)
                timer.cancel()
                self.record(i, t, time.time(), True, answer=answer)
            except Exception as exc:  # every failure is a not-acknowledged attempt
                if timer:
                    timer.cancel()
                self.record(i, t, time.time(), False, str(exc).strip().splitlines()[0][:100]
                            if str(exc).strip() else type(exc).__name__)
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                self.stop_ev.wait(0.05)
            d = t + self.period - time.time()
            if d > 0:
                self.stop_ev.wait(d)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _shutdown(fd: int) -> None:
    try:
        s = socket.socket(fileno=os.dup(fd))
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    except OSError:
        pass


class OptionsProbe(threading.Thread):
    """SIP OPTIONS to the VIP every 100 ms over UDP; records (seq, sent, answered or None)."""

    def __init__(self, ctx: LabContext, period: float = 0.1):
        super().__init__(daemon=True)
        self.ctx, self.period = ctx, period
        self.stop_ev = threading.Event()
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ctx.host, 0))
        self.sock.settimeout(0.2)
        self.rx = threading.Thread(target=self._recv, daemon=True)

    def _recv(self) -> None:
        while not self.stop_ev.is_set():
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, OSError):
                continue
            m = re.search(rb"Call-ID:\s*drill-o-(\d+)@", data, re.I)
            if m and data.startswith(b"SIP/2.0 "):
                self.answered.setdefault(int(m.group(1)), time.time())

    def run(self) -> None:
        self.rx.start()
        c, port = self.ctx, self.sock.getsockname()[1]
        seq = 0
        nxt = time.time()
        while not self.stop_ev.is_set():
            seq += 1
            msg = options_request(c.vip, c.sip_port, (c.host, port), f"drill-o-{seq}")
            self.sent[seq] = time.time()
            try:
                self.sock.sendto(msg, (c.vip, c.sip_port))
            except OSError:
                pass
            nxt += self.period
            self.stop_ev.wait(max(0.0, nxt - time.time()))
        self.rx.join(1)
        self.sock.close()

    def records(self, within: float = 1.0) -> list[tuple]:
        """(sent, done, ok): answered within `within` seconds."""
        out = []
        for s, t in sorted(self.sent.items()):
            a = self.answered.get(s)
            ok = a is not None and a - t <= within
            out.append((t, a if ok else t + within, ok))
        return out


class RegisterProbe(threading.Thread):
    """A digest-authenticated REGISTER through the VIP every 0.5 s (user 1903); each attempt
    (challenge + authenticated request) must end with 200 within 1 s."""

    def __init__(self, ctx: LabContext, user: str, password: str, period: float = 0.5):
        super().__init__(daemon=True)
        self.ctx, self.user, self.password, self.period = ctx, user, password, period
        self.stop_ev = threading.Event()
        self.out: list[tuple] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ctx.host, 0))

    def _wait(self, call_id: str, cseq: int, deadline: float) -> bytes | None:
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, OSError):
                return None
            if (call_id.encode() in data and re.search(rb"CSeq:\s*%d REGISTER" % cseq, data, re.I)
                    and data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1")):
                return data

    def attempt(self, n: int) -> bool:
        c, port = self.ctx, self.sock.getsockname()[1]
        call_id = f"drill-r-{n}-{secrets.token_hex(4)}@{c.host}"
        uri = f"sip:{c.vip}:{c.sip_port}"
        deadline = time.time() + 1.0

        def req(cseq: int, auth: str = "") -> bytes:
            return (f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {c.host}:{port};branch=z9hG4bK-dr{n}x{cseq};rport\r\n"
                    f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@{c.vip}>;tag=r{n}\r\nTo: <sip:{self.user}@{c.vip}>\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sip:{self.user}@{c.host}:{port}>\r\nExpires: 60\r\n{auth}Content-Length: 0\r\n\r\n").encode()
        try:
            self.sock.sendto(req(1), (c.vip, c.sip_port))
            r = self._wait(call_id, 1, deadline)
            if r is None or not r.startswith(b"SIP/2.0 401"):
                return False
            h = re.search(rb"WWW-Authenticate:\s*Digest\s+(.*)", r, re.I)
            if not h:
                return False
            params = dict((k.decode().lower(), v.decode()) for k, v in
                          re.findall(rb'(\w+)="?([^",\r\n]*)"?', h.group(1)))
            realm, nonce = params.get("realm", ""), params.get("nonce", "")
            ha1 = md5(f"{self.user}:{realm}:{self.password}")
            ha2 = md5(f"REGISTER:{uri}")
            if "auth" in params.get("qop", "").split(","):
                cnonce, nc = secrets.token_hex(8), "00000001"
                resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
                extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
            else:
                resp, extra = md5(f"{ha1}:{nonce}:{ha2}"), ""
            opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
            auth = (f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                    f'uri="{uri}", response="{resp}", algorithm=MD5{extra}{opaque}\r\n')
            self.sock.sendto(req(2, auth), (c.vip, c.sip_port))
            r = self._wait(call_id, 2, deadline)
            return r is not None and r.startswith(b"SIP/2.0 200")
        except OSError:
            return False

    def run(self) -> None:
        n = 0
        nxt = time.time()
        while not self.stop_ev.is_set():
            n += 1
            t = time.time()
            ok = self.attempt(n)
            self.out.append((t, time.time(), ok))
            nxt += self.period
            self.stop_ev.wait(max(0.0, nxt - time.time()))
        self.sock.close()


# ------------------------------------------------------------------ the phone registered before


class Phone:
    """Registered through the VIP before the fault; ``replicated`` is how long its contact took to
    reach the peer's Kamailio too (DMQ), None if not within 15 s: the peer answers for it after the fault."""

    def __init__(self, ctx: LabContext, peer: str):
        self.ctx = ctx
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ctx.host, 0))
            self.port = s.getsockname()[1]
        # contacts of earlier runs (another port each) would hit the registrar's contact limit
        for node in ctx.names:
            ctx.sh(node, f"kamcmd -s unix:/run/kamailio/kamailio_ctl ul.rm location s:{USERS[1]} >/dev/null 2>&1; true",
                   timeout=20, check=False)
        target = f"{ctx.vip}:{ctx.sip_port}"
        r = sipp.run(sipp.scenario("register.xml"), target, ctx.host, port=self.port,
                     keys={"domain": ctx.vip, "user": USERS[1]}, auth=(USERS[1], ctx.passwords[USERS[1]]), timeout=10)
        if not r.ok:
            raise DrillError(f"the phone {USERS[1]} could not register through the VIP before the fault: "
                             f"{r.stdout[-600:]} {r.errors[-600:]}")
        self.uas = sipp.Uas(ctx.host, self.port)
        self.replicated: float | None = None
        t = time.monotonic()
        while time.monotonic() - t < 15:
            out = ctx.sh(peer, f"kamcmd -s unix:/run/kamailio/kamailio_ctl ul.lookup location s:{USERS[1]} 2>&1",
                         timeout=10, check=False)
            if f":{self.port}" in out:
                self.replicated = time.monotonic() - t
                break
            time.sleep(0.2)

    def called(self) -> tuple[bool, str]:
        ctx = self.ctx
        before = self.uas.invites()
        r = sipp.run(sipp.scenario("call.xml"), f"{ctx.vip}:{ctx.sip_port}", ctx.host, service=USERS[1],
                     keys={"domain": ctx.vip, "user": USERS[0]}, auth=(USERS[0], ctx.passwords[USERS[0]]),
                     extra=("-d", "300"), timeout=10)
        got = self.uas.invites() > before
        return (r.ok and got), ("" if r.ok and got else f"call ok={r.ok} invite at phone={got}")

    def stop(self) -> None:
        self.uas.stop()


# ------------------------------------------------------------------ the drills: one table


@dataclass
class Scene:
    """The run a fault or a heal acts in."""
    ctx: LabContext
    owner: str        # the VIP owner at the fault: the node the drill breaks
    peer: str
    run_id: str
    notes: list[str]  # what the run says about itself (in the results)
    #: what a node needs again once it booted (its boot reloaded the firewall, its sampler died with it);
    #: None: the failover drills' (rearm below: PostgreSQL access for the writer, the sampler)
    rearm: Callable[["Scene", str], None] | None = None


def rearm(s: Scene, node: str) -> None:
    """The failover drills' access rule and sampler back on a node that booted."""
    ensure_access(s.ctx, node)
    start_sampler(s.ctx, node, s.run_id)


# What a fault or a heal does; each returns when it acted (seconds since the epoch: the node's clock
# for a command on the node, which is the host's: nspawn shares the kernel).


@dataclass(frozen=True)
class OnOwner:
    """A command on the VIP owner."""
    command: str

    def __call__(self, s: Scene) -> float:
        return node_now(s.ctx, s.owner, self.command)


@dataclass(frozen=True)
class PowerOff:
    """The VIP owner's node stopped at once (nspawn: its machine terminated)."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        machinery.stop_node(s.ctx.spec, s.owner, hard=True, progress=lambda _: None)
        return t


@dataclass(frozen=True)
class PowerOn:
    """The node started again; what the drill put on it put back (Scene.rearm)."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        machinery.start_node(s.ctx.spec, s.owner, progress=lambda _: None)
        (s.rearm or rearm)(s, s.owner)
        s.notes.append(f"{s.owner} booted in {time.time() - t:.1f} s")
        return t


@dataclass(frozen=True)
class Cut:
    """Frames dropped on the lab bridge: "link" between the two nodes (both still reach the gateway
    and the witness), or "owner": everything to and from the VIP owner."""
    what: str

    def __call__(self, s: Scene) -> float:
        a = bridge_port(s.ctx, s.owner)
        if self.what == "link":
            b = bridge_port(s.ctx, s.peer)
            rules = [f'forward:iifname "{a}" oifname "{b}" drop', f'forward:iifname "{b}" oifname "{a}" drop']
        else:
            rules = [f'forward:iifname "{a}" drop', f'forward:oifname "{a}" drop',
                     f'input:iifname "{a}" drop', f'output:oifname "{a}" drop']
        t = time.time()
        host_cut(s.ctx, rules)
        return t


@dataclass(frozen=True)
class Restore:
    """The bridge cut removed."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        host_cut(s.ctx, None)
        return t


@dataclass(frozen=True)
class Nothing:
    """Nothing done: the cluster heals itself."""

    def __call__(self, s: Scene) -> float:
        return time.time()


# ---- actions of drills 8-12 (issue 24): the witness, the etcd leader, Kamailio, a flapping link, both nodes


def witness_name(ctx: LabContext) -> str:
    if ctx.cluster.witness is None:
        raise DrillError("this lab has no witness: drills 8 and 9 need the etcd quorum's third member")
    return ctx.cluster.witness.name


def etcd_status_command() -> str:
    """Shell on a PBX node: `etcdctl endpoint status` of every member as JSON, with the node's own
    etcdctl environment (the HA core's: endpoints and TLS files in ha.env, the user in ha-secrets.env,
    never argv). A member that does not answer is missing from the JSON (and etcdctl exits non-zero)."""
    return (f"set -a; . {HA_ENV}; . {HA_SECRETS_ENV}; set +a; ETCDCTL_API=3 etcdctl --endpoints=\"$ETCD_ENDPOINTS\" "
            "--dial-timeout=1s --command-timeout=2s endpoint status -w json 2>/dev/null")


def parse_etcd_status(text: str, addresses: dict[str, str]) -> tuple[str | None, list[str]]:
    """(the member the answering members call their raft leader, None if they do not agree or it is
    not one of them; the members that answered), from `etcdctl endpoint status -w json`. addresses:
    member name -> address (the endpoints are https://address:port)."""
    try:
        rows = json.loads(text) if text.strip() else []
    except ValueError:
        return None, []
    by_address = {a: n for n, a in addresses.items()}
    ids: dict[int, str] = {}
    leaders: set[int] = set()
    answered: list[str] = []
    for row in rows:
        host = re.sub(r"^\w+://", "", row.get("Endpoint", "")).rsplit(":", 1)[0]
        st = row.get("Status") or {}
        name = by_address.get(host)
        if name is None or "header" not in st:
            continue
        ids[int(st["header"]["member_id"])] = name
        leaders.add(int(st.get("leader", 0)))
        answered.append(name)
    leader = ids.get(leaders.pop()) if len(leaders) == 1 else None
    return leader, answered


def etcd_members(ctx: LabContext) -> dict[str, str]:
    """Every etcd member's name -> address (both PBX nodes, the witness)."""
    out = dict(ctx.addresses)
    if ctx.cluster.witness is not None:
        out[ctx.cluster.witness.name] = ctx.cluster.witness.address
    return out


def etcd_leader(ctx: LabContext, via: str) -> tuple[str | None, list[str]]:
    """(the etcd raft leader, the members that answered), asked from the PBX node `via`."""
    out = ctx.sh(via, etcd_status_command(), timeout=15, check=False)
    return parse_etcd_status(out, etcd_members(ctx))


def wait_etcd_whole(s: "Scene", since: float, what: str, seconds: float = 90) -> None:
    """Until every member answers and all name one leader (bounded); notes how long after `since`."""
    want = set(etcd_members(s.ctx))
    deadline = time.monotonic() + seconds
    leader, answered = None, []
    while time.monotonic() < deadline:
        leader, answered = etcd_leader(s.ctx, s.peer)
        if leader and set(answered) == want:
            s.notes.append(f"{what}: all {len(want)} etcd members answer, leader {leader}, "
                           f"{time.time() - since:.1f} s after it")
            return
        time.sleep(0.5)
    raise DrillError(f"{what}: etcd not whole {seconds:.0f} s later (answered: {answered or 'none'}, leader {leader})")


def role_of(s: "Scene", node: str) -> str:
    return {s.owner: "the VIP owner", s.peer: "the peer (standby)"}.get(node, "the witness")


@dataclass(frozen=True)
class WitnessOff:
    """The witness stopped at once (nspawn: its machine terminated): one of three etcd members gone."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        machinery.stop_node(s.ctx.spec, witness_name(s.ctx), hard=True, progress=lambda _: None)
        return t


@dataclass(frozen=True)
class WitnessOn:
    """The witness started again; returns when its etcd member is back in the quorum (bounded)."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        machinery.start_node(s.ctx.spec, witness_name(s.ctx), progress=lambda _: None)
        s.notes.append(f"{witness_name(s.ctx)} booted in {time.time() - t:.1f} s")
        wait_etcd_whole(s, t, "witness power-on")
        return t


@dataclass(frozen=True)
class KillEtcdLeader:
    """SIGKILL of the etcd member that is the raft leader now (on whichever node: the witness, the VIP
    owner or the peer); its unit restarts it (Restart=always, 2 s). Notes which node it was."""

    def __call__(self, s: Scene) -> float:
        leader, answered = etcd_leader(s.ctx, s.peer)
        if leader is None:
            raise DrillError(f"no etcd leader agreed on before the fault (members answering: {answered})")
        s.notes.append(f"etcd leader killed: {leader} ({role_of(s, leader)})")
        return node_now(s.ctx, leader, "systemctl kill -s KILL etcd.service")


@dataclass(frozen=True)
class EtcdWhole:
    """Nothing done (systemd restarts etcd); returns once all members answer with one leader (noted)."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        wait_etcd_whole(s, t, "at the heal")
        return t


def flap_seed(run_id: str) -> int:
    """The flapping schedule's seed: drill and run number (d11r2-... -> 11002), so run N of a drill
    always flaps the same way."""
    m = re.match(r"d(\d+)r(\d+)-", run_id)
    return int(m.group(1)) * 1000 + int(m.group(2)) if m else 0


def flap_schedule(seed: int, duration: float, low: float = 2.0, high: float = 3.0) -> list[float]:
    """Seconds after the first cut at which the link toggles: 0 (cut), then restore, cut, ... each
    low-high seconds after the last (random.Random(seed)); all before `duration`, when the heal
    restores it for good."""
    import random
    rnd = random.Random(seed)
    out = [0.0]
    while True:
        nxt = out[-1] + rnd.uniform(low, high)
        if nxt >= duration:
            return out
        out.append(nxt)


_FLAPPERS: dict[str, "_Flapper"] = {}   # run_id -> the flapping of that run (Flap starts it, Unflap ends it)


class _Flapper(threading.Thread):
    """Cuts and restores the link at t0 + each offset; restores it when stopped or past the schedule
    (a run that failed midway never leaves the link cut)."""

    def __init__(self, ctx: LabContext, rules: list[str], offsets: list[float], t0: float, end: float):
        super().__init__(daemon=True)
        self.ctx, self.rules, self.offsets, self.t0, self.end = ctx, rules, offsets, t0, end
        self.stop_ev = threading.Event()
        self.toggles = 0

    def run(self) -> None:
        try:
            for i, off in enumerate(self.offsets):
                if self.stop_ev.wait(max(0.0, self.t0 + off - time.time())):
                    break
                host_cut(self.ctx, self.rules if i % 2 == 0 else None)
                self.toggles += 1
            self.stop_ev.wait(max(0.0, self.end - time.time()))
        finally:
            host_cut(self.ctx, None)


@dataclass(frozen=True)
class Flap:
    """The link between the nodes (as Cut("link")) cut and restored every low-high s (seeded per run,
    see flap_seed) for `duration` s; Unflap ends it."""
    duration: float
    low: float = 2.0
    high: float = 3.0

    def __call__(self, s: Scene) -> float:
        a, b = bridge_port(s.ctx, s.owner), bridge_port(s.ctx, s.peer)
        rules = [f'forward:iifname "{a}" oifname "{b}" drop', f'forward:iifname "{b}" oifname "{a}" drop']
        seed = flap_seed(s.run_id)
        offsets = flap_schedule(seed, self.duration, self.low, self.high)
        s.notes.append(f"flapping seed {seed}: {len(offsets)} toggles, link cut at "
                       + ", ".join(f"+{o:.1f}" for o in offsets[::2]) + " s")
        t0 = time.time()
        f = _Flapper(s.ctx, rules, offsets, t0, t0 + self.duration + 5.0)
        _FLAPPERS[s.run_id] = f
        f.start()
        return t0


@dataclass(frozen=True)
class Unflap:
    """The flapping stopped and the link restored for good; then (noted) how long until the cluster
    is healthy (lab health: one leading owner, synchronous streaming standby, both DMQ peers active)."""

    def __call__(self, s: Scene) -> float:
        f = _FLAPPERS.pop(s.run_id, None)
        if f is not None:
            f.stop_ev.set()
            f.join(30)
        t = time.time()
        host_cut(s.ctx, None)
        s.notes.append(f"link toggled {f.toggles if f else 0} times")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owner, problems = health(s.ctx)
            if owner and not problems:
                s.notes.append(f"{HEALTHY_NOTE} {time.time() - t:.1f} s")
                break
            time.sleep(0.3)
        else:
            s.notes.append(f"not healthy 60 s after the last restore: {'; '.join(problems)}")
        return t


def _parallel(fn, nodes) -> None:
    """fn(node) on every node at once; the first error raised after all ended."""
    errors: list[BaseException] = []

    def one(n):
        try:
            fn(n)
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            errors.append(exc)
    ts = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class BothOff:
    """Both PBX nodes stopped at once (nspawn machines terminated together); the witness stays."""

    def __call__(self, s: Scene) -> float:
        t = time.time()
        _parallel(lambda n: machinery.stop_node(s.ctx.spec, n, hard=True, progress=lambda _: None), s.ctx.names)
        return t


@dataclass(frozen=True)
class BothOn:
    """Both PBX nodes started again together; the drill's access rule and sampler back on each."""

    def __call__(self, s: Scene) -> float:
        t = time.time()

        def boot(n: str) -> None:
            machinery.start_node(s.ctx.spec, n, progress=lambda _: None)
            s.notes.append(f"{n} booted in {time.time() - t:.1f} s")
            (s.rearm or rearm)(s, n)
        _parallel(boot, s.ctx.names)
        return t


#: the targets a drill can be held to (issue 24's: no visible outage; lab/drill_report.py checks
#: them); every drill is also held to: never two writable primaries, the failed node back as a
#: streaming standby, the phone called
SIP_1S = "SIP on the VIP answering within 1 s of the fault"
WRITE_3S = "writes through the VIP accepted within 3 s"
WRITE_5S = "writes through the VIP accepted within 5 s"
VIP_05S = "two VIP owners never longer than 0.5 s"
NO_LOSS = "zero acknowledged rows lost"
#: drills 8 and 9 (issue 24): no probe fails or stalls during the whole run (OPTIONS 0.35 s, writes
#: 0.5 s), the VIP never moves and never has two owners
NOTHING = "nothing interrupted (SIP, writes, VIP owner)"
#: drill 11: the failed node streaming again and the whole cluster healthy (health(): one leading
#: owner, a synchronous streaming standby, DMQ both ways) within 10 s of the fault's end
HEALTHY_10S = "the cluster healthy within 10 s after the fault ends"
#: drill 12: SIP answers and writes are accepted again after both nodes power on, nobody helping
BACK_ALONE = "the cluster back by itself after power-on"
#: the note Unflap leaves: seconds from the last restore until the cluster was healthy
HEALTHY_NOTE = "cluster healthy after the last restore:"


@dataclass(frozen=True)
class Drill:
    number: int
    name: str                         # what it breaks (the report's title)
    fault: Callable[[Scene], float]   # what breaks it, on the VIP owner (an action above)
    hold: float                       # seconds the fault lasts before the heal (drill 7: the freeze itself)
    heal: Callable[[Scene], float]    # what heals it (an action above)
    healed_by: str                    # the heal in the report's words
    targets: frozenset[str]           # which of issue 9's targets above it must meet
    why: str = ""                     # why it behaves as it does, printed under it in the report
    #: the phone registered before the fault is called during it (impossible when no PBX node runs)
    phone_call: bool = True


ALL_TARGETS = frozenset({SIP_1S, WRITE_3S, VIP_05S, NO_LOSS})

DRILLS = {d.number: d for d in (
    Drill(1, "stop keepalived on the VIP owner",
          OnOwner("systemctl stop keepalived"), 10.0,
          OnOwner("systemctl start keepalived"), "systemctl start keepalived", ALL_TARGETS),
    Drill(2, "power off the VIP owner node",
          PowerOff(), 10.0, PowerOn(), "node started again", ALL_TARGETS,
          why="A powered-off leader cannot release its lease: the peer waits for it to expire in etcd (the lab's "
              "lease is 3 s, renewed every 0.5 s, so 2.5-3 s after the fault), takes it on its next tick, then "
              "promotes (peer check bounded at 0.3 s, pg_promote ~0.1 s, synchronous replication relaxed at once). "
              "Writes come back at TTL + ~0.5 s. SIP does not wait for the lease: the VIP moves in 0.3-0.5 s and "
              "the standby's Kamailio serves from its replica. Target (writes within 3 s) missed with the lab's "
              "3 s lease, which it keeps because its 2 cores also run the test suite (Pulumi.lab.yaml); with the "
              "production lease (2 s, renewed every 0.25 s) on the same lab, quiet: writes 2.4-3.9 s, median 2.7 s "
              "(reports/failover-lease-2s.md). Next step: the acquire-and-promote path after expiry (~0.6 s) "
              "measured step by step; the lease itself cannot be shortened safely without faster renewals."),
    Drill(3, "kill PostgreSQL (SIGKILL) on the primary",
          OnOwner(". /etc/hapbx/ha.env; kill -KILL $(head -1 $PG_DATA/postmaster.pid)"), 10.0,
          Nothing(), "none (the leader daemon rejoins it)", ALL_TARGETS),
    Drill(4, "cut the link between the nodes (both still reach the gateway and the witness)",
          Cut("link"), 20.0, Restore(), "link restored", frozenset({SIP_1S, WRITE_5S, VIP_05S, NO_LOSS}),
          why="No adverts cross the cut: the non-leader's keepalived claims the VIP after about 0.35 s and its leader "
              "daemon records the leader's beat (written to etcd every 250 ms while it holds the lease) and the "
              "claim. The leader still renews through the witness, so its next beat changes: the non-leader goes "
              "FAULT at once (two owners for about one beat), and the leader, reading the claim with its beat, "
              "sends gratuitous ARPs so the clients that followed the claim come back. The leader's commits wait "
              "for the cut synchronous standby until it marks it stale and relaxes (no reply for 2 s, then 1 s: "
              "ha.syncReplyMaxMs, ha.syncRelaxAfterSeconds), hence writes at 3.5-4.5 s; nothing acknowledged is "
              "lost, never a second primary. Before the beat the non-leader kept the VIP for YIELD_AFTER (9 s)."),
    Drill(5, "isolate the VIP owner completely",
          Cut("owner"), 15.0, Restore(), "network restored", ALL_TARGETS,
          why="The isolated owner cannot be told anything: it drops the VIP itself when its reachability watcher "
              "has heard neither gateway nor witness for ha.reachLostAfterMs (800 ms; pings every 100 ms), while "
              "the peer takes the VIP after 0.3-0.5 s: the overlap is the difference. Nobody can reach the "
              "isolated copy meanwhile, so clients see one owner. Writes wait for the isolated leader's lease to "
              "expire, as in drill 2: missed (3.4-3.9 s) with the lab's 3 s lease; with the production lease on "
              "the same lab 2.5-3.0 s, median 2.8 s (reports/failover-lease-2s.md)."),
    Drill(6, "SIGKILL keepalived on the VIP owner",
          OnOwner("systemctl kill -s KILL keepalived.service"), 10.0,
          Nothing(), "none (systemd restarts keepalived)", ALL_TARGETS),
    Drill(7, "freeze the VIP owner's keepalived (SIGSTOP) for 10 s, then SIGCONT",
          OnOwner("systemctl kill -s STOP keepalived.service"), 10.0,
          OnOwner("systemctl kill -s CONT keepalived.service"), "SIGCONT", ALL_TARGETS,
          why="The frozen keepalived sends no adverts but keeps its VIP; the peer claims the VIP too and gives it back "
              "on the leader's next beat (as in drill 4), and the leader's gratuitous ARPs bring the clients back "
              "(its keepalived cannot: frozen). The leader keeps lease and writes: once its keepalived heartbeat is "
              "3 s old its beat says hung, which keeps the peer yielded; nothing is killed, nothing fails over. At "
              "SIGCONT keepalived resumes as MASTER. Its VRRP process runs realtime (max_auto_priority): with "
              "keepalived's 10 ms RLIMIT_RTTIME it was once SIGKILLed on resuming, respawned BACKUP and dropped the "
              "VIP (vrrp_rlimit_rttime is now 1 s); the leader's beat then makes the peer give the VIP back too. "
              "Before the beat: two owners ~3 s, then a resign and a failover."),
    Drill(8, "power off the witness",
          WitnessOff(), 15.0, WitnessOn(), "witness started again (its etcd member back in the quorum)",
          frozenset({NOTHING, NO_LOSS}),
          why="The witness is one of three etcd members: without it the two PBX members are still a quorum, so "
              "the lease holder keeps renewing and nothing else depends on the witness while the gateway "
              "answers the reachability watcher. Measured (one run): no OPTIONS, REGISTER or write "
              "interruption, the VIP never moved, the leader daemons logged nothing. The witness was the etcd "
              "raft leader: the PBX members elected pbx2 0.4 s after the power-off (etcd's journal, election "
              "timeout 500 ms). Power-on: the witness booted in 1.1 s and all three members answered with one "
              "leader 1.5 s after it."),
    Drill(9, "SIGKILL the etcd member that is the raft leader (witness, VIP owner or peer)",
          KillEtcdLeader(), 10.0, EtcdWhole(), "none (systemd restarts etcd; all members answer again)",
          frozenset({NOTHING, NO_LOSS}),
          why="The two other members elect a new raft leader after the election timeout (500 ms) and systemd "
              "restarts the killed member 2 s later (Restart=always, RestartSec 2 s); it rejoins as a follower. "
              "The lease holder renews every 0.5 s a 3 s lease and fences 0.5 s before it expires, so one "
              "election fits: no renewal failure was logged and nothing was interrupted. Measured once, with the "
              "raft leader on the peer (pbx2, killed at 06:50:50.18; pbx1 leader at 06:50:50.66; all three members "
              "answered with one leader at the heal, 10 s after the kill); a leader on the VIP owner or on the "
              "witness is not measured here (the run notes say where it was)."),
    Drill(10, "SIGKILL Kamailio on the VIP owner",
          OnOwner("systemctl kill -s KILL kamailio.service"), 15.0,
          Nothing(), "none (systemd restarts Kamailio, RestartSec 10 s)", ALL_TARGETS,
          why="kamailio.service's drop-in runs sip-down after any stop that is not an apply's planned restart: it "
              "writes keepalived's `sip` track file, keepalived goes FAULT at once (no wait for two failed "
              "1 s OPTIONS probes: 1.6 s before) and the peer, hearing the priority-0 advert, takes the VIP and "
              "answers SIP from its own Kamailio. FAULT makes the leader resign (fast shutdown) and the peer "
              "promotes: writes come back after the hand-over, as in drill 1. systemd restarts Kamailio after "
              "RestartSec (10 s, for DMQ's sake); sip-down start clears the track file and the node stays BACKUP."),
    Drill(11, "a flapping link between the nodes: cut and restored every 2-3 s for 60 s",
          Flap(60.0), 60.0, Unflap(), "flapping stopped, link restored", frozenset({HEALTHY_10S, NO_LOSS}),
          why="Every cut is drill 4 (the non-leader claims the VIP, gives it back on the leader's next beat) and every "
              "restore lets adverts through again. Synchronous replication: the first cut blocks commits until the "
              "leader relaxes (3 s); after that the leader turns it on again only once the standby has streamed "
              "2 x (syncReplyMaxMs + syncRelaxAfterSeconds) = 6 s, which a 2-3 s flap never gives, so writes go on "
              "(the standby stays marked stale: never promoted on its data) and synchronous replication is back "
              "6 s after the flapping stops. The HA core asks one etcd member at a time, its own first, then the "
              "witness, the peer's last, and moves to the next after a failed call: a member cut from the raft "
              "leader held renewals until they timed out and the holder fenced itself with a quorum alive (first "
              "run, before that change)."),
    Drill(12, "power off both PBX nodes together, on again 10 s later",
          BothOff(), 10.0, BothOn(), "both nodes started together", frozenset({BACK_ALONE, NO_LOSS}),
          phone_call=False,
          why="The witness alone is no etcd quorum; the lease expires while both nodes are off (terminating both "
              "took 1.6 s, so power-on came at +11.6 s). They booted together in 6.8 s (pbx2) and 8.7 s (pbx1) on "
              "the 2-core host. pbx1, the primary before the fault, came up with a primary PostgreSQL; its leader "
              "daemon took the lease 0.35 s after it started ('promote: local postgres is primary', 'peer "
              "postgres is standby', 'postgres already primary') while pbx2's daemon, up 1 s earlier, took "
              "nothing and its standby streamed again. Measured: SIP answered 8.4 s and writes were accepted "
              "9.9 s after the power-on, pbx2 streaming 9.3 s after it, nothing acknowledged lost (a hard stop "
              "of an nspawn node keeps what reached the host's page cache: not a test of fsync on a real power "
              "loss). The phone would be called 2.5 s before the heal, while both nodes are off: this drill is "
              "not held to that target (phone_call=False)."),
)}

#: issue 24's drill 13 (not in DRILLS): why it cannot run on this lab, and what would make it possible
DRILL_13_BLOCKED = (
    "13. PostgreSQL's disk full on the primary (expected: writes refused cleanly, no failover loop, writes "
    "back once space is freed) is not a drill of this lab: it has no safe way to fill PostgreSQL's "
    "filesystem. A node's disk is an overlay whose upper dir is a directory of the host's own root "
    "filesystem (lab/machine.py: <state_dir>/nodes/<name>/upper; on the lab host the nodes' "
    "/var/lib/postgresql/15/main is on 'overlay 252G', the host's ext4 /, 71 GB free): filling it fills the "
    "host, every other lab and job on it included. The other ways are unsafe or measure something else: a "
    "small filesystem (tmpfs, loop image) mounted over pg_wal or the data directory while PostgreSQL runs "
    "hides the segments it has open and the WAL a standby or a crash recovery needs, and a tmpfs loses it "
    "all at the next power-off (drill 12); mounting one under the overlay's upper dir from the host changes "
    "an overlay layer in use (undefined behaviour in the kernel's overlayfs documentation); a tablespace on "
    "a small tmpfs for the drill's table fills a table's files, never pg_wal (there a WAL file that cannot "
    "be written is a PANIC, not a refused INSERT), and the standby must replay its creation on a directory "
    "of its own; RLIMIT_FSIZE (EFBIG) or an LD_PRELOAD returning ENOSPC means restarting the primary's "
    "PostgreSQL with it (a failover by itself) and is not a full disk. What would make it possible: the "
    "lab giving each node's PostgreSQL data directory a filesystem of its own and of a fixed size (e.g. an "
    "ext4 image per node, bind-mounted by systemd-nspawn as node.shared is in lab/machine.py), which the "
    "drill fills with fallocate and frees again.")


# ------------------------------------------------------------------ one run


@dataclass
class RunData:
    drill: int
    run: int
    run_id: str
    failed: str           # the VIP owner at the fault
    peer: str
    t0: float             # the fault (node clock = host clock: nspawn shares the kernel)
    t_heal: float
    t_end: float
    samples: dict          # node -> [(t, vip, pg, redis, hold)]
    writes: list           # (id, sent, done, ok, err)
    options: list          # (sent, done, ok)
    registers: list        # (sent, done, ok)
    lost: list             # acknowledged ids not in the table
    unacked_present: int
    phone_ok: bool
    phone_note: str
    rejoin_node: str
    rejoin_after_heal: float | None
    final_owner: str
    notes: list


def node_now(ctx: LabContext, node: str, action: str, timeout: float = 30) -> float:
    """Run an action on a node; returns the node's clock just before it."""
    out = ctx.sh(node, f"date +%s.%N; {action}", timeout=timeout)
    return float(out.split()[0])


def wait_streaming(ctx: LabContext, node: str, since: float, seconds: float) -> float | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        st = status(ctx, node)
        if st.get("postgres") == "standby" and st.get("postgres_streaming") == "yes":
            return time.time() - since
        time.sleep(0.3)
    return None


def settle(ctx: LabContext, t_heal: float, what: str) -> tuple[str, float | None, str]:
    """After a heal: one leading primary, the other node a streaming standby again, the cluster
    healthy (wait_healthy); bounded. (the node that rejoined, seconds from the heal until it streamed,
    the VIP owner); DrillError when the cluster does not come back."""
    # the node that must come back: whichever is not the primary now
    deadline = time.monotonic() + 60
    st = {}
    while time.monotonic() < deadline:
        st = both(ctx, lambda x: status(ctx, x))
        prim = [x for x in ctx.names if st[x].get("postgres") == "primary" and st[x].get("daemon_hold") == "1"]
        if len(prim) == 1:
            break
        time.sleep(0.3)
    else:
        raise DrillError(f"{what}: no single leading primary 60 s after the heal: {st}")
    rejoin_node = ctx.peer(prim[0])
    rejoin = wait_streaming(ctx, rejoin_node, t_heal, 180)
    if rejoin is None:
        raise DrillError(f"{what}: {rejoin_node} is not a streaming standby 180 s after the heal "
                         f"(see `journalctl -u hapbx-leader` on it)")
    return rejoin_node, rejoin, wait_healthy(ctx, 120, f"{what}: after the heal")


def run_one(ctx: LabContext, drill: int, n: int) -> RunData:
    d = DRILLS.get(drill)
    if d is None:
        raise DrillError(f"no drill {drill}")
    owner = wait_healthy(ctx, 240, f"drill {drill} run {n}: before the fault")
    peer = ctx.peer(owner)
    run_id = f"d{drill}r{n}-{int(time.time())}"
    notes: list[str] = []
    scene = Scene(ctx, owner, peer, run_id, notes)
    for node in ctx.names:
        start_sampler(ctx, node, run_id)
    phone = Phone(ctx, peer)
    notes.append(f"phone's contact on {peer} after {phone.replicated:.1f} s" if phone.replicated is not None
                 else f"phone's contact not on {peer} within 15 s")
    writer, opts = Writer(ctx, run_id), OptionsProbe(ctx)
    reg = RegisterProbe(ctx, USERS[2], ctx.passwords[USERS[2]])
    for t in (writer, opts, reg):
        t.start()
    try:
        time.sleep(3.0)   # baseline
        ctx.log(f"  drill {drill} run {n}: fault on {owner} ({d.name})")
        t0 = d.fault(scene)
        time.sleep(max(0.0, t0 + d.hold - 2.5 - time.time()))
        phone_ok, phone_note = phone.called()
        time.sleep(max(0.0, t0 + d.hold - time.time()))
        t_heal = d.heal(scene)
        rejoin_node, rejoin, final_owner = settle(ctx, t_heal, f"drill {drill} run {n}")
        time.sleep(1.0)
        t_end = time.time()
    finally:
        for t in (writer, opts, reg):
            t.stop_ev.set()
        for t in (writer, opts, reg):
            t.join(10)
        phone.stop()
        host_cut(ctx, None)
    samples = {}
    for node in ctx.names:
        stop_sampler(ctx, node)
        samples[node] = fetch_samples(ctx, node, run_id)
    lost, present = count_lost(ctx, run_id, writer.records)
    unacked = sum(1 for r in writer.records if not r[3] and r[0] in present)
    return RunData(drill, n, run_id, owner, peer, t0, t_heal, t_end, samples, writer.records, opts.records(),
                   reg.out, lost, unacked, phone_ok, phone_note, rejoin_node, rejoin, final_owner, notes)


def count_lost(ctx: LabContext, run_id: str, records: list) -> tuple[list[int], set[int]]:
    import psycopg
    last = None
    for _ in range(20):
        try:
            with psycopg.connect(**ctx.dsn(), autocommit=True) as conn:
                present = {r[0] for r in conn.execute("SELECT id FROM hapbx_drill.writes WHERE run = %s",
                                                      (run_id,)).fetchall()}
            acked = [r[0] for r in records if r[3]]
            return sorted(i for i in acked if i not in present), present
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    raise DrillError(f"cannot read the drill rows through the VIP: {last}")


# ------------------------------------------------------------------ analysis


def interruptions(records: list[tuple], t0: float, gap: float) -> list[tuple[float, float]]:
    """(start, end) in seconds from t0 of every interruption after t0: failed attempts, or answers
    more than `gap` seconds apart; it starts at the last answer before it (t0 at the latest) and
    ends at the next answer (inf: none came). records: (sent, done, ok) sorted by sent."""
    out: list[tuple[float, float]] = []
    last_ok = None
    failing = False
    for sent, done, ok in records:
        if sent < t0:
            if ok:
                last_ok = done
            continue
        if not ok:
            failing = True
            continue
        start = max(last_ok if last_ok is not None else t0, t0)
        if failing or done - start > gap:
            out.append((start - t0, done - t0))
        failing = False
        last_ok = done
    if failing:
        out.append((max(last_ok if last_ok is not None else t0, t0) - t0, float("inf")))
    return out


#: an interruption that began up to this long after the heal still belongs to the fault's period
FAULT_WINDOW_AFTER_HEAL_S = 5.0
#: no answer for longer than this is an interruption: SIP OPTIONS (every 0.1 s), digest REGISTER
#: (every 0.5 s), writes (every 50 ms)
OPTIONS_GAP_S, REGISTER_GAP_S, WRITES_GAP_S = 0.35, 1.2, 0.5


def fault_outage(records: list[tuple], t0: float, t_heal: float, gap: float) -> tuple[float, list[tuple[float, float]]]:
    """The outage a fault caused: (seconds from t0 until the service answered again after the longest
    interruption that began before the heal + FAULT_WINDOW_AFTER_HEAL_S, the other interruptions of
    that period). The failover report's targets and the lab drill test read this one figure."""
    until = t_heal + FAULT_WINDOW_AFTER_HEAL_S
    ints = interruptions([r for r in records if r[0] <= until], t0, gap)
    longest = max(ints, key=lambda i: i[1] - i[0], default=(0.0, 0.0))
    return longest[1], [i for i in ints if i is not longest]


def interruption_end(records: list[tuple], t0: float, gap: float) -> tuple[float, float]:
    """(seconds from t0 until the service answered again after its last interruption in the run,
    total seconds without an answer)."""
    ints = interruptions(records, t0, gap)
    end = max((e for _, e in ints), default=0.0)
    return end, sum(e - s for s, e in ints if e != float("inf"))


def timeline(rd: RunData, step: float = SAMPLE_S) -> tuple[list[float], dict]:
    """States of both nodes every `step` seconds (relative to the fault). A node without a
    sample in the last 0.35 s (powered off) owns nothing and runs nothing."""
    start = rd.t0 - 3.0
    xs = []
    states = {n: [] for n in rd.samples}
    idx = {n: 0 for n in rd.samples}
    t = start
    while t <= rd.t_end:
        xs.append(t - rd.t0)
        for n, rows in rd.samples.items():
            i = idx[n]
            while i + 1 < len(rows) and rows[i + 1][0] <= t:
                i += 1
            idx[n] = i
            if rows and rows[i][0] <= t and t - rows[i][0] <= 0.35:
                states[n].append(rows[i][1:])
            else:
                states[n].append((0, "off", "off", "-"))
        t += step
    return xs, states


def runs_of(flags: list[bool], xs: list[float]) -> list[tuple[float, float]]:
    out, start = [], None
    for x, f in zip(xs, flags):
        if f and start is None:
            start = x
        if not f and start is not None:
            out.append((start, x))
            start = None
    if start is not None:
        out.append((start, xs[-1] + SAMPLE_S))
    return out


def analyse(rd: RunData) -> dict:
    xs, st = timeline(rd)
    a, b = rd.failed, rd.peer
    both_vip = [st[a][i][0] == 1 and st[b][i][0] == 1 for i in range(len(xs))]
    both_pg = [st[a][i][1] == "primary" and st[b][i][1] == "primary" for i in range(len(xs))]
    both_redis = [st[a][i][2] == "master" and st[b][i][2] == "master" for i in range(len(xs))]
    vip_runs = [r for r in runs_of(both_vip, xs) if r[1] > 0]
    longest = max((e - s for s, e in vip_runs), default=0.0)
    ended = ""
    if vip_runs:
        s, e = max(vip_runs, key=lambda r: r[1] - r[0])
        # who dropped it
        i = min(range(len(xs)), key=lambda k: abs(xs[k] - e))
        dropped = [n for n in (a, b) if st[n][i][0] != 1]
        heal_rel = rd.t_heal - rd.t0
        ended = (f"{'/'.join(dropped) or '?'} dropped the VIP at +{e:.1f} s "
                 f"({'before' if e < heal_rel else 'after'} the heal at +{heal_rel:.1f} s)")
    # the surviving node's promotion: first sample at which the peer is primary
    promoted = next((x for x, s_ in zip(xs, st[b]) if x >= 0 and s_[1] == "primary"), None)
    vip_moved = next((x for x, sa, sb in zip(xs, st[a], st[b]) if x >= 0 and sb[0] == 1 and sa[0] != 1), None)
    rejoin_from_samples = None
    rn = rd.rejoin_node
    for x, s_ in zip(xs, st[rn]):
        if x >= 0 and s_[1] == "streaming":
            if rejoin_from_samples is None:
                rejoin_from_samples = x
        elif x >= 0:
            rejoin_from_samples = None
    wr = [(s, d, ok) for _, s, d, ok, _ in rd.writes]
    sip_end, sip_down = interruption_end(rd.options, rd.t0, OPTIONS_GAP_S)
    sip_fault, sip_stalls = fault_outage(rd.options, rd.t0, rd.t_heal, OPTIONS_GAP_S)
    reg_end, reg_down = interruption_end(rd.registers, rd.t0, REGISTER_GAP_S)
    w_end, w_down = interruption_end(wr, rd.t0, WRITES_GAP_S)
    w_fault, w_stalls = fault_outage(wr, rd.t0, rd.t_heal, WRITES_GAP_S)
    errors: dict[str, int] = {}
    for _, s, _, ok, err in rd.writes:
        if not ok and s >= rd.t0:
            k = re.sub(r"\d+\.\d+\.\d+\.\d+|\"[^\"]*\"", "…", err)[:70]
            errors[k] = errors.get(k, 0) + 1
    return {
        "drill": rd.drill, "run": rd.run, "failed": a, "peer": b, "final_owner": rd.final_owner,
        "sip_s": sip_end, "sip_down_s": sip_down, "register_s": reg_end, "register_down_s": reg_down,
        "write_s": w_end, "write_down_s": w_down,
        # the outage the fault caused (the report's "fault" reading, its targets) and the shorter stalls beside it
        "sip_fault_s": sip_fault, "sip_stalls": sip_stalls, "write_fault_s": w_fault, "write_stalls": w_stalls,
        "two_vip_samples": sum(both_vip), "two_vip_longest_s": longest, "two_vip_ended": ended,
        "two_primary_samples": sum(both_pg), "two_redis_master_samples": sum(both_redis),
        "acked": sum(1 for r in rd.writes if r[3]), "acked_lost": len(rd.lost), "lost_ids": rd.lost[:20],
        "unacked_present": rd.unacked_present, "attempts": len(rd.writes),
        "phone_called": rd.phone_ok, "phone_note": rd.phone_note,
        "vip_moved_s": vip_moved, "peer_primary_s": promoted,
        "rejoin_node": rn,
        # from the samples (100 ms); the ssh poll after the heal (slower, ~0.5 s a status) as a fallback
        "rejoin_after_heal_s": (max(0.0, rejoin_from_samples - (rd.t_heal - rd.t0)) if rejoin_from_samples is not None
                                else rd.rejoin_after_heal),
        "rejoin_polled_after_heal_s": rd.rejoin_after_heal,
        "streaming_from_samples_s": rejoin_from_samples,
        "heal_at_s": rd.t_heal - rd.t0, "write_errors": errors, "notes": rd.notes,
    }


def chart_data(rd: RunData) -> dict:
    xs, st = timeline(rd)
    rel = lambda t: round(t - rd.t0, 3)  # noqa: E731
    return {"x": [round(x, 2) for x in xs],
            "nodes": {n: [[s[0], s[1], s[2], s[3]] for s in v] for n, v in st.items()},
            "options": [[rel(s), ok, rel(d)] for s, d, ok in rd.options],
            "registers": [[rel(s), ok, rel(d)] for s, d, ok in rd.registers],
            "writes": [[rel(s), ok, rel(d)] for _, s, d, ok, _ in rd.writes],
            "heal": rel(rd.t_heal), "failed": rd.failed, "peer": rd.peer}


def summary(values: list) -> tuple:
    v = [x for x in values if x is not None]
    if not v:
        return (None, None, None)
    return (min(v), statistics.median(v), max(v))


def switch_to(ctx: LabContext, node: str) -> None:
    """Planned switchover until `node` owns the VIP and leads: the operator's command
    (`hapbx-ha switchover --to NODE` on the leader, hapbx_node/ha/switchover.py), from a healthy
    cluster to a healthy one; bounded."""
    owner = wait_healthy(ctx, 120, "switchover")
    if owner == node:
        return
    ctx.sh(owner, f"hapbx-ha switchover --to {node} --timeout 60", timeout=150)
    if wait_healthy(ctx, 180, "switchover") != node:
        raise DrillError(f"switchover to {node} did not happen")
