"""The node's servers as the HA core sees them: each driver observes and acts, none decides.
Every external call is bounded. Parameters come from the env file (settings.load)."""
from __future__ import annotations

import os
import pwd
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Optional

from .clock import mono_ms


def _run(argv: list[str], timeout_s: float, env: dict | None = None, stdin: str | None = None,
         user: str | None = None):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=max(timeout_s, 0.05), env=env, input=stdin,
                           user=user, group=user, extra_groups=[] if user else None, cwd="/" if user else None)
        return p.returncode, p.stdout.strip(), p.stderr.strip()
    except subprocess.TimeoutExpired:
        return 124, "", "Terminated (timeout expired)"
    except OSError as e:
        return 127, "", str(e)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent has stopped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def wait_until(done, limit_ms: int, step_s: float) -> bool:
    """Poll `done()` every step_s until it is true (True) or limit_ms passed (False)."""
    end = mono_ms() + limit_ms
    while not done():
        if mono_ms() >= end:
            return False
        time.sleep(step_s)
    return True


def _wait_gone(pid: int, limit_ms: int) -> bool:
    return wait_until(lambda: not alive(pid), limit_ms, 0.02)


def _signal(*pids: int, sig: int) -> None:
    """Send sig to each pid; one already gone is no error."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class Postgres:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.bin = env["PG_BIN"]
        self.data = env["PG_DATA"]
        self.socket = env["PG_SOCKET"]
        self.port = env["PG_PORT"]
        self.os_user = env["PG_OS_USER"]
        self.fenced_mark = os.path.join(env["HA_LIB_DIR"], "pg-fenced")
        #: libpq's TLS options towards the peer (layout.PG_PEER_SSL on the nodes)
        self.peer_ssl = env.get("PG_PEER_SSL") or ""
        self.peer = (f"host={env['PG_PEER_HOST']} port={env['PG_PEER_PORT']} user={env['PG_PEER_USER']} "
                     f"dbname=postgres connect_timeout={env.get('PG_CONNECT_TIMEOUT') or 2} application_name=hapbx-ha"
                     + (f" {self.peer_ssl}" if self.peer_ssl else ""))
        self.fence_wait_ms = int(env.get("PG_FENCE_WAIT_MS") or 3000)
        self.peer_error = ""      # what the last peer_role() failed with

    # ------------------------------------------------------------ observe
    def pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.data, "postmaster.pid"), encoding="ascii") as fh:
                pid = int(fh.readline().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def standby_configured(self) -> bool:
        return os.path.exists(os.path.join(self.data, "standby.signal"))

    def sql(self, sql: str, timeout_s: float = 5) -> Optional[str]:
        argv = [f"{self.bin}/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket,
                "-p", self.port, "-d", "postgres", "-c", sql]
        # as the server's OS user (peer authentication on the socket); switched directly, not through
        # runuser: no PAM session (and journal lines) per query, every second
        rc, out, _ = _run(argv, timeout_s, user=self.os_user if os.geteuid() == 0 else None)
        return out if rc == 0 else None

    def role(self, timeout_s: float = 5) -> str:
        """primary | standby | down | unresponsive"""
        if not self.running():
            return "down"
        r = self.sql("select pg_is_in_recovery()", timeout_s)
        return {"f": "primary", "t": "standby"}.get(r or "", "unresponsive")

    def streaming(self, timeout_s: float = 5) -> Optional[bool]:
        s = self.sql("select status from pg_stat_wal_receiver", timeout_s)
        return None if s is None else s == "streaming"

    def peer_sql(self, sql: str, timeout_s: float = 5, replication: bool = False) -> tuple[int, str, str]:
        """One statement on the peer's server as PG_PEER_USER (the replication role, granted what
        pg_rewind needs; password from PG_PASSFILE)."""
        conninfo = self.peer + (" replication=true" if replication else "")
        return _run([f"{self.bin}/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
                    timeout_s, env=self._passfile_env())

    def _passfile_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "PGPASSFILE": self.env.get("PG_PASSFILE", "")}

    def peer_role(self, timeout_s: float = 5) -> str:
        """primary | standby | down (refused: host up, server down) | unreachable | error"""
        rc, out, err = self.peer_sql("select pg_is_in_recovery()", timeout_s)
        self.peer_error = " ".join(err.split())
        if rc == 0:
            return {"f": "primary", "t": "standby"}.get(out, "error")
        if any(m in err for m in ("Connection refused", "No such file or directory", "shutting down")):
            return "down"
        if not err or any(m in err for m in ("timeout expired", "No route to host", "Network is unreachable",
                                                "Terminated")):
            return "unreachable"
        return "error"

    def sync_state(self, peer: str, reply_max_ms: int, timeout_s: float) -> Optional[tuple[bool, bool, str]]:
        """(peer streaming and caught up and replied lately, peer synchronous, synchronous_standby_names).
        A cut link leaves the walsender "streaming" until wal_sender_timeout while every commit
        waits: the standby counts only if it replied within SYNC_REPLY_MAX."""
        out = self.sql(
            "select (select count(*) from pg_stat_replication where application_name = '%s' and state = 'streaming'"
            " and pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) < 16777216"
            " and coalesce(reply_time > now() - interval '%d milliseconds', false))"
            " || '|' || (select count(*) from pg_stat_replication where application_name = '%s'"
            " and sync_state in ('sync','quorum')) || '|' || current_setting('synchronous_standby_names')"
            % (peer, reply_max_ms, peer), timeout_s)
        if out is None:
            return None
        streaming, sync, names = out.split("|", 2)
        return int(streaming) > 0, int(sync) > 0, names

    def set_sync_names(self, names: str, timeout_s: float) -> bool:
        quoted = names.replace("'", "''")
        return (self.sql(f"alter system set synchronous_standby_names = '{quoted}'", timeout_s) is not None
                and self.sql("select pg_reload_conf()", timeout_s) is not None)

    def as_pg(self, argv: list[str], timeout_s: float) -> tuple[int, str, str]:
        """A PostgreSQL tool run as the server's OS user, with the replication password file."""
        env = self._passfile_env()
        if os.geteuid() == 0:
            # libpq reads ~/.postgresql/ of $HOME: root's (an operator's `hapbx-ha rejoin` over ssh) is
            # not the server user's to read ("could not open certificate file ... Permission denied")
            env["HOME"] = pwd.getpwnam(self.os_user).pw_dir
        return _run(argv, timeout_s, env=env, user=self.os_user if os.geteuid() == 0 else None)

    def wait_ready(self, limit_ms: int) -> bool:
        return wait_until(lambda: self.sql("select 1", 2) is not None, limit_ms, 0.1)

    def wait_streaming(self, limit_ms: int) -> bool:
        return wait_until(lambda: bool(self.streaming(2)), limit_ms, 0.2)

    # ------------------------------------------------------------ act
    def start(self, log) -> bool:
        """PG_START_CMD (systemctl start through pg-guard on a node). The command may report
        failure for a server that did come up (a stale pid file): that counts as started."""
        rc, out, err = _run(["bash", "-c", self.env["PG_START_CMD"]], float(self.env.get("PG_START_TIMEOUT") or 120))
        if rc == 0:
            return True
        log("WARN", f"start command exit {rc}: {' | '.join((out + chr(10) + err).strip().splitlines())}")
        if self.running() and self.wait_ready(5000):
            log("INFO", "postgres is running anyway")
            return True
        return False

    def clear_fenced(self):
        try:
            os.unlink(self.fenced_mark)
        except FileNotFoundError:
            pass

    def mark_fenced(self):
        os.makedirs(os.path.dirname(self.fenced_mark), exist_ok=True)
        with open(self.fenced_mark, "a"):
            pass

    def fence(self) -> bool:
        """No new commit is acknowledged, now: a running server that is (or may come up as) a
        primary gets SIGQUIT (immediate shutdown), then SIGKILL. A standby is left running. The
        fenced mark keeps pg-guard from starting it as a primary until rejoin or promote."""
        pid = self.pid()
        if pid is None or self.standby_configured():
            return True
        self.mark_fenced()
        _signal(pid, sig=signal.SIGQUIT)
        if _wait_gone(pid, self.fence_wait_ms):
            return True
        _signal(*_children(pid), pid, sig=signal.SIGKILL)
        return _wait_gone(pid, 2000)

    def stop_fast(self, limit_ms: int) -> bool:
        """Orderly stop of a primary (clients disconnected at once, shutdown checkpoint streamed to
        the standby), immediate after limit_ms."""
        pid = self.pid()
        if pid is None:
            return True
        if not self.standby_configured():
            self.mark_fenced()
        # fast shutdown, immediate after limit_ms, SIGKILL 3 s later
        for sig, wait_ms in ((signal.SIGINT, limit_ms), (signal.SIGQUIT, 3000), (signal.SIGKILL, 2000)):
            _signal(pid, sig=sig)
            if _wait_gone(pid, wait_ms):
                return True
        return False


class Redis:
    """redis-cli as REDIS_USER (hapbx-ha: only the commands used here, components/render/redis.py
    HA_COMMANDS; its password REDISCLI_AUTH from the secrets env file), over TLS checked against
    REDIS_TLS_CA (empty: plain TCP, for a test rig's servers without TLS)."""

    def __init__(self, env: dict[str, str]):
        self.env = {**os.environ, **env}
        self.host, self.port = env["REDIS_HOST"], env["REDIS_PORT"]
        self.peer_host, self.peer_port = env["REDIS_PEER_HOST"], env["REDIS_PEER_PORT"]
        self.role_file = env.get("REDIS_ROLE_FILE", "")
        self.timeout = float(env.get("REDIS_TIMEOUT") or 3)
        self.pause_ms = env.get("REDIS_PAUSE_MS") or "86400000"
        ca = env["REDIS_TLS_CA"]
        self.options = ["--no-auth-warning", "--user", env["REDIS_USER"], *(["--tls", "--cacert", ca] if ca else [])]

    def _cli(self, host: str, port: str, *args: str) -> Optional[str]:
        rc, out, _ = _run(["redis-cli", *self.options, "-h", host, "-p", port, *args], self.timeout, env=self.env)
        return out if rc == 0 else None

    def cli(self, *args: str) -> Optional[str]:
        return self._cli(self.host, self.port, *args)

    def _role(self, host: str, port: str) -> str:
        """master | slave | down"""
        out = self._cli(host, port, "ROLE")
        return (out.split("\n", 1)[0] or "down") if out else "down"

    def role(self) -> str:
        return self._role(self.host, self.port)

    def peer_role(self) -> str:
        return self._role(self.peer_host, self.peer_port)

    def fence(self) -> bool:
        """A local master stops acknowledging writes at once (clients block, nothing is lost)."""
        if self.role() != "master":
            return True
        return self.cli("CLIENT", "PAUSE", self.pause_ms, "WRITE") is not None

    def _persist_role(self, line: str):
        if not self.role_file:
            return
        tmp = f"{self.role_file}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"# Written by hapbx-ha on role changes; included by redis.conf.\n{line}\n")
        os.replace(tmp, self.role_file)

    def promote(self, log) -> bool:
        role = self.role()
        if role == "down":
            log("ERROR", "redis: not running")
            return False
        if role == "slave" and self.cli("REPLICAOF", "NO", "ONE") is None:
            return False
        self._persist_role("replicaof no one")
        return self.cli("CLIENT", "UNPAUSE") is not None

    def demote(self, log) -> bool:
        """Follow the peer when it is master; stay paused otherwise."""
        role = self.role()
        if role == "down":
            return True
        if role == "slave":
            self.cli("CLIENT", "UNPAUSE")
            return True
        if self.cli("CLIENT", "PAUSE", self.pause_ms, "WRITE") is None:
            return False
        peer = self.peer_role()
        if peer != "master":
            log("WARN", f"redis: peer is {peer}, local master stays paused (no writes)")
            return True
        if self.cli("REPLICAOF", self.peer_host, self.peer_port) is None:
            return False
        self._persist_role(f"replicaof {self.peer_host} {self.peer_port}")
        self.cli("CLIENT", "UNPAUSE")
        log("INFO", f"redis: replica of {self.peer_host}:{self.peer_port}")
        return True


class Keepalived:
    """keepalived as notify/check-local/vip-release leave it in the run directory, and the VIP."""

    def __init__(self, env: dict[str, str]):
        self.run_dir = env["HA_RUN_DIR"]
        self.vip, self.prefix, self.iface = env.get("VIP", ""), env.get("VIP_PREFIX", ""), env.get("VIP_IFACE", "")
        self.kill_cmd = env.get("KEEPALIVED_KILL_CMD", "")
        self.pidfile = env.get("KEEPALIVED_PIDFILE", "")

    def vrrp(self) -> tuple[str, int]:
        """(state, since monotonic ms) as notify recorded it; UNKNOWN before the first notify."""
        try:
            with open(f"{self.run_dir}/vrrp", encoding="ascii") as fh:
                parts = fh.read().split()
            return parts[0], int(parts[1])
        except (OSError, IndexError, ValueError):
            return "UNKNOWN", 0

    def alive(self) -> Optional[bool]:
        """keepalived's main process exists (SIGSTOPped counts: it still holds the VIP); None when
        its pid file is not configured or unreadable (then nothing is concluded)."""
        if not self.pidfile:
            return None
        try:
            with open(self.pidfile, encoding="ascii") as fh:
                pid = int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return alive(pid)

    def heartbeat(self) -> int:
        """Monotonic ms of check-local's last run (written atomically; unreadable counts as none)."""
        try:
            with open(f"{self.run_dir}/heartbeat", encoding="ascii") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return 0

    def vip_present(self) -> bool:
        if not self.vip:
            return False
        rc, out, _ = _run(["ip", "-o", "-4", "addr", "show", "dev", self.iface], 2)
        return rc == 0 and f" {self.vip}/" in out

    def announce(self, log):
        """One gratuitous ARP for the VIP from this node's interface (what keepalived's refresh
        sends), for when this node's keepalived cannot: frozen, or not due yet."""
        if not (self.vip and self.iface):
            return
        try:
            send_garp(self.iface, self.vip)
        except OSError as e:
            log("WARN", f"gratuitous ARP for {self.vip} on {self.iface} failed: {e}", "garp")

    def kill(self, log):
        if self.kill_cmd:
            rc, _, _ = _run(["bash", "-c", self.kill_cmd], 5)
            if rc != 0:
                log("ERROR", "could not kill keepalived")
        if self.vip:
            _run(["ip", "-4", "addr", "del", f"{self.vip}/{self.prefix}", "dev", self.iface], 2)


def garp_frame(mac: bytes, ip: bytes) -> bytes:
    """An Ethernet broadcast ARP request whose sender and target address are both `ip` (RFC 5227's
    announcement: every neighbour updates its cache to `mac`)."""
    broadcast = b"\xff" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\x00" * 6, ip)
    return broadcast + mac + struct.pack("!H", 0x0806) + arp


def send_garp(iface: str, address: str) -> None:
    with open(f"/sys/class/net/{iface}/address", encoding="ascii") as fh:
        mac = bytes.fromhex(fh.read().strip().replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        sock.send(garp_frame(mac, socket.inet_aton(address)))


class Job:
    """A job script of the HA bin directory (promote, rejoin) in its own session."""

    def __init__(self, bin_dir: str, name: str, env: dict[str, str]):
        self.path, self.name, self.env = os.path.join(bin_dir, name), name, env
        self.proc: Optional[subprocess.Popen] = None

    def start(self, extra_env: dict[str, str] | None = None, *args: str) -> int:
        self.proc = subprocess.Popen([self.path, *args], env={**os.environ, **self.env, **(extra_env or {})},
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> Optional[int]:
        """The exit code of a job that ended since the last call; None otherwise."""
        if self.proc is not None and self.proc.poll() is not None:
            rc, self.proc = self.proc.returncode, None
            return rc
        return None

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class OwnerServices:
    """Units that run on the writer only (the CDR worker): started by promote, stopped here."""

    def __init__(self, env: dict[str, str]):
        self.units = (env.get("OWNER_SERVICES") or "").split()
        self.cmd = env.get("SERVICE_CMD") or "systemctl"
        self.timeout = float(env.get("SERVICE_TIMEOUT") or 30)

    def start(self, log):
        for unit in self.units:
            rc, _, _ = _run(["bash", "-c", f"{self.cmd} start {unit}"], self.timeout)
            if rc != 0:
                log("WARN", f"start {unit} failed")

    def stop(self, log, background: bool = True):
        def run():
            for unit in self.units:
                rc, _, _ = _run(["bash", "-c", f"{self.cmd} stop {unit}"], self.timeout)
                if rc != 0:
                    log("WARN", f"stop {unit} failed")
        if not self.units:
            return
        if background:
            threading.Thread(target=run, daemon=True).start()
        else:
            run()
