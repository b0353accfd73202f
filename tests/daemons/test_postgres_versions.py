"""The production stack's PostgreSQL files on every major the templates support, by the real server:
15 (the host's Debian package), 16 (a vendor build: the npm server binaries, fetched by the suite,
tests/pg_servers.py) and 17 (Debian 13's package, in the release root).

Each major starts from prod's rendered postgresql.conf and pg_hba.conf (rendered for that major,
the nodes on 127.0.0.1) with the same command-line overrides as tests/daemons/test_postgres.py
(paths, port, certificate) and one more: shared_buffers, since prod's 24GB is more than this host
can map; the file's own value is read by ``postgres -C`` instead. The server must take every other
line of the file, say nothing about it in its log; every migration applies the way the migrate
step runs it (the rendered migrate.py with the node's python3 and psycopg2, as postgres over the
socket), and a second run changes nothing; the login roles get their passwords and log in over TLS.
"""
from __future__ import annotations

import pytest

from components import pgtune
from components.render import postgres as pg
from tests import pg_servers
from tests.helpers import free_port
from tests.pg_servers import OVERRIDDEN, SECRETS, Server

MAJORS = ["15", "16", "17"]
#: what prod's nodes have and this host may not: started with this, checked from the file by postgres -C
LIMITS = {"shared_buffers": "256MB"}
NODE = "node1"


@pytest.fixture(scope="module", params=MAJORS, ids=[f"pg{m}" for m in MAJORS])
def prod(request):
    why = pg_servers.unavailable(request.param)
    if why:
        pytest.skip(why)
    bins = pg_servers.binaries(request.param, lambda: request.getfixturevalue("trixie_root"))
    with pg_servers.scratch(f"hapbx-pg{request.param}-") as (d, cert):
        srv = Server(d, "prod", NODE, free_port(), free_port(), cert, bins, stack="prod", limits=LIMITS)
        try:
            srv.initdb()
            srv.start()
            with srv.connect() as c:
                print(f"\n{c.execute('SELECT version()').fetchone()[0]}")
            yield srv
        except BaseException:
            print(f"--- PostgreSQL {request.param} log ---\n{srv.log()}")
            raise
        finally:
            srv.stop("immediate")


def migrated(srv: Server) -> str:
    """The migrate step's command once per server; its output."""
    if not hasattr(srv, "first_migration"):
        srv.first_migration = srv.migrate_as_node()
    out = srv.first_migration
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout


def test_prod_configuration_is_taken_whole(prod):
    major = prod.bins.major
    tune = pgtune.tune(prod.cluster, prod.node).settings()
    overridden = set(OVERRIDDEN) | set(LIMITS)
    with prod.connect() as c:
        show = lambda name: c.execute(f"SHOW {name}").fetchone()[0]  # noqa: E731
        assert show("server_version_num")[:2] == major
        errors = c.execute("SELECT name, setting, error FROM pg_file_settings WHERE error IS NOT NULL").fetchall()
        # only the command line's overrides differ from the file; nothing else is refused
        assert [e for e in errors if e[0] not in overridden] == []
        assert {e for _, _, e in errors} <= {"setting could not be applied"}
        ignored = c.execute("SELECT name FROM pg_file_settings WHERE NOT applied").fetchall()
        assert {n for n, in ignored} <= overridden
        assert c.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()[0] == 0
        assert {r[0] for r in c.execute("SELECT auth_method FROM pg_hba_file_rules")} == {"peer", "scram-sha-256",
                                                                                       "reject"}
        assert show("max_connections") == "300" and show("max_worker_processes") == tune["max_worker_processes"]
        assert show("wal_level") == "replica" and show("wal_log_hints") == "on" and show("ssl") == "on"
        assert show("shared_preload_libraries") == "pg_stat_statements"
        assert show("primary_slot_name") == NODE and f"application_name={NODE}" in show("primary_conninfo")
        assert show("max_slot_wal_keep_size") == tune["max_slot_wal_keep_size"]
        assert show("cluster_name") == f"{major}/main"
    log = prod.log(100_000)
    for bad in ("unrecognized configuration parameter", "WARNING", "invalid value", "ERROR", "FATAL"):
        assert bad not in log, log
    # the file's own value of what the start overrides for this host: postgres -C reads the whole
    # file (a bad line is fatal) and starts nothing
    for name in LIMITS:
        out = prod.bins.run(prod.bins.tool("postgres"), *prod.overrides(limits=False).split(), "-C", name)
        assert out.stdout.strip() in (tune[name], str(pgtune_pages(tune[name]))), out.stdout
        assert out.stderr == ""


def pgtune_pages(size: str) -> int:
    """A memory size as 8kB pages (postgres -C prints some sizes in the setting's unit)."""
    units = {"kB": 1, "MB": 1024, "GB": 1024 * 1024}
    number, unit = size[:-2], size[-2:]
    return int(number) * units[unit] // 8


def test_every_migration_applies_as_the_node_runs_it_and_again_changes_nothing(prod):
    names = [n.removesuffix(".sql") for n, _ in pg.migrations()]
    out = migrated(prod)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("applied")] == names
    with prod.connect(db=pg.DATABASE) as c:
        before = c.execute("SELECT * FROM public.schema_migrations ORDER BY version").fetchall()
        shape = c.execute(SCHEMA_SHAPE).fetchone()[0]
    again = prod.migrate_as_node()
    assert (again.returncode, again.stdout.strip(), again.stderr) == (0, "unchanged", "")
    with prod.connect(db=pg.DATABASE) as c:
        assert c.execute("SELECT * FROM public.schema_migrations ORDER BY version").fetchall() == before
        assert c.execute(SCHEMA_SHAPE).fetchone()[0] == shape
    assert [f"{r[0]:03d}_{r[1]}" for r in before] == names
    for _ in range(2):  # the seed, as the migrate step applies it
        prod.psql(db=pg.DATABASE, file=str(prod.seed))


#: every relation, column, function and policy of the PBX database, in one digest
SCHEMA_SHAPE = """
SELECT md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
  SELECT format('%s.%s %s', n.nspname, c.relname, c.relkind) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT format('%s.%s %s %s', attrelid::regclass, attname, format_type(atttypid, atttypmod), attnotnull)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND attnum > 0 AND NOT attisdropped
  UNION ALL
  SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind IN ('f', 'p')
  UNION ALL
  SELECT format('%s %s %s', polrelid::regclass, polname, pg_get_expr(polqual, polrelid)) FROM pg_policy
  UNION ALL
  SELECT format('%s %s', rolname, rolcanlogin) FROM pg_roles WHERE rolname !~ '^pg_'
) s(x)
"""


def test_login_roles_get_their_passwords_and_log_in_over_tls(prod):
    migrated(prod)
    first = prod.psql(pg.roles_sql(prod.ctx)).stdout.strip()
    assert set(filter(None, first.split(","))) <= set(pg.LOGIN_ROLES)
    assert prod.psql(pg.roles_sql(prod.ctx)).stdout.strip() == ""  # the second time nothing differs
    for role in pg.APP_ROLES:
        with prod.connect(role, pg.DATABASE, sslmode="require") as c:
            row = c.execute("SELECT current_user, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row[:2] == (role, True) and row[2].startswith("TLSv1."), row
    # the replication role as the peer's walreceiver and pg_basebackup log in: a replication connection
    ident = prod.bins.run(prod.bins.tool("psql"), "-X", "-A", "-t", "-q",
                          f"host=127.0.0.1 port={prod.port} user={pg.REPLICATION_ROLE} dbname=replication "
                          "replication=true sslmode=require connect_timeout=5", "-c", "IDENTIFY_SYSTEM",
                          env={"PGPASSWORD": SECRETS["postgres_replication"]}).stdout
    assert ident.split("|")[0].isdigit(), ident
