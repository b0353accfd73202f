"""Running a script on a node from the operator's machine: ops' commands (restore, switchover) take a
Runner, so real hosts and the lab differ only in how they reach a node."""
from __future__ import annotations

import subprocess
from typing import Callable

from components.config import ClusterConfig

#: run(node, script, timeout_s) -> (exit code, stdout, stderr); the script goes to bash on stdin
Runner = Callable[[str, str, float], "tuple[int, str, str]"]


def ssh_runner(cluster: ClusterConfig) -> Runner:
    """Runs a step's script with bash over ssh (the stack's user, port, key file and pinned host keys;
    the script on stdin, so nothing of it is in any process list)."""
    by_name = {n.name: n for n in cluster.nodes}
    s = cluster.ssh

    def run(node: str, script: str, timeout: float):
        argv = ["ssh", "-p", str(s.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=10"]
        if s.private_key_file:
            argv += ["-i", s.private_key_file, "-o", "IdentitiesOnly=yes"]
        if s.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={s.known_hosts_file}"]
        argv += [f"{s.user}@{by_name[node].address}", "bash -s"]
        try:
            p = subprocess.run(argv, input="set -euo pipefail\n" + script, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, "", f"no end within {timeout:.0f} s"
        return p.returncode, p.stdout, p.stderr
    return run
