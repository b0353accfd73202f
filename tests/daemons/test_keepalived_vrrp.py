"""The rendered keepalived.conf of the lab stack in action: two real keepalived in two
private network namespaces joined by a veth pair (the nodes' addresses and the VIP exist
only there), each with the rendered HA scripts, a private Redis and a stand-in for
pg_isready. Checks the VRRP behaviour the failover design relies on and times it:
the lease holder's +weight wins the first election, SIGKILL leaves the VIP behind
(the measured danger) and vip-release (the unit's ExecStopPost) removes it, a restarted
node does not take the VIP back (nopreempt), the yield file sends a VIP owner to FAULT,
a failing local health check moves the VIP, notify records every state.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from components.config import load_stack_file  # noqa: E402
from components.render import RenderContext, masked_secrets  # noqa: E402
from components.render import failover, keepalived  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


class Pair:
    def __init__(self):
        self.cluster, _ = load_stack_file(f"{ROOT}/Pulumi.lab.yaml", assume_secrets=True)
        self.tag = f"hapbxka{os.getpid() % 100000}"
        self.base = tempfile.mkdtemp(prefix="hapbx-ka-")
        self.ns, self.procs, self.dirs, self.reach_env = {}, {}, {}, {}
        self.iface = self.cluster.network.interface
        self.vip = self.cluster.vip.address

    def setup(self):
        c = self.cluster
        for i, node in enumerate(c.nodes, start=1):
            ns = f"{self.tag}-{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.ns[node.name] = ns
        a, b = (self.ns[n.name] for n in c.nodes)
        subprocess.run(["ip", "link", "add", "hapbxka0", "netns", a, "type", "veth", "peer", "name", "hapbxka1",
                        "netns", b], check=True)
        for node, link in zip(c.nodes, ("hapbxka0", "hapbxka1")):
            ns = self.ns[node.name]
            for cmd in (f"ip link set {link} name {self.iface}", f"ip link set {self.iface} up",
                        f"ip addr add {node.address}/{c.network.prefix} dev {self.iface}", "ip link set lo up"):
                subprocess.run(["ip", "netns", "exec", ns, *shlex.split(cmd)], check=True)
            self._prepare(node)

    def _prepare(self, node):
        d = f"{self.base}/{node.name}"
        os.makedirs(f"{d}/stub")
        self.dirs[node.name] = d
        ctx = RenderContext(self.cluster, node, masked_secrets())
        files = {f.path: f for f in failover.files(ctx) + keepalived.files(ctx)}
        os.makedirs(f"{d}/scripts")
        for path, f in files.items():
            if os.path.dirname(path) == failover.HA_BIN:     # the entry points (no leader daemon here)
                with open(f"{d}/scripts/{os.path.basename(path)}", "w") as fh:
                    fh.write(f.content)
        with open(f"{d}/keepalived.conf", "w") as fh:
            fh.write(files[keepalived.CONF].content)
        # stand-in: pg_isready healthy unless the test drops "pg-down"
        with open(f"{d}/stub/pg_isready", "w") as fh:
            fh.write(f"#!/bin/sh\n[ ! -e {d}/pg-down ]\n")
        os.chmod(f"{d}/stub/pg_isready", 0o755)
        env = failover.env_values(ctx)
        # Redis here is a plain stand-in on loopback with no password (REDIS_TLS_CA="": no TLS): what
        # check-local needs is that it answers; TLS and the HA user are tested in test_redis.py
        env.update(HA_LIB_DIR=f"{d}/lib", HA_SECRETS_ENV="", HA_SYSLOG="0", HA_LOG_FILE=f"{d}/ha.log",
                   PG_BIN=f"{d}/stub", CHECK_SIP="0", REDIS_TLS_CA="")
        with open(f"{d}/ha.env", "w") as fh:
            fh.write(failover.format_env(env))
        # the real reachability watcher (its unit's settings), probing the namespace's own loopback:
        # cut() drops its echo requests there
        self.reach_env[node.name] = {**failover.reach_env(ctx), "REACH_TARGETS": "127.0.0.1"}

    def start(self, name: str):
        d, ns = self.dirs[name], self.ns[name]
        setup = " && ".join([
            "mount -t tmpfs hapbx /run", "mount -t tmpfs hapbx /usr/local/lib",
            f"mkdir -p {failover.HA_BIN} /run/hapbx/ha",
            f"install -m 0755 {d}/scripts/* {failover.HA_BIN}/",
            f"(redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes "
            f"--pidfile /run/redis.pid --logfile {d}/redis.log)",
            f"(setsid {failover.HA_BIN}/reach </dev/null >>{d}/reach.log 2>&1 &)",
            f"exec keepalived --dont-fork --log-console --log-detail --no-syslog -f {d}/keepalived.conf",
        ])
        log = open(f"{d}/keepalived.log", "ab")
        p = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
                              "bash", "-c", setup], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **self.reach_env[name], "HAPBX_ENV": f"{d}/ha.env",
                                  "PATH": f"{d}/stub:{os.environ['PATH']}"},
                             start_new_session=True)
        log.close()
        self.procs[name] = p
        self.wait(lambda: self.run_in(name, "test -e /run/hapbx/ha/leader").returncode == 0, 10,
                  f"keepalived started on {name}")

    def run_in(self, name: str, cmd: str) -> subprocess.CompletedProcess:
        """A command inside that node's network and mount namespaces (keepalived's)."""
        return subprocess.run(["nsenter", "-t", str(self.procs[name].pid), "-m", "-n", "bash", "-c", cmd],
                              capture_output=True, text=True, timeout=20,
                              env={**os.environ, "HAPBX_ENV": f"{self.dirs[name]}/ha.env"})

    def cut(self, name: str, on: bool = True) -> None:
        """Isolate a node from its reachability targets: its echo requests are dropped."""
        rules = ("table inet hapbxcut\ndelete table inet hapbxcut\n" + (
            "table inet hapbxcut {\n chain out {\n  type filter hook output priority 0; policy accept;\n"
            "  icmp type echo-request drop\n }\n}\n" if on else ""))
        subprocess.run(["ip", "netns", "exec", self.ns[name], "nft", "-f", "-"], input=rules, text=True, check=True)

    def reach_status(self, name: str) -> dict[str, str]:
        out = self.run_in(name, "cat /run/hapbx/ha/reach.status 2>/dev/null").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def has_vip(self, name: str) -> bool:
        out = subprocess.run(["ip", "netns", "exec", self.ns[name], "ip", "-4", "-o", "addr", "show", "dev",
                              self.iface], capture_output=True, text=True)
        return f" {self.vip}/" in out.stdout

    def state(self, name: str) -> str:
        try:
            with open(f"{self.dirs[name]}/ha.log") as fh:
                lines = [ln for ln in fh if "keepalived: " in ln]
            return lines[-1].split("keepalived: ")[1].split()[0] if lines else "?"
        except OSError:
            return "?"

    def wait(self, cond, timeout, what, step=0.01):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                logs = ""
                for d in self.dirs.values():
                    for f in ("keepalived.log", "ha.log"):
                        if os.path.exists(f"{d}/{f}"):
                            logs += f"--- {d}/{f}\n" + open(f"{d}/{f}", errors="replace").read()[-3000:]
                raise AssertionError(f"timed out ({timeout}s): {what}\n{logs}")
            time.sleep(step)
        return time.time()

    def kill(self, name: str, sig=signal.SIGKILL):
        """Signal every keepalived process of that node (parent and VRRP child). SIGKILL goes
        to all at once, as `systemctl kill -s KILL` does (frozen first: none can react)."""
        pids = []
        for pid in subprocess.run(["ip", "netns", "pids", self.ns[name]], capture_output=True,
                                  text=True).stdout.split():
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    if fh.read().strip() == "keepalived":
                        pids.append(int(pid))
            except OSError:
                pass
        sigs = [signal.SIGSTOP, signal.SIGKILL] if sig == signal.SIGKILL else [sig]
        for s in sigs:
            for pid in pids:
                try:
                    os.kill(pid, s)
                except OSError:
                    pass

    def close(self):
        for name, ns in self.ns.items():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGCONT)
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", self.base])


@pytest.fixture
def pair():
    p = Pair()
    try:
        p.setup()
        yield p
    finally:
        p.close()


def test_vrrp_behaviour_of_the_rendered_config(pair):
    c = pair.cluster
    n1, n2 = (n.name for n in c.nodes)
    advert = c.vip.advert_interval
    timings = {}
    # the lease holder (leader file 1: +weight) starts first and takes the VIP
    pair.start(n1)
    pair.run_in(n1, "echo 1 > /run/hapbx/ha/leader")
    pair.wait(lambda: pair.has_vip(n1), 5, "VIP on the leader")
    pair.start(n2)
    time.sleep(10 * advert + 0.5)
    assert pair.has_vip(n1) and not pair.has_vip(n2)
    assert pair.state(n1) == "MASTER" and pair.state(n2) == "BACKUP"

    # SIGKILL: the VIP stays behind on the killed node while the peer takes it too
    t0 = time.time()
    pair.kill(n1)
    t = pair.wait(lambda: pair.has_vip(n2), 5, "peer takes the VIP")
    timings["SIGKILL -> VIP on peer"] = (t - t0) * 1000
    assert pair.has_vip(n1), "expected the measured danger: VIP left on the killed node"
    # what the unit drop-in runs after every stop (ExecStopPost): the VIP goes, STOP is recorded
    out = subprocess.run(["ip", "netns", "exec", pair.ns[n1], "unshare", "-m", "bash", "-c",
                          f"mount -t tmpfs x /run && mkdir -p /run/hapbx/ha && "
                          f"bash {pair.dirs[n1]}/scripts/vip-release stop && cat /run/hapbx/ha/vrrp"],
                         capture_output=True, text=True, env={**os.environ, "HAPBX_ENV": f"{pair.dirs[n1]}/ha.env"})
    assert out.returncode == 0 and out.stdout.startswith("STOP"), out.stderr
    assert not pair.has_vip(n1) and pair.has_vip(n2)

    # Restart=always brings keepalived back: BACKUP, the VIP stays on the peer (nopreempt),
    # even with the leader weight on the restarted node
    pair.procs[n1].wait(5)
    pair.start(n1)
    pair.run_in(n1, "echo 1 > /run/hapbx/ha/leader")
    time.sleep(10 * advert + 1.0)
    assert pair.has_vip(n2) and not pair.has_vip(n1), "a recovered node took the VIP back"

    # the peer, MASTER without the lease while n1 leads, yields: FAULT, the VIP comes to n1
    t0 = time.time()
    pair.run_in(n2, "echo 1 > /run/hapbx/ha/yield")
    t = pair.wait(lambda: pair.has_vip(n1) and not pair.has_vip(n2), 5, "VIP moves after the yield")
    timings["yield -> VIP on the leader"] = (t - t0) * 1000
    pair.wait(lambda: pair.state(n2) == "FAULT", 3, "yielding node in FAULT")
    pair.run_in(n2, "echo 0 > /run/hapbx/ha/yield")
    pair.wait(lambda: pair.state(n2) == "BACKUP", 3, "back to BACKUP")

    # local health fails on the VIP owner (PostgreSQL not accepting): FAULT, the VIP moves
    t0 = time.time()
    open(f"{pair.dirs[n1]}/pg-down", "w").close()
    t = pair.wait(lambda: pair.has_vip(n2) and not pair.has_vip(n1), 10, "VIP moves on a failed check")
    timings["postgres check failing -> VIP on peer"] = (t - t0) * 1000
    assert pair.state(n1) == "FAULT"
    os.unlink(f"{pair.dirs[n1]}/pg-down")

    # isolation: neither gateway nor witness answers the VIP owner: the watcher writes 1 after
    # reachLostAfterMs of silence, FAULT, the VIP leaves at once (a vrrp_script needed 3 × 1 s)
    pair.wait(lambda: pair.state(n1) == "BACKUP", 5, "n1 healthy again")
    assert pair.reach_status(n2).get("isolated") == "0"
    lost_after = c.ha.reach_lost_after_ms / 1000
    t0 = time.time()
    pair.cut(n2)
    t = pair.wait(lambda: not pair.has_vip(n2), 10, "VIP leaves the isolated node")
    timings["isolated -> VIP gone from it"] = (t - t0) * 1000
    pair.wait(lambda: pair.has_vip(n1), 5, "VIP on the peer")
    assert t - t0 < lost_after + 1.5, f"isolated node kept the VIP {t - t0:.2f} s (lost after {lost_after} s)"
    pair.wait(lambda: pair.state(n2) == "FAULT", 3, "isolated node in FAULT")
    pair.wait(lambda: pair.reach_status(n2).get("isolated") == "1", 3, "watcher reports isolation")
    pair.cut(n2, on=False)
    pair.wait(lambda: pair.state(n2) == "BACKUP", 5, "n2 back to BACKUP once its probes answer")
    assert pair.has_vip(n1) and not pair.has_vip(n2), "the healed node took the VIP back"
    st = pair.reach_status(n1)
    assert st.get("isolated") == "0" and st.get("isolations") == "0", st

    # frozen VIP owner (the leader, +weight): the peer takes the VIP too; on resume the
    # leader's higher priority wins and the peer drops it again
    t0 = time.time()
    pair.kill(n1, signal.SIGSTOP)
    t = pair.wait(lambda: pair.has_vip(n2), 5, "peer takes the VIP of a frozen holder")
    timings["frozen holder -> VIP on peer too"] = (t - t0) * 1000
    assert pair.has_vip(n1), "a frozen keepalived keeps its VIP"
    pair.kill(n1, signal.SIGCONT)
    t0 = time.time()
    t = pair.wait(lambda: pair.has_vip(n1) and not pair.has_vip(n2), 5, "one owner again after resume")
    timings["resume -> single owner (the leader)"] = (t - t0) * 1000

    # a clean stop (SIGTERM): keepalived releases the VIP itself and notifies STOP
    t0 = time.time()
    pair.kill(n1, signal.SIGTERM)
    t = pair.wait(lambda: pair.has_vip(n2) and not pair.has_vip(n1), 5, "VIP to n2 after a clean stop")
    timings["clean stop -> VIP on peer"] = (t - t0) * 1000
    pair.wait(lambda: pair.state(n1) == "STOP", 3, "STOP notified")
    print("\n  [keepalived timings] " + ", ".join(f"{k}: {v:.0f} ms" for k, v in timings.items()), flush=True)
    # with 0.1 s adverts the VIP moves in well under a second
    assert timings["SIGKILL -> VIP on peer"] < 1000 and timings["clean stop -> VIP on peer"] < 1000
