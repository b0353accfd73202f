"""End-to-end health of a lab cluster, from the host: what `./hapbx lab up` checks last.

SIP OPTIONS on the VIP (sent from the lab bridge's own address), the VIP on exactly one node
that is also the PostgreSQL primary and Redis master, PostgreSQL streaming to the peer (lag
reported), Redis replicating, every etcd member healthy. Also an OPTIONS prober that measures
the longest time the VIP did not answer (used by the rolling-change test).

Traffic goes only to the lab's own node and VIP addresses on its own bridge.
"""
from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from components.render import etcd
from components.render import redis as redis_render
from hapbx_node import layout
from lab import machinery

STATUS = f"{layout.HA_BIN}/status"
PSQL = "cd / && runuser -u postgres -- psql -X -A -t -q"
REDIS = redis_render.local_cli()   # root's default user, over TLS


def options_request(address: str, port: int, local: tuple[str, int], branch: str) -> bytes:
    return (f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{local[0]}>;tag={branch}\r\nTo: <sip:{address}:{port}>\r\n"
            f"Call-ID: {branch}@hapbx-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def sip_options(address: str, port: int, local_ip: str, timeout: float = 1.0) -> float | None:
    """Seconds until a 200 to one OPTIONS over UDP, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((local_ip, 0))
        s.settimeout(timeout)
        branch = secrets.token_hex(8)
        started = time.monotonic()
        s.sendto(options_request(address, port, s.getsockname(), branch), (address, port))
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                return None
            if data.startswith(b"SIP/2.0 200") and branch.encode() in data:
                return time.monotonic() - started
        return None


@dataclass
class OptionsProber:
    """OPTIONS to address:port every ``interval`` s from one socket, in a thread; ``gaps()`` gives
    the longest stretch between two answered probes (monotonic clock of this host)."""
    address: str
    port: int
    local_ip: str
    interval: float = 0.02
    sent: dict = field(default_factory=dict)       # branch -> send time
    answered: dict = field(default_factory=dict)   # branch -> send time of the answered probe

    def __post_init__(self):
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.local_ip, 0))
        self._sock.settimeout(0.05)
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)           # the last probes' answers
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()

    def _send(self):
        local = self._sock.getsockname()
        n = 0
        while not self._stop.is_set():
            n += 1
            branch = f"{secrets.token_hex(4)}{n}"
            self.sent[branch] = time.monotonic()
            try:
                self._sock.sendto(options_request(self.address, self.port, local, branch), (self.address, self.port))
            except OSError:
                pass
            self._stop.wait(self.interval)

    def _receive(self):
        while not self._stop.is_set():
            try:
                data, _ = self._sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            if not data.startswith(b"SIP/2.0 200"):
                continue
            for line in data.split(b"\r\n"):
                if line.lower().startswith(b"call-id:"):
                    branch = line.split(b":", 1)[1].strip().split(b"@")[0].decode()
                    if branch in self.sent:
                        self.answered[branch] = self.sent[branch]

    def longest_gap(self) -> tuple[float, float]:
        """(seconds, start): the longest time between two consecutive answered probes' sends."""
        times = sorted(self.answered.values())
        if len(times) < 2:
            return float("inf"), 0.0
        return max((b - a, a) for a, b in zip(times, times[1:]))

    def unanswered(self) -> int:
        return len(self.sent) - len(self.answered)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _sh(spec, node: str, command: str, timeout: float = 20) -> tuple[int, str]:
    try:
        out = machinery.run(spec, node, command, timeout=timeout)
    except Exception as err:  # a node that does not answer is a failed check, not a crash
        return 255, str(err)
    return out.returncode, (out.stdout if out.returncode == 0 else out.stderr).strip()


def status(spec, node: str) -> dict[str, str]:
    rc, out = _sh(spec, node, STATUS)
    return layout.parse_status(out) if rc == 0 else {}


def checks(cluster, spec) -> list[Check]:
    """One pass of every end-to-end check; each says what it saw."""
    out: list[Check] = []
    names = [n.name for n in cluster.nodes]
    st = {n: status(spec, n) for n in names}
    owners = [n for n in names if f" {cluster.vip.address}/" in _sh(spec, n, "ip -4 -o addr show")[1]]
    owner = owners[0] if len(owners) == 1 else None
    if owner:
        s = st[owner]
        leads = (s.get("postgres"), s.get("redis")) == ("primary", "master")
        out.append(Check("VIP on one node, the leader", leads,
                         f"{cluster.vip.address} on {owner} (PostgreSQL {s.get('postgres')}, Redis {s.get('redis')})"))
    else:
        out.append(Check("VIP on one node, the leader", False, f"VIP held by {owners or 'no node'}"))
    rtt = sip_options(cluster.vip.address, cluster.kamailio.sip_port, spec.host_address)
    out.append(Check("SIP OPTIONS on the VIP", rtt is not None,
                     f"200 OK in {rtt * 1000:.1f} ms" if rtt is not None else "no 200 within 1 s"))
    primary = owner or next((n for n in names if st[n].get("postgres") == "primary"), names[0])
    peer = next(n for n in names if n != primary)
    peer_addr = next(n.address for n in cluster.nodes if n.name == peer)
    rc, rows = _sh(spec, primary, f'{PSQL} -d postgres -c "select client_addr, state, '
                                  "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
                                  'coalesce(extract(epoch from replay_lag), 0) from pg_stat_replication"')
    streaming = [r.split("|") for r in rows.splitlines() if rc == 0 and r.count("|") == 3]
    row = next((r for r in streaming if r[0] == peer_addr and r[1] == "streaming"), None)
    out.append(Check("PostgreSQL streaming", row is not None,
                     f"{primary} -> {peer}, lag {row[2]} bytes / {float(row[3]):.3f} s" if row
                     else f"{primary}: no streaming standby {peer_addr} ({rows or 'no rows'})"))
    rc, info = _sh(spec, peer, f"{REDIS} info replication")
    fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line) if rc == 0 else {}
    ok = fields.get("role") == "slave" and fields.get("master_link_status") == "up"
    out.append(Check("Redis replicating", ok,
                     f"{peer} replica of {fields.get('master_host')}, link {fields.get('master_link_status')}, "
                     f"offset {fields.get('slave_repl_offset')}" if fields else f"{peer}: {info[:200]}"))
    if cluster.witness:
        members = [*cluster.nodes, cluster.witness]
        probe = " ; ".join(f"echo {m.name} $(curl -sS --max-time 2 {etcd.CURL_TLS} {url}/health 2>&1)"
                           for m, url in zip(members, etcd.endpoints(cluster)))
        rc, text = _sh(spec, names[0], probe)
        healthy = [line.split()[0] for line in text.splitlines() if '"health":"true"' in line]
        out.append(Check("etcd quorum", rc == 0 and len(healthy) == len(members),
                         f"{len(healthy)}/{len(members)} members healthy ({', '.join(healthy) or 'none'})"))
    return out


def wait_green(cluster, spec, seconds: float = 60, interval: float = 2) -> list[Check]:
    """Check until every check passes or ``seconds`` pass; the last results."""
    deadline = time.monotonic() + seconds
    while True:
        result = checks(cluster, spec)
        if all(c.ok for c in result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
