"""Daemons a test session started and left running (tests/conftest.py, ``no_daemon_left_behind``).

A process is the session's when it is one of the daemons the suite runs (``DAEMONS`` by process
name, ``PYTHON_SERVICES`` by a python's command line), it did not exist when the session started,
it lives in this host's PID namespace (a lab container's processes do not: the lab tier tears its
containers down, and ``HAPBX_KEEP_TEST_LAB=1`` keeps them on purpose), and it is traced to this
session by one of:

- ancestry: the pytest process is among its ancestors (a daemon the tests run in the foreground);
- the session's token (``TOKEN`` in the environment, set at session start and inherited by every
  program a test runs) in its own or an ancestor's environment: a daemon that detached itself
  (pg_ctl's postmaster, ``--daemonize yes``) keeps it in /proc/<pid>/environ;
- the token in its private memory, when its /proc/<pid>/environ was overwritten (Redis rewrites
  its argv and environment area for its process title, after copying the environment to its heap).

So a developer's running lab, and another engineer's test session on the same host, are never
counted. A program started with a cleaned environment (``env -i``, systemd-run) is not traced.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

#: the environment variable that marks this session's processes
TOKEN = "HAPBX_TEST_SESSION"
#: daemons the suite starts, by /proc/<pid>/comm (15 characters at most): the data tier, SIP,
#: etcd and the etcdctl calls of the HA core (one outliving its daemon is a leftover too),
#: HA, the FreeSWITCH stand-in (SIPp + its CDR poster post-cdr), softphones, file sync, the
#: harness's sshd and the lab's containers
DAEMONS = frozenset({"postgres", "pg_ctl", "redis-server", "kamailio", "etcd", "etcdctl", "keepalived", "sipp", "post-cdr",
                     "freeswitch", "baresip", "lsyncd", "sshd", "systemd-nspawn"})
#: python services of the node package (the HA leader as the failover rig runs it, and the CDR
#: load generator), by their command line
PYTHON_SERVICES = ("hapbx_cdr", "hapbx_node", "bin/leader", "loadgen.py")
#: memory scanned for the token at most, per process
SCAN_LIMIT = 256 << 20


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int        # clock ticks after boot: (pid, start) names a process even after pid reuse
    name: str
    state: str
    cmdline: str

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}): {self.cmdline or '[' + self.name + ']'}"


def read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2:].split()
    return Proc(pid, int(rest[1]), int(rest[19]), name, rest[0], cmdline)


def processes() -> dict[int, Proc]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            p = read(int(entry))
            if p:
                out[p.pid] = p
    return out


def is_daemon(p: Proc, keep_lab: bool = False) -> bool:
    if keep_lab and p.name == "systemd-nspawn":
        return False
    if p.name in DAEMONS:
        return True
    return p.name.startswith("python") and any(s in p.cmdline for s in PYTHON_SERVICES)


def _ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _environ_has(pid: int, marker: bytes) -> bool | None:
    """Whether the process's environment holds marker; None when it holds nothing at all (unreadable,
    or overwritten by a process title)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return None
    if marker in env.split(b"\0"):
        return True
    return False if env.strip(b"\0") and b"=" in env else None


def _memory_has(pid: int, marker: bytes) -> bool:
    """Whether the process's private writable memory holds marker (its copied environment)."""
    scanned = 0
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                f = line.split()
                if f[1] != "rw-p" or (len(f) > 5 and not f[5].startswith("[heap")):
                    continue  # anonymous or heap only
                start, end = (int(x, 16) for x in f[0].split("-"))
                step, tail = 1 << 20, b""
                for at in range(start, end, step):
                    if scanned >= SCAN_LIMIT:
                        return False
                    try:
                        mem.seek(at)
                        chunk = tail + mem.read(min(step, end - at))
                    except OSError:
                        break
                    if marker in chunk:
                        return True
                    tail, scanned = chunk[-len(marker):], scanned + step
    except OSError:
        pass
    return False


class Session:
    """What ran before the session, and the session's own token."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.ns = _ns("self")
        self.token = f"{self.pid}-{time.time_ns()}"
        self.marker = f"{TOKEN}={self.token}".encode()
        self.before = {(p.pid, p.start) for p in processes().values()}
        os.environ[TOKEN] = self.token

    def ours(self, p: Proc, table: dict[int, Proc]) -> bool:
        seen, q, clobbered = set(), p, False
        while q and q.pid not in seen and q.pid > 1:
            seen.add(q.pid)
            if q.pid == self.pid:
                return True
            has = _environ_has(q.pid, self.marker)
            if has:
                return True
            clobbered = clobbered or (has is None and q is p)
            q = table.get(q.ppid)
        return clobbered and _memory_has(p.pid, self.marker)

    def left_behind(self, keep_lab: bool = False) -> list[Proc]:
        table = processes()
        return sorted((p for p in table.values()
                       if p.state != "Z" and (p.pid, p.start) not in self.before and is_daemon(p, keep_lab)
                       and _ns(p.pid) == self.ns and self.ours(p, table)), key=lambda p: p.pid)

    def check(self, keep_lab: bool = False, grace: float = 10.0) -> list[Proc]:
        """The session's daemons still running after up to ``grace`` seconds (they may be stopping)."""
        deadline = time.monotonic() + grace
        while True:
            left = self.left_behind(keep_lab)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.25)


def inside(root: str) -> list[Proc]:
    """Processes whose root directory is ``root`` (a release root's chroot), running or not reaped."""
    out = []
    for p in processes().values():
        try:
            if os.readlink(f"/proc/{p.pid}/root") == root:
                out.append(p)
        except OSError:
            continue
    return sorted(out, key=lambda p: p.pid)


def report(procs: list[Proc]) -> str:
    """One line per process whose parent is not in the list, with the number of its descendants in it."""
    pids = {p.pid for p in procs}
    by_parent: dict[int, list[Proc]] = {}
    for p in procs:
        by_parent.setdefault(p.ppid, []).append(p)

    def below(pid: int) -> int:
        return sum(1 + below(c.pid) for c in by_parent.get(pid, []))
    lines = []
    for p in procs:
        if p.ppid not in pids:
            n = below(p.pid)
            lines.append("  " + p.describe() + (f" (+{n} child process{'es' if n > 1 else ''})" if n else ""))
    return "\n".join(lines)


def kill(procs: list[Proc]) -> None:
    """SIGKILL each of these processes that is still the same process."""
    import signal
    for p in procs:
        now = read(p.pid)
        if now and now.start == p.start:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
