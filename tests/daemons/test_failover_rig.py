"""A two-node HA rig on one machine, for running the rendered failover scripts for real:
two PostgreSQL 15 servers and two Redis servers on loopback ports, a three-member etcd
(started from the rendered /etc/default/etcd: TLS on both ports with client certificates
from a scratch CA in place of the cluster CA's; authentication enabled by the rendered
bootstrap step), and per node an env file derived from the rendered one with local
ports, temp dirs and pg_ctl instead of systemd. Every process it starts is recorded and
ended by its pid. (No tests here: helpers imported by test_failover_*.py.)

With `netns=True` each host (pbx1, pbx2, witness) is a private network namespace with
its own address on a private bridge (RIG_SUBNET, reachable from nowhere else), every
daemon of a host runs inside its namespace, and `cut()` drops the traffic between two
hosts with nft rules inside both: a real network partition of PostgreSQL, Redis and etcd.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.remote import script as remote_script
from components.render import RenderContext, masked_secrets
from components.render import etcd as etcd_render
from components.render import failover
from components.render import redis as redis_render
from hapbx_node.ha.clock import mono_ms  # noqa: F401  (the HA core's clock: the steps write authority deadlines in it)
from lab.scratch_ca import ScratchCa, localize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_BIN = "/usr/lib/postgresql/15/bin"
NODES = ("pbx1", "pbx2")
REDIS_PASSWORD = "rigRedisPw7"
#: the failover scripts' Redis user (components/render/redis.py HA_USER, its rendered ACL)
REDIS_HA_PASSWORD = "rigRedisHaPw8"
ETCD_ROOT_PASSWORD = "rigEtcdRoot3"
ETCD_NODE_PASSWORD = "rigEtcdNode5"
#: the stacks use 2 s; this machine runs many suites at once, and a 2 s lease on an
#: overloaded host fences for real (correctly, but then the later steps have nothing to test)
LEASE_TTL = 3
#: the netns rig's private subnet: exists only inside the rig's namespaces
RIG_SUBNET = "10.81.0.0/24"
RIG_ADDRESSES = {"pbx1": "10.81.0.11", "pbx2": "10.81.0.12", "witness": "10.81.0.13"}


#: every port free_port handed out in this process: the kernel may give the same free port twice,
#: and a rig takes fifteen (two members' ports alike: one etcd never listened, CI on b54ab3a)
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def now_ms() -> int:
    return int(time.time() * 1000)



@dataclass
class Node:
    name: str
    peer: str
    dir: str
    pg_port: int
    redis_port: int
    etcd_client: int
    etcd_peer: int
    env_file: str = ""
    env: dict = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    heartbeat: subprocess.Popen | None = None
    overrides: dict = field(default_factory=dict)

    @property
    def data(self) -> str:
        return f"{self.dir}/pgdata"

    @property
    def sock(self) -> str:
        return f"{self.dir}/sock"

    @property
    def run(self) -> str:
        return f"{self.dir}/run"


class Rig:
    def __init__(self, sync_relax_after: int = 3, yield_after: float = 3.0, resign_grace: float = 5.0,
                 heartbeat: bool = False, witness: bool = True, policy: str = "manual-promotion",
                 no_witness_timeout: int = 30, netns: bool = False):
        self.base = tempfile.mkdtemp(prefix="hapbx-rig-")
        self.netns = netns
        self.ns: dict[str, str] = {}
        names = ("pbx1", "pbx2", "witness")
        self.addr = dict(RIG_ADDRESSES) if netns else {name: "127.0.0.1" for name in names}
        os.chmod(self.base, 0o755)
        self.bin = f"{self.base}/bin"
        self.procs: list[subprocess.Popen] = []
        self.settings = dict(SYNC_RELAX_AFTER=str(sync_relax_after), YIELD_AFTER=str(yield_after),
                             RESIGN_GRACE=str(resign_grace), HA_HEARTBEAT="1" if heartbeat else "0",
                             HUNG_AFTER="1.5", LEASE_TTL=str(LEASE_TTL))
        if not witness:
            self.settings.update(WITNESS="0", NO_WITNESS_POLICY=policy, NO_WITNESS_TIMEOUT=str(no_witness_timeout),
                                 PG_SYNC_NAMES="")
        cluster, _ = load_stack_file(f"{ROOT}/Pulumi.lab.yaml", assume_secrets=True)
        self.cluster = cluster
        self.members = {}
        for name in names:
            self.members[name] = (free_port(), free_port())
        # each host's etcd certificate (server, peer and client, as the cluster CA issues them)
        self.ca = ScratchCa.make(Path(self.base) / "tls")
        self.tls = {name: self.ca.issue(f"etcd-{name}", ips=tuple(sorted({self.addr[name], "127.0.0.1"})))
                    for name in names}
        self.nodes = {}
        for name, peer in (("pbx1", "pbx2"), ("pbx2", "pbx1")):
            d = f"{self.base}/{name}"
            os.makedirs(f"{d}/sock")
            os.makedirs(f"{d}/run")
            pg = pwd.getpwnam("postgres")
            for p in (d, f"{d}/sock"):
                os.chown(p, pg.pw_uid, pg.pw_gid)
            self.nodes[name] = Node(name, peer, d, free_port(), free_port(), *self.members[name])
        self._install_scripts()
        for n in self.nodes.values():
            self._write_env(n)
        if netns:
            self._make_network()

    # --- network (netns mode) ----------------------------------------------------------------
    def _make_network(self):
        """A switch namespace with a bridge, one namespace per host on a veth to it."""
        tag = f"hapbxrg{os.getpid() % 100000}"
        sw = f"{tag}-sw"
        prefix = RIG_SUBNET.split("/")[1]
        self._ip("netns", "add", sw)
        self.ns["switch"] = sw
        self._ip("netns", "exec", sw, "ip", "link", "add", "br0", "type", "bridge")
        self._ip("netns", "exec", sw, "ip", "link", "set", "br0", "up")
        for i, name in enumerate(("pbx1", "pbx2", "witness"), start=1):
            ns = f"{tag}-{name}"
            self._ip("netns", "add", ns)
            self.ns[name] = ns
            self._ip("link", "add", f"{tag[-5:]}h{i}", "netns", ns, "type", "veth", "peer", "name", f"p{i}",
                     "netns", sw)
            self._ip("netns", "exec", sw, "ip", "link", "set", f"p{i}", "master", "br0", "up")
            for cmd in (["ip", "link", "set", f"{tag[-5:]}h{i}", "name", "eth0"], ["ip", "link", "set", "eth0", "up"],
                        ["ip", "addr", "add", f"{self.addr[name]}/{prefix}", "dev", "eth0"],
                        ["ip", "link", "set", "lo", "up"]):
                self._ip("netns", "exec", ns, *cmd)

    @staticmethod
    def _ip(*args):
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, f"ip {' '.join(args)}: {out.stderr}"

    def inside(self, name: str, argv: list[str]) -> list[str]:
        """argv run in host `name`'s namespace (as is, without netns)."""
        return ["ip", "netns", "exec", self.ns[name], *argv] if self.netns else list(argv)

    def cut(self, a: str, b: str):
        """The link between hosts a and b fails: nft in both drops every packet between them."""
        for me, other in ((a, b), (b, a)):
            rules = (f"table inet hapbx_rig_cut {{\n chain in {{ type filter hook input priority -10; "
                     f"ip saddr {self.addr[other]} drop; }}\n chain out {{ type filter hook output priority -10; "
                     f"ip daddr {self.addr[other]} drop; }}\n}}\n")
            out = subprocess.run(self.inside(me, ["nft", "-f", "-"]), input=rules, capture_output=True, text=True,
                                 timeout=10)
            assert out.returncode == 0, out.stderr

    def heal(self, *names: str):
        for name in names or ("pbx1", "pbx2", "witness"):
            subprocess.run(self.inside(name, ["nft", "delete", "table", "inet", "hapbx_rig_cut"]),
                           capture_output=True, timeout=10)

    def reaches(self, a: str, b: str) -> bool:
        """TCP from host a to b's etcd client port (a listening port on every host)."""
        port = self.members[b][0]
        out = subprocess.run(self.inside(a, ["timeout", "1", "bash", "-c", f"exec 3<>/dev/tcp/{self.addr[b]}/{port}"]),
                             capture_output=True, timeout=5)
        return out.returncode == 0

    # --- files -----------------------------------------------------------------------------
    def _install_scripts(self):
        os.makedirs(self.bin)
        ctx = RenderContext(self.cluster, self.cluster.nodes[0], masked_secrets())
        for f in failover.files(ctx):
            if f.path.startswith(failover.HA_BIN + "/") or f.path == failover.HA_CLI:
                rel = "hapbx-ha" if f.path == failover.HA_CLI else os.path.relpath(f.path, failover.HA_BIN)
                dest = os.path.join(self.bin, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "w", encoding="utf-8") as fh:
                    fh.write(f.content)
                os.chmod(dest, int(f.mode, 8))

    def endpoints(self) -> str:
        return ",".join(f"https://{self.addr[name]}:{c}" for name, (c, _) in self.members.items())

    def local_tls(self, text: str, host: str) -> str:
        """``text`` with the node's TLS file paths (as rendered) made the rig's files of ``host``."""
        return localize(text, self.ca.cert, self.tls[host], etcd_render.TLS_SERVICE)

    def etcd_tls_env(self, host: str) -> dict[str, str]:
        """etcdctl's TLS environment on ``host`` (etcd_render.CLIENT_TLS_ENV with the rig's files)."""
        return {k: self.local_tls(v, host) for k, v in etcd_render.CLIENT_TLS_ENV.items()}

    def _write_env(self, n: Node):
        cnode = next(x for x in self.cluster.nodes if x.name == n.name)
        env = failover.env_values(RenderContext(self.cluster, cnode, masked_secrets()))
        peer = self.nodes.get(n.peer) or None
        peer_pg = peer.pg_port if peer else 0
        peer_redis = peer.redis_port if peer else 0
        start = (f"{self.bin}/pg-guard && runuser -u postgres -- {PG_BIN}/pg_ctl -D {n.data} -l {n.dir}/pg.log "
                 f"-o '-p {n.pg_port} -k {n.sock}' -w -t 60 start >/dev/null")
        env.update({
            "HA_BIN": self.bin, "HA_RUN_DIR": n.run, "HA_LIB_DIR": f"{n.dir}/lib", "HA_SYSLOG": "0",
            "HA_LOG_FILE": f"{n.dir}/ha.log", "HA_SECRETS_ENV": f"{n.dir}/secrets.env", "HA_CHECK_VIP": "0",
            "KEEPALIVED_KILL_CMD": f"touch {n.dir}/keepalived-killed", "CHECK_SIP": "0",
            "KEEPALIVED_PIDFILE": "",     # no keepalived here: check-local's heartbeat stands for it
            "PG_BIN": PG_BIN, "PG_DATA": n.data, "PG_CONFIG_FILE": "", "PG_SOCKET": n.sock,
            "PG_PORT": str(n.pg_port), "PG_PEER_HOST": self.addr[n.peer], "PG_PEER_PORT": str(peer_pg),
            "PG_PASSFILE": "", "PG_WRITE_CONNINFO": "1", "PG_START_CMD": start,
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(n.redis_port), "REDIS_PEER_HOST": self.addr[n.peer],
            "REDIS_PEER_PORT": str(peer_redis), "REDIS_ROLE_FILE": f"{n.dir}/redis-role.conf",
            "OWNER_SERVICES": "hapbx-cdr-worker.service", "SERVICE_CMD": f"{n.dir}/svc",
            "ETCD_ENDPOINTS": self.endpoints(), "REACH_TARGETS": self.addr["witness"],
            "PG_CONNECT_TIMEOUT": "1",
            # the rig's servers run without TLS (loopback): what the nodes check (verify-full against
            # the cluster CA) is tested on real servers in test_postgres.py and on the lab
            "PG_PEER_SSL": "",
            "REDIS_TLS_CA": str(self.ca.cert),
            "ETCD_PREFIX": "/hapbx/rig",
            **self.etcd_tls_env(n.name),
        })
        env.update(self.settings)
        env.update(n.overrides)
        n.env = env
        n.env_file = f"{n.dir}/ha.env"
        with open(n.env_file, "w", encoding="utf-8") as fh:
            fh.write(failover.format_env(env))
        # stands for systemctl: records what the scripts did to the VIP-owner-only services
        with open(f"{n.dir}/svc", "w", encoding="utf-8") as fh:
            fh.write(f"#!/bin/sh\necho \"$1\" > {n.dir}/owner-services\n")
        os.chmod(f"{n.dir}/svc", 0o755)
        with open(f"{n.dir}/secrets.env", "w", encoding="utf-8") as fh:
            fh.write(f"REDISCLI_AUTH={REDIS_HA_PASSWORD}\nETCDCTL_USER=hapbx\nETCDCTL_PASSWORD={ETCD_NODE_PASSWORD}\n")
        os.chmod(f"{n.dir}/secrets.env", 0o600)

    def rewrite_envs(self):
        for n in self.nodes.values():
            self._write_env(n)

    # --- processes ---------------------------------------------------------------------------
    def spawn(self, args, log, env=None, user=None, host: str | None = None) -> subprocess.Popen:
        """A long-running process, in `host`'s namespace when given (netns mode)."""
        if host:
            args = self.inside(host, args)
        fh = open(log, "ab")
        p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, user=user)
        fh.close()
        self.procs.append(p)
        return p

    def start_etcd(self):
        """Three members from the rendered /etc/default/etcd (addresses and ports made local)."""
        c = self.cluster
        initial = ",".join(f"{name}=https://{self.addr[name]}:{peer}" for name, (_, peer) in self.members.items())
        self.etcd = {}
        for host in list(c.nodes) + [c.witness]:
            text = self.local_tls(etcd_render.default_file(RenderContext(c, host, masked_secrets())), host.name)
            env = {}
            for line in text.splitlines():
                if line.startswith("ETCD_"):
                    k, _, v = line.partition("=")
                    env[k] = v.strip('"')
            client, peer = self.members[host.name]
            addr = self.addr[host.name]
            # as rendered: the host's address, and loopback for the local scripts (netns mode)
            listen = f"https://{addr}:{client}" + (f",https://127.0.0.1:{client}" if self.netns else "")
            env.update(ETCD_DATA_DIR=f"{self.base}/etcd-{host.name}",
                       ETCD_LISTEN_PEER_URLS=f"https://{addr}:{peer}",
                       ETCD_INITIAL_ADVERTISE_PEER_URLS=f"https://{addr}:{peer}",
                       ETCD_LISTEN_CLIENT_URLS=listen,
                       ETCD_ADVERTISE_CLIENT_URLS=f"https://{addr}:{client}",
                       ETCD_INITIAL_CLUSTER=initial, ETCD_LOG_LEVEL="error")
            if "ETCD_LISTEN_METRICS_URLS" in env:   # the rendered metrics listener, on a port of its own here
                env["ETCD_LISTEN_METRICS_URLS"] = f"http://{addr}:{free_port()}"
            env["PATH"] = os.environ["PATH"]
            self.etcd[host.name] = self.spawn(["etcd"], f"{self.base}/etcd-{host.name}.log", env=env,
                                              host=host.name if self.netns else None)
        self.etcd_env = env

    def bootstrap_etcd_auth(self) -> str:
        """The rendered bootstrap step, against member pbx1 (the gateway on its client port)."""
        client, _ = self.members["pbx1"]
        c = dataclasses.replace(self.cluster, etcd=dataclasses.replace(self.cluster.etcd, client_port=client))
        ctx = RenderContext(c, c.nodes[0], masked_secrets())
        body = self.local_tls(remote_script("pbx1", "etcd authentication", etcd_render.bootstrap_auth_script(ctx)),
                              "pbx1")
        out = subprocess.run(self.inside("pbx1", ["bash", "-c", body]), input=f"{ETCD_ROOT_PASSWORD}\n{ETCD_NODE_PASSWORD}\n",
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def wait_etcd(self, timeout=20):
        deadline = time.time() + timeout
        for name, (client, _) in self.members.items():
            while True:
                curl_tls = self.local_tls(etcd_render.CURL_TLS, name).split()
                out = subprocess.run(self.inside(name, ["curl", "-sS", "--max-time", "1", *curl_tls,
                                                        f"https://{self.addr[name]}:{client}/health"]),
                                     capture_output=True, text=True)
                if '"health":"true"' in out.stdout:
                    break
                proc = self.etcd[name]
                if proc.poll() is not None or time.time() >= deadline:
                    with open(f"{self.base}/etcd-{name}.log", errors="replace") as fh:
                        log = fh.read()[-1500:]
                    raise AssertionError(f"etcd member {name} on {client} not healthy "
                                         f"({'exited ' + str(proc.returncode) if proc.poll() is not None else 'running'}): "
                                         f"{out.stdout}{out.stderr}; its log: {log}")
                time.sleep(0.1)

    def etcdctl(self, *args, check=True, host: str = "witness") -> str:
        """etcdctl as seen from `host` (netns mode: the witness reaches every member unless cut)."""
        env = {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_USER": "hapbx", "ETCDCTL_PASSWORD": ETCD_NODE_PASSWORD,
               **self.etcd_tls_env(host)}
        # the test's own reads: a member cut from the raft leader, or a loaded host, times out; right
        # after a heal the quorum may need a few seconds more (seen once in 3 CI runs: 3 x 3 s failed)
        for attempt in range(6):
            out = subprocess.run(self.inside(host, ["etcdctl", f"--endpoints={self.endpoints()}",
                                                    "--command-timeout=3s", *args]),
                                 capture_output=True, text=True, env=env, timeout=15)
            if out.returncode == 0:
                break
            time.sleep(0.5 * attempt)
        if check:
            assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def init_primary(self, name: str):
        n = self.nodes[name]
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", n.data, "-U", "postgres",
                        "-A", "trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        with open(f"{n.data}/postgresql.conf", "a", encoding="utf-8") as fh:
            # netns: '*' is this host's addresses only (the file travels to the peer by basebackup)
            fh.write(f"listen_addresses = '{'*' if self.netns else '127.0.0.1'}'\nwal_level = replica\nwal_log_hints = on\n"
                     "max_wal_senders = 6\nmax_replication_slots = 6\nhot_standby = on\nfsync = off\n"
                     "shared_buffers = 16MB\nwal_keep_size = 64MB\nsynchronous_standby_names = ''\n"
                     "wal_receiver_status_interval = 1\nwal_retrieve_retry_interval = 500ms\n")
        if self.netns:
            with open(f"{n.data}/pg_hba.conf", "a", encoding="utf-8") as fh:
                fh.write(f"host all all {RIG_SUBNET} trust\nhost replication all {RIG_SUBNET} trust\n")
        self.sh(name, f"runuser -u postgres -- {PG_BIN}/pg_ctl -D {n.data} -l {n.dir}/pg.log "
                      f"-o '-p {n.pg_port} -k {n.sock}' -w -t 60 start")
        self.psql(name, "create table t (id serial primary key, node text, at timestamptz default clock_timestamp())")
        # the replication role as the data tier creates it: replication + what pg_rewind reads
        self.psql(name, "create role replicator login replication; "
                        "grant execute on function pg_catalog.pg_ls_dir(text, boolean, boolean) to replicator; "
                        "grant execute on function pg_catalog.pg_stat_file(text, boolean) to replicator; "
                        "grant execute on function pg_catalog.pg_read_binary_file(text) to replicator; "
                        "grant execute on function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) "
                        "to replicator")

    def start_redis(self):
        """As on a node: TLS only (a certificate from the rig's CA, the replica checking the master's),
        the failover scripts as the rendered HA user; default (password) for the rig's own calls."""
        for n in self.nodes.values():
            tls = self.ca.issue(f"redis-{n.name}", ips=tuple(sorted({self.addr[n.name], "127.0.0.1"})))
            conf = f"{n.dir}/redis.conf"
            with open(conf, "w", encoding="utf-8") as fh:
                fh.write(f"port 0\ntls-port {n.redis_port}\nbind {' '.join(sorted({'127.0.0.1', self.addr[n.name]}))}\n"
                         f"tls-cert-file {tls.cert}\ntls-key-file {tls.key}\ntls-ca-cert-file {self.ca.cert}\n"
                         f"tls-auth-clients no\ntls-replication yes\nsave \"\"\nappendonly no\ndir {n.dir}\n"
                         f"protected-mode no\nmasterauth {REDIS_PASSWORD}\nuser default on >{REDIS_PASSWORD} ~* &* +@all\n"
                         f"user {redis_render.HA_USER} on >{REDIS_HA_PASSWORD} {redis_render.HA_ACL}\n")
            os.chmod(conf, 0o600)
            p = self.spawn(["redis-server", conf], f"{n.dir}/redis.log", host=n.name if self.netns else None)
            n.redis = p
        for n in self.nodes.values():
            self.wait(lambda n=n: self.redis(n.name, "PING") == "PONG", 10, "redis up")

    def start_daemon(self, name: str):
        n = self.nodes[name]
        n.daemon = self.spawn([f"{self.bin}/leader", "run"], f"{n.dir}/daemon.log",
                              env={**os.environ, "HAPBX_ENV": n.env_file}, host=name if self.netns else None)

    def start_heartbeat(self, name: str):
        """Stands for keepalived's check-local runs (the daemon's proof keepalived lives)."""
        n = self.nodes[name]
        n.heartbeat = self.spawn(["bash", "-c", f"while :; do read -r up _ </proc/uptime; echo $((10#${{up/./}} * 10)) "
                                         f"> {n.run}/hb.tmp && mv {n.run}/hb.tmp "
                                         f"{n.run}/heartbeat; sleep 0.3; done"],
                                 f"{n.dir}/heartbeat.log")

    def bootstrap_pair(self, timeout: float = 60):
        """etcd with auth, Redis, pbx1 primary, pbx2 rejoined by basebackup, both daemons
        running with keepalived's states (pbx1 MASTER), synchronous replication on."""
        self.start_etcd()
        self.wait_etcd()
        self.bootstrap_etcd_auth()
        self.start_redis()
        self.init_primary("pbx1")
        out = self.script("pbx2", "rejoin")
        assert out.returncode == 0, out.stderr
        for name in NODES:
            self.start_heartbeat(name)
            self.start_daemon(name)
        self.wait(lambda: self.status("pbx1").get("writer") == "1", timeout, "pbx1 leader and writer")
        self.notify("pbx1", "MASTER")
        self.notify("pbx2", "BACKUP")
        self.wait_in_sync("pbx1", timeout)

    def wait_in_sync(self, primary: str, timeout: float = 60):
        """The peer streams synchronously, etcd says it may be promoted, Redis follows."""
        peer = self.nodes[primary].peer
        self.wait(lambda: self.psql(primary, "select sync_state from pg_stat_replication", check=False) == "sync",
                  timeout, f"{peer} synchronous standby of {primary}")
        self.wait(lambda: self.etcdctl("get", "/hapbx/rig/sync", "--print-value-only", check=False) == "on",
                  timeout, "sync marked on in etcd")
        self.wait(lambda: self.redis_role(peer) == "slave", timeout, f"{peer} redis replica")

    # --- etcd membership (as root: maintenance calls) -----------------------------------------
    def etcd_root(self, *args, endpoint: str | None = None) -> str:
        env = {**os.environ, "ETCDCTL_API": "3", "ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": ETCD_ROOT_PASSWORD,
               **self.etcd_tls_env("witness")}
        for _ in range(3):      # as etcdctl(): a loaded host or a member cut from the raft leader times out
            out = subprocess.run(self.inside("witness", ["etcdctl", f"--endpoints={endpoint or self.endpoints()}",
                                                         "--command-timeout=3s", *args]),
                                 capture_output=True, text=True, env=env, timeout=15)
            if out.returncode == 0:
                break
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    def etcd_leader(self) -> str:
        """Name of the etcd member that leads the raft group now."""
        import json
        ids = {m["ID"]: m["name"] for m in json.loads(self.etcd_root("member", "list", "-w", "json"))["members"]}
        for name, (client, _) in self.members.items():      # any member that answers (some may be cut)
            try:
                status = json.loads(self.etcd_root("endpoint", "status", "-w", "json",
                                                   endpoint=f"https://{self.addr[name]}:{client}"))
                return ids[status[0]["Status"]["leader"]]
            except AssertionError:
                continue
        raise AssertionError("no etcd member answers endpoint status")

    def etcd_move_leader(self, to: str):
        import json
        ids = {m["name"]: m["ID"] for m in json.loads(self.etcd_root("member", "list", "-w", "json"))["members"]}
        leader = self.etcd_leader()
        if leader != to:
            client = self.members[leader][0]
            self.etcd_root("move-leader", f"{ids[to]:x}", endpoint=f"https://{self.addr[leader]}:{client}")
        self.wait(lambda: self.etcd_leader() == to, 10, f"etcd leader on {to}")

    # --- commands ----------------------------------------------------------------------------
    def sh(self, name: str, cmd: str, timeout=120, check=True) -> subprocess.CompletedProcess:
        env = {**os.environ, "HAPBX_ENV": self.nodes[name].env_file}
        out = subprocess.run(self.inside(name, ["bash", "-c", cmd]), capture_output=True, text=True, env=env, timeout=timeout)
        if check:
            assert out.returncode == 0, (cmd, out.stdout, out.stderr)
        return out

    def script(self, name: str, script: str, *args, timeout=180) -> subprocess.CompletedProcess:
        return self.sh(name, " ".join([f"{self.bin}/{script}", *args]), timeout=timeout, check=False)

    def notify(self, name: str, state: str):
        out = self.script(name, "notify", "INSTANCE", "VI_PBX", state, "100")
        assert out.returncode == 0, out.stderr

    def psql(self, name: str, sql: str, check=True) -> str:
        n = self.nodes[name]
        out = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-A", "-t", "-q",
                              "-h", n.sock, "-p", str(n.pg_port), "-d", "postgres", "-c", sql],
                             capture_output=True, text=True, timeout=30)
        if check:
            assert out.returncode == 0, (name, sql, out.stderr)
        return out.stdout.strip()

    def pg_role(self, name: str) -> str:
        n = self.nodes[name]
        out = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-A", "-t", "-q",
                              "-h", n.sock, "-p", str(n.pg_port), "-d", "postgres", "-c",
                              "select pg_is_in_recovery()", "--set", "connect_timeout=2"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "down"
        return "standby" if out.stdout.strip() == "t" else "primary"

    def pg_pid(self, name: str) -> int | None:
        try:
            with open(f"{self.nodes[name].data}/postmaster.pid") as fh:
                pid = int(fh.readline())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def redis_cli(self, name: str) -> list[str]:
        """redis-cli for the rig's own calls on ``name``'s Redis (TLS; REDISCLI_AUTH=REDIS_PASSWORD)."""
        return ["redis-cli", "--no-auth-warning", "--tls", "--cacert", str(self.ca.cert), "-p",
                str(self.nodes[name].redis_port)]

    def redis(self, name: str, *cmd) -> str:
        out = subprocess.run(self.inside(name, [*self.redis_cli(name), *cmd]),
                             capture_output=True, text=True, timeout=10,
                             env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD})
        return out.stdout.strip()

    def idle(self, name: str) -> bool:
        """No promote/rejoin job of that node's daemon is running."""
        env = f"HAPBX_ENV={self.nodes[name].env_file}".encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read()
                if f"{self.bin}/rejoin".encode() not in cmd and f"{self.bin}/promote".encode() not in cmd:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if env in fh.read().split(b"\0"):
                        return False
            except OSError:
                continue
        return True

    def owner_services(self, name: str) -> str:
        try:
            with open(f"{self.nodes[name].dir}/owner-services") as fh:
                return fh.read().strip()
        except OSError:
            return "-"

    def redis_role(self, name: str) -> str:
        return self.redis(name, "ROLE").split("\n")[0] or "down"

    def status(self, name: str) -> dict:
        path = f"{self.nodes[name].run}/status"
        try:
            with open(path) as fh:
                return dict(line.strip().split("=", 1) for line in fh if "=" in line)
        except OSError:
            return {}

    def wait(self, cond, timeout: float, what: str, step: float = 0.02):
        deadline = time.time() + timeout
        while True:
            if cond():
                return time.time()
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {what}\n{self.logs()}")
            time.sleep(step)

    def logs(self, tail=40) -> str:
        out = []
        for n in self.nodes.values():
            try:
                with open(f"{n.dir}/ha.log") as fh:
                    lines = fh.readlines()[-tail:]
                out.append(f"--- {n.name} ha.log\n" + "".join(lines))
            except OSError:
                pass
        return "\n".join(out)

    def primaries(self) -> list[str]:
        return [n for n in NODES if self.pg_role(n) == "primary"]

    # --- teardown ----------------------------------------------------------------------------
    def stop_pg(self, name: str):
        pid = self.pg_pid(name)
        if pid:
            os.kill(pid, signal.SIGQUIT)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(p.pid, sig)
                    except OSError:
                        pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # jobs the daemons started in their own sessions (promote/rejoin): found by our script dir
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().decode(errors="replace")
            except OSError:
                continue
            if self.bin in cmd:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        for name in NODES:
            self.stop_pg(name)
        time.sleep(0.3)
        for ns in self.ns.values():
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if os.environ.get("HAPBX_RIG_KEEP"):
            print(f"\n  rig kept in {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def ordered_rig(factory, setup=None, teardown=None):
    """The (rig, in_order) fixtures of a scenario module: its tests are the steps of one story
    on one rig, in written order (tests/conftest.py keeps that order when the rest is shuffled;
    the module is marked `scenario`). A step run alone, or picked by -k, first runs the steps
    before it on its rig, each once; a step that already ran as another's prerequisite is not run
    twice. After a failed step the rest is skipped."""
    @pytest.fixture(scope="module")
    def rig(request):
        r = factory()
        r.failures_at_start = request.session.testsfailed
        r.steps_done = set()
        try:
            if setup:
                setup(r)
            yield r
        finally:
            r.close()
            if teardown:
                teardown()

    @pytest.fixture(autouse=True)
    def in_order(rig, request):
        if request.session.testsfailed > rig.failures_at_start:
            pytest.skip("an earlier step failed")
        me = request.function.__name__
        if me in rig.steps_done:
            pytest.skip(f"{me} already ran (and passed) as the prerequisite of a later step")
        steps = [name for name, fn in vars(request.module).items()
                 if name.startswith("test_") and callable(fn) and fn.__module__ == request.module.__name__]
        for name in steps[:steps.index(me)]:
            if name not in rig.steps_done:
                getattr(request.module, name)(rig)      # a prerequisite: the story up to this step
                rig.steps_done.add(name)
        yield
        rig.steps_done.add(me)

    return rig, in_order


def timing(name: str, seconds: float) -> None:
    """A measured duration in the test output (`-s`), for the README's figures."""
    print(f"\n  [timing] {name}: {seconds * 1000:.0f} ms", flush=True)
