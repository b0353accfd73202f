"""How the operator's commands reach a stack's nodes (and read its stack file): the lab's own ssh
for a lab stack, the stack's ssh settings (key file or agent, pinned host keys) for real hosts."""
from __future__ import annotations

from components.config import ClusterConfig
from ops.ssh import Runner, ssh_runner


def node_runner(cluster: ClusterConfig) -> Runner:
    if cluster.environment == "lab":
        from lab import context, machinery
        return machinery.script_runner(context.spec_for(cluster))
    return ssh_runner(cluster)


def stack_cluster(stack_file: str, prog: str) -> ClusterConfig | None:
    """The stack's cluster for an operator's command, or None with the problem printed (exit 2)."""
    import sys

    from components.config import ConfigError, load_stack_file
    try:
        cluster, _ = load_stack_file(stack_file, assume_secrets=True)
    except (ConfigError, FileNotFoundError) as err:
        print(f"hapbx {prog}: {err}", file=sys.stderr)
        return None
    return cluster
