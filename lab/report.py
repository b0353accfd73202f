"""The one report writer of the measurements (bench/sip.py, bench/cdr.py, lab/drill_run.py): the
machine a report was measured on (every report in reports/ names it), the command that made it, the
files it is written to."""
from __future__ import annotations

import json
import os
import time
import platform
import subprocess

#: the machine's measurement lock: a measurement started as `flock MEASURE_LOCK ./hapbx ...` runs alone
MEASURE_LOCK = "/run/lock/hapbx-measure.lock"


# ---------------------------------------------------------------- the machine


def host() -> dict[str, str]:
    """Kernel, cores, CPU model, memory, Debian release and Python of this host."""
    info = {"kernel": platform.release(), "cores": str(os.cpu_count()), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
        with open("/proc/meminfo") as fh:
            info["memory"] = f"{int(fh.readline().split()[1]) // 1024} MiB"
        with open("/etc/debian_version") as fh:
            info["debian"] = fh.read().strip()
    except OSError:
        pass
    return info


def version(cmd: list[str]) -> str:
    """First line a command prints of its version, or "?"."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def load_avg() -> str:
    """The load average (1, 5, 15 min), as the reports print it."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_times() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def cpu_busy(seconds: float = 5.0) -> str:
    """How busy the host's CPUs are over ``seconds`` (what the lab costs before a bench adds load),
    as the reports print it: busy, of it user and system (kernel, softirq), of all cores."""
    before = _cpu_times()
    time.sleep(seconds)
    d = [b - a for a, b in zip(before, _cpu_times())]
    total = sum(d[:8]) or 1   # user nice system idle iowait irq softirq steal
    busy = total - d[3] - d[4]
    return (f"{100 * busy / total:.0f} % of {os.cpu_count()} cores busy over {seconds:g} s "
            f"(user {100 * (d[0] + d[1]) / total:.0f} %, system {100 * (d[2] + d[5] + d[6]) / total:.0f} %)")


# ---------------------------------------------------------------- the command


def under_measure_lock() -> bool:
    """True when the machine's measurement lock is held (by the `flock` this run was started under):
    a second flock on a new descriptor of the same file fails then."""
    import fcntl
    try:
        fd = os.open(MEASURE_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def with_flock(command: str) -> str:
    """The command as it was typed: ./hapbx execs python, so its parent is what ran it; when that is
    `flock LOCK` (a measurement run alone), the command is prefixed with it."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            parent = [a.decode() for a in fh.read().split(b"\0") if a]
        if parent and os.path.basename(parent[0]) == "flock":
            return " ".join(parent[:2]) + " " + command
    except OSError:
        pass
    return command


# ---------------------------------------------------------------- the files


def beside(path: str, ext: str) -> str:
    """A file next to the report: the same name with another extension (its chart, its data)."""
    return os.path.splitext(path)[0] + ext


def write(path: str, text: str, data: dict | None = None, indent: int | None = 1) -> None:
    """The report (its directory made first) and, with data, the figures it was written from beside
    it as JSON (from which it can be written again)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    if data is not None:
        with open(beside(path, ".json"), "w") as fh:
            json.dump(data, fh, indent=indent)
