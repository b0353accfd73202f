"""Local lab: Debian 12 nodes under systemd-nspawn on an isolated bridge.

    from lab import LabSpec, LabNode, up, down
    info = up(spec)             # idempotent
    run(spec, "pbx1", "systemctl is-system-running")
    down(spec)                  # leaves the host as it was; keeps the image cache
"""
from .host import LabError
from .machinery import (LabInfo, LabStatus, NodeInfo, NodeStatus, down, info, run,
                        ssh_argv, start_node, status, stop_node, up)
from .spec import LabNode, LabSpec

__all__ = ["LabError", "LabInfo", "LabNode", "LabSpec", "LabStatus", "NodeInfo", "NodeStatus",
           "down", "info", "run", "ssh_argv", "start_node", "status", "stop_node", "up"]
