"""The HA core's entry points by name (bin/launcher is installed under each name)."""
from __future__ import annotations

import sys

#: name -> what it is (hapbx-ha and the units call them by these names)
ENTRY_POINTS = {
    "leader": "the leader daemon (run | stopped)",
    "promote": "make this node the writer",
    "demote": "stop being the writer",
    "rejoin": "make the local PostgreSQL a standby of the peer",
    "status": "this node's HA state as key=value lines",
    "switchover": "hand the lead to the synchronous standby (run on the leader)",
}


def main(name: str, argv: list[str]) -> int:
    if name == "leader":
        from .daemon import main as daemon_main
        return daemon_main(argv)
    if name == "switchover":
        from .switchover import main as switchover_main
        return switchover_main(argv)
    if name in ENTRY_POINTS:
        from .jobs import main as job_main
        return job_main(name, argv)
    print(f"hapbx-ha: unknown entry point {name!r} (one of {', '.join(ENTRY_POINTS)})", file=sys.stderr)
    return 2
