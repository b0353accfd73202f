"""Small helpers shared by the test tiers."""
from __future__ import annotations

import socket

from components.config import ClusterConfig, load_stack_file
from tests.mockrun import ROOT


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_cluster(name: str) -> ClusterConfig:
    """A shipped stack's validated config (absent secrets stand as placeholders)."""
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{name}.yaml", assume_secrets=True)
    return cluster
