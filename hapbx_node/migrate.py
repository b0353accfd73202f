#!/usr/bin/env python3
# Managed by high-cc-pbx (Pulumi). Local edits are overwritten on the next apply.
"""Schema migration runner of the PBX database.

Applies ``NNN_name.sql`` files from a directory in order, each at most once and
each in its own transaction together with its row in ``public.schema_migrations``
(version, name, sha256, when, by whom). A migration whose file changed after it
was applied is an error, never re-run. Runs on the primary only: on a standby it
refuses (or, with ``--if-primary``, does nothing and exits 0, for the timer that
runs on both nodes). After the migrations it creates the CDR partitions ahead.

Runs as the postgres OS user over the local socket; works with psycopg2 (the
nodes' python3-psycopg2) or psycopg 3 (the test suite).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

try:
    import psycopg2 as driver  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the host
    import psycopg as driver  # type: ignore[no-redef]

FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
DB_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LOCK = "hashtext('hapbx.schema_migrations')"
EXIT_STANDBY = 3
MANAGED_PREFIX = b"-- Managed by "

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    integer PRIMARY KEY CHECK (version > 0),
    name       text NOT NULL,
    checksum   text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT current_user
)"""


class MigrationError(Exception):
    pass


def migration_checksum(raw: bytes) -> str:
    """sha256 of a migration without the deployment's "managed by" first line (added when the
    file is shipped; not part of the migration, so rewording it never looks like an edit)."""
    if raw.startswith(MANAGED_PREFIX):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return hashlib.sha256(raw).hexdigest()


def discover(directory: str) -> list[tuple[int, str, str]]:
    """(version, name, path) sorted; names must be NNN_name.sql and versions unique."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".sql"):
            continue
        m = FILE_RE.match(entry)
        if not m:
            raise MigrationError(f"{entry}: not a migration name (NNN_lowercase_name.sql)")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{entry}: version {version:03d} is also {os.path.basename(found[version][2])}")
        found[version] = (version, m.group(2), os.path.join(directory, entry))
    return [found[v] for v in sorted(found)]


def connect(dsn: str, dbname: str):
    conn = driver.connect(f"{dsn} dbname={dbname} application_name=hapbx-migrate")
    return conn


def ensure_database(dsn: str, database: str, create: bool = True) -> bool | None:
    """Create the database if missing; returns True when this server is a standby,
    None when the database is missing and ``create`` is False."""
    conn = connect(dsn, "postgres")
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("SELECT pg_is_in_recovery()")
        if cur.fetchone()[0]:
            return True
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            if not create:
                return None
            # C.UTF-8 collation: identical on every Debian node, not tied to a glibc locale version.
            cur.execute(f'CREATE DATABASE "{database}" TEMPLATE template0 ENCODING \'UTF8\' LOCALE \'C.UTF-8\'')
            print(f"created database {database}")
        return False
    finally:
        conn.close()


def migrate(dsn: str, database: str, directory: str, out=None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    out = out or sys.stdout
    migrations = discover(directory)
    applied: list[str] = []
    conn = connect(dsn, database)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT pg_advisory_xact_lock({LOCK})")
        cur.execute(SCHEMA_MIGRATIONS)
        conn.commit()
        for version, name, path in migrations:
            with open(path, "rb") as fh:
                raw = fh.read()
            checksum = migration_checksum(raw)
            label = f"{version:03d}_{name}"
            # One transaction: the lock (concurrent runners wait), the check, the DDL, the record.
            cur.execute(f"SELECT pg_advisory_xact_lock({LOCK})")
            cur.execute("SELECT name, checksum FROM public.schema_migrations WHERE version = %s", (version,))
            row = cur.fetchone()
            if row is not None:
                conn.rollback()
                if row[1] != checksum:
                    raise MigrationError(f"migration {label} was applied with another content "
                                         f"(recorded sha256 {row[1][:12]}, file {checksum[:12]}): "
                                         "add a new migration instead of editing an applied one")
                continue
            try:
                cur.execute(raw.decode("utf-8"))
                cur.execute("INSERT INTO public.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (version, name, checksum))
                conn.commit()
            except Exception as err:
                conn.rollback()
                raise MigrationError(f"migration {label} failed, nothing of it was applied: {err}") from err
            applied.append(label)
            print(f"applied {label}", file=out)
    finally:
        conn.close()
    return applied


def ensure_partitions(dsn: str, database: str, months_ahead: int, out=None) -> int:
    out = out or sys.stdout
    conn = connect(dsn, database)
    try:
        cur = conn.cursor()
        cur.execute("SELECT to_regprocedure('cdr.ensure_partitions(integer)') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT cdr.ensure_partitions(%s)", (months_ahead,))
        created = cur.fetchone()[0]
        conn.commit()
    finally:
        conn.close()
    if created:
        print(f"created {created} CDR partition(s)", file=out)
    return created


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations"))
    ap.add_argument("--dsn", default="host=/var/run/postgresql", help="libpq connection string (no dbname)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--database", default="pbx")
    ap.add_argument("--partitions-ahead", type=int, default=3, help="months of CDR partitions kept ahead")
    ap.add_argument("--maintenance-only", action="store_true", help="only create CDR partitions ahead")
    ap.add_argument("--if-primary", action="store_true",
                    help="on a standby or a stopped server, do nothing and exit 0 (the daily timer)")
    args = ap.parse_args(argv)
    if not DB_RE.match(args.database):
        print(f"hapbx-migrate: {args.database!r} is not a plain database name", file=sys.stderr)
        return 2
    dsn = args.dsn + (f" port={args.port}" if args.port else "")
    try:
        try:
            # The timer never bootstraps: a node whose server is not (yet) part of the
            # cluster, e.g. a fresh one before its standby is built, must stay untouched.
            standby = ensure_database(dsn, args.database, create=not args.maintenance_only)
        except driver.OperationalError as err:
            if args.if_primary:  # the timer: a stopped server (fenced, or being rebuilt) has nothing to do
                print(f"server not available, nothing to do: {str(err).strip()}")
                return 0
            raise
        if standby is None:
            print(f"no database {args.database} on this server: nothing to maintain")
            return 0
        if standby:
            if args.if_primary:
                print("standby: nothing to do")
                return 0
            print("hapbx-migrate: this server is a standby (in recovery): migrations run on the primary only",
                  file=sys.stderr)
            return EXIT_STANDBY
        applied = [] if args.maintenance_only else migrate(dsn, args.database, args.dir)
        created = ensure_partitions(dsn, args.database, args.partitions_ahead)
    except (MigrationError, driver.Error) as err:
        print(f"hapbx-migrate: {err}", file=sys.stderr)
        return 1
    if not applied and not created:
        print("unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
