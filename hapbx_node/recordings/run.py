"""One retention run on a node: plan every recording here, delete what is past its retention
(or only say so: dry run), copy what stays to the repository, expire the repository by the same
plan, write recordings.json. Every deletion is logged (path, call, retention, age) to stdout: the
journal under the unit's name."""
from __future__ import annotations

import fcntl
import os
import sys
import time
from typing import Callable

from . import facts, files, plan, status
from .copy import CopyError
from .settings import Settings

Log = Callable[[str], None]


def _log(line: str) -> None:
    print(line, flush=True)


def _describe(v: plan.Verdict) -> str:
    return (f"{v.path} (call {v.uuid or '-'}, retention {v.retention_days if v.retention_days is not None else '-'} "
            f"days, age {v.age_days:.1f} days): {v.reason}")


def _read_facts(s: Settings, recs: list[plan.Recording]):
    conn = facts.connect(s.dsn, s.password())
    try:
        uuids = [r.uuid for r in recs if r.uuid]
        paths = [r.path for r in recs if not r.uuid]
        return facts.read(conn, uuids, paths)
    finally:
        conn.close()   # no transaction stays open during deletions and the copy


def _apply(verdicts: list[plan.Verdict], dry_run: bool, root: str, log: Log, where: str = "") -> tuple[int, int, list[str]]:
    """Delete the verdicts' files below root (dry run: log only); (deleted, bytes, errors)."""
    deleted = size = 0
    errors: list[str] = []
    for v in verdicts:
        if not v.delete:
            if v.uuid is None or "no CDR" in v.reason:
                log(f"kept{where} {_describe(v)}")
            continue
        if dry_run:
            log(f"would delete{where} {_describe(v)}")
            deleted, size = deleted + 1, size + v.size
            continue
        if not files.inside(root, v.path):
            errors.append(f"{v.path}: not inside {root}")
            continue
        try:
            os.unlink(v.path)
        except FileNotFoundError:
            continue
        except OSError as err:
            errors.append(f"{v.path}: {err.strerror}")
            log(f"could not delete{where} {v.path}: {err.strerror}")
            continue
        log(f"deleted{where} {_describe(v)}")
        deleted, size = deleted + 1, size + v.size
    return deleted, size, errors


def run(s: Settings, dry_run: bool, now: float | None = None, log: Log = _log) -> dict:
    """The run; returns what recordings.json now says."""
    now = time.time() if now is None else now
    counts = dict(deleted=0, deleted_bytes=0, kept=0, copied=0, copied_bytes=0)
    errors: list[str] = []
    notes: list[str] = []
    try:
        local = files.walk(s.recordings_dir)
        calls, global_days = _read_facts(s, local)
        verdicts = plan.plan(local, calls, global_days, now)
        log(f"{len(local)} recordings under {s.recordings_dir}, {len(calls)} with a CDR, global policy "
            f"{global_days if global_days is not None else 'none'} days{' (dry run: nothing is deleted)' if dry_run else ''}")
        deleted, size, errs = _apply(verdicts, dry_run, s.recordings_dir, log)
        errors += errs
        kept = [v for v in verdicts if not v.delete]
        counts.update(deleted=deleted, deleted_bytes=size, kept=len(kept))
        if not dry_run:
            files.prune_empty_dirs(s.recordings_dir, now)
        repo = s.target()
        if repo is not None:
            rel = [os.path.relpath(v.path, s.recordings_dir) for v in kept]
            copied, sent = repo.copy(s.recordings_dir, rel)
            counts.update(copied=copied, copied_bytes=sent)
            log(f"copied {copied} recordings ({sent} bytes) to {repo}")
            held = repo.listing()
            known = {c.uuid for c in calls}
            more, _ = _read_facts(s, [r for r in held if r.uuid not in known]) if held else ([], None)
            expired = plan.plan(held, [*calls, *more], global_days, now)
            gone = [v for v in expired if v.delete]
            if dry_run:
                for v in gone:
                    log(f"would expire from the repository {_describe(v)}")
            else:
                errors += repo.delete([v.path for v in gone], now)
                for v in gone:
                    log(f"expired from the repository {_describe(v)}")
            notes.append(f"repository {'would expire' if dry_run else 'expired'} {len(gone)}")
    except CopyError as err:
        errors.append(str(err))
    except Exception as err:  # noqa: BLE001 - the database, the disk: said in the status and the log
        errors.append(f"{type(err).__name__}: {str(err).strip()[:300]}")
    outcome = "failed" if errors else "success"
    summary = (f"{'would delete' if dry_run else 'deleted'} {counts['deleted']} ({counts['deleted_bytes']} bytes), "
               f"kept {counts['kept']}, copied {counts['copied']} ({counts['copied_bytes']} bytes)"
               + "".join(f", {n}" for n in notes))
    reason = summary if not errors else f"{len(errors)} error(s): " + "; ".join(errors[:3])
    log(f"{outcome}: {reason}")
    return status.record(s.status_dir, finished=time.time(), outcome=outcome, reason=reason, dry_run=dry_run,
                         **counts)


def locked_run(s: Settings, dry_run: bool, log: Log = _log) -> int:
    """run() unless another run holds the lock (a manual run during the timer's): 0 on success."""
    os.makedirs(s.status_dir, exist_ok=True)
    with open(os.path.join(s.status_dir, ".recordings.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another recordings retention run is in progress", file=sys.stderr)
            return 75  # EX_TEMPFAIL
        result = run(s, dry_run, log=log)
    return 0 if result["outcome"] == "success" else 1
