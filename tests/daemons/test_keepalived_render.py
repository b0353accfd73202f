"""keepalived of both stacks: `keepalived -t` on every node's config with the real rendered
HA scripts in place, the unit drop-in checked by systemd-analyze, and the settings that
make the VIP safe (unicast peers, BACKUP + nopreempt, VRRPv3 fractional adverts, garp,
track scripts and files, notify)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from components import remote as rc  # noqa: E402
from components.config import load_stack_file  # noqa: E402
from components.render import RenderContext, masked_secrets, postgres_unit  # noqa: E402
from components.render import failover, keepalived  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACKS = ["lab", "prod"]


def cluster_of(stack):
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    return cluster


def node_files(cluster, node):
    ctx = RenderContext(cluster, node, masked_secrets())
    return {f.path: f for f in failover.files(ctx) + keepalived.files(ctx)}


def ha_bin_copy(files: dict, tmp_path) -> "os.PathLike":
    """The rendered HA scripts under tmp_path/bin, as HA_BIN holds them on a node."""
    bin_dir = tmp_path / "bin"
    for path, f in files.items():
        if path.startswith(failover.HA_BIN + "/"):
            dest = bin_dir / os.path.relpath(path, failover.HA_BIN)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.content)
    return bin_dir


def sandbox(files: dict, iface: str, commands: str) -> subprocess.CompletedProcess:
    """Run `commands` in a throwaway mount+network namespace holding the node's
    interface and every rendered file under /usr/local/lib and /etc/systemd/system."""
    with tempfile.TemporaryDirectory() as d:
        setup = ["mount -t tmpfs hapbx /usr/local/lib", "mount -t tmpfs hapbx /etc/systemd/system",
                 f"ip link add {iface} type veth peer name hapbx-kt0"]
        for path, f in files.items():
            if not (path.startswith("/usr/local/lib/") or path.startswith("/etc/systemd/system/")
                    or path.startswith("/etc/keepalived/")):
                continue
            local = os.path.join(d, path.lstrip("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "w", encoding="utf-8") as fh:
                fh.write(f.content)
            if path.startswith("/etc/keepalived/"):
                continue
            setup.append(f"install -D -m {f.mode} {shlex.quote(local)} {shlex.quote(path)}")
        script = " && ".join(setup) + f" && cd {shlex.quote(d)} && {commands}"
        return subprocess.run(["unshare", "-m", "-n", "bash", "-ec", script], capture_output=True, text=True,
                              timeout=60)


@pytest.mark.parametrize("stack", STACKS)
def test_keepalived_config_passes_keepalived_t_with_the_real_scripts(stack):
    cluster = cluster_of(stack)
    for node in cluster.nodes:
        files = node_files(cluster, node)
        out = sandbox(files, cluster.network.interface, "keepalived -t -f etc/keepalived/keepalived.conf")
        assert out.returncode == 0, (stack, node.name, out.stdout, out.stderr)


@pytest.mark.parametrize("stack", STACKS)
def test_keepalived_validator_rejects_a_broken_config(stack):
    from tests.daemons.validators import run_validator
    cluster = cluster_of(stack)
    conf = node_files(cluster, cluster.nodes[0])[keepalived.CONF]
    assert run_validator(conf).returncode == 0
    for damage in ("\n    bogus_keyword 1\n", "\n    advert_int abc\n"):
        broken = type(conf)(**{**conf.__dict__, "content": conf.content.replace("    nopreempt\n", "    nopreempt" + damage)})
        assert run_validator(broken).returncode != 0, damage


@pytest.mark.parametrize("stack", STACKS)
def test_vrrp_settings_come_from_config(stack):
    cluster = cluster_of(stack)
    for node in cluster.nodes:
        peer = cluster.peer_of(node)
        conf = node_files(cluster, node)[keepalived.CONF].content
        inst = conf[conf.index("vrrp_instance"):]
        assert re.search(r"^\s+state BACKUP$", inst, re.M) and re.search(r"^\s+nopreempt$", inst, re.M)
        assert f"unicast_src_ip {node.address}\n" in inst
        assert re.search(r"unicast_peer \{\s+" + re.escape(peer.address) + r"\s+\}", inst)
        assert f"priority {node.priority}\n" in inst
        assert f"advert_int {cluster.vip.advert_interval:g}\n" in inst
        assert f"version {cluster.vip.vrrp_version}\n" in inst
        assert f"virtual_router_id {cluster.vip.router_id}\n" in inst
        assert f"{cluster.vip.address}/{cluster.network.prefix} dev {cluster.network.interface}" in inst
        assert f"garp_master_repeat {cluster.vip.garp_repeat}\n" in inst
        assert f'notify "{failover.HA_BIN}/notify"' in inst
        assert re.search(r"track_script \{\s+chk_local\s+\}", inst)
        assert re.search(r"track_file \{\s+leader\s+yield\s+reach\s+sip\s+\}", inst)
        # isolation: the watcher's file (weight 0: non-zero is FAULT), created as "reachable" only
        # when missing: an isolated node's 1 survives a keepalived restart
        track = conf[conf.index("track_file reach {"):]
        track = track[:track.index("}")]
        assert f'file "{failover.HA_RUN_DIR}/reach"' in track and "weight 0" in track
        assert "init_file 0" in track and "overwrite" not in track
        # the gateway (and the witness) are the isolation probes, in the watcher's unit
        unit = node_files(cluster, node)[f"/etc/systemd/system/{failover.REACH_UNIT}"].content
        targets = [cluster.network.gateway] + ([cluster.witness.address] if cluster.witness else [])
        assert 'Environment="REACH_TARGETS=' + " ".join(targets) + '"' in unit
        assert f'Environment="REACH_LOST_AFTER={cluster.ha.reach_lost_after_ms / 1000:g}"' in unit
        assert "REACH_TARGETS" not in node_files(cluster, node)[failover.HA_ENV].content
    # fractional adverts need VRRPv3; both stacks use 0.1 s
    assert cluster.vip.vrrp_version == 3 and cluster.vip.advert_interval < 1


@pytest.mark.parametrize("stack", STACKS)
def test_unit_dropin_drops_the_vip_and_restarts(stack):
    cluster = cluster_of(stack)
    files = node_files(cluster, cluster.nodes[0])
    dropin = files[keepalived.DROPIN].content
    assert "Restart=always" in dropin and "StartLimitIntervalSec=0" in dropin
    assert f"ExecStopPost={failover.HA_BIN}/vip-release stop" in dropin
    assert f"ExecStartPre={failover.HA_BIN}/vip-release start" in dropin
    assert f"After={postgres_unit(cluster)} redis-server.service" in dropin
    assert postgres_unit(cluster) == f"postgresql@{cluster.postgres.version}-main.service"
    # systemd reads the packaged unit plus our drop-in, and our leader unit, without a complaint
    out = sandbox(files, cluster.network.interface,
                  "cp /lib/systemd/system/keepalived.service /etc/systemd/system/ && "
                  "systemd-analyze verify --man=no /etc/systemd/system/keepalived.service "
                  f"/etc/systemd/system/{failover.LEADER_UNIT} /etc/systemd/system/{failover.REACH_UNIT}")
    assert out.returncode == 0 and "keepalived" not in out.stderr and "hapbx" not in out.stderr, out.stderr


def test_vip_release_removes_the_vip_and_records_stop():
    """What the drop-in runs after keepalived dies: the VIP goes, the daemon learns STOP."""
    cluster = cluster_of("lab")
    node = cluster.nodes[0]
    files = node_files(cluster, node)
    env = failover.env_values(RenderContext(cluster, node, masked_secrets()))
    env.update(HA_RUN_DIR="/run/hapbx-test", HA_LIB_DIR="/run/hapbx-test/lib", HA_SYSLOG="0", HA_SECRETS_ENV="")
    env_text = failover.format_env(env)
    iface, vip = cluster.network.interface, cluster.vip.address
    cmds = (f"mount -t tmpfs t /run && printf %s {shlex.quote(env_text)} > /run/ha.env && export HAPBX_ENV=/run/ha.env && "
            f"ip link set {iface} up && ip addr add {vip}/24 dev {iface} && "
            f"{failover.HA_BIN}/vip-release stop && {failover.HA_BIN}/vip-release stop && "
            f"! ip -4 addr show dev {iface} | grep -q {vip} && cat /run/hapbx-test/vrrp")
    out = sandbox(files, iface, cmds)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("STOP ")


def test_check_local_asks_kamailio_with_sip_options(tmp_path):
    """chk_local's SIP probe: an OPTIONS to the node's address must get any SIP answer, once
    our Kamailio configuration is on the node (before that Kamailio is not judged)."""
    import socket
    import threading
    cluster = cluster_of("lab")
    node = cluster.nodes[0]
    files = node_files(cluster, node)
    bin_dir = ha_bin_copy(files, tmp_path)
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "pg_isready").write_text("#!/bin/sh\nexit 0\n")
    (stub / "redis-cli").write_text("#!/bin/sh\necho PONG\n")
    for p in stub.iterdir():
        p.chmod(0o755)
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text("# stock configuration\n")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    env = failover.env_values(RenderContext(cluster, node, masked_secrets()))
    env.update(HA_RUN_DIR=str(tmp_path / "run"), HA_LIB_DIR=str(tmp_path / "lib"), HA_SECRETS_ENV="",
               HA_SYSLOG="0", PG_BIN=str(stub), SIP_ADDR="127.0.0.1", SIP_PORT=str(port), KAMAILIO_CFG=str(cfg))
    (tmp_path / "ha.env").write_text(failover.format_env(env))
    run_env = {**os.environ, "HAPBX_ENV": str(tmp_path / "ha.env"), "PATH": f"{stub}:{os.environ['PATH']}"}

    def check():
        return subprocess.run(["bash", str(bin_dir / "check-local")], env=run_env, capture_output=True, text=True,
                              timeout=10)

    assert check().returncode == 0                      # stock config: Kamailio not judged yet
    cfg.write_text("# Managed by high-cc-pbx (Pulumi). Local edits are overwritten on the next apply.\n")
    out = check()
    assert out.returncode == 1 and "sip" in out.stderr  # ours, but nobody answers
    # an apply restarting Kamailio on purpose (the handler's note): not a failure, for 30 s at most
    assert rc.PLANNED_DIR == failover.HA_RUN_DIR

    def honoured_for(name: str, seconds: int, failing: str) -> None:
        """A restart note written that many seconds ago hides the failure; one second older, not."""
        note = tmp_path / "run" / f"planned-restart.{name}"
        note.write_text(f"{int(time.time()) - seconds + 2}\n")
        assert check().returncode == 0
        note.write_text(f"{int(time.time()) - seconds - 1}\n")
        out = check()
        assert out.returncode == 1 and failing in out.stderr
        note.unlink()

    honoured_for("kamailio.service", 30, "sip")
    got = {}

    sock.setblocking(False)
    try:
        while sock.recv(4096):                          # the unanswered probe of the check above
            pass
    except BlockingIOError:
        pass
    sock.settimeout(5)

    def answer():
        data, addr = sock.recvfrom(4096)
        got["request"] = data.decode()
        sock.sendto(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", addr)

    th = threading.Thread(target=answer)
    th.start()
    out = check()
    th.join(5)
    sock.close()
    assert out.returncode == 0, out.stderr
    assert got["request"].startswith("OPTIONS sip:") and "CSeq: 1 OPTIONS" in got["request"]
    assert (tmp_path / "run" / "heartbeat").read_text().strip().isdigit()
    # the primary crashed and the leader daemon restarts it in place (its note): not a failure,
    # for PG_CRASH_GRACE (10 s) at most; Kamailio is judged on its own meanwhile
    cfg.write_text("# stock configuration\n")
    (stub / "pg_isready").write_text("#!/bin/sh\nexit 2\n")
    out = check()
    assert out.returncode == 1 and "postgres" in out.stderr
    honoured_for("postgres", int(env["PG_CRASH_GRACE"]), "postgres")


def test_sip_down_faults_keepalived_when_kamailio_goes_unless_planned(tmp_path):
    """kamailio.service's drop-in runs sip-down after every stop and start: a crash or a stop by
    hand writes 1 to the `sip` track file (keepalived FAULT at once), an apply's planned restart
    does not, and Kamailio running again writes 0. keepalived -t accepts the track file (the
    first test of this module), and the drop-in names the installed script."""
    cluster = cluster_of("lab")
    node = cluster.nodes[0]
    files = node_files(cluster, node)
    bin_dir = ha_bin_copy(files, tmp_path)
    run = tmp_path / "run"
    env = failover.env_values(RenderContext(cluster, node, masked_secrets()))
    env.update(HA_RUN_DIR=str(run), HA_LIB_DIR=str(tmp_path / "lib"), HA_SECRETS_ENV="", HA_SYSLOG="0")
    (tmp_path / "ha.env").write_text(failover.format_env(env))

    def sip_down(mode: str, result: str = "signal") -> str:
        out = subprocess.run(["bash", str(bin_dir / "sip-down"), mode], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "HAPBX_ENV": str(tmp_path / "ha.env"), "SERVICE_RESULT": result})
        assert out.returncode == 0, out.stderr
        return (run / "sip-down").read_text().strip()

    assert sip_down("start") == "0"
    assert sip_down("stop") == "1"                       # SIGKILL, crash, `systemctl stop` by hand
    assert sip_down("start") == "0"
    (run / "planned-restart.kamailio.service").write_text(f"{int(time.time())}\n")
    assert sip_down("stop", "success") == "0"            # the apply's handler restarts it on purpose
    (run / "planned-restart.kamailio.service").write_text(f"{int(time.time()) - 31}\n")
    assert sip_down("stop") == "1"                       # an old note hides nothing
    conf = files[keepalived.CONF].content
    assert re.search(r'track_file sip \{\s*file "%s"' % re.escape(failover.SIP_DOWN_FILE), conf)
    assert re.search(r"track_file \{[^}]*\bsip\b", conf)
    from components.render import kamailio
    dropin = {f.path: f for f in kamailio.files(RenderContext(cluster, node, masked_secrets()))}[kamailio.DROPIN].content
    assert f"ExecStopPost=+-{failover.HA_BIN}/sip-down stop" in dropin
    assert f"ExecStartPost=+-{failover.HA_BIN}/sip-down start" in dropin
