"""pgBackRest's backups on this node, from the backup runner's status file (pgbackrest.json in the
backup status directory, hapbx_node/status_file.py), rewritten after every scheduled attempt.

Backups run on whichever node is the standby; the other node's attempts are "skipped" (not an
error). No file: only hapbx_backup_status_present 0 (the runner never ran here). A file that cannot
be read or is not the runner's JSON: hapbx_backup_status_error 1 and nothing else from it."""
from __future__ import annotations

import os

from ..status_file import PGBACKREST_STATUS as FILE
from . import files
from .exposition import Counter, Gauge

TYPES = ("full", "diff")
OUTCOMES = ("success", "failed", "skipped")


def gauges(status_dir: str) -> list[Gauge]:
    present = Gauge("hapbx_backup_status_present", "1 when this node has the backup runner's status file "
                    "(pgbackrest.json; 0: no scheduled backup ran here yet).")
    error = Gauge("hapbx_backup_status_error", "1 when the backup runner's status file cannot be read or is "
                  "not its JSON (permissions, garbled): the other hapbx_backup_* series are then left out.")
    outcome = Gauge("hapbx_backup_last_outcome", "1 for the last scheduled backup attempt on this node, "
                    "labelled with its type (full, diff) and outcome (success, failed; skipped: the other "
                    "node backs up now).")
    attempt = Gauge("hapbx_backup_last_attempt_timestamp_seconds", "Wall time the last backup attempt on this "
                    "node finished.")
    duration = Gauge("hapbx_backup_last_duration_seconds", "How long the last backup attempt on this node took.")
    size = Gauge("hapbx_backup_last_size_bytes", "Size in the repository of the last backup, when the last "
                 "attempt succeeded.")
    repo = Gauge("hapbx_backup_repository_size_bytes", "Size of the backup repository (every backup kept) at the "
                 "last attempt on this node.")
    success = Gauge("hapbx_backup_last_success_timestamp_seconds", "Wall time of the newest successful backup "
                    "made on this node (absent: none yet).")
    successes = Counter("hapbx_backup_successes_total", "Successful backups on this node since its status file "
                        "was made.")
    failures = Counter("hapbx_backup_failures_total", "Failed backups on this node since its status file was "
                       "made.")
    out = [present, error, outcome, attempt, duration, size, repo, success, successes, failures]
    found, doc = files.read_json(os.path.join(status_dir, FILE))
    present.set(int(found))
    if not found:
        return out
    kind = doc.get("type") if doc else None
    result = doc.get("outcome") if doc else None
    if doc is None or kind not in TYPES or result not in OUTCOMES:
        error.set(1)
        return out
    error.set(0)
    outcome.set(1, type=kind, outcome=result)
    for gauge, key in ((attempt, "finished"), (duration, "duration_seconds"), (repo, "repo_size_bytes"),
                       (successes, "successes"), (failures, "failures")):
        value = files.json_number(doc, key)
        if value is not None and value >= 0:
            gauge.set(value)
    value = files.json_number(doc, "size_bytes")
    if result == "success" and value is not None and value >= 0:
        size.set(value)
    value = files.json_number(doc, "last_success")
    if value is not None and value > 0:
        success.set(value)
    return out
