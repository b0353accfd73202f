"""One lab node: its files in state_dir, its systemd-nspawn process, its cgroups.

Per node, under <state_dir>/nodes/<name>/:
    upper/                  overlay upper dir over base (+ package layer): the node's disk
    ssh_host_ed25519_key*   the node's host key, made by the lab (pinned in known_hosts)
    machine-id              the node's machine id, stable across restarts
    image                   the lower dirs the upper was made for
    console.log             everything nspawn and the node's console printed
    nspawn.pid, wrapper.pid
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import host
from .host import CommandError, command
from .spec import LabNode, LabSpec

# Runs in its own session (setsid). It first moves itself into the node's own cgroup:
# the host's PID 1 is not systemd, so with --keep-unit every node would otherwise share
# one cgroup and systemctl inside the nodes could not tell their processes apart. After
# nspawn exits it steps back to the root group and removes the node's groups.
_WRAPPER = r"""
set -u
dir=$1 cgroups=$2; shift 2
echo $$ > "$dir/wrapper.pid"
for cg in $cgroups; do
    mkdir -p "$cg" && echo $$ > "$cg/cgroup.procs" ||
        { echo "cannot enter cgroup $cg" >&2; exit 97; }
done
"$@" &
echo $! > "$dir/nspawn.pid"
wait $!
rc=$?
for cg in $cgroups; do
    echo $$ > "${cg%/*}/cgroup.procs"
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
done
echo "[hapbx lab] systemd-nspawn exited $rc" >&2
exit $rc
"""

HOST0_NETWORK = """\
# hapbx lab: static address on the lab bridge; sorts before the image's DHCP default.
[Match]
Name=host0

[Network]
Address={address}/{prefixlen}
Gateway={gateway}
LinkLocalAddressing=no
"""


@dataclass(frozen=True)
class Machine:
    """A node's host-side handle; needs only the name, so down can stop leftovers."""
    spec: LabSpec
    name: str

    # --- files ----------------------------------------------------------
    @property
    def dir(self) -> Path:
        return self.spec.state / "nodes" / self.name

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def machine(self) -> str:
        return self.spec.machine_name(self.name)

    @property
    def _needle(self) -> str:
        # Present in both the wrapper's and nspawn's command line, and only in ours.
        return f"--machine={self.machine} "

    def host_key_line(self) -> str:
        """'ssh-ed25519 AAAA...' without the comment."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    # --- state ----------------------------------------------------------
    def _read_pid(self, name: str) -> int | None:
        try:
            pid = int((self.dir / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if host.process_alive(pid, self._needle) else None

    def pid(self) -> int | None:
        """The running nspawn's pid, or None."""
        return self._read_pid("nspawn.pid")

    def image(self) -> str:
        try:
            return (self.dir / "image").read_text()
        except OSError:
            return ""

    def ssh_answers(self, address: str, timeout: float = 1.0) -> bool:
        """sshd sent its banner (no login attempted)."""
        try:
            with socket.create_connection((address, 22), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    # --- preparing ------------------------------------------------------
    def prepare(self, node: LabNode, lowers: list[Path], authorized_key: str) -> None:
        """Make sure the node's files exist; a changed image starts from a fresh disk."""
        image = ":".join(map(str, lowers))
        if self.image() != image and self.upper.exists():
            host.remove_tree(self.upper)
        self.upper.mkdir(parents=True, exist_ok=True)
        self.upper.chmod(0o755)  # it is the node's "/" in the merged view
        if not self.host_key.exists():
            command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{node.name}",
                     "-f", str(self.host_key)])
        machine_id = self.dir / "machine-id"
        if not machine_id.exists():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        files = {
            "etc/machine-id": (machine_id.read_text(), 0o444),
            "etc/ssh/ssh_host_ed25519_key": (self.host_key.read_text(), 0o600),
            "etc/ssh/ssh_host_ed25519_key.pub": (self.host_key.with_suffix(".pub").read_text(),
                                                 0o644),
            "root/.ssh/authorized_keys": (authorized_key, 0o600),
            "etc/systemd/network/10-host0.network": (HOST0_NETWORK.format(
                address=node.address, prefixlen=self.spec.prefixlen,
                gateway=self.spec.host_address), 0o644),
        }
        for rel, (content, mode) in files.items():
            _place(self.upper, lowers, rel, content, mode)
        (self.dir / "image").write_text(image)

    # --- running --------------------------------------------------------
    def start(self, node: LabNode, lowers: list[Path]) -> int:
        """Start the node detached; returns nspawn's pid once it is known."""
        for stale in ("nspawn.pid", "wrapper.pid"):
            (self.dir / stale).unlink(missing_ok=True)
        self._cleanup_cgroups()
        self._drop_stale_veth()
        overlay = ":".join(map(str, [*lowers, self.upper, "/"]))
        nspawn = ["systemd-nspawn", f"--machine={self.machine}", f"--hostname={node.name}",
                  f"--directory={lowers[0]}", f"--overlay={overlay}", "--boot",
                  f"--network-bridge={self.spec.bridge}", "--register=no", "--keep-unit",
                  "--console=read-only", "--link-journal=no", "--resolv-conf=off"]
        for path in node.shared:
            host_dir = self.spec.shared_dir(path)
            host_dir.mkdir(parents=True, exist_ok=True)
            nspawn.append(f"--bind={host_dir}:{path}")
        cgroups = " ".join(map(str, host.cgroup_paths(self.machine)))
        wrapper = ["sh", "-c", _WRAPPER, "hapbx-node", str(self.dir), cgroups, *nspawn]
        with open(self.console_log, "ab") as log:
            log.write(f"\n[hapbx lab] starting {self.machine} {time.ctime()}\n".encode())
            log.flush()
            # setsid --fork: the wrapper gets its own session (no terminal signal reaches
            # it) and is not our child, so it outlives us and leaves no zombie behind.
            subprocess.run(["setsid", "--fork", *wrapper], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, check=True)
        deadline = time.monotonic() + 30  # a busy 2-core host can take seconds to fork and exec
        while (pid := self.pid()) is None:
            # The shell truncates wrapper.pid before writing it: an empty file is "not yet",
            # only a pid that is written and no longer alive means the wrapper is gone.
            written = (self.dir / "wrapper.pid").read_text().strip() if (self.dir / "wrapper.pid").exists() else ""
            wrapper_gone = written.isdigit() and self._read_pid("wrapper.pid") is None
            if wrapper_gone or time.monotonic() > deadline:
                raise CommandError(f"systemd-nspawn for {node.name} did not start: "
                                   f"{self.console_tail()}")
            time.sleep(0.02)
        return pid

    def wait_ssh(self, address: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ssh_answers(address, timeout=0.5):
            if self.pid() is None:
                raise CommandError(f"node {self.name} stopped while booting: "
                                   f"{self.console_tail()}")
            if time.monotonic() > deadline:
                raise CommandError(f"sshd on {self.name} ({address}:22) did not answer "
                                   f"within {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0, hard: bool = False) -> None:
        """Shut the node down (SIGTERM, then SIGKILL after timeout) and drop its cgroups.

        hard=True pulls the plug instead: every process of the node is SIGKILLed at once.
        """
        pid = self.pid()
        if pid is not None:
            if hard:
                self._kill_cgroup_members()
            host.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
            if not host.wait_gone(pid, self._needle, timeout):
                host.kill(pid, signal.SIGKILL)
                host.wait_gone(pid, self._needle, 10)
        wrapper = self._read_pid("wrapper.pid")
        if wrapper is not None:
            host.wait_gone(wrapper, self._needle, 10)  # it removes the cgroups itself
        self._cleanup_cgroups()
        for name in ("nspawn.pid", "wrapper.pid"):
            (self.dir / name).unlink(missing_ok=True)

    def host_veth(self) -> str:
        """The host end of the node's veth: nspawn names it vb-<machine>, or, past 15 characters,
        a shortened name with a hash that it prints at every start (the last one is current)."""
        name = f"vb-{self.machine}"
        if len(name) <= 15:
            return name
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        marker = f"Network interface name '{name}' has been changed to '"
        at = text.rfind(marker)
        return text[at + len(marker):].split("'", 1)[0] if at >= 0 else ""

    def _drop_stale_veth(self, timeout: float = 10.0) -> None:
        """A node stopped a moment ago may still have its veth: the kernel removes it when the
        node's network namespace is freed, asynchronously, and nspawn refuses to start while
        it exists ("Failed to add new veth interfaces: File exists"). Wait, then delete it."""
        veth = self.host_veth()
        if not veth:
            return
        exists = lambda: subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0  # noqa: E731
        deadline = time.monotonic() + timeout
        while exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if exists():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)

    def _kill_cgroup_members(self) -> None:
        # Only processes in the node's own cgroups: all of them were started by this lab.
        for pid in host.cgroup_pids(self.machine):
            if pid != os.getpid():
                host.kill(pid, signal.SIGKILL)

    def _cleanup_cgroups(self) -> None:
        """Remove the node's cgroups, killing whatever a dead nspawn left in them."""
        deadline = time.monotonic() + 10
        while host.cgroup_pids(self.machine):
            self._kill_cgroup_members()
            if time.monotonic() > deadline:
                raise CommandError(f"processes {sorted(host.cgroup_pids(self.machine))} of node "
                                   f"{self.name} did not exit after SIGKILL")
            time.sleep(0.05)
        host.remove_cgroups(self.machine)

    def console_tail(self, lines: int = 12) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        tail = "\n    ".join(text.strip().splitlines()[-lines:])
        return f"last lines of {self.console_log}:\n    {tail}"


def _place(upper: Path, lowers: list[Path], rel: str, content: str, mode: int) -> None:
    """Write a file into the node's upper dir before boot.

    Directories created on the way copy mode and owner from the image, because an
    upper dir's attributes win in the merged view (/root must stay 0700).
    """
    target = upper / rel
    for parent in reversed(Path(rel).parents[:-1]):
        made = upper / parent
        if made.is_dir():
            continue
        made.mkdir()
        like = next((lw / parent for lw in reversed(lowers) if (lw / parent).is_dir()), None)
        st = like.stat() if like else None
        os.chmod(made, (st.st_mode & 0o7777) if st else 0o700)
        if st:
            os.chown(made, st.st_uid, st.st_gid)
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(target, mode)  # the umask must not narrow it
