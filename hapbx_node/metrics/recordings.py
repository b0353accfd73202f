"""Recordings retention on this node, from its status file (recordings.json in the backup status
directory, hapbx_node/status_file.py), rewritten after every run: recordings past their
policy's retention deleted, the rest copied to the backup repository.

No file: only hapbx_recordings_status_present 0. Unreadable or not the run's JSON:
hapbx_recordings_status_error 1 and nothing else from it."""
from __future__ import annotations

import os

from ..status_file import RECORDINGS_STATUS as FILE
from . import files
from .exposition import Counter, Gauge

OUTCOMES = ("success", "failed")


def gauges(status_dir: str) -> list[Gauge]:
    present = Gauge("hapbx_recordings_status_present", "1 when this node has the recordings retention's status "
                    "file (recordings.json; 0: it never ran here).")
    error = Gauge("hapbx_recordings_status_error", "1 when the recordings retention's status file cannot be read "
                  "or is not its JSON: the other hapbx_recordings_* series are then left out.")
    outcome = Gauge("hapbx_recordings_retention_last_outcome", "1 for the last recordings retention run on this "
                    "node, labelled with its outcome (success, failed).")
    last_run = Gauge("hapbx_recordings_retention_last_run_timestamp_seconds", "Wall time the last recordings "
                     "retention run on this node finished.")
    success = Gauge("hapbx_recordings_retention_last_success_timestamp_seconds", "Wall time of the last "
                    "successful recordings retention run on this node (absent: none yet).")
    dry = Gauge("hapbx_recordings_retention_dry_run", "1 when the last run only logged what it would delete "
                "(backup.recordingsDryRun).")
    deleted = Gauge("hapbx_recordings_deleted", "Recordings the last run deleted (past their retention).")
    deleted_bytes = Gauge("hapbx_recordings_deleted_bytes", "Bytes of recordings the last run deleted.")
    kept = Gauge("hapbx_recordings_kept", "Recordings the last run kept.")
    copied = Gauge("hapbx_recordings_copied", "Recordings the last run copied to the backup repository.")
    copied_bytes = Gauge("hapbx_recordings_copied_bytes", "Bytes of recordings the last run copied to the "
                         "backup repository.")
    failures = Counter("hapbx_recordings_retention_failures_total", "Failed recordings retention runs on this "
                       "node since its status file was made.")
    out = [present, error, outcome, last_run, success, dry, deleted, deleted_bytes, kept, copied, copied_bytes,
           failures]
    found, doc = files.read_json(os.path.join(status_dir, FILE))
    present.set(int(found))
    if not found:
        return out
    result = doc.get("outcome") if doc else None
    if doc is None or result not in OUTCOMES:
        error.set(1)
        return out
    error.set(0)
    outcome.set(1, outcome=result)
    if isinstance(doc.get("dry_run"), bool):
        dry.set(int(doc["dry_run"]))
    for gauge, key in ((last_run, "finished"), (deleted, "deleted"), (deleted_bytes, "deleted_bytes"),
                       (kept, "kept"), (copied, "copied"), (copied_bytes, "copied_bytes"), (failures, "failures")):
        value = files.json_number(doc, key)
        if value is not None and value >= 0:
            gauge.set(value)
    value = files.json_number(doc, "last_success")
    if value is not None and value > 0:
        success.set(value)
    return out
