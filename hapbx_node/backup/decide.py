"""Which node takes a scheduled backup: pure, so every case is a unit test.

Both nodes' timers fire; exactly one should back up. The streaming standby does (the primary's
disks and CPU stay with the calls: --backup-standby copies from the standby and asks the primary
only for the backup start and stop). When no standby streams, the primary backs up itself: a
backup from the primary beats none. A standby that does not stream, or a node whose PostgreSQL
is down, skips: its peer sees no streaming standby and backs up from itself.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalState:
    """This node's PostgreSQL as the runner saw it."""
    reachable: bool
    in_recovery: bool = False          # a standby
    receiving: bool = False            # a standby whose walreceiver is streaming from its primary
    standbys_streaming: int = 0        # a primary: walsenders in state 'streaming'
    error: str = ""                    # why it was not reachable


@dataclass(frozen=True)
class Decision:
    backup: bool                       # this node takes the backup now
    backup_standby: bool               # pgbackrest backup --backup-standby
    reason: str


def decide(state: LocalState) -> Decision:
    if not state.reachable:
        return Decision(False, False, f"local PostgreSQL is not reachable ({state.error or 'down'}): "
                                      "the peer backs up from itself")
    if state.in_recovery:
        if state.receiving:
            return Decision(True, True, "streaming standby: backup from the standby (--backup-standby)")
        return Decision(False, False, "standby not streaming from its primary: the primary backs up from itself")
    if state.standbys_streaming > 0:
        return Decision(False, False, "primary with a streaming standby: the standby takes the backup")
    return Decision(True, False, "primary with no streaming standby: backup from the primary")
