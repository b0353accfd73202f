"""pgBackRest, checked by the real thing: a PostgreSQL primary + streaming standby on loopback
(tests/pg_servers.py, the rendered postgresql.conf with its archive settings), each "node" with
the pgbackrest.conf rendered for it (components/render/pgbackrest.py), its TLS server running,
and the backup runner (hapbx_node/backup) as the units run it.

Shown: the stanza step creates and checks the stanza; full and differential backups are taken
FROM THE STANDBY (the runner decides it, --backup-standby through the primary's TLS server);
no secret is on any command line meanwhile; a point-in-time restore into a scratch directory
gives exactly the rows committed before the target; after the standby is promoted it archives
on the new timeline, `pgbackrest check` passes there and the runner backs up from it (no
standby left); the stanza step refuses, untouched, a repository of another database system.

What differs from a node (LOCALIZED: paths and addresses only): both nodes are 127.0.0.1 on
their own PostgreSQL and TLS ports, pg2-host is "localhost" (the name the test certificates
carry; on a node it is the peer's name in /etc/hosts), the data, socket, spool, log and TLS
paths are the test's, and each node has its own lock-path (two nodes share this host's /tmp).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from components.render import RenderContext, masked_secrets
from components.render import pgbackrest as br
from components.render import postgres as pg
from hapbx_node.backup import stanza as stanza_step
from hapbx_node.backup.status import PGBACKREST_STATUS
from hapbx_node.layout import TLS_CA, tls_certificate, tls_key
from lab.scratch_ca import ScratchCa
from tests import pg_servers
from tests.helpers import free_port, wait_for
from tests.pg_servers import SECRETS, Binaries, Server

pytestmark = [
    pytest.mark.skipif(not os.path.exists(f"{pg_servers.HOST_BIN}/postgres"), reason="needs postgresql-15 (Debian)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: needs root"),
]
CIPHER = SECRETS["backup_cipher_pass"]
STANZA = "hapbx"


def pgbackrest_missing() -> str | None:
    if not os.path.exists("/usr/bin/pgbackrest"):
        from lab import hostdeps
        hostdeps.ensure(["pgbackrest"], "the pgBackRest daemon tests")
    return None


# --- certificates: as the cluster CA issues the "pgbackrest" service's, with the common name the
# TLS server authorizes (render.pgbackrest.client_cn) ------------------------------------------------

def issue_with_cn(ca: ScratchCa, stem: str, cn: str) -> tuple[Path, Path]:
    cert, key = ca.dir / f"{stem}.crt", ca.dir / f"{stem}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/O=high-cc-pbx/CN={cn}",
                    "-CA", str(ca.cert), "-CAkey", str(ca.key),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "extendedKeyUsage=serverAuth,clientAuth"], check=True, capture_output=True, timeout=30)
    return cert, key


# --- one node's pgBackRest -------------------------------------------------------------------------

def localize(text: str, values: dict[str, str], add: dict[str, str]) -> str:
    """The rendered file with ``values`` replacing those options' values (each must be there
    exactly once) and ``add`` appended to [global]."""
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{re.escape(key)}=.*$", f"{key}={value}", text)
        assert n == 1, f"{key} is {n} times in the rendered pgbackrest.conf"
    extra = "".join(f"{k}={v}\n" for k, v in add.items())
    return text.replace("[global]\n", "[global]\n" + extra, 1)


@dataclasses.dataclass
class Node:
    srv: Server
    dir: Path
    conf: Path
    tls_port: int
    lib: Path
    status: Path
    server: subprocess.Popen | None = None

    @property
    def bins(self) -> Binaries:
        return self.srv.bins

    def env(self, **extra: str) -> dict[str, str]:
        return {"PGBACKREST_CONFIG": str(self.conf), "PGBACKREST_STANZA": STANZA, "PYTHONPATH": str(self.lib),
                "PYTHONDONTWRITEBYTECODE": "1", "HAPBX_BACKUP_STATUS_DIR": str(self.status), **extra}

    def pgbackrest(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.bins.run("pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args, check=check,
                             timeout=timeout)

    def runner(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        """python3 -m hapbx_node.backup as hapbx-backup@.service runs it (postgres user, its environment)."""
        return self.bins.run(self.bins.python, "-m", "hapbx_node.backup", *args, env=self.env(), check=False,
                             timeout=timeout)

    def status_file(self) -> dict:
        return json.loads((self.status / PGBACKREST_STATUS).read_text())

    def start_server(self) -> None:
        log = open(self.dir / "tls-server.out", "w")
        self.server = self.bins.root.popen(["pgbackrest", f"--config={self.conf}", "server"], user="postgres",
                                           stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError(f"pgbackrest server exited: {(self.dir / 'tls-server.out').read_text()}")
            ping = self.bins.run("pgbackrest", f"--config={self.conf}", "--tls-server-address=localhost",
                                 f"--tls-server-port={self.tls_port}", "server-ping", check=False, timeout=10)
            if ping.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"pgbackrest server on {self.tls_port} did not answer: {ping.stdout}{ping.stderr}")

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)


def rendered(srv: Server, repo: Path, tls_port: int) -> dict[str, object]:
    """pgbackrest's files rendered for this server's node; the stack's own backup settings with
    the repository at ``repo`` and the TLS port ``tls_port`` (config, not localization)."""
    backup = dataclasses.replace(srv.cluster.backup, tls_port=tls_port, enabled=True,
                                 repository=dataclasses.replace(srv.cluster.backup.repository, type="posix",
                                                                path=str(repo)))
    cluster = dataclasses.replace(srv.cluster, backup=backup)
    return {f.path: f for f in br.files(RenderContext(cluster, srv.node, SECRETS))}


def make_node(base: Path, ca: ScratchCa, srv: Server, repo: Path, tls_port: int, peer: Server, peer_tls: int) -> Node:
    d = srv.dir / "pgbackrest"
    for sub in ("spool", "log", "lock", "status", "lib"):
        (d / sub).mkdir(parents=True)
    files = rendered(srv, repo, tls_port)
    cert, key = issue_with_cn(ca, f"pgbackrest-{srv.node.name}", br.client_cn(srv.node.name))
    text = files[br.CONF].content
    for node_path, path in ((TLS_CA, ca.cert), (tls_certificate(br.TLS_SERVICE), cert), (tls_key(br.TLS_SERVICE), key)):
        text = text.replace(node_path, str(path))
    text = localize(text, {
        "spool-path": str(d / "spool"), "log-path": str(d / "log"),
        "tls-server-address": "127.0.0.1", "tls-server-port": str(tls_port),
        "pg1-path": str(srv.data), "pg1-port": str(srv.port), "pg1-socket-path": str(srv.sock),
        "pg2-host": "localhost", "pg2-host-port": str(peer_tls),
        "pg2-path": str(peer.data), "pg2-port": str(peer.port), "pg2-socket-path": str(peer.sock),
    }, add={"lock-path": str(d / "lock")})
    conf = d / "pgbackrest.conf"
    conf.write_text(text)
    conf.chmod(0o640)
    for path, f in files.items():   # the runner as shipped (LIB_DIR/hapbx_node/...)
        if path.startswith(f"{br.LIB_DIR}/"):
            target = d / "lib" / path.removeprefix(f"{br.LIB_DIR}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
    srv.bins.chown(d)
    srv.bins.chown(cert)
    srv.bins.chown(key)
    srv.env["PGBACKREST_CONFIG"] = str(conf)   # archive_command / restore_command of this postmaster
    return Node(srv, d, conf, tls_port, d / "lib", d / "status")


def streaming(srv: Server) -> bool:
    with srv.connect() as c:
        return c.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'").fetchone()[0] == 1


def switch_and_wait_archived(srv: Server) -> str:
    """Close the current WAL segment and wait until archive_command stored it."""
    with srv.connect(autocommit=True) as c:
        seg = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]

        def archived():
            last = c.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            return last is not None and last[8:] >= seg[8:] and last[:8] >= seg[:8]
        wait_for(f"{seg} archived", archived, 60)
    return seg


class ArgvWatch:
    """Every process's command line, sampled until stopped: a secret on one would show here."""

    def __init__(self, secret: str):
        self.secret, self.leaks, self.seen_pgbackrest, self._stop = secret, [], 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
            for line in out.splitlines():
                if self.secret in line:
                    self.leaks.append(line)
                if "pgbackrest" in line and "--backup-standby" in line:   # the backup itself
                    self.seen_pgbackrest += 1
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(15)


# --- the pair ----------------------------------------------------------------------------------------

#: PostgreSQL major -> the pgBackRest it runs with: Debian 12's on the host, Debian 13's in its node image
RELEASES = {"15": "2.45", "17": "2.55"}


@pytest.fixture(scope="module", params=sorted(RELEASES), ids=[f"pg{m}-pgbackrest{v}" for m, v in sorted(RELEASES.items())])
def pair(request):
    pgbackrest_missing()
    bins = pg_servers.binaries(request.param, lambda: request.getfixturevalue("trixie_root"))
    version = bins.run("pgbackrest", "version").stdout
    assert version.startswith(f"pgBackRest {RELEASES[request.param]}"), version
    # the remotes a TLS server starts keep pgBackRest's default lock path (this host's /tmp, shared
    # with a release root whose postgres user has another uid): made by this fixture, removed by it
    default_locks = Path("/tmp/pgbackrest")
    assert not default_locks.exists(), f"{default_locks} is left from another run"
    with pg_servers.scratch("hapbx-pgbr-test-") as (d, cert):
        ca = ScratchCa(d, d / "test-cluster-CA-ca.pem", d / "test-cluster-CA-ca-key.pem")
        repo = d / "repo"
        repo.mkdir()
        a_port, b_port, a_tls, b_tls = free_port(), free_port(), free_port(), free_port()
        a = Server(d, "a", "pbx1", a_port, b_port, cert, bins)
        b = Server(d, "b", "pbx2", b_port, a_port, cert, bins)
        na = make_node(d, ca, a, repo, a_tls, b, b_tls)
        nb = make_node(d, ca, b, repo, b_tls, a, a_tls)
        a.bins.chown(repo)
        try:
            a.initdb()
            a.start()
            a.setup_primary()
            a.bins.run(a.bins.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(a_port), "-U", "replicator",
                       "--no-password", "-D", str(b.data), "-X", "stream", "-S", pg.slot_name("pbx2"), "-c", "fast",
                       env=b.env, timeout=120)
            a.bins.run("touch", str(b.data / "standby.signal"))
            b.start()
            wait_for("standby streaming", lambda: streaming(b))
            na.start_server()
            nb.start_server()
            yield {"dir": d, "ca": ca, "repo": repo, "a": na, "b": nb, "bins": bins}
        except BaseException:
            for n in (na, nb):
                print(f"--- {n.srv.node.name} log ---\n{n.srv.log()}")
                for log in sorted((n.dir / "log").glob("*.log")):
                    print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
            raise
        finally:
            for n in (na, nb):
                n.stop_server()
            b.stop("immediate")
            a.stop("immediate")
            shutil.rmtree(default_locks, ignore_errors=True)


@pytest.fixture(scope="module")
def stanza(pair):
    """The deploy's stanza step on the primary: creates the stanza, checks archiving (twice: idempotent)."""
    a = pair["a"]
    first = a.runner("stanza")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created" in first.stdout
    again = a.runner("stanza")
    assert again.returncode == 0 and "present" in again.stdout, again.stdout + again.stderr
    return pair


def repo_snapshot(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file()}


# --- tests ----------------------------------------------------------------------------------------------

@pytest.mark.timeout(400)
def test_backups_from_the_standby_restore_to_a_time_and_archive_after_promotion(stanza):
    a, b, repo = stanza["a"], stanza["b"], stanza["repo"]

    # full, then diff: the timers fire on both nodes; the standby backs up, the primary skips
    for kind in ("full", "diff"):
        with ArgvWatch(CIPHER) as watch:
            on_b = b.runner("run", kind)
        on_a = a.runner("run", kind)
        assert on_b.returncode == 0, on_b.stdout + on_b.stderr
        assert on_a.returncode == 0, on_a.stdout + on_a.stderr
        assert watch.seen_pgbackrest > 0 and watch.leaks == [], watch.leaks  # sampled, and nothing leaked
        sb, sa = b.status_file(), a.status_file()
        assert (sb["type"], sb["outcome"]) == (kind, "success") and "--backup-standby" in sb["reason"], sb
        assert sb["size_bytes"] > 0 and sb["repo_size_bytes"] >= sb["size_bytes"] and sb["label"], sb
        assert sb["last_success"] == sb["finished"] and sb["last_success_type"] == kind, sb
        assert (sa["outcome"], sa["size_bytes"]) == ("skipped", 0) and "standby takes" in sa["reason"], sa
    assert (b.status_file()["successes"], b.status_file()["failures"]) == (2, 0)
    info = json.loads(b.pgbackrest("--output=json", "info").stdout)[0]
    kinds = [(x["type"], x["label"]) for x in info["backup"]]
    assert [k for k, _ in kinds] == ["full", "diff"], kinds
    assert kinds[1][1] == b.status_file()["label"]
    # taken from the standby: pgBackRest's own log of the backup says so
    logs = "".join(p.read_text() for p in (b.dir / "log").glob(f"{STANZA}-backup.log"))
    assert re.search(r"wait for replay on the standby to reach", logs), logs[-2000:]

    # point in time: rows of batch 1, the target, rows of batch 2
    with a.srv.connect(autocommit=True) as c:
        c.execute("CREATE TABLE pitr (n int PRIMARY KEY)")
        c.execute("INSERT INTO pitr SELECT generate_series(1, 100)")
        time.sleep(1.1)
        target = c.execute("SELECT clock_timestamp()::text").fetchone()[0]
        time.sleep(1.1)
        c.execute("INSERT INTO pitr SELECT generate_series(101, 250)")
    switch_and_wait_archived(a.srv)

    restored = Server(stanza["dir"], "restored", "pbx1", free_port(), a.srv.port, (a.srv.cert[0], a.srv.cert[1]),
                      stanza["bins"], limits={"archive_mode": "off"})   # a scratch copy: it must not archive into the repository
    restored.data.mkdir(mode=0o700)
    restored.bins.chown(restored.data)
    try:
        out = a.pgbackrest(f"--pg1-path={restored.data}", "--type=time", f"--target={target}", "--target-action=pause",
                           "restore", timeout=180)
        assert out.returncode == 0
        restored.env["PGBACKREST_CONFIG"] = str(a.conf)
        restored.start()

        def paused():
            with restored.connect() as c:
                return c.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused"
        wait_for("recovery paused at the target", paused, 60)
        with restored.connect() as c:
            assert c.execute("SELECT count(*), min(n), max(n) FROM pitr").fetchone() == (100, 1, 100)
    finally:
        restored.stop("immediate")

    # failover: the primary is lost, the standby promoted; it archives on timeline 2
    a.srv.stop("fast")
    with b.srv.connect(autocommit=True) as c:
        assert c.execute("SELECT pg_promote(true, 60)").fetchone()[0] is True
        c.execute("INSERT INTO pitr SELECT generate_series(251, 260)")
    seg = switch_and_wait_archived(b.srv)
    assert seg.startswith("00000002"), seg
    stored = [p.name for p in repo.glob(f"archive/{STANZA}/*/0000000200000000/{seg}-*")]
    assert stored, sorted(p.name for p in repo.rglob("00000002*"))
    check = b.pgbackrest("check", check=False, timeout=180)
    assert check.returncode == 0, check.stdout + check.stderr
    # the runner on the new primary, no standby streaming: it backs up from itself; the old
    # primary's node (PostgreSQL down) skips
    on_b = b.runner("run", "diff")
    assert on_b.returncode == 0, on_b.stdout + on_b.stderr
    sb = b.status_file()
    assert sb["outcome"] == "success" and "no streaming standby" in sb["reason"], sb
    on_a = a.runner("run", "diff")
    assert on_a.returncode == 0 and a.status_file()["outcome"] == "skipped", on_a.stdout + on_a.stderr
    assert "not reachable" in a.status_file()["reason"]


@pytest.mark.timeout(180)
def test_stanza_step_refuses_a_repository_of_another_system(stanza):
    """A fresh cluster (new hardware before a restore) pointed at the repository: the stanza step
    stops with its own exit status and the way out, and the repository is not touched."""
    d, repo, a = stanza["dir"], stanza["repo"], stanza["a"]
    other = Server(d, "other", "pbx1", free_port(), a.srv.port, (a.srv.cert[0], a.srv.cert[1]),
                   stanza["bins"], limits={"archive_mode": "off"})
    node = make_node(d, stanza["ca"], other, repo, free_port(), a.srv, a.tls_port)
    try:
        other.initdb()
        other.start()
        before = repo_snapshot(repo)
        out = node.runner("stanza")
        assert out.returncode == stanza_step.EXIT_OTHER_SYSTEM, out.stdout + out.stderr
        assert "./hapbx restore" in out.stderr and "another database system" in out.stderr, out.stderr
        with other.connect() as c:
            sysid = str(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
        assert sysid in out.stderr
        assert repo_snapshot(repo) == before
    finally:
        other.stop("immediate")


@pytest.mark.timeout(120)
def test_tls_server_admits_only_the_peers_common_name(stanza):
    """The primary's TLS server authorizes a client certificate by its common name
    (tls-server-auth): one from the same CA with another name is refused."""
    b, ca = stanza["b"], stanza["ca"]
    cert, key = issue_with_cn(ca, "intruder", "pgbackrest-intruder")
    b.bins.chown(cert)
    b.bins.chown(key)
    with_peer = b.pgbackrest("--output=json", "info", timeout=60)   # a command that needs no PostgreSQL
    assert with_peer.returncode == 0
    ok = b.pgbackrest("check", check=False, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = b.pgbackrest(f"--pg2-host-cert-file={cert}", f"--pg2-host-key-file={key}", "check", check=False,
                           timeout=120)
    assert refused.returncode != 0
    assert re.search(r"AccessError.*access denied", refused.stdout + refused.stderr), refused.stdout + refused.stderr


def test_render_keeps_secrets_in_the_file_only():
    """The configuration holds the cipher pass (marked secret, 0640 root:postgres); the masked
    render shows a placeholder; no unit carries a secret."""
    from tests.helpers import shipped_cluster
    c = shipped_cluster("lab")
    real = {f.path: f for f in br.files(RenderContext(c, c.nodes[0], SECRETS))}
    conf = real[br.CONF]
    assert CIPHER in conf.content and conf.secrets == ("backup_cipher_pass",)
    assert (conf.owner, conf.group, conf.mode) == ("root", "postgres", "0640")
    assert real[tls_key(br.TLS_SERVICE)].mode == "0600"
    for path, f in real.items():
        if path != br.CONF:
            assert all(v not in f.content for k, v in SECRETS.items() if not k.startswith("tls_")), path
    masked = {f.path: f.content for f in br.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    assert CIPHER not in masked[br.CONF] and "@@SECRET:backup_cipher_pass@@" in masked[br.CONF]
    assert f"tls-server-auth={br.client_cn('pbx2')}={STANZA}" in masked[br.CONF]
    assert "pg2-host=pbx2.lab.internal" in masked[br.CONF]


def test_validator_passes_the_rendered_file_and_rejects_broken_ones(tmp_path):
    pgbackrest_missing()
    from tests.helpers import shipped_cluster
    c = shipped_cluster("lab")
    conf = next(f for f in br.files(RenderContext(c, c.nodes[0], SECRETS)) if f.path == br.CONF)
    cases = {
        "rendered": (conf.content, 0),
        "bad value": (conf.content.replace(f"compress-type={br.COMPRESS_TYPE}", "compress-type=zip"), 1),
        "unknown option": (conf.content.replace("start-fast=y", "start-fastest=y"), 1),
        "stanza option in global": (conf.content.replace("[global]\n", "[global]\npg1-path=/x\n"), 1),
        "bad size": (re.sub(r"archive-push-queue-max=.*", "archive-push-queue-max=lots", conf.content), 1),
    }
    for why, (text, rc) in cases.items():
        path = tmp_path / f"{why.replace(' ', '-')}.conf"
        path.write_text(text)
        out = subprocess.run(["sh", "-c", conf.validate.replace("{path}", str(path))], capture_output=True, text=True,
                             timeout=60)
        assert (out.returncode != 0) == bool(rc), (why, out.stdout, out.stderr)
        assert CIPHER not in out.stdout + out.stderr


def test_units_pass_systemd_analyze(tmp_path):
    from tests.helpers import shipped_cluster
    c = shipped_cluster("lab")
    files = {f.path: f for f in br.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    for path, f in files.items():
        if not path.startswith("/etc/systemd/system/"):
            continue
        local = tmp_path / os.path.basename(path)
        local.write_text(f.content)
        if f.validate:
            out = subprocess.run(["sh", "-c", f.validate.replace("{path}", str(local))], capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, (path, out.stdout, out.stderr)
    timers = {br.TIMERS["full"]: c.backup.full_schedule, br.TIMERS["diff"]: c.backup.diff_schedule}
    for timer, schedule in timers.items():
        text = files[f"/etc/systemd/system/{timer}"].content
        assert f"OnCalendar={schedule}" in text and "Persistent=true" in text
        out = subprocess.run(["systemd-analyze", "calendar", schedule], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
