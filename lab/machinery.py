"""The lab's public operations: up, down, status, ssh into nodes, stop/start nodes.

up converges: what exists and is right is left alone (a running node keeps its pid),
what is missing is made. down removes what the lab made (nodes, cgroups, bridge, nft
table, state_dir) and nothing else; the image cache stays for the next lab.
"""
from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import image, network
from .host import LabError, Progress, command, ensure_host_packages, remove_tree
from .machine import Machine
from .spec import LabNode, LabSpec

BOOT_TIMEOUT = 90.0   # start to sshd measured 1.1-1.5 s here; generous for a loaded host
STOP_TIMEOUT = 30.0   # clean shutdown measured 0.2-0.4 s here (2.5 s in DESIGN.md)

Sink = Callable[[str], None]


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str
    host_key: str   # "ssh-ed25519 AAAA..." as pinned in known_hosts
    machine: str    # systemd-nspawn machine name, unique across labs


@dataclass(frozen=True)
class LabInfo:
    name: str
    bridge: str
    subnet: str
    host_address: str
    private_key_path: str
    known_hosts_path: str
    nodes: tuple[NodeInfo, ...]

    def node(self, name: str) -> NodeInfo:
        return next(n for n in self.nodes if n.name == name)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    pid: int | None     # systemd-nspawn's pid while the node runs
    ssh: bool           # sshd answers on address:22

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class LabStatus:
    name: str
    bridge_up: bool
    isolated: bool      # the lab's nft forward-drop table is present
    nodes: tuple[NodeStatus, ...]

    @property
    def up(self) -> bool:
        return self.bridge_up and self.isolated and all(n.running and n.ssh for n in self.nodes)

    def node(self, name: str) -> NodeStatus:
        return next(n for n in self.nodes if n.name == name)


# --- up -----------------------------------------------------------------

def up(spec: LabSpec, progress: Sink = print) -> LabInfo:
    p = Progress(spec.name, progress)
    started = time.monotonic()
    with p.step("host packages", hint="install them with apt-get yourself, then run up again"):
        installed = ensure_host_packages()
    if installed:
        p.say(f"installed host packages: {' '.join(installed)}")
    _ensure_images(spec, p)
    _drop_removed_nodes(spec, p)
    with p.step("lab ssh key"):
        _ensure_lab_key(spec)
    # The forward drop exists before the bridge does: never a moment without it.
    with p.step(f"isolation: nft table inet {spec.nft_table}"):
        network.ensure_isolation(spec)
    with p.step(f"bridge {spec.bridge} {spec.host_address}/{spec.prefixlen}",
                hint="see the message; `ip -br addr` shows what the host has"):
        network.ensure_bridge(spec)
    to_boot = [n for n in spec.nodes if _needs_boot(spec, n, p)]
    with p.step("node disks, keys and known_hosts"):
        for node in to_boot:  # a running node's upper dir must not change under it
            Machine(spec, node.name).prepare(node, _lowers(spec, node), _authorized_key(spec))
        _write_known_hosts(spec)
    _boot(spec, to_boot, p)
    p.say(f"up: {len(spec.nodes)} nodes ... {time.monotonic() - started:.1f}s")
    return info(spec)


def _ensure_images(spec: LabSpec, p: Progress) -> None:
    cache = spec.cache
    suite = spec.release
    if image.missing(cache, suite, ()):
        with p.step(f"build base image {suite} (debootstrap, about a minute)",
                    hint="check the host reaches the Debian archive (`apt-get update`), "
                         "then run up again", announce=True):
            image.build_base(cache, suite)
    lists = {n.name: image.normalize(n.packages) for n in spec.nodes}
    for packages in sorted(set(lists.values()) - {()}):
        if image.missing(cache, suite, packages):
            users = ", ".join(name for name, pkgs in lists.items() if pkgs == packages)
            with p.step(f"build package layer for {users}: {' '.join(packages)}",
                        hint=f"check the names are Debian {suite} packages, then run up again",
                        announce=True):
                image.build_layer(cache, suite, packages)


def _ensure_lab_key(spec: LabSpec) -> None:
    if spec.private_key_path.exists():
        return
    spec.ssh_dir.mkdir(parents=True, exist_ok=True)
    spec.ssh_dir.chmod(0o700)
    command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hapbx-lab-{spec.name}",
             "-f", str(spec.private_key_path)])


def _authorized_key(spec: LabSpec) -> str:
    return spec.private_key_path.with_suffix(".pub").read_text()


def _write_known_hosts(spec: LabSpec) -> None:
    # Pinned by address and by name; nothing is ever learned on first use.
    lines = [f"{n.address},{n.name} {Machine(spec, n.name).host_key_line()}\n"
             for n in spec.nodes]
    spec.known_hosts_path.write_text("".join(lines))


def _drop_removed_nodes(spec: LabSpec, p: Progress) -> None:
    """Nodes of this lab that the spec no longer lists are stopped and deleted."""
    wanted = {n.name for n in spec.nodes}
    for m in _machines(spec):
        if m.name not in wanted:
            with p.step(f"remove {m.name} (no longer in the spec)"):
                m.stop(STOP_TIMEOUT)
                remove_tree(m.dir)


def _needs_boot(spec: LabSpec, node: LabNode, p: Progress) -> bool:
    """True for a node that is not running; stops one whose package list changed."""
    m = Machine(spec, node.name)
    pid = m.pid()
    if pid is None:
        return True
    if m.image() != ":".join(map(str, _lowers(spec, node))):
        # It will get a fresh disk over the new layer (prepare) and boot onto it.
        with p.step(f"stop {node.name} (package list changed)"):
            m.stop(STOP_TIMEOUT)
        return True
    p.say(f"{node.name} already running (pid {pid})")
    return False


def _boot(spec: LabSpec, nodes: Sequence[LabNode], p: Progress) -> None:
    """Start all nodes at once, then wait for each one: "boot" ends when its sshd
    answers, "settle" when systemd has finished its boot jobs (both timed from start)."""
    starts = {}
    for node in nodes:
        m = Machine(spec, node.name)
        starts[node.name] = time.monotonic()
        with p.step(f"start {node.name}", hint=f"read {m.console_log}"):
            m.start(node, _lowers(spec, node))
    # Two passes: every node's sshd first, so each "boot" time is its own, not the
    # time spent waiting for another node to settle.
    for step, wait in (("boot", lambda m, n: m.wait_ssh(n.address, BOOT_TIMEOUT)),
                       ("settle", lambda m, n: _settle(spec, n, p))):
        for node in nodes:
            m = Machine(spec, node.name)
            with p.step(f"{step} {node.name}", since=starts[node.name],
                        hint=f"read the node's console log {m.console_log}; "
                             "then run down and up again"):
                wait(m, node)


def _settle(spec: LabSpec, node: LabNode, p: Progress) -> None:
    """Log in once (proves the pinned host key and the lab key) and wait for the boot
    jobs to finish, so whatever runs next finds daemons started, not starting."""
    proc = run(spec, node.name, "systemctl is-system-running --wait; "
               "systemctl --failed --no-legend --plain | cut -d' ' -f1", timeout=BOOT_TIMEOUT)
    words = proc.stdout.split()
    if proc.returncode == 255 or not words:  # 255: ssh's own failure
        raise LabError(f"settle {node.name}", f"login as root failed: {proc.stderr.strip()}",
                       f"compare {spec.known_hosts_path} with the node's "
                       "/etc/ssh/ssh_host_ed25519_key.pub")
    state, failed = words[0], words[1:]
    if state == "degraded":
        # Not fatal: the stack applied next may well be what fixes those units.
        p.say(f"{node.name} is degraded, failed units: {' '.join(failed)}")
    elif state != "running":
        raise LabError(f"settle {node.name}", f"systemd reports {state!r}",
                       "look at `systemctl list-jobs` in the node: "
                       + shlex.join(ssh_argv(spec, node.name)))


# --- down -------------------------------------------------------------------

def down(spec: LabSpec, progress: Sink = print) -> None:
    p = Progress(spec.name, progress)
    started = time.monotonic()
    if not (spec.state.exists() or network.bridge_exists(spec)
            or network.isolation_present(spec)):
        p.say("down: not up, nothing to do")
        return
    for m in _machines(spec):
        with p.step(f"stop {m.name}", hint="see `ps -ef | grep systemd-nspawn`"):
            m.stop(STOP_TIMEOUT)  # also drops cgroups a crashed node left behind
    with p.step(f"remove bridge {spec.bridge}", hint="check `ip link show`"):
        network.remove_bridge(spec)
    with p.step(f"remove nft table inet {spec.nft_table}", hint="check `nft list tables`"):
        network.remove_isolation(spec)
    with p.step(f"remove {spec.state}", hint="check `findmnt` for mounts below it"):
        remove_tree(spec.state)
    p.say(f"down ... {time.monotonic() - started:.1f}s")


# --- status and access ----------------------------------------------------

def status(spec: LabSpec) -> LabStatus:
    nodes = []
    for node in spec.nodes:
        m = Machine(spec, node.name)
        pid = m.pid()
        nodes.append(NodeStatus(node.name, node.address, pid,
                                pid is not None and m.ssh_answers(node.address)))
    return LabStatus(spec.name, network.bridge_up(spec), network.isolation_present(spec),
                     tuple(nodes))


def info(spec: LabSpec) -> LabInfo:
    """Keys and host keys of a lab that is up (or was: they last until down)."""
    if not spec.known_hosts_path.exists():
        raise LabError("info", f"lab {spec.name} is not up", "run up first")
    return LabInfo(spec.name, spec.bridge, spec.subnet, spec.host_address,
                   str(spec.private_key_path), str(spec.known_hosts_path),
                   tuple(NodeInfo(n.name, n.address, Machine(spec, n.name).host_key_line(),
                                  spec.machine_name(n.name)) for n in spec.nodes))


def ssh_argv(spec: LabSpec, node_name: str, command: str | Sequence[str] | None = None
             ) -> list[str]:
    """ssh as root into a node with the lab key; the host key must match the pinned one."""
    node = spec.node(node_name)
    argv = ["ssh", "-F", "/dev/null",  # no user or system ssh_config can change the meaning
            "-i", str(spec.private_key_path), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={spec.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "UpdateHostKeys=no", "-o", "HostKeyAlgorithms=ssh-ed25519",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            f"root@{node.address}"]
    if command is not None:
        argv.append(command if isinstance(command, str) else shlex.join(command))
    return argv


def run(spec: LabSpec, node_name: str, command: str | Sequence[str], timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command in a node over ssh; the caller checks returncode."""
    return subprocess.run(ssh_argv(spec, node_name, command), input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def stop_node(spec: LabSpec, node_name: str, hard: bool = False,
              progress: Sink = print) -> None:
    """Shut one node down (its disk is kept). hard=True pulls the plug (SIGKILL)."""
    node = spec.node(node_name)
    with Progress(spec.name, progress).step(f"{'kill' if hard else 'stop'} {node.name}"):
        Machine(spec, node.name).stop(STOP_TIMEOUT, hard=hard)


def start_node(spec: LabSpec, node_name: str, progress: Sink = print) -> None:
    """Boot one stopped node of a lab that is up; no-op if it runs."""
    node = spec.node(node_name)
    p = Progress(spec.name, progress)
    if not spec.private_key_path.exists() or not network.bridge_up(spec):
        raise LabError(f"start {node.name}", f"lab {spec.name} is not up", "run up first")
    if _needs_boot(spec, node, p):
        Machine(spec, node.name).prepare(node, _lowers(spec, node), _authorized_key(spec))
        _boot(spec, [node], p)


# --- helpers --------------------------------------------------------------

def _machines(spec: LabSpec) -> list[Machine]:
    """The spec's nodes plus any node dir left from an older spec of this lab."""
    names = {n.name for n in spec.nodes}
    nodes_dir = spec.state / "nodes"
    if nodes_dir.is_dir():
        names |= {d.name for d in nodes_dir.iterdir() if d.is_dir()}
    return [Machine(spec, name) for name in sorted(names)]


def _lowers(spec: LabSpec, node: LabNode) -> list[Path]:
    return image.lower_dirs(spec.cache, spec.release, node.packages)


def script_runner(spec: LabSpec):
    """ops' Runner (ops/ssh.py) for the lab: a script to bash on a node through the lab's own ssh."""
    def run_script(node: str, script: str, timeout: float):
        try:
            p = run(spec, node, "bash -s", timeout=timeout, input="set -euo pipefail\n" + script)
        except subprocess.TimeoutExpired:
            return 124, "", f"no end within {timeout:.0f} s"
        return p.returncode, p.stdout, p.stderr
    return run_script
