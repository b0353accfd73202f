"""python3 -m hapbx_node.recordings retention [--dry-run]

Deletes the recordings on this node past their retention (the retention recorded with the call,
else its parties' policy now, else the global policy), copies the rest to the backup repository,
expires the repository likewise, writes /var/lib/hapbx/backup/recordings.json. --dry-run: logs
what would be deleted and deletes nothing (the copy of what is kept still runs).
Settings: the environment (settings.py); the database password: a credential file."""
from __future__ import annotations

import argparse
import sys

from .run import locked_run
from .settings import SettingsError, load


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hapbx_node.recordings")
    sub = parser.add_subparsers(dest="command", required=True)
    retention = sub.add_parser("retention", help="enforce the recordings retention and copy to the repository")
    retention.add_argument("--dry-run", action="store_true", help="log what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except SettingsError as err:
        print(f"hapbx-recordings: bad setting: {err}", file=sys.stderr)
        return 78  # EX_CONFIG
    return locked_run(settings, args.dry_run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
