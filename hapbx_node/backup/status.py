"""The backup status files (/var/lib/hapbx/backup, read by hapbx-exporter): written atomically.

pgbackrest.json after every scheduled attempt on a node (the format README, backup and restore, reads):
type, outcome (success|failed|skipped), reason, started, finished, duration_seconds, size_bytes,
repo_size_bytes, label, last_success, last_success_type, successes, failures.
"""
from __future__ import annotations

from ..status_file import PGBACKREST_STATUS, RECORDINGS_STATUS, STATUS_DIR, read, write_atomic  # noqa: F401

OUTCOMES = ("success", "failed", "skipped")


def backup_record(previous: dict, *, kind: str, outcome: str, reason: str, started: float, finished: float,
                  size_bytes: int = 0, repo_size_bytes: int | None = None, label: str = "") -> dict:
    """The new pgbackrest.json from the previous one and this attempt: last_success and the
    counters carry over; repo_size_bytes keeps its last known value when this attempt did not
    measure it (a skip or a failure)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}")
    ok = outcome == "success"
    return {
        "type": kind, "outcome": outcome, "reason": reason,
        "started": int(started), "finished": int(finished), "duration_seconds": round(finished - started, 3),
        "size_bytes": int(size_bytes) if ok else 0,
        "repo_size_bytes": int(repo_size_bytes if repo_size_bytes is not None else previous.get("repo_size_bytes", 0)),
        "label": label if ok else "",
        "last_success": int(finished) if ok else previous.get("last_success"),
        "last_success_type": kind if ok else previous.get("last_success_type"),
        "successes": int(previous.get("successes", 0)) + (1 if ok else 0),
        "failures": int(previous.get("failures", 0)) + (1 if outcome == "failed" else 0),
    }
