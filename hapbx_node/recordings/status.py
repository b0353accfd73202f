"""recordings.json in the backup status directory (the backup contract, issue 23): what the last
run did, when the last successful one finished and how many failed, written atomically."""
from __future__ import annotations

import json
import os
import tempfile

#: the contract's status directory (hapbx_node/backup/status.py's STATUS_DIR; this package ships
#: on its own, so the path is spelled here too)
STATUS_DIR = "/var/lib/hapbx/backup"
NAME = "recordings.json"
KEYS = ("finished", "outcome", "reason", "dry_run", "deleted", "deleted_bytes", "kept", "copied", "copied_bytes",
        "last_success", "failures")


def previous(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(status_dir: str, *, finished: float, outcome: str, reason: str, dry_run: bool, deleted: int,
           deleted_bytes: int, kept: int, copied: int, copied_bytes: int) -> dict:
    """Write this run's status (last_success and failures carried over from the last file)."""
    path = os.path.join(status_dir, NAME)
    last = previous(path)
    failures = last.get("failures") if isinstance(last.get("failures"), int) else 0
    last_success = last.get("last_success") if isinstance(last.get("last_success"), (int, float)) else None
    if outcome == "success":
        last_success = int(finished)
    else:
        failures += 1
    data = {"finished": int(finished), "outcome": outcome, "reason": reason, "dry_run": dry_run,
            "deleted": deleted, "deleted_bytes": deleted_bytes, "kept": kept, "copied": copied,
            "copied_bytes": copied_bytes, "last_success": last_success, "failures": failures}
    os.makedirs(status_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{NAME}.", dir=status_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return data
