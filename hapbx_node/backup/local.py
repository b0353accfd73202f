"""This node's PostgreSQL, as pgBackRest's own configuration locates it (pg1-port,
pg1-socket-path of the stanza): its role and streaming state, its system identifier."""
from __future__ import annotations

import configparser
from dataclasses import dataclass

from .decide import LocalState

DEFAULT_CONFIG = "/etc/pgbackrest/pgbackrest.conf"
CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class Target:
    socket_dir: str = "/var/run/postgresql"
    port: int = 5432
    user: str = "postgres"


def target(config_path: str, stanza: str) -> Target:
    """pg1's socket, port and user from pgBackRest's configuration (stanza section over global)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment]  # keys as written
    with open(config_path, encoding="utf-8") as fh:
        cp.read_file(fh)
    values: dict[str, str] = {}
    for section in ("global", stanza):
        if cp.has_section(section):
            values.update(cp.items(section))
    t = Target()
    return Target(values.get("pg1-socket-path", t.socket_dir), int(values.get("pg1-port", t.port)),
                  values.get("pg1-user", t.user))


def _connect(t: Target):
    import psycopg2  # python3-psycopg2 on the nodes
    conn = psycopg2.connect(host=t.socket_dir, port=t.port, user=t.user, dbname="postgres",
                            connect_timeout=CONNECT_TIMEOUT, application_name="hapbx-backup")
    conn.autocommit = True
    return conn


def state(t: Target) -> LocalState:
    try:
        conn = _connect(t)
    except Exception as e:  # psycopg2.OperationalError, or no psycopg2
        return LocalState(reachable=False, error=str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '10s'")
            cur.execute("SELECT pg_is_in_recovery()")
            in_recovery = bool(cur.fetchone()[0])
            if in_recovery:
                cur.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                return LocalState(True, True, receiving=cur.fetchone()[0] > 0)
            cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            return LocalState(True, False, standbys_streaming=int(cur.fetchone()[0]))
    finally:
        conn.close()


def system(t: Target) -> tuple[str, int]:
    """(system identifier, server_version_num) of the local PostgreSQL (primary or standby)."""
    conn = _connect(t)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT system_identifier::text, current_setting('server_version_num')::int "
                        "FROM pg_control_system()")
            sysid, version = cur.fetchone()
            return str(sysid), int(version)
    finally:
        conn.close()


def checkpoint(t: Target) -> None:
    """CHECKPOINT: right after a promotion pg_control still names the old timeline until the
    first checkpoint, and pgBackRest refuses to back up a primary whose WAL and pg_control
    timelines differ (error 058)."""
    conn = _connect(t)
    try:
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    finally:
        conn.close()
