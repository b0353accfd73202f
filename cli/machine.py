"""The machine a report was measured on (every report in reports/ names it)."""
from __future__ import annotations

import os
import platform
import subprocess


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
