"""Redis, checked by the real thing: every rendered redis.conf passes its own validator (a
throwaway redis-server) and broken ones are refused; a master and a replica started from the
rendered files replicate; the CDR user cannot leave its keys and commands; a full queue refuses
writes instead of evicting; the role file decides the role at start.

What differs from a node: the two "nodes" are 127.0.0.2 and 127.0.0.3 (so each binds its node
address and loopback like on the lab), and the command line overrides only the port, the
directories and the pid/log files; the include of /etc/redis/role.conf points at a file in the
test directory. Servers run on loopback, high free ports, temporary directories, stopped at the end.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from components.remote import defer_on_vip, script
from components.render import SECRET_NAMES, RenderContext, RenderedFile, masked_secrets
from components.render import redis as rd
from tests.daemons.validators import run_validator
from tests.helpers import free_port, shipped_cluster as stack

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
SECRETS = {n: f"pw-{n.replace('_', '-')}-4Rt8Kz1" for n in SECRET_NAMES}
ADDRESSES = {"pbx1": "127.0.0.2", "pbx2": "127.0.0.3"}


def loopback_cluster(master_port: int):
    c = stack("lab")
    return dataclasses.replace(c, nodes=[dataclasses.replace(n, address=ADDRESSES[n.name]) for n in c.nodes],
                               redis=dataclasses.replace(c.redis, port=master_port))


def cli(port: int, *args: str, user: str = "default", host: str = "127.0.0.1", check: bool = False) -> str:
    secret = {"default": "redis_default", "cdr": "redis_cdr", "replicator": "redis_replication"}.get(user)
    env = {**os.environ}
    cmd = ["redis-cli", "--no-auth-warning", "-h", host, "-p", str(port)]
    if secret:
        cmd += ["--user", user]
        env["REDISCLI_AUTH"] = SECRETS[secret]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=10)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return (out.stdout + out.stderr).strip()


def info(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    text = cli(port, "info", "replication", host=host)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Redis:
    def __init__(self, base: Path, node: str, port: int, cluster):
        self.dir = base / node
        self.dir.mkdir()
        self.node = next(n for n in cluster.nodes if n.name == node)
        self.port, self.address = port, self.node.address
        ctx = RenderContext(cluster, self.node, SECRETS)
        files = {f.path: f for f in rd.files(ctx)}
        self.role = self.dir / "role.conf"
        self.role.write_text(f"# first deploy\n{rd.role_line(ctx)}\n")
        self.conf = self.dir / "redis.conf"
        self.conf.write_text(files[rd.CONF].content.replace(f"include {rd.ROLE_FILE}", f"include {self.role}"))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", str(self.conf), "--port", str(self.port), "--dir", str(self.dir),
             "--logfile", str(self.dir / "log"), "--pidfile", str(self.dir / "pid"), "--daemonize", "no",
             "--supervised", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while cli(self.port, "ping") != "PONG":
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


@pytest.fixture(scope="module")
def pair():
    base = Path(tempfile.mkdtemp(prefix="hapbx-redis-test-"))
    m_port, r_port = free_port(), free_port()
    cluster = loopback_cluster(m_port)
    master = Redis(base, "pbx1", m_port, cluster)
    replica = Redis(base, "pbx2", r_port, cluster)
    try:
        master.start()
        replica.start()
        t0 = time.monotonic()
        deadline = t0 + 20
        while info(r_port).get("master_link_status") != "up":
            assert time.monotonic() < deadline, replica.log()
            time.sleep(0.05)
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
    for damage, why in [("\nmaxmemory-policy sometimes\n", "maxmemory-policy"),
                        ("\nuser cdr on >x ~cdr:* +nosuchcommand\n", "nosuchcommand"),
                        ("\nappendfsync sometimes\n", "FATAL CONFIG FILE ERROR")]:
        broken = RenderedFile(**{**conf.__dict__, "content": conf.content + damage})
        out = run_validator(broken)
        assert out.returncode != 0 and why in out.stdout + out.stderr, (why, out.stdout, out.stderr)


def test_rendered_settings_are_what_runs(pair):
    cluster, master, replica = pair
    get = lambda key: cli(master.port, "config", "get", key).splitlines()[1]  # noqa: E731
    assert get("maxmemory-policy") == "noeviction"
    assert get("maxmemory") == str(cluster.redis.maxmemory_mb * 1024 * 1024)
    # always: a SIGKILLed master must reload everything it acknowledged (rd.APPENDFSYNC says why)
    assert (get("appendonly"), get("appendfsync")) == ("yes", "always") == ("yes", rd.APPENDFSYNC)
    assert get("protected-mode") == "yes"
    assert get("bind").split() == [master.address, "127.0.0.1", "-::1"]
    assert cli(master.port, "ping", host=master.address) == "PONG"  # listening on the node address too
    assert "NOAUTH" in cli(master.port, "ping", user="nobody")  # no anonymous access
    assert {line.split()[1] for line in cli(master.port, "acl", "list").splitlines()} == {"default", "cdr", "replicator"}


def test_replica_replicates_the_master(pair):
    _, master, replica = pair
    assert info(master.port)["role"] == "master" and info(master.port)["connected_slaves"] == "1"
    r = info(replica.port)
    assert (r["role"], r["master_host"], r["master_port"], r["master_link_status"]) == \
        ("slave", master.address, str(master.port), "up")
    cli(master.port, "del", "cdr:queue", check=True)  # whatever another test left in the queue
    assert cli(master.port, "lpush", "cdr:queue", '{"uuid":"r-1"}', user="cdr") == "1"
    deadline = time.monotonic() + 5
    while cli(replica.port, "lrange", "cdr:queue", "0", "-1") != '{"uuid":"r-1"}':
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "READONLY" in cli(replica.port, "lpush", "cdr:queue", "x")
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
            out = cli(master.port, *cmd, user="cdr")
            assert "NOPERM" not in out and "ERR" not in out, (cmd, out)
        for cmd in REFUSED:
            out = cli(master.port, *cmd, user="cdr")
            assert "NOPERM" in out or "DEBUG command not allowed" in out, (cmd, out)  # DEBUG is off for everyone
        assert "NOPERM" in cli(master.port, "lpush", "cdr:queue", "x", user="replicator")
    finally:
        cli(master.port, "del", "cdr:queue", "cdr:processing", check=True)


def test_a_full_queue_refuses_writes_and_evicts_nothing(pair):
    _, master, _ = pair
    used = int(dict(line.split(":", 1) for line in cli(master.port, "info", "memory").splitlines()
                    if ":" in line)["used_memory"])
    limit = cli(master.port, "config", "get", "maxmemory").splitlines()[1]
    try:
        cli(master.port, "config", "set", "maxmemory", str(used + 512 * 1024), check=True)
        cli(master.port, "lpush", "cdr:keep", "first", user="cdr", check=True)
        big = "x" * 64 * 1024
        refused = ""
        for _ in range(64):
            refused = cli(master.port, "lpush", "cdr:fill", big, user="cdr")
            if "OOM" in refused:
                break
        assert "OOM command not allowed" in refused
        assert cli(master.port, "lrange", "cdr:keep", "0", "-1") == "first"  # nothing evicted
        assert cli(master.port, "info", "stats").count("evicted_keys:0") == 1
    finally:
        cli(master.port, "del", "cdr:fill", "cdr:keep", user="cdr")
        cli(master.port, "config", "set", "maxmemory", limit, check=True)


def test_the_role_file_decides_the_role_at_start(pair):
    """The failover tooling persists a promotion as '# master' in the role file: a restart then
    keeps the node master instead of going back to the first deploy's replicaof."""
    _, master, replica = pair
    original = replica.role.read_text()
    try:
        replica.stop()
        replica.role.write_text("# Written by hapbx-ha on role changes; included by redis.conf.\n# master\n")
        replica.start()
        assert info(replica.port)["role"] == "master"
    finally:
        replica.stop()
        replica.role.write_text(original)
        replica.start()
        deadline = time.monotonic() + 20
        while info(replica.port).get("master_link_status") != "up":
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
