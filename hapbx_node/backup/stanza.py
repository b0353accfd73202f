"""The deploy's stanza step (``python3 -m hapbx_node.backup stanza``): create the stanza when
the repository has none, check that archiving reaches it. Idempotent.

A repository that holds this stanza for ANOTHER database system (another system identifier:
new hardware, or a fresh cluster, before its data was restored) is never touched: the step exits
EXIT_OTHER_SYSTEM and says to restore with ``./hapbx restore``; stanza-create would refuse it too,
but with a message that hides the cause.
"""
from __future__ import annotations

import sys
import time

from . import local, tool
from .run import settings

EXIT_FAILED = 1
#: the repository's stanza belongs to another database system
EXIT_OTHER_SYSTEM = 3
STANZA_TIMEOUT = 300
#: check waits for a WAL segment to reach the repository (archive-timeout, 60 s by default)
CHECK_TIMEOUT = 300
LOCK_WAIT = 60
#: a restart by a handler or a rejoin as standby takes seconds; a PostgreSQL down longer is an error
PG_WAIT = 120
#: what a PostgreSQL that is (re)starting or stopping answers; any other error is final at once
PG_NOT_UP = ("No such file or directory", "Connection refused", "the database system is starting up",
             "the database system is shutting down", "the database system is not yet accepting connections")


def current_db(entry: dict | None) -> dict | None:
    """The repository's current database system of the stanza (its newest history entry)."""
    dbs = list((entry or {}).get("db") or [])
    return max(dbs, key=lambda d: d.get("id", 0)) if dbs else None


def other_system_message(stanza: str, repo_db: dict, sysid: str, version: int) -> str:
    return (f"hapbx-backup: the repository's stanza {stanza!r} belongs to another database system "
            f"(system id {repo_db.get('system-id')}, PostgreSQL {repo_db.get('version')}); this node's is "
            f"{sysid} (PostgreSQL {version // 10000}). Nothing was changed in the repository. To bring that "
            f"data back onto this cluster, restore with `./hapbx restore`; after a PostgreSQL major upgrade run "
            f"`pgbackrest --stanza={stanza} stanza-upgrade` instead.")


def _with_lock_retries(stanza: str, command: str, timeout: float) -> tool.Result:
    """The command, again while another pgBackRest process holds its lock (error 050), for up to LOCK_WAIT s."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        res = tool.run(stanza, command, timeout=timeout)
        if res.ok or "[050]" not in res.error_line() or time.monotonic() > deadline:
            return res
        time.sleep(1)


def local_system(target: local.Target, wait: float = PG_WAIT, pause: float = 1.0) -> tuple[str, int]:
    """(system identifier, version) of the local PostgreSQL, waiting up to ``wait`` s for it to
    accept connections: a handler's restart or a rejoin as standby may be under way."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return local.system(target)
        except Exception as e:
            if not any(m in str(e) for m in PG_NOT_UP):
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{str(e).strip()} (waited {wait:g} s)") from e
            time.sleep(pause)


def main() -> int:
    stanza, config, _ = settings()
    try:
        sysid, version = local_system(local.target(config, stanza))
    except Exception as e:
        print(f"hapbx-backup: local PostgreSQL not reachable: {e}".strip(), file=sys.stderr)
        return EXIT_FAILED
    got, entry = tool.info(stanza)
    if not got.ok:
        sys.stderr.write(got.stderr)
        print(f"hapbx-backup: cannot read the repository: {got.error_line()}", file=sys.stderr)
        return EXIT_FAILED
    repo_db = current_db(entry)
    if repo_db is not None and str(repo_db.get("system-id")) != sysid:
        print(other_system_message(stanza, repo_db, sysid, version), file=sys.stderr)
        return EXIT_OTHER_SYSTEM
    # stanza-create only when the repository has none: it takes the archive lock, which the
    # asynchronous archive-push holds while it works (error 050); check takes none
    steps = ([("stanza-create", STANZA_TIMEOUT)] if repo_db is None else []) + [("check", CHECK_TIMEOUT)]
    for command, timeout in steps:
        res = _with_lock_retries(stanza, command, timeout)
        if not res.ok:
            sys.stderr.write(res.stderr or res.stdout)
            print(f"hapbx-backup: pgbackrest {command} failed: {res.error_line()}", file=sys.stderr)
            return EXIT_FAILED
    print(f"hapbx-backup: stanza {stanza} ok ({'created' if repo_db is None else 'present'}, archiving checked)")
    return 0
