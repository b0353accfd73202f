"""One scheduled backup on this node (``python3 -m hapbx_node.backup run full|diff``).

Decides whether this node is the one to back up (decide.py), runs ``pgbackrest backup``, reads
the new backup's size from ``pgbackrest info``, and writes pgbackrest.json (status.py). A lock
in the status directory makes a full and a diff wait for each other on a node. Exit status 0:
success or skipped (the peer backs up); 1: the backup failed (pgBackRest's error on stderr, in
the journal).
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager

from . import decide as decision
from . import local, status, tool

KINDS = ("full", "diff")
#: a backup that runs longer than this is stopped and counted failed (the unit's TimeoutStartSec is longer)
BACKUP_TIMEOUT = float(os.environ.get("HAPBX_BACKUP_TIMEOUT", 11 * 3600))


def settings() -> tuple[str, str, str]:
    """(stanza, pgBackRest's configuration, status directory) from the unit's environment."""
    stanza = os.environ.get("PGBACKREST_STANZA", "")
    if not stanza:
        raise SystemExit("hapbx-backup: PGBACKREST_STANZA is not set")
    return (stanza, os.environ.get("PGBACKREST_CONFIG", local.DEFAULT_CONFIG),
            os.environ.get("HAPBX_BACKUP_STATUS_DIR", status.STATUS_DIR))


@contextmanager
def exclusive(directory: str):
    """One run at a time on this node: the next one waits (full and diff never overlap)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".run.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_backup(entry: dict | None, kind: str, started: float) -> dict | None:
    """The backup this run made: the newest of its type that started no earlier than the run."""
    mine = [b for b in tool.backups(entry)
            if b.get("type") == kind and (b.get("timestamp") or {}).get("start", 0) >= int(started) - 1]
    return mine[-1] if mine else None


def main(kind: str) -> int:
    if kind not in KINDS:
        print(f"hapbx-backup: the backup type is one of {', '.join(KINDS)}, not {kind!r}", file=sys.stderr)
        return 2
    stanza, config, status_dir = settings()
    path = os.path.join(status_dir, status.PGBACKREST_STATUS)
    with exclusive(status_dir):
        started = time.time()
        choice = decision.decide(local.state(local.target(config, stanza)))
        if not choice.backup:
            status.write_atomic(path, status.backup_record(status.read(path), kind=kind, outcome="skipped",
                                                            reason=choice.reason, started=started, finished=time.time()))
            print(f"hapbx-backup: {kind} skipped: {choice.reason}")
            return 0
        print(f"hapbx-backup: {kind} backup: {choice.reason}", flush=True)
        if not choice.backup_standby:
            try:
                local.checkpoint(local.target(config, stanza))
            except Exception as e:  # the backup below reports what is wrong
                print(f"hapbx-backup: checkpoint before the backup failed: {e}".strip(), file=sys.stderr)
        args = [f"--type={kind}", "--backup-standby" if choice.backup_standby else "--no-backup-standby", "backup"]
        res = tool.run(stanza, *args, timeout=BACKUP_TIMEOUT)
        if not res.ok:
            reason = f"pgbackrest backup failed ({choice.reason}): {res.error_line()}"
            status.write_atomic(path, status.backup_record(status.read(path), kind=kind, outcome="failed",
                                                            reason=reason, started=started, finished=time.time()))
            sys.stderr.write(res.stderr or res.stdout)
            print(f"hapbx-backup: {reason}", file=sys.stderr)
            return 1
        finished = time.time()
        got, entry = tool.info(stanza)
        made = new_backup(entry, kind, started)
        reason = choice.reason if made else f"{choice.reason}; size unknown: {got.error_line() if not got.ok else 'not in info'}"
        repo_size = sum(tool.stored_bytes(b) for b in tool.backups(entry)) if entry else None
        status.write_atomic(path, status.backup_record(
            status.read(path), kind=kind, outcome="success", reason=reason, started=started, finished=finished,
            size_bytes=tool.stored_bytes(made) if made else 0, repo_size_bytes=repo_size,
            label=(made or {}).get("label", "")))
        print(f"hapbx-backup: {kind} backup {(made or {}).get('label', '?')} done in {finished - started:.0f} s")
        return 0
