"""Host-side helpers: commands, progress/errors, packages, mounts, cgroups, processes.

Everything here acts on the host the lab runs on; nothing knows about nodes.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

HOST_PACKAGES = ("debootstrap", "systemd-container", "iproute2", "nftables",
                 "openssh-client", "zstd")

# A clean, predictable environment for every tool we run (apt, debootstrap, chroot).
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    # A host that reaches the archive through a proxy keeps doing so.
    **{k: v for k, v in os.environ.items()
       if k.lower() in ("http_proxy", "https_proxy", "no_proxy")},
}


class LabError(RuntimeError):
    """A lab step failed: says which step, what happened and what to do."""

    def __init__(self, step: str, detail: str, hint: str = ""):
        self.step, self.detail, self.hint = step, detail, hint
        message = f"step '{step}' failed: {detail}"
        if hint:
            message += f"\n  what to do: {hint}"
        super().__init__(message)


class CommandError(RuntimeError):
    """A host command exited non-zero; the message carries its output tail."""


def command(argv: Sequence[str], *, input: str | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, env=_ENV)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{' '.join(argv)}` did not finish within {timeout}s") from exc
    except FileNotFoundError as exc:
        raise CommandError(f"`{argv[0]}` is not installed") from exc
    if check and proc.returncode != 0:
        raise CommandError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                           f"{_tail(proc.stderr or proc.stdout)}")
    return proc


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


class Progress:
    """Prints '[lab NAME] STEP ... 0.6s' per step; turns failures into LabError."""

    def __init__(self, lab: str, sink: Callable[[str], None] = print):
        self.lab, self.sink = lab, sink

    def say(self, text: str) -> None:
        self.sink(f"[lab {self.lab}] {text}")

    @contextlib.contextmanager
    def step(self, what: str, hint: str = "", announce: bool = False,
             since: float | None = None) -> Iterator[None]:
        """since: a monotonic start time, for steps that began before the block."""
        # Long steps (image builds) announce themselves so a silent minute is explained.
        if announce:
            self.say(f"{what} ...")
        start = time.monotonic() if since is None else since
        try:
            yield
        except LabError:
            raise
        except Exception as exc:  # any failure inside a step is reported as that step
            raise LabError(what, str(exc), hint) from exc
        self.say(f"{what} ... {time.monotonic() - start:.1f}s")


# --- host packages ---------------------------------------------------------

def missing_packages(packages: Sequence[str]) -> list[str]:
    proc = command(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                   check=False)
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure_host_packages(packages: Sequence[str] = HOST_PACKAGES) -> list[str]:
    """Install what is missing; returns what was installed (nothing on a ready host)."""
    missing = missing_packages(packages)
    if missing:
        # Only a host that lacks something pays for an index refresh.
        command(["apt-get", "update"], timeout=600)
        command(["apt-get", "install", "-y", *missing], timeout=1200)
    return missing


# --- mounts ----------------------------------------------------------------

def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (the order to unmount them)."""
    root = str(path.resolve()) if path.exists() else str(path)
    found = {m for m in mount_points() if m == root or m.startswith(root.rstrip("/") + "/")}
    return sorted(found, key=lambda m: m.count("/"), reverse=True)


def unmount_under(path: Path) -> None:
    for point in mounts_under(path):
        if command(["umount", point], check=False).returncode != 0:
            # Busy after its users are gone (e.g. a killed build): detach it.
            command(["umount", "--lazy", point])


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into anything mounted below path.

    A bind-mounted /dev inside a build root would otherwise be emptied on the host.
    """
    if not path.exists() and not path.is_symlink():
        return
    unmount_under(path)
    left = mounts_under(path)
    if left:
        raise CommandError(f"refusing to remove {path}: still mounted: {', '.join(left)}")
    command(["rm", "-rf", "--one-file-system", "--", str(path)])


# --- cgroups ----------------------------------------------------------------

def cgroup_hierarchies() -> list[Path]:
    """Hierarchies a node needs its own group in.

    On these hosts PID 1 is not systemd: cgroups v1 with a name=systemd hierarchy plus
    cgroup2 at /sys/fs/cgroup/unified. On a pure cgroup2 host /sys/fs/cgroup is the one.
    """
    base = Path("/sys/fs/cgroup")
    points = set(mount_points())
    found = [base / h for h in ("systemd", "unified") if str(base / h) in points]
    if not found and (base / "cgroup.procs").exists():
        found = [base]
    return found


def cgroup_paths(name: str) -> list[Path]:
    return [h / name for h in cgroup_hierarchies()]


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_paths(name):
        for procs in top.rglob("cgroup.procs") if top.exists() else ():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroups(name: str) -> None:
    """rmdir the group and its children, deepest first (cgroupfs only allows rmdir)."""
    for top in cgroup_paths(name):
        if not top.exists():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True)
        for d in dirs + [top]:
            d.rmdir()


# --- processes ------------------------------------------------------------

def process_alive(pid: int, needle: str = "") -> bool:
    """True if pid runs (not a zombie) and its command line contains needle.

    The needle guards against a recycled pid being mistaken for ours.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and needle in cmdline


def wait_gone(pid: int, needle: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid, needle):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
