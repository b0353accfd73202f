"""Redis, checked by the real thing: every rendered redis.conf passes its own validator (a
throwaway redis-server) and broken ones are refused; a master and a replica started from the
rendered files replicate over TLS; plain TCP and a server certificate from another CA are refused;
the CDR user cannot leave its keys and commands, the failover scripts' user (driven by the real HA
driver and lib.sh) cannot touch a key or the configuration; a full queue refuses writes instead
of evicting; the role file decides the role at start; a new certificate is re-read without a
restart.

What differs from a node: the two "nodes" are 127.0.0.2 and 127.0.0.3 (so each binds its node
address and loopback like on the lab), and the command line overrides only the port, the
directories and the pid/log files; the include of /etc/redis/role.conf points at a file in the
test directory, and the cluster CA's and the node's certificate files are a scratch CA's
(lab/scratch_ca.py). Servers run on loopback, high free ports, temporary directories, stopped at
the end.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from components.remote import defer_on_vip, script
from components.render import SECRET_NAMES, RenderContext, RenderedFile, masked_secrets
from components.render import failover
from components.render import redis as rd
from hapbx_node.cdr import resp
from hapbx_node.ha.drivers import Redis as HaRedis
from hapbx_node.layout import TLS_CA
from tests.daemons.validators import run_validator
from tests.helpers import free_port, shipped_cluster as stack
from lab.scratch_ca import ScratchCa

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
SECRETS = {n: f"pw-{n.replace('_', '-')}-4Rt8Kz1" for n in SECRET_NAMES}
ADDRESSES = {"pbx1": "127.0.0.2", "pbx2": "127.0.0.3"}
USER_SECRETS = {user: secret for user, secret in rd.USERS.items()}


def loopback_cluster(master_port: int):
    c = stack("lab")
    return dataclasses.replace(c, nodes=[dataclasses.replace(n, address=ADDRESSES[n.name]) for n in c.nodes],
                               redis=dataclasses.replace(c.redis, port=master_port))


def cli(port: int, *args: str, ca: Path, user: str = "default", host: str = "127.0.0.1", check: bool = False,
        tls: bool = True) -> str:
    """redis-cli as ``user`` (its password from the environment), over TLS checked against ``ca``."""
    secret = USER_SECRETS.get(user)
    env = {**os.environ}
    cmd = ["redis-cli", "--no-auth-warning", "-h", host, "-p", str(port)]
    if tls:
        cmd += ["--tls", "--cacert", str(ca)]
    if secret:
        cmd += ["--user", user]
        env["REDISCLI_AUTH"] = SECRETS[secret]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=10)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return (out.stdout + out.stderr).strip()


class Redis:
    def __init__(self, base: Path, node: str, port: int, cluster, ca: ScratchCa):
        self.dir = base / node
        self.dir.mkdir()
        self.node = next(n for n in cluster.nodes if n.name == node)
        self.port, self.address, self.ca = port, self.node.address, ca.cert
        self.tls = ca.issue(f"redis-{node}", ips=(self.address, "127.0.0.1"))
        ctx = RenderContext(cluster, self.node, SECRETS)
        files = {f.path: f for f in rd.files(ctx)}
        self.role = self.dir / "role.conf"
        self.role.write_text(f"# first deploy\n{rd.role_line(ctx)}\n")
        self.conf = self.dir / "redis.conf"
        text = files[rd.CONF].content.replace(f"include {rd.ROLE_FILE}", f"include {self.role}")
        for node_path, here in ((rd.CERT, self.tls.cert), (rd.KEY, self.tls.key), (TLS_CA, self.ca)):
            text = text.replace(node_path, str(here))
        self.conf.write_text(text)
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, **kw) -> str:
        return cli(self.port, *args, ca=self.ca, **kw)

    def info(self) -> dict[str, str]:
        text = self.cli("info", "replication")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def start(self) -> None:
        # the rendered tls-port is the master's (both nodes use the same port); this one's own here
        self.proc = subprocess.Popen(
            ["redis-server", str(self.conf), "--tls-port", str(self.port), "--dir", str(self.dir),
             "--logfile", str(self.dir / "log"), "--pidfile", str(self.dir / "pid"), "--daemonize", "no",
             "--supervised", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert self.proc.poll() is None, self.proc.stderr.read().decode() + self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM until it exits: Redis refuses a shutdown while it writes its first AOF (a replica
        just after its initial sync), and does not retry by itself."""
        deadline = time.monotonic() + 10
        while self.proc and self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.terminate()
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"redis-server on port {self.port} did not stop on SIGTERM in 10 s:\n{self.log()}")

    def log(self) -> str:
        p = self.dir / "log"
        return p.read_text()[-2000:] if p.exists() else ""


def wait_link(replica: Redis, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while replica.info().get("master_link_status") != "up":
        assert time.monotonic() < deadline, replica.log()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pair():
    base = Path(tempfile.mkdtemp(prefix="hapbx-redis-test-"))
    m_port, r_port = free_port(), free_port()
    cluster = loopback_cluster(m_port)
    ca = ScratchCa.make(base / "tls")
    master = Redis(base, "pbx1", m_port, cluster, ca)
    replica = Redis(base, "pbx2", r_port, cluster, ca)
    try:
        master.start()
        replica.start()
        t0 = time.monotonic()
        wait_link(replica)
        master.link_seconds = time.monotonic() - t0
        yield cluster, master, replica
    finally:
        try:
            replica.stop()
        finally:
            try:
                master.stop()   # whether or not the replica stopped
            finally:
                shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("name", ["lab", "prod"])
def test_every_rendered_config_passes_its_validator_and_broken_ones_fail(name):
    c = stack(name)
    for node in c.nodes:
        conf = next(f for f in rd.files(RenderContext(c, node, masked_secrets())) if f.path == rd.CONF)
        out = run_validator(conf)
        assert out.returncode == 0, (node.name, out.stdout, out.stderr)
        assert "\nport 0\n" in conf.content and f"\ntls-port {c.redis.port}\n" in conf.content
    for damage, why in [("\nmaxmemory-policy sometimes\n", "maxmemory-policy"),
                        ("\nuser cdr on >x ~cdr:* +nosuchcommand\n", "nosuchcommand"),
                        ("\nappendfsync sometimes\n", "FATAL CONFIG FILE ERROR"),
                        ("\ntls-auth-clients perhaps\n", "tls-auth-clients")]:
        broken = RenderedFile(**{**conf.__dict__, "content": conf.content + damage})
        out = run_validator(broken)
        assert out.returncode != 0 and why in out.stdout + out.stderr, (why, out.stdout, out.stderr)


def test_rendered_settings_are_what_runs(pair):
    cluster, master, replica = pair
    get = lambda key: master.cli("config", "get", key).splitlines()[1]  # noqa: E731
    assert get("maxmemory-policy") == "noeviction"
    assert get("maxmemory") == str(cluster.redis.maxmemory_mb * 1024 * 1024)
    # always: a SIGKILLed master must reload everything it acknowledged (rd.APPENDFSYNC says why)
    assert (get("appendonly"), get("appendfsync")) == ("yes", "always") == ("yes", rd.APPENDFSYNC)
    assert get("protected-mode") == "yes"
    assert (get("port"), get("tls-replication"), get("tls-auth-clients")) == ("0", "yes", "no")
    assert get("tls-protocols") == "TLSv1.2 TLSv1.3"
    assert get("bind").split() == [master.address, "127.0.0.1", "-::1"]
    assert master.cli("ping", host=master.address) == "PONG"  # listening on the node address too
    assert "NOAUTH" in master.cli("ping", user="nobody")  # no anonymous access
    assert {line.split()[1] for line in master.cli("acl", "list").splitlines()} == set(rd.USERS)


def test_plain_tcp_is_refused(pair):
    """No plaintext port at all (port 0), and the TLS port answers nothing to a plaintext client."""
    _, master, _ = pair
    for host in (master.address, "127.0.0.1"):
        with socket.create_connection((host, master.port), timeout=3) as s:
            s.sendall(b"PING\r\n")
            s.settimeout(3)
            try:
                got = s.recv(100)
            except (ConnectionResetError, socket.timeout):
                got = b""
            assert b"PONG" not in got and not got.startswith((b"+", b"-")), got
        out = master.cli("ping", host=host, tls=False)
        assert "PONG" not in out and ("reset" in out or "closed" in out or "Error" in out), out
    assert "port 0" in master.conf.read_text()


def test_a_server_certificate_from_another_ca_is_refused(pair, tmp_path):
    """A client that trusts another CA refuses the server (redis-cli, the CDR services' RESP client):
    the certificate is what tells this cluster's Redis from a machine in the middle."""
    _, master, _ = pair
    other = ScratchCa.make(tmp_path, "another CA")
    out = cli(master.port, "ping", ca=other.cert)
    assert "PONG" not in out and "certificate verify failed" in out, out
    endpoint = resp.Endpoint("127.0.0.1", master.port, str(other.cert))
    with pytest.raises(resp.ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(resp.open_first([endpoint], "cdr", SECRETS["redis_cdr"]))


def test_the_cdr_resp_client_works_over_tls(pair):
    """hapbx_node.cdr.resp (the receiver's and the admin's client) against the real server: TLS
    verified against the CA and the endpoint's address, AUTH as cdr, pushes replicated."""
    _, master, replica = pair

    async def go():
        endpoints = [resp.Endpoint(master.address, master.port, str(master.ca))]
        conn = await resp.open_first(endpoints, "cdr", SECRETS["redis_cdr"])
        try:
            assert isinstance(conn.writer.get_extra_info("ssl_object"), ssl.SSLObject)
            assert conn.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            return await conn.pipeline([("DEL", "cdr:tls"), ("LPUSH", "cdr:tls", "a", "b"), ("WAIT", "1", "1000"),
                                        ("LLEN", "cdr:tls"), ("GET", "cdr:tls")])
        finally:
            conn.close()
    try:
        deleted, pushed, acks, length, refused = asyncio.run(go())
        assert (pushed, acks, length) == (2, 1, 2)
        assert isinstance(refused, resp.RespError) and refused.kind == "NOPERM"
        assert replica.cli("llen", "cdr:tls") == "2"
    finally:
        master.cli("del", "cdr:tls", check=True)


def test_a_new_certificate_is_read_without_a_restart(pair, tmp_path):
    """What the handler does for a renewed certificate (TLS_MARKER): CONFIG SET tls-cert-file with
    the same path, and the running server presents the new one; the replica link survives."""
    _, master, replica = pair
    ca = ScratchCa(master.tls.cert.parent, master.tls.cert.parent / "test-cluster-CA-ca.pem",
                   master.tls.cert.parent / "test-cluster-CA-ca-key.pem")

    def served() -> str:
        ctx = ssl.create_default_context(cafile=str(master.ca))
        with socket.create_connection(("127.0.0.1", master.port), timeout=3) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                return t.getpeercert()["serialNumber"]
    before = served()
    pid = master.proc.pid
    ca.issue(f"redis-{master.node.name}", ips=(master.address, "127.0.0.1"))   # the same files, a new pair
    assert served() == before   # not read yet
    assert master.cli("config", "set", "tls-cert-file", str(master.tls.cert)) == "OK"
    assert served() != before and master.proc.pid == pid
    assert f"config set tls-cert-file {rd.CERT}" in rd.handler_script(RenderContext(stack("lab"), stack("lab").nodes[0],
                                                                                     masked_secrets()))
    assert master.cli("ping") == "PONG" and replica.info()["master_link_status"] == "up"


def test_replica_replicates_the_master(pair):
    _, master, replica = pair
    assert master.info()["role"] == "master" and master.info()["connected_slaves"] == "1"
    r = replica.info()
    assert (r["role"], r["master_host"], r["master_port"], r["master_link_status"]) == \
        ("slave", master.address, str(master.port), "up")
    master.cli("del", "cdr:queue", check=True)  # whatever another test left in the queue
    assert master.cli("lpush", "cdr:queue", '{"uuid":"r-1"}', user="cdr") == "1"
    deadline = time.monotonic() + 5
    while replica.cli("lrange", "cdr:queue", "0", "-1") != '{"uuid":"r-1"}':
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "READONLY" in replica.cli("lpush", "cdr:queue", "x")
    print(f"replica link up {master.link_seconds:.2f} s after start")


ALLOWED = [("lpush", "cdr:queue", "a"), ("rpush", "cdr:queue", "b"), ("llen", "cdr:queue"),
           ("blmove", "cdr:queue", "cdr:processing", "RIGHT", "LEFT", "1"), ("lrange", "cdr:processing", "0", "-1"),
           ("lrem", "cdr:processing", "1", "b"), ("exists", "cdr:queue"), ("ping",), ("wait", "0", "10")]
REFUSED = [("lpush", "other:queue", "a"), ("get", "cdr:queue"), ("set", "cdr:x", "1"), ("keys", "*"), ("scan", "0"),
           ("flushall",), ("flushdb",), ("config", "get", "maxmemory"), ("eval", "return 1", "0"), ("debug", "sleep", "0"),
           ("acl", "list"), ("replicaof", "no", "one"), ("publish", "ch", "x"), ("shutdown",), ("del", "other")]


def test_cdr_user_stays_within_its_keys_and_commands(pair):
    _, master, _ = pair
    try:
        for cmd in ALLOWED:
            out = master.cli(*cmd, user="cdr")
            assert "NOPERM" not in out and "ERR" not in out, (cmd, out)
        for cmd in REFUSED:
            out = master.cli(*cmd, user="cdr")
            assert "NOPERM" in out or "DEBUG command not allowed" in out, (cmd, out)  # DEBUG is off for everyone
        assert "NOPERM" in master.cli("lpush", "cdr:queue", "x", user="replicator")
    finally:
        master.cli("del", "cdr:queue", "cdr:processing", check=True)


HA_REFUSED = [("flushall",), ("config", "set", "dir", "/tmp"), ("config", "get", "*"), ("get", "cdr:queue"),
              ("lpush", "cdr:queue", "x"), ("llen", "cdr:queue"), ("del", "cdr:queue"), ("keys", "*"), ("scan", "0"),
              ("acl", "list"), ("eval", "return 1", "0"), ("info",), ("client", "kill", "type", "normal"),
              ("client", "list"), ("shutdown",), ("save",), ("publish", "ch", "x")]


def test_the_monitoring_user_reads_info_and_nothing_else(pair):
    """prometheus-redis-exporter's user: PING, INFO and naming its connection (refused, the exporter
    logs an error on every scrape); no key, no configuration, no other client command."""
    _, master, _ = pair
    user = rd.MONITOR_USER
    assert master.cli("ping", user=user) == "PONG"
    assert "role:master" in master.cli("info", "replication", user=user)
    assert master.cli("client", "setname", "redis_exporter", user=user) == "OK"
    for cmd in (("get", "cdr:queue"), ("llen", "cdr:queue"), ("config", "get", "*"), ("client", "list"),
                ("client", "kill", "type", "normal"), ("keys", "*"), ("acl", "list"), ("flushall",)):
        assert "NOPERM" in master.cli(*cmd, user=user), cmd


def ha_env(cluster, me: Redis, peer: Redis, base: Path) -> dict[str, str]:
    """The rendered HA env and secrets of ``me``'s node, made local (ports, the scratch CA, role file)."""
    env = failover.env_values(RenderContext(cluster, me.node, masked_secrets()))
    env.update(REDIS_PORT=str(me.port), REDIS_PEER_HOST=peer.address, REDIS_PEER_PORT=str(peer.port),
               REDIS_TLS_CA=str(me.ca), REDIS_ROLE_FILE=str(base / f"{me.node.name}-role.conf"),
               HA_RUN_DIR=str(base / "run"), HA_LIB_DIR=str(base / "lib"), HA_SYSLOG="0")
    secrets = failover.secrets_env(RenderContext(cluster, me.node, SECRETS))
    env["REDISCLI_AUTH"] = next(line.split("=", 1)[1].strip("'") for line in secrets.splitlines()
                                if line.startswith("REDISCLI_AUTH="))
    return env


def test_the_failover_scripts_user_does_its_job_and_nothing_else(pair, tmp_path):
    """The real HA driver and lib.sh, with the rendered env and secrets (hapbx-ha, not default):
    a switchover and back (fence, REPLICAOF NO ONE, follow the peer, unpause) and check-local's
    PING work over TLS; the same user reads no key and changes no configuration."""
    cluster, master, replica = pair
    env1, env2 = ha_env(cluster, master, replica, tmp_path), ha_env(cluster, replica, master, tmp_path)
    assert env1["REDIS_USER"] == rd.HA_USER and env1["REDISCLI_AUTH"] == SECRETS["redis_ha"]
    pbx1, pbx2 = HaRedis(env1), HaRedis(env2)
    logged = []
    log = lambda level, msg: logged.append((level, msg))  # noqa: E731
    try:
        assert (pbx1.role(), pbx1.peer_role(), pbx2.role()) == ("master", "slave", "slave")
        assert pbx1.fence()                                   # CLIENT PAUSE WRITE
        assert pbx2.promote(log), logged                      # REPLICAOF NO ONE, CLIENT UNPAUSE
        assert pbx2.role() == "master"
        assert pbx1.demote(log), logged                       # follows pbx2 (ROLE of the peer)
        assert "replicaof 127.0.0.3" in Path(env1["REDIS_ROLE_FILE"]).read_text()
        wait_link(master)
    finally:                                                  # back: pbx1 master, pbx2 its replica
        assert pbx2.fence() and pbx1.promote(log) and pbx2.demote(log), logged
        wait_link(replica)
    assert (pbx1.role(), pbx2.role()) == ("master", "slave")
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(failover.secrets_env(RenderContext(cluster, master.node, SECRETS)))
    env_file = tmp_path / "ha.env"
    env_file.write_text(failover.format_env({**{k: v for k, v in env1.items() if k != "REDISCLI_AUTH"},
                                             "HA_SECRETS_ENV": str(secrets_file)}))
    lib = Path(failover.BIN_DIR) / "lib.sh"
    out = subprocess.run(["bash", "-c", f". {lib}; rcli PING; rcli ROLE | head -n 1"],
                         env={"PATH": os.environ["PATH"], "HAPBX_ENV": str(env_file)}, capture_output=True, text=True,
                         timeout=20)
    assert out.stdout.split() == ["PONG", "master"], out
    for cmd in HA_REFUSED:
        got = master.cli(*cmd, user=rd.HA_USER)
        assert "NOPERM" in got, (cmd, got)
    assert master.cli("ping") == "PONG" and master.cli("config", "get", "dir").splitlines()[1] == str(master.dir)


def test_a_full_queue_refuses_writes_and_evicts_nothing(pair):
    _, master, _ = pair
    used = int(dict(line.split(":", 1) for line in master.cli("info", "memory").splitlines()
                    if ":" in line)["used_memory"])
    limit = master.cli("config", "get", "maxmemory").splitlines()[1]
    try:
        master.cli("config", "set", "maxmemory", str(used + 512 * 1024), check=True)
        master.cli("lpush", "cdr:keep", "first", user="cdr", check=True)
        big = "x" * 64 * 1024
        refused = ""
        for _ in range(64):
            refused = master.cli("lpush", "cdr:fill", big, user="cdr")
            if "OOM" in refused:
                break
        assert "OOM command not allowed" in refused
        assert master.cli("lrange", "cdr:keep", "0", "-1") == "first"  # nothing evicted
        assert master.cli("info", "stats").count("evicted_keys:0") == 1
    finally:
        master.cli("del", "cdr:fill", "cdr:keep", user="cdr")
        master.cli("config", "set", "maxmemory", limit, check=True)


def test_the_role_file_decides_the_role_at_start(pair):
    """The failover tooling persists a promotion as '# master' in the role file: a restart then
    keeps the node master instead of going back to the first deploy's replicaof."""
    _, master, replica = pair
    original = replica.role.read_text()
    try:
        replica.stop()
        replica.role.write_text("# Written by hapbx-ha on role changes; included by redis.conf.\n# master\n")
        replica.start()
        assert replica.info()["role"] == "master"
    finally:
        replica.stop()
        replica.role.write_text(original)
        replica.start()
        deadline = time.monotonic() + 20
        while replica.info().get("master_link_status") != "up":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_role_is_written_once_master_on_the_initial_primary():
    c = stack("prod")
    lines = {n.name: rd.role_line(RenderContext(c, n, masked_secrets())) for n in c.nodes}
    assert lines == {"node1": "replicaof no one", "node2": f"replicaof 192.168.1.101 {c.redis.port}"}
    body = rd.role_script(RenderContext(c, c.nodes[1], masked_secrets()))
    assert 'if [ -f "$role_file" ]' in body and "exit 0" in body.split("install -D")[0]  # never rewritten


def test_redis_step_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("needs shellcheck")
    c = stack("prod")
    for node in c.nodes:
        ctx = RenderContext(c, node, masked_secrets())
        for name, body in [("role", rd.role_script(ctx)), ("handler", rd.handler_script(ctx)),
                           ("handler deferring on the VIP holder",
                            rd.handler_script(ctx, defer_on_vip(c.vip.address, "restart"))),
                           ("verify", rd.verify_script(ctx))]:
            text = script(node.name, name, body)
            out = subprocess.run(["shellcheck", "-s", "bash", "-e", "SC2317", "-"], input=text, capture_output=True,
                                 text=True)
            assert out.returncode == 0, (name, out.stdout)
