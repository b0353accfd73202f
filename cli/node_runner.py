"""How the operator's commands reach a stack's nodes: the lab's own ssh for a lab stack, the stack's
ssh settings (key file or agent, pinned host keys) for real hosts."""
from __future__ import annotations

from components.config import ClusterConfig
from ops.ssh import Runner, ssh_runner


def node_runner(cluster: ClusterConfig) -> Runner:
    if cluster.environment == "lab":
        from lab import context, machinery
        return machinery.script_runner(context.spec_for(cluster))
    return ssh_runner(cluster)
