"""recordings.json in the backup status directory (the backup contract, issue 23): what the last
run did, when the last successful one finished and how many failed, written atomically."""
from __future__ import annotations

import os

from ..status_file import RECORDINGS_STATUS as NAME, STATUS_DIR, read, write_atomic  # noqa: F401 (STATUS_DIR: the render's name)

KEYS = ("finished", "outcome", "reason", "dry_run", "deleted", "deleted_bytes", "kept", "copied", "copied_bytes",
        "last_success", "failures")


def record(status_dir: str, *, finished: float, outcome: str, reason: str, dry_run: bool, deleted: int,
           deleted_bytes: int, kept: int, copied: int, copied_bytes: int) -> dict:
    """Write this run's status (last_success and failures carried over from the last file)."""
    path = os.path.join(status_dir, NAME)
    last = read(path)
    failures = last.get("failures") if isinstance(last.get("failures"), int) else 0
    last_success = last.get("last_success") if isinstance(last.get("last_success"), (int, float)) else None
    if outcome == "success":
        last_success = int(finished)
    else:
        failures += 1
    data = {"finished": int(finished), "outcome": outcome, "reason": reason, "dry_run": dry_run,
            "deleted": deleted, "deleted_bytes": deleted_bytes, "kept": kept, "copied": copied,
            "copied_bytes": copied_bytes, "last_success": last_success, "failures": failures}
    write_atomic(path, data)
    return data
