"""Toll-fraud controls, checked by the real thing: migration 007 on a PostgreSQL 15 started from
the rendered configuration (tests/daemons/test_postgres.py's server), Kamailio's auth_db loading
the limits from kamailio.subscriber, and the admin API on the CDR services' stack
(tests/daemons/test_cdr_admin.py's).

Every user extension has one pbx.calling_limits row (class of service, concurrent calls, call
attempts a minute), made by the insert of the extension, gone with it; pbx_admin may change the
limits, never delete or add rows; Kamailio reads them through the auth view only.
"""
from __future__ import annotations

import hashlib
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pytest
from psycopg import errors

from components.render import postgres as pg
from hapbx_node.cdr import validate as v
from tests.daemons import test_cdr_admin, test_postgres
from tests.daemons.test_cdr_admin import api, st  # noqa: F401  (st: fixture)
from tests.daemons.test_postgres import EXT, RUNNER, denied
from tests.daemons.test_postgres import base, primary  # noqa: F401  (fixtures)

pytestmark = [*test_postgres.pytestmark, *test_cdr_admin.pytestmark]
DOMAIN = "pbx.test"
DEFAULTS = ("national", 2, 10)
MOST_RESTRICTIVE = ("internal", 1, 1)
LIMITS = "SELECT class, max_calls, calls_per_minute FROM pbx.calling_limits WHERE extension_id = %s"
VIEW = "SELECT cos, max_calls, calls_per_minute FROM kamailio.subscriber WHERE username = %s"


@pytest.fixture(scope="module")
def server(primary):
    """The migrated server, with the application roles' passwords set (they log in below)."""
    primary.psql(pg.roles_sql(primary.ctx))
    return primary


def run(srv, sql: str, params=(), role: str = "postgres") -> list[tuple]:
    """One statement in its own committed transaction; its rows (if any)."""
    with srv.connect(role, pg.DATABASE, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def extensions(server):
    """make(number, type, role, password) -> id; every extension made is deleted afterwards."""
    made: list[str] = []

    def make(number: str, typ: str = "user", role: str = "postgres", password: str | None = None) -> int:
        made.append(number)
        ext_id = run(server, EXT, (number, typ, f"{typ} {number}", "{}"), role)[0][0]
        if password:
            run(server, "SELECT pbx.set_sip_password(%s, %s, %s)", (number, password, DOMAIN), role)
        return ext_id

    yield make
    run(server, "DELETE FROM pbx.extensions WHERE number = ANY(%s)", (made,))


# --- the migration ---------------------------------------------------------------------------------

def test_migration_007_applies_once_through_the_runner(server):
    rc, out, err = server.first_migration
    assert rc == 0 and "applied 007_calling_limits" in out.splitlines(), (out, err)
    rc, out, err = server.migrate()  # a second run applies nothing
    assert (rc, out.strip(), err) == (0, "unchanged", "")
    sql = dict(pg.migrations())["007_calling_limits.sql"]
    assert run(server, "SELECT name, checksum FROM public.schema_migrations WHERE version = 7") == \
        [("calling_limits", hashlib.sha256(sql.encode()).hexdigest())]


def test_upgrade_backfills_the_users_that_exist_already(server, tmp_path):
    """A database at 006 with a user and a queue: 007 gives the user (only) the default row,
    which the auth view serves; a second run changes nothing."""
    database = "pbx_upgrade_007"
    older = tmp_path / "migrations"
    older.mkdir()
    for name, _ in pg.migrations():
        if name < "007":
            shutil.copy(server.migrations / name, older / name)

    def migrate(directory) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = RUNNER.main(["--dir", str(directory), "--dsn", server.dsn(), "--database", database])
        return rc, out.getvalue() + err.getvalue()

    def drop():
        with server.connect(autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    drop()
    try:
        assert migrate(older)[0] == 0
        with server.connect(db=database, autocommit=True) as c:
            assert c.execute("SELECT to_regclass('pbx.calling_limits')").fetchone()[0] is None
            user = c.execute(EXT, ("7001", "user", "Before 007", "{}")).fetchone()[0]
            c.execute(EXT, ("7002", "queue", "Queue before 007", "{}"))
            c.execute("SELECT pbx.set_sip_password('7001', 'before-007-password', %s)", (DOMAIN,))
        rc, out = migrate(server.migrations)
        assert rc == 0 and "applied 007_calling_limits" in out, out
        with server.connect(db=database) as c:
            assert c.execute("SELECT extension_id, class, max_calls, calls_per_minute FROM pbx.calling_limits"
                             ).fetchall() == [(user, *DEFAULTS)]
            assert c.execute(VIEW, ("7001",)).fetchone() == DEFAULTS
        assert migrate(server.migrations) == (0, "unchanged\n")
    finally:
        drop()


def test_call_classes_are_seeded_in_rank_order_and_the_api_knows_them(server):
    rows = run(server, "SELECT class, rank FROM pbx.call_classes ORDER BY rank")
    assert rows == [("internal", 0), ("national", 1), ("international", 2), ("premium", 3)]
    assert tuple(c for c, _ in rows) == v.CALL_CLASSES  # the admin API validates against this copy


def test_view_columns_keep_006_and_add_the_limits_without_length_casts(server):
    cols = run(server, "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                       "WHERE a.attrelid = 'kamailio.subscriber'::regclass AND a.attnum > 0 ORDER BY a.attnum")
    assert cols == [("id", "integer"), ("username", "character varying"), ("domain", "character varying"),
                    ("password", "character varying"), ("ha1", "character varying"), ("ha1b", "character varying"),
                    ("cos", "character varying"), ("max_calls", "integer"), ("calls_per_minute", "integer")]


@pytest.fixture(scope="module")
def targets(server):
    """A user (with its default row) and a queue, for statements that fail."""
    with server.connect(db=pg.DATABASE, autocommit=True) as c:
        ids = {t: c.execute(EXT, (n, t, f"{t} {n}", "{}")).fetchone()[0]
               for n, t in (("7110", "user"), ("7111", "queue"))}
    yield ids
    run(server, "DELETE FROM pbx.extensions WHERE number IN ('7110', '7111')")


SET = "UPDATE pbx.calling_limits SET {} WHERE extension_id = %(user)s"
BAD_ROWS = [
    # (why, sql, error, constraint or message part)
    ("unknown class", SET.format("class = 'satellite'"), errors.ForeignKeyViolation, "calling_limits_class_fkey"),
    ("no class", SET.format("class = NULL"), errors.NotNullViolation, '"class"'),
    ("max_calls 0", SET.format("max_calls = 0"), errors.CheckViolation, "calling_limits_max_calls_range"),
    ("max_calls 101", SET.format("max_calls = 101"), errors.CheckViolation, "calling_limits_max_calls_range"),
    ("calls_per_minute 0", SET.format("calls_per_minute = 0"), errors.CheckViolation,
     "calling_limits_calls_per_minute_range"),
    ("calls_per_minute 601", SET.format("calls_per_minute = 601"), errors.CheckViolation,
     "calling_limits_calls_per_minute_range"),
    ("a row for a queue", "INSERT INTO pbx.calling_limits (extension_id) VALUES (%(queue)s)",
     errors.ForeignKeyViolation, "calling_limits_extension_fkey"),
    ("a row typed as a queue",
     "INSERT INTO pbx.calling_limits (extension_id, extension_type) VALUES (%(queue)s, 'queue')",
     errors.CheckViolation, "calling_limits_user_only"),
    ("a second row for a user", "INSERT INTO pbx.calling_limits (extension_id) VALUES (%(user)s)",
     errors.UniqueViolation, "calling_limits_pkey"),
    ("a row for no extension", "INSERT INTO pbx.calling_limits (extension_id) VALUES (-1)",
     errors.ForeignKeyViolation, "calling_limits_extension_fkey"),
]


@pytest.mark.parametrize("why,sql,error,where", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_constraints_refuse_bad_limits(server, targets, why, sql, error, where):
    with server.connect(db=pg.DATABASE) as c:
        with pytest.raises(error) as exc:
            c.execute(sql, targets)
        diag = exc.value.diag
        assert where in " ".join(filter(None, [diag.constraint_name, diag.message_primary])), str(exc.value)


def test_the_bounds_themselves_are_allowed(server, targets):
    with server.connect(db=pg.DATABASE) as c:  # rolled back at the end
        for assignment in ("max_calls = 1", "max_calls = 100", "calls_per_minute = 1", "calls_per_minute = 600",
                           *(f"class = '{k}'" for k in v.CALL_CLASSES)):
            assert c.execute(SET.format(assignment), targets).rowcount == 1, assignment
        c.rollback()


# --- rows that follow their extension --------------------------------------------------------------

def test_a_user_created_by_pbx_admin_gets_the_default_row_and_the_view_serves_it(server, extensions):
    """pbx_admin (the admin API's role) has no INSERT on pbx.calling_limits: the row comes from
    the SECURITY DEFINER trigger. Queues get none."""
    user = extensions("7120", role="pbx_admin", password="user-7120-password")
    queue = extensions("7121", "queue", role="pbx_admin")
    assert run(server, LIMITS, (user,), "pbx_admin") == [DEFAULTS]
    assert run(server, LIMITS, (queue,)) == []
    assert run(server, VIEW, ("7120",), "kamailio") == [DEFAULTS]
    assert run(server, "SELECT domain FROM kamailio.subscriber WHERE username = '7120'", (), "kamailio") == [(DOMAIN,)]


def test_deleting_the_extension_deletes_its_row(server, extensions):
    user = extensions("7130")
    assert run(server, LIMITS, (user,)) == [DEFAULTS]
    run(server, "DELETE FROM pbx.extensions WHERE id = %s", (user,), "pbx_admin")
    assert run(server, "SELECT count(*) FROM pbx.calling_limits WHERE extension_id = %s", (user,)) == [(0,)]


def test_a_retyped_extension_gains_or_loses_its_row(server, extensions):
    """By SQL a user without credentials can become a queue (the row goes, else the key would
    forbid it) and back (it gets the defaults again); one with credentials stays a user."""
    ext = extensions("7135")
    run(server, "UPDATE pbx.calling_limits SET class = 'premium' WHERE extension_id = %s", (ext,))
    run(server, "UPDATE pbx.extensions SET type = 'queue' WHERE id = %s", (ext,), "pbx_admin")
    assert run(server, LIMITS, (ext,)) == []
    run(server, "UPDATE pbx.extensions SET type = 'user' WHERE id = %s", (ext,), "pbx_admin")
    assert run(server, LIMITS, (ext,)) == [DEFAULTS]
    locked = extensions("7136", password="user-7136-password")
    with pytest.raises(errors.ForeignKeyViolation, match="sip_credentials_extension_fkey"):
        run(server, "UPDATE pbx.extensions SET type = 'queue' WHERE id = %s", (locked,))
    assert run(server, LIMITS, (locked,)) == [DEFAULTS]  # the failed retype took nothing away


def test_pbx_admin_changes_limits_but_never_adds_or_deletes_rows(server, extensions):
    user = extensions("7140")
    queue = extensions("7141", "queue")
    before = run(server, "SELECT updated_at FROM pbx.calling_limits WHERE extension_id = %s", (user,))[0][0]
    run(server, "UPDATE calling_limits SET class = 'international', max_calls = 5, calls_per_minute = 30 "
                "WHERE extension_id = %s", (user,), "pbx_admin")
    assert run(server, LIMITS, (user,)) == [("international", 5, 30)]
    assert run(server, "SELECT updated_at FROM pbx.calling_limits WHERE extension_id = %s", (user,))[0][0] > before
    for sql in ("DELETE FROM calling_limits WHERE extension_id = %s",
                "INSERT INTO calling_limits (extension_id) VALUES (%s)",
                "UPDATE calling_limits SET extension_id = extension_id WHERE extension_id = %s",
                "UPDATE calling_limits SET extension_type = 'user' WHERE extension_id = %s",
                "INSERT INTO call_classes (class, rank, description) VALUES ('free', %s, 'x')"):
        assert denied(server, "pbx_admin", sql, (user if "calling_limits" in sql else 9,)), sql
    assert run(server, LIMITS, (user,)) == [("international", 5, 30)]
    assert denied(server, "pbx_admin", "INSERT INTO calling_limits (extension_id) VALUES (%s)", (queue,))
    assert run(server, "SELECT count(*) FROM call_classes", (), "pbx_admin") == [(4,)]


def test_pbx_readonly_reads_limits_and_classes_only(server, extensions):
    user = extensions("7145")
    assert run(server, LIMITS.replace("pbx.", ""), (user,), "pbx_readonly") == [DEFAULTS]
    assert run(server, "SELECT count(*) FROM call_classes", (), "pbx_readonly") == [(4,)]
    assert denied(server, "pbx_readonly", "UPDATE calling_limits SET max_calls = 3 WHERE extension_id = %s", (user,))


def test_kamailio_reads_the_view_columns_but_not_the_tables(server, extensions):
    extensions("7150", password="user-7150-password")
    run(server, "UPDATE pbx.calling_limits l SET class = 'premium', max_calls = 7, calls_per_minute = 42 "
                "FROM pbx.extensions e WHERE e.id = l.extension_id AND e.number = '7150'")
    assert run(server, VIEW.replace("kamailio.", ""), ("7150",), "kamailio") == [("premium", 7, 42)]
    for sql in ("SELECT * FROM pbx.calling_limits", "SELECT * FROM pbx.call_classes"):
        assert denied(server, "kamailio", sql), sql
    with server.connect("kamailio", pg.DATABASE) as c, pytest.raises(errors.InsufficientPrivilege,
                                                                     match="permission denied"):
        c.execute("SELECT class FROM pbx.calling_limits")


def test_a_user_without_its_row_gets_the_most_restrictive_limits(server, extensions):
    user = extensions("7160", password="user-7160-password")
    run(server, "DELETE FROM pbx.calling_limits WHERE extension_id = %s", (user,))  # only a superuser can
    assert run(server, VIEW, ("7160",), "kamailio") == [MOST_RESTRICTIVE]


# --- Kamailio ----------------------------------------------------------------------------------------

# Kamailio loading them at digest auth, and refusing by them: tests/daemons/test_kamailio_security.py
# (the rendered kamailio.cfg against this schema).


def view_row(stack, number: str) -> str:
    return stack.pg.psql(f"SELECT cos, max_calls, calls_per_minute FROM kamailio.subscriber "
                         f"WHERE username = '{number}'")


@pytest.fixture
def api_numbers(st):  # noqa: F811
    """Numbers the test creates through the API, deleted afterwards."""
    numbers: list[str] = []
    yield numbers
    for n in numbers:
        api(st, "DELETE", f"/api/v1/extensions/{n}")


def test_api_round_trip_of_calling_limits(st, api_numbers):  # noqa: F811
    api_numbers += ["7201", "7202", "7203"]
    status, ext = api(st, "POST", "/api/v1/extensions", {"number": "7201", "type": "user", "display_name": "Tolls",
                                                         "class_of_service": "international", "max_calls": 5})
    assert status == 201, ext
    assert (ext["class_of_service"], ext["max_calls"], ext["calls_per_minute"]) == ("international", 5, 10)
    got = api(st, "GET", "/api/v1/extensions/7201")[1]
    assert (got["class_of_service"], got["max_calls"], got["calls_per_minute"]) == ("international", 5, 10)
    page = api(st, "GET", "/api/v1/extensions?type=user&limit=1000")[1]
    listed = next(e for e in page["items"] if e["number"] == "7201")
    assert (listed["class_of_service"], listed["max_calls"], listed["calls_per_minute"]) == ("international", 5, 10)
    assert view_row(st, "7201") == "international|5|10"  # what Kamailio loads at the next auth
    status, ext = api(st, "PATCH", "/api/v1/extensions/7201", {"class_of_service": "premium"})
    assert status == 200 and (ext["class_of_service"], ext["max_calls"]) == ("premium", 5), ext
    assert view_row(st, "7201") == "premium|5|10"
    status, ext = api(st, "PATCH", "/api/v1/extensions/7201", {"calls_per_minute": 600, "display_name": "Tolls 2"})
    assert status == 200 and (ext["calls_per_minute"], ext["display_name"]) == (600, "Tolls 2"), ext
    # every bad field named, nothing changed
    status, body = api(st, "PATCH", "/api/v1/extensions/7201", {"class_of_service": "bogus", "max_calls": 0})
    assert status == 422 and set(body["fields"]) == {"class_of_service", "max_calls"}, body
    assert "must be one of internal, national, international, premium" in body["fields"]["class_of_service"]
    assert view_row(st, "7201") == "premium|5|600"
    # a new user without limits: the defaults
    status, ext = api(st, "POST", "/api/v1/extensions", {"number": "7202", "type": "user", "display_name": "Plain"})
    assert status == 201 and (ext["class_of_service"], ext["max_calls"], ext["calls_per_minute"]) == DEFAULTS
    # not for other types, on create and on change
    status, ext = api(st, "POST", "/api/v1/extensions", {"number": "7203", "type": "queue", "display_name": "Q"})
    assert status == 201 and not {"class_of_service", "max_calls", "calls_per_minute"} & set(ext), ext
    status, body = api(st, "PATCH", "/api/v1/extensions/7203", {"class_of_service": "premium"})
    assert status == 422 and body["fields"] == {"class_of_service": "only user extensions have calling limits"}, body
    status, body = api(st, "PATCH", "/api/v1/extensions/7203", {"max_calls": 3, "calls_per_minute": 5,
                                                                "sip_password": "a-long-enough-pass"})
    assert status == 422 and set(body["fields"]) == {"max_calls", "calls_per_minute", "sip_password"}, body


def test_api_create_lists_every_bad_limit_field(st, api_numbers):  # noqa: F811
    api_numbers += ["7211", "7212"]
    status, body = api(st, "POST", "/api/v1/extensions", {"number": "7211", "type": "user", "display_name": "X",
                                                          "class_of_service": 3, "max_calls": 101,
                                                          "calls_per_minute": 0})
    assert status == 422 and set(body["fields"]) == {"class_of_service", "max_calls", "calls_per_minute"}, body
    assert "at most 100" in body["fields"]["max_calls"] and "at least 1" in body["fields"]["calls_per_minute"]
    status, body = api(st, "POST", "/api/v1/extensions", {"number": "7212", "type": "ivr", "display_name": " ",
                                                          "max_calls": 2})
    assert status == 422 and body["fields"].keys() == {"display_name", "max_calls"}, body
    assert body["fields"]["max_calls"] == "only user extensions have calling limits"
    assert api(st, "GET", "/api/v1/extensions/7211")[0] == 404 and api(st, "GET", "/api/v1/extensions/7212")[0] == 404


def test_openapi_describes_the_limits(st):  # noqa: F811
    status, doc = api(st, "GET", "/openapi.json")
    assert status == 200
    for name in ("Extension", "ExtensionPatch"):
        props = doc["components"]["schemas"][name]["properties"]
        assert props["class_of_service"]["enum"] == list(v.CALL_CLASSES), name
        assert (props["max_calls"]["minimum"], props["max_calls"]["maximum"]) == (1, 100), name
        assert (props["calls_per_minute"]["minimum"], props["calls_per_minute"]["maximum"]) == (1, 600), name
        assert all(props[k]["description"] for k in v.CALLING_LIMITS), name
