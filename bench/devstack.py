"""A throwaway PostgreSQL + Redis + CDR services on loopback, for `hapbx bench cdr` and the tests.

Not shipped to the nodes (a development tool: it lives with the bench, which runs it; the daemons-tier
CDR tests use it too). The records the tests and the bench post are bench/loadgen.py's fs_cdr.
PostgreSQL gets the project's real migrations (the deployment's own runner, hapbx_node/migrate.py)
and the application roles with passwords; Redis gets the ``cdr`` user with exactly the ACL the
deployment renders (components/render/redis.py) and, as on a node, speaks TLS only (a certificate
from a scratch CA made once per process; the services check it, HAPBX_REDIS_CA).
The services run under Debian's /usr/bin/python3 with Debian's packages, as on a node.
"""
from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import signal as _signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lab.scratch_ca import ScratchCa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: on PYTHONPATH for the services (``python3 -m hapbx_node.cdr``): the directory holding hapbx_node
NODE_PATH = ROOT
MIGRATE = os.path.join(ROOT, "hapbx_node", "migrate.py")
MIGRATIONS = os.path.join(ROOT, "hapbx_node", "migrations")
SYSTEM_PYTHON = "/usr/bin/python3"
SERVICE_PACKAGES = ("python3-aiohttp", "python3-redis", "python3-psycopg2")
PASSWORDS = {"cdr_writer": "cdr-writer-pw-Xq1", "pbx_admin": "pbx-admin-pw-Xq2", "pbx_readonly": "pbx-ro-pw-Xq3",
             "kamailio": "kamailio-pw-Xq4"}
REDIS_CDR_PASSWORD = "redis-cdr-pw-Xq5"
REDIS_DEFAULT_PASSWORD = "redis-default-pw-Xq6"
ADMIN_TOKEN = "admin-token-0123456789-abcdef"
SIP_DOMAIN = "pbx.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are not installed (postgresql)")
    return os.path.dirname(found[-1])


def missing_packages() -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *SERVICE_PACKAGES],
                         capture_output=True, text=True)
    have = {line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in SERVICE_PACKAGES if p not in have]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - reported on timeout
            last = err
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s ({last})")


@dataclass
class Postgres:
    base: str
    port: int = field(default_factory=free_port)
    fsync: bool = False
    commit_timestamps: bool = False

    @property
    def data(self) -> str:
        return os.path.join(self.base, "pgdata")

    @property
    def socket_dir(self) -> str:
        return self.base

    def dsn(self, user: str = "postgres", db: str = "pbx") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={db} user={user}"

    def tcp_dsn(self, user: str, db: str = "pbx") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={db} user={user}"

    def init(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.data, "postgres", "postgres")
        os.chmod(self.data, 0o700)
        subprocess.run(_as_postgres([f"{pg_bin()}/initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                                     "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                       check=True, capture_output=True)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.socket_dir}'\n"
                     f"fsync = {'on' if self.fsync else 'off'}\nsynchronous_commit = {'on' if self.fsync else 'off'}\n"
                     f"full_page_writes = {'on' if self.fsync else 'off'}\n"
                     f"track_commit_timestamp = {'on' if self.commit_timestamps else 'off'}\n"
                     "max_connections = 50\nshared_buffers = 128MB\nlog_min_messages = warning\n")
        # as in production: peer/trust only for postgres on the socket, SCRAM for everyone else
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as fh:
            fh.write("local all postgres trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")

    def start(self) -> None:
        subprocess.run(_as_postgres([f"{pg_bin()}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "pg.log"),
                                     "-w", "-t", "30", "start"]), check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_postgres([f"{pg_bin()}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def psql(self, sql: str, user: str = "postgres", db: str = "pbx") -> str:
        out = subprocess.run([f"{pg_bin()}/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(user, db),
                              "-c", sql], capture_output=True, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
        if out.returncode:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout.strip()

    def migrate(self) -> None:
        out = subprocess.run([SYSTEM_PYTHON, MIGRATE, "--dir", MIGRATIONS, "--dsn", f"host={self.socket_dir} user=postgres",
                              "--port", str(self.port), "--database", "pbx"], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"migrations failed: {out.stderr.strip()}")
        for role, pw in PASSWORDS.items():
            self.psql(f"ALTER ROLE {role} PASSWORD '{pw}'")
        self.psql(f"INSERT INTO pbx.settings (key, value) VALUES ('sip.domain', '{SIP_DOMAIN}') "
                  "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")


def redis_acl_rule() -> str:
    """The cdr user's ACL as the deployment renders it."""
    from components.render import redis as rd
    return f"resetkeys ~{rd.CDR_PREFIX}* resetchannels -@all " + " ".join(f"+{c}" for c in rd.CDR_COMMANDS)


def deployed_appendfsync() -> str:
    """The AOF fsync policy the deployment renders (components/render/redis.py)."""
    from components.render import redis as rd
    return rd.APPENDFSYNC


_CA: ScratchCa | None = None


def scratch_ca() -> ScratchCa:
    """This process's scratch CA (lab/scratch_ca.py): every loopback Redis's certificate comes from
    it, so a master and its replicas check each other; removed at exit."""
    global _CA
    if _CA is None:
        d = tempfile.mkdtemp(prefix="hapbx-devstack-ca-")
        os.chmod(d, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _CA = ScratchCa.make(Path(d), "devstack CA")
    return _CA


def issue(stem: str) -> tuple[str, str]:
    """(certificate, key) for 127.0.0.1 from the scratch CA."""
    pair = scratch_ca().issue(stem)
    return str(pair.cert), str(pair.key)


@dataclass
class Redis:
    base: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    appendfsync: str = field(default_factory=deployed_appendfsync)

    @property
    def ca_file(self) -> str:
        return str(scratch_ca().cert)

    def conf(self) -> str:
        cert, key = issue(f"redis-{self.port}")
        return (f"bind 127.0.0.1\nport 0\ntls-port {self.port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
                f"tls-ca-cert-file {self.ca_file}\ntls-auth-clients no\ntls-replication yes\n"
                f"dir {self.base}\ndaemonize no\nsave \"\"\nappendonly yes\n"
                f"appendfsync {self.appendfsync}\nmaxmemory 512mb\nmaxmemory-policy noeviction\nlogfile {self.base}/redis.log\n"
                f"user default on >{REDIS_DEFAULT_PASSWORD} ~* &* +@all\n"
                f"user cdr on >{REDIS_CDR_PASSWORD} {redis_acl_rule()}\n")

    def start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        path = os.path.join(self.base, "redis.conf")
        with open(path, "w") as fh:
            fh.write(self.conf())
        self.proc = subprocess.Popen(["redis-server", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.cli("PING") == "PONG", 10, "redis")

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "--no-auth-warning", "--tls", "--cacert", self.ca_file, "-p", str(self.port),
                              "--user", "default", *args], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "REDISCLI_AUTH": REDIS_DEFAULT_PASSWORD})
        return out.stdout.strip()

    def set_appendfsync(self, value: str) -> None:
        """Change the AOF fsync policy of the running server (CONFIG SET; the next start uses it too)."""
        out = self.cli("CONFIG", "SET", "appendfsync", value)
        if out != "OK":
            raise RuntimeError(f"redis CONFIG SET appendfsync {value}: {out}")
        self.appendfsync = value

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.send_signal(_signal.SIGTERM)   # Redis saves (AOF fsync) on SIGTERM
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Service:
    what: str
    env: dict
    log_path: str
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1", **self.env}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-m", "hapbx_node.cdr", self.what], env=env, cwd=NODE_PATH,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        self.signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        self.proc = None
        self.log.close()
        return rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")


class Stack:
    """PostgreSQL + Redis + receiver + worker (+ admin) on loopback, in one temp dir."""

    def __init__(self, base: str | None = None, fsync: bool = False, commit_timestamps: bool = False,
                 worker_env: dict | None = None, receiver_env: dict | None = None, node: str = "pbx1"):
        self.base = base or tempfile.mkdtemp(prefix="hapbx-cdr-")
        os.chmod(self.base, 0o755)
        self.node = node
        self.pg = Postgres(os.path.join(self.base, "pg"), fsync=fsync, commit_timestamps=commit_timestamps)
        self.redis = Redis(os.path.join(self.base, "redis"))
        self.receiver_port = free_port()
        self.admin_port = free_port()
        self.worker_env, self.receiver_env = worker_env or {}, receiver_env or {}
        self.receiver: Service | None = None
        self.worker: Service | None = None
        self.admin: Service | None = None

    # --- environment of each service, as the deployment's env files set it ---------------------
    def redis_env(self) -> dict:
        return {"HAPBX_NODE": self.node, "HAPBX_REDIS_ENDPOINTS": f"127.0.0.1:{self.redis.port}",
                "HAPBX_REDIS_CA": self.redis.ca_file, "HAPBX_REDIS_USER": "cdr",
                "HAPBX_REDIS_PASSWORD": REDIS_CDR_PASSWORD}

    def receiver_service(self) -> Service:
        env = {**self.redis_env(), "HAPBX_CDR_LISTEN": "127.0.0.1", "HAPBX_CDR_PORT": str(self.receiver_port),
               "HAPBX_CDR_MAX_BODY": "65536", **self.receiver_env}
        return Service("receiver", env, os.path.join(self.base, "receiver.log"))

    def worker_service(self) -> Service:
        env = {**self.redis_env(), "HAPBX_PG_DSN": self.pg.dsn("cdr_writer"),
               "HAPBX_PG_PASSWORD": PASSWORDS["cdr_writer"], "HAPBX_CDR_NODES": "pbx1,pbx2",
               "HAPBX_CDR_BACKOFF_MAX": "0.5", **self.worker_env}
        return Service("worker", env, os.path.join(self.base, "worker.log"))

    def admin_service(self) -> Service:
        env = {**self.redis_env(), "HAPBX_ADMIN_LISTEN": "127.0.0.1", "HAPBX_ADMIN_PORT": str(self.admin_port),
               "HAPBX_ADMIN_TOKEN": ADMIN_TOKEN, "HAPBX_PG_DSN": self.pg.dsn("pbx_admin"),
               "HAPBX_PG_PASSWORD": PASSWORDS["pbx_admin"], "HAPBX_VIP": "127.0.0.1",
               "HAPBX_HA_STATUS": os.path.join(self.base, "ha-status")}
        return Service("admin", env, os.path.join(self.base, "admin.log"))

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}/cdr"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    # --- lifecycle -------------------------------------------------------------------------------
    def start_data(self) -> None:
        self.pg.init()
        self.pg.start()
        self.pg.migrate()
        self.redis.start()

    def start_receiver(self) -> None:
        self.receiver = self.receiver_service()
        self.receiver.start()
        _wait(lambda: http("GET", f"http://127.0.0.1:{self.receiver_port}/health", timeout=1)[0] == 200, 15,
              f"receiver ({self.receiver.output()[-400:] if self.receiver else ''})")

    def start_worker(self) -> None:
        self.worker = self.worker_service()
        self.worker.start()

    def start_admin(self) -> None:
        self.admin = self.admin_service()
        self.admin.start()
        _wait(lambda: http("GET", f"{self.admin_url}/health", timeout=1)[0] == 200, 15,
              f"admin ({self.admin.output()[-400:] if self.admin else ''})")

    def close(self) -> None:
        for svc in (self.receiver, self.worker, self.admin):
            if svc is not None:
                svc.stop()
        self.redis.stop()
        self.pg.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- what is where -----------------------------------------------------------------------------
    def stored(self) -> int:
        return int(self.pg.psql("SELECT count(*) FROM cdr.calls"))

    def queue_lengths(self) -> dict[str, int]:
        keys = {"queue": "cdr:queue", "processing": f"cdr:processing:{self.node}", "dead": "cdr:dead"}
        return {k: int(self.redis.cli("LLEN", v) or 0) for k, v in keys.items()}

    def wait_stored(self, count: int, timeout: float = 30) -> int:
        _wait(lambda: self.stored() >= count, timeout, f"{count} CDRs stored", interval=0.1)
        return self.stored()
