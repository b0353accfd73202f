"""PostgreSQL, checked by the real thing: a PostgreSQL 15 started from our rendered
postgresql.conf / pg_hba.conf / .pgpass applies every migration through psycopg (twice:
the second applies nothing), the constraints refuse bad rows, the roles have exactly their
privileges, Kamailio authenticates a provisioned user against the view; and a primary +
standby pair on two loopback ports streams, the standby is promoted and the old primary is
pg_rewind-ed back as its standby, on 15 and on Debian 13's 17 (tests/pg_servers.py; prod's
settings and the migrations on 15, 16 and 17: test_postgres_versions.py).

What differs from a node: both "nodes" are 127.0.0.1 (the test renders each node's files with
the peer's port, so primary_conninfo points at the peer), and the command line overrides only
the paths and the port (data_directory, hba_file, ident_file, socket dir, pid file, port,
listen_addresses, ssl cert/key: the host has no snakeoil certificate). Daemons run as the
postgres user on loopback, high free ports, in temporary directories, and are stopped at the end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from components import pgtune
from components.render import RenderContext, RenderedFile, masked_secrets
from components.render import postgres as pg
from tests import pg_servers
from tests.helpers import free_port, shipped_cluster as stack, wait_for
from tests.pg_servers import OVERRIDDEN, SECRETS, Server

PGBIN = pg_servers.HOST_BIN
pytestmark = [
    pytest.mark.skipif(not os.path.exists(f"{PGBIN}/postgres"), reason="needs postgresql-15 (Debian)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: needs root"),
]
RUNNER = pg_servers.RUNNER


@pytest.fixture(scope="module")
def base():
    with pg_servers.scratch() as made:
        yield made


@pytest.fixture(scope="module")
def primary(base):
    d, cert = base
    srv = Server(d, "main", "pbx1", free_port(), free_port(), cert)
    srv.initdb()
    srv.start()
    rc, out, err = srv.migrate()
    srv.first_migration = (rc, out, err)
    yield srv
    srv.stop("immediate")


@pytest.fixture
def conn(primary):
    with primary.connect(db=pg.DATABASE) as c:
        yield c


# --- configuration ---------------------------------------------------------------------------

def test_rendered_configuration_is_what_runs(primary):
    tune = pgtune.tune(primary.cluster, primary.node).settings()
    with primary.connect() as c:
        show = lambda name: c.execute(f"SHOW {name}").fetchone()[0]  # noqa: E731
        assert show("wal_level") == "replica" and show("wal_log_hints") == "on" and show("hot_standby") == "on"
        assert show("password_encryption") == "scram-sha-256" and show("ssl") == "on"
        assert show("shared_buffers") == tune["shared_buffers"] == "1GB"
        assert show("max_connections") == "100" and show("max_slot_wal_keep_size") == tune["max_slot_wal_keep_size"]
        assert show("primary_slot_name") == "pbx1" and "application_name=pbx1" in show("primary_conninfo")
        assert show("shared_preload_libraries") == "pg_stat_statements" and show("timezone") == "UTC"
        # only the settings this test overrides on the command line differ from the file
        errs = c.execute("SELECT name, error FROM pg_file_settings WHERE error IS NOT NULL").fetchall()
        assert {n for n, _ in errs} <= set(OVERRIDDEN) and {e for _, e in errs} <= {"setting could not be applied"}
        assert c.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()[0] == 0
        methods = {r[0] for r in c.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"peer", "scram-sha-256", "reject"}
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True


def test_hba_admits_replication_from_the_peer_only(primary):
    """Replication is refused from anywhere but the peer: render pbx1 with the peer on 127.0.0.2,
    reload, and a replication connection from 127.0.0.1 is refused by pg_hba; then back."""
    c = dataclasses.replace(primary.cluster, nodes=[dataclasses.replace(primary.cluster.nodes[0]),
                                                    dataclasses.replace(primary.cluster.nodes[1], address="127.0.0.2")])
    other = pg.files(RenderContext(c, c.nodes[0], SECRETS))
    hba = next(f for f in other if f.path.endswith("pg_hba.conf")).content
    assert "hostssl replication     replicator      127.0.0.2/32" in hba
    original = primary.hba.read_text()
    try:
        primary.hba.write_text(hba)
        primary.psql("SELECT pg_reload_conf()")
        time.sleep(0.3)
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects replication connection"):
            psycopg.connect(host="127.0.0.1", port=primary.port, user="replicator", dbname="replication",
                            replication="true", password=SECRETS["postgres_replication"], connect_timeout=5)
    finally:
        primary.hba.write_text(original)
        primary.psql("SELECT pg_reload_conf()")
        time.sleep(0.3)


@pytest.mark.parametrize("name", ["lab", "prod"])
def test_validators_pass_rendered_and_reject_broken_files(name, tmp_path):
    from tests.daemons.validators import run_validator
    c = stack(name)
    files = {f.path: f for f in pg.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    conf = files[f"{pg.paths(c).conf_dir}/postgresql.conf"]
    hba = files[f"{pg.paths(c).conf_dir}/pg_hba.conf"]
    for f in (conf, hba):
        out = run_validator(f)
        assert out.returncode == 0, (f.path, out.stdout, out.stderr)
    for damaged, why in [(conf.content + "\nshared_buffers = 10XB\n", "invalid value"),
                         (conf.content + "\nwal_levle = replica\n", "unrecognized configuration parameter"),
                         (hba.content + "\nhost all all 0.0.0.0/0 trust\n", "not allowed"),
                         (hba.content + "\nhost all all 10.0.0.1 scram-sha-256\n", "not CIDR")]:
        f = conf if damaged.startswith(conf.content) else hba
        out = run_validator(RenderedFile(**{**f.__dict__, "content": damaged}))
        assert out.returncode != 0 and why in out.stdout + out.stderr, (why, out.stdout, out.stderr)


# --- schema ----------------------------------------------------------------------------------

def test_migrations_apply_once_each_in_order(primary):
    rc, out, _ = primary.first_migration
    names = [n.removesuffix(".sql") for n, _ in pg.migrations()]
    assert rc == 0 and [line.split()[1] for line in out.splitlines() if line.startswith("applied")] == names
    rc, out, err = primary.migrate()  # second run: nothing to do
    assert (rc, out.strip(), err) == (0, "unchanged", "")
    with primary.connect(db=pg.DATABASE) as c:
        rows = c.execute("SELECT version, name, checksum FROM public.schema_migrations ORDER BY version").fetchall()
    assert [f"{v:03d}_{n}" for v, n, _ in rows] == names
    # the recorded checksum is the migration's own text; the shipped header line is not part of it
    for (_, _, checksum), (_, sql) in zip(rows, pg.migrations()):
        assert checksum == hashlib.sha256(sql.encode()).hexdigest()


def test_an_edited_applied_migration_is_refused_and_a_failing_one_leaves_nothing(primary, tmp_path):
    edited = tmp_path / "m"
    shutil.copytree(primary.migrations, edited)
    f = sorted(edited.iterdir())[0]
    f.write_text(f.read_text() + "\n-- edited\n")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = RUNNER.main(["--dir", str(edited), "--dsn", primary.dsn()])
    assert rc == 1 and "001_foundation was applied with another content" in err.getvalue()
    f.write_text(f.read_text().replace("\n-- edited\n", ""))
    broken = f"{len(pg.migrations()) + 1:03d}_broken"
    (edited / f"{broken}.sql").write_text("CREATE TABLE pbx.half_done (id int);\nSELECT 1/0;\n")
    with redirect_stdout(out), redirect_stderr(err):
        rc = RUNNER.main(["--dir", str(edited), "--dsn", primary.dsn()])
    assert rc == 1 and f"{broken} failed, nothing of it was applied" in err.getvalue()
    with primary.connect(db=pg.DATABASE) as c:
        assert c.execute("SELECT to_regclass('pbx.half_done')").fetchone()[0] is None
        assert c.execute("SELECT max(version) FROM public.schema_migrations").fetchone()[0] == len(pg.migrations())


def test_the_daily_timer_run_does_nothing_where_there_is_nothing_to_do(primary):
    closed = f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert RUNNER.main(["--dsn", closed, "--maintenance-only", "--if-primary"]) == 0  # server stopped (fenced)
        assert RUNNER.main(["--dsn", closed]) == 1  # but a deploy step fails loudly
    rc, text, _ = primary.migrate("--maintenance-only", "--if-primary")
    assert (rc, text.strip()) == (0, "unchanged")  # partitions already ahead


def test_kamailio_version_rows_match_kamailio_own_create_scripts(conn):
    """The version table holds what kamdbctl's scripts insert (5.6 from this host's package when
    present; the values are identical in 6.0, compared on the kamailio repository's tags)."""
    got = dict(conn.execute("SELECT table_name, table_version FROM kamailio.version").fetchall())
    assert got == {"version": 1, "subscriber": 7, "location": 9, "location_attrs": 1, "dispatcher": 4}
    src = "/usr/share/kamailio/postgres"
    if os.path.isdir(src):
        import re
        want = {}
        for f in ("standard", "auth_db", "usrloc", "dispatcher"):
            text = Path(src, f"{f}-create.sql").read_text()
            want.update({t: int(v) for t, v in re.findall(r"values \('(\w+)','(\d+)'\)", text)})
        assert got == want


def test_roles_get_scram_verifiers_idempotently_and_log_in(primary):
    unset = [r for r in pg.LOGIN_ROLES if r != "postgres"]  # as the migrations leave them (the superuser: initdb's)
    try:
        primary.psql("".join(f'ALTER ROLE "{r}" PASSWORD NULL;\n' for r in unset))
        first = primary.psql(pg.roles_sql(primary.ctx)).stdout.strip()
    finally:
        again = primary.psql(pg.roles_sql(primary.ctx)).stdout.strip()
    assert again == ""  # nothing differs the second time
    assert set(unset) <= set(first.split(",")) <= set(pg.LOGIN_ROLES)
    with primary.connect() as c:
        stored = dict(c.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                                (list(pg.LOGIN_ROLES),)).fetchall())
    for role, secret in pg.LOGIN_ROLES.items():
        assert stored[role] == pg.scram_verifier(SECRETS[secret], role)
    for role in pg.APP_ROLES:
        with primary.connect(role, pg.DATABASE) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == role
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        primary.connect("replicator", pg.DATABASE)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=primary.port, user="kamailio", dbname=pg.DATABASE,
                        password="wrong-password", connect_timeout=5)


def denied(primary, role: str, sql: str, params=()) -> bool:
    with primary.connect(role, pg.DATABASE) as c:
        try:
            c.execute(sql, params)
        except errors.InsufficientPrivilege:
            c.rollback()
            return True
        c.rollback()
    return False


def test_roles_have_least_privilege(primary):
    primary.psql(pg.roles_sql(primary.ctx))
    allowed = [
        ("kamailio", "SELECT username, ha1 FROM subscriber LIMIT 1"),
        ("kamailio", "SELECT * FROM dispatcher"),
        ("kamailio", "INSERT INTO location (ruid, username, contact) VALUES ('r-priv', 'u', 'sip:u@h')"),
        ("cdr_writer", "SELECT cdr.ingest('{}'::jsonb) IS NULL"),
        ("pbx_readonly", "SELECT count(*) FROM extensions"),
        ("pbx_readonly", "SELECT count(*) FROM cdr.calls"),
        ("pbx_admin", "INSERT INTO settings (key, value) VALUES ('test.priv', 'x')"),
        ("pbx_admin", "SELECT count(*) FROM cdr.calls"),
    ]
    for role, sql in allowed:
        with primary.connect(role, pg.DATABASE) as c:
            try:
                c.execute(sql)
            except errors.NotNullViolation:
                c.rollback()  # cdr.ingest('{}') reached the function: the privilege is there
    refused = [
        ("kamailio", "SELECT * FROM pbx.extensions"),
        ("kamailio", "SELECT * FROM pbx.sip_credentials"),
        ("kamailio", "DELETE FROM dispatcher"),
        ("kamailio", "SELECT * FROM cdr.calls"),
        ("cdr_writer", "SELECT * FROM cdr.calls"),
        ("cdr_writer", "DELETE FROM cdr.calls"),
        ("cdr_writer", "SELECT * FROM cdr.call_uuids"),
        ("cdr_writer", "SELECT * FROM pbx.extensions"),
        ("pbx_readonly", "SELECT * FROM sip_credentials"),
        ("pbx_readonly", "SELECT * FROM kamailio.subscriber"),
        ("pbx_readonly", "INSERT INTO settings (key, value) VALUES ('x', 'y')"),
        ("pbx_admin", "INSERT INTO cdr.calls (call_uuid, callee_number, start_time, end_time, duration, "
                      "hangup_cause, node) VALUES (gen_random_uuid(), '1', now(), now(), 0, 'X', 'n')"),
        ("pbx_admin", "INSERT INTO extension_types VALUES ('fax', 'no')"),
        ("pbx_admin", "CREATE TABLE pbx.mine (id int)"),
        ("pbx_admin", "CREATE TABLE public.mine (id int)"),
        ("pbx_admin", "SELECT cdr.ensure_partitions(1)"),
    ]
    for role, sql in refused:
        assert denied(primary, role, sql), (role, sql)


EXT = "INSERT INTO pbx.extensions (number, type, display_name, settings) VALUES (%s, %s, %s, %s) RETURNING id"


def cdr(**over):
    row = {"call_uuid": str(uuid.uuid4()), "caller_number": "1001", "callee_number": "1002",
           "start_time": "2031-01-15T10:00:00Z", "answer_time": "2031-01-15T10:00:05Z",
           "end_time": "2031-01-15T10:01:05Z", "duration": 65, "billsec": 60, "hangup_cause": "NORMAL_CLEARING",
           "node": "pbx1"}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


BAD_ROWS = [
    # (why, sql, params, sqlstate class, constraint or message part)
    ("duplicate number", EXT, ("2001", "queue", "Dup", "{}"), errors.UniqueViolation, "extensions_number_key"),
    ("unknown extension type", EXT, ("2101", "fax", "Fax", "{}"), errors.ForeignKeyViolation, "extensions_type_fkey"),
    ("number with letters", EXT, ("20a1", "user", "Bad", "{}"), errors.CheckViolation, "extensions_number_format"),
    ("blank display name", EXT, ("2102", "user", "  ", "{}"), errors.CheckViolation, "extensions_display_name_format"),
    ("settings not an object", EXT, ("2103", "user", "A", "[]"), errors.CheckViolation, "extensions_settings_valid"),
    ("unknown queue strategy", EXT, ("2104", "queue", "Q", '{"strategy": "loudest"}'), errors.CheckViolation,
     "extensions_settings_valid"),
    ("credentials for a queue", "INSERT INTO pbx.sip_credentials (extension_id, domain, ha1, ha1b) SELECT id, 'd', "
     "md5('a'), md5('b') FROM pbx.extensions WHERE number = '2001'", (), errors.ForeignKeyViolation,
     "sip_credentials_extension_fkey"),
    ("credentials typed as a queue", "INSERT INTO pbx.sip_credentials (extension_id, extension_type, domain, ha1, ha1b)"
     " SELECT id, 'queue', 'd', md5('a'), md5('b') FROM pbx.extensions WHERE number = '2001'", (),
     errors.CheckViolation, "sip_credentials_user_only"),
    ("plain password as ha1", "UPDATE pbx.sip_credentials SET ha1 = 'secret123'", (), errors.CheckViolation,
     "sip_credentials_ha1_format"),
    ("password on a queue", "SELECT pbx.set_sip_password('2001', 'long-enough-password')", (), errors.CheckViolation,
     "only user extensions"),
    ("short SIP password", "SELECT pbx.set_sip_password('2000', 'short', 'pbx.test')", (), errors.CheckViolation,
     "shorter than 12"),
    ("renumbering a user with credentials", "UPDATE pbx.extensions SET number = '2999' WHERE number = '2000'", (),
     errors.CheckViolation, "hashed with its number"),
    ("turning a user with credentials into a queue", "UPDATE pbx.extensions SET type = 'queue' WHERE number = '2000'",
     (), errors.ForeignKeyViolation, "sip_credentials_extension_fkey"),
    ("second global recording policy", "INSERT INTO pbx.recording_policies (scope, mode) VALUES ('global', 'never')",
     (), errors.UniqueViolation, "recording_policies_one_global"),
    ("unknown recording mode", "INSERT INTO pbx.recording_policies (scope, mode) VALUES ('global', 'sometimes')", (),
     errors.CheckViolation, "recording_policies_mode_known"),
    ("queue scope on a user", "INSERT INTO pbx.recording_policies (scope, extension_id, extension_type, mode) "
     "SELECT 'queue', id, 'user', 'always' FROM pbx.extensions WHERE number = '2000'", (), errors.CheckViolation,
     "recording_policies_target_matches_scope"),
    ("extension scope with a wrong type", "INSERT INTO pbx.recording_policies (scope, extension_id, extension_type, "
     "mode) SELECT 'extension', id, 'ivr', 'always' FROM pbx.extensions WHERE number = '2000'", (),
     errors.ForeignKeyViolation, "recording_policies_extension_fkey"),
    ("retention of zero days", "INSERT INTO pbx.recording_policies (scope, trunk_id, mode, retention_days) "
     "SELECT 'trunk', id, 'always', 0 FROM pbx.trunks", (), errors.CheckViolation, "recording_policies_retention_range"),
    ("duplicate inbound number", "INSERT INTO pbx.inbound_routes (did, extension_id) SELECT '+3222000000', id "
     "FROM pbx.extensions WHERE number = '2000'", (), errors.UniqueViolation, "inbound_routes_did_key"),
    ("inbound route to nowhere", "INSERT INTO pbx.inbound_routes (did, extension_id) VALUES ('+3222000001', -1)", (),
     errors.ForeignKeyViolation, "inbound_routes_extension_id_fkey"),
    ("outbound prefix with letters", "INSERT INTO pbx.outbound_routes (prefix, trunk_id) SELECT '00x', id "
     "FROM pbx.trunks", (), errors.CheckViolation, "outbound_routes_prefix_format"),
    ("trunk on an unknown transport", "INSERT INTO pbx.trunks (name, host, transport) VALUES ('t2', 'h', 'sctp')", (),
     errors.CheckViolation, "trunks_transport_known"),
    ("CDR without UUID (ingest)", "SELECT cdr.ingest(%s::jsonb)", (cdr(call_uuid=None),), errors.NotNullViolation,
     "without call_uuid"),
    ("CDR without UUID (insert)", "INSERT INTO cdr.calls SELECT * FROM jsonb_populate_record(NULL::cdr.calls, %s::jsonb)",
     (cdr(call_uuid=None, raw={}, received_at="2031-01-15T10:02:00Z", direction="internal", caller_name=""),),
     errors.NotNullViolation, "call_uuid"),
    ("same call UUID in another month", "INSERT INTO cdr.calls (call_uuid, callee_number, start_time, end_time, "
     "duration, hangup_cause, node) VALUES ('7d0f6a36-5d5c-4c52-9b7e-0a3c1f1e2d01', '1', '2031-03-01', '2031-03-01', "
     "0, 'NORMAL_CLEARING', 'pbx1')", (), errors.UniqueViolation, "call_uuids_pkey"),
    ("billsec above duration", "SELECT cdr.ingest(%s::jsonb)", (cdr(billsec=70),), errors.CheckViolation,
     "calls_billsec_within_duration"),
    ("end before start", "SELECT cdr.ingest(%s::jsonb)", (cdr(end_time="2031-01-15T09:00:00Z", answer_time=None,
                                                                billsec=0),),
     errors.CheckViolation, "calls_end_after_start"),
    ("free-text hangup cause", "SELECT cdr.ingest(%s::jsonb)", (cdr(hangup_cause="hung up"),), errors.CheckViolation,
     "calls_hangup_cause_format"),
    ("recording path not absolute", "SELECT cdr.ingest(%s::jsonb)", (cdr(recording_path="rec.wav"),),
     errors.CheckViolation, "calls_recording_path_absolute"),
]


@pytest.fixture(scope="module")
def provisioned_rows(primary):
    """A user with credentials, a queue, a trunk, a global policy, one inbound route, one CDR."""
    with primary.connect(db=pg.DATABASE) as c:
        c.execute(EXT, ("2000", "user", "Alice", '{"voicemail": true}'))
        c.execute(EXT, ("2001", "queue", "Sales", '{"strategy": "longest-idle-agent"}'))
        c.execute("SELECT pbx.set_sip_password('2000', 'alice-secret-pw-1', 'pbx.test')")
        c.execute("INSERT INTO pbx.trunks (name, host) VALUES ('carrier', 'sip.carrier.example')")
        c.execute("INSERT INTO pbx.recording_policies (scope, mode, retention_days) VALUES ('global', 'on-demand', 30)")
        c.execute("INSERT INTO pbx.inbound_routes (did, extension_id) SELECT '+3222000000', id FROM pbx.extensions "
                  "WHERE number = '2001'")
        assert c.execute("SELECT cdr.ingest(%s::jsonb)",
                         (json.dumps(cdr(call_uuid="7d0f6a36-5d5c-4c52-9b7e-0a3c1f1e2d01")),)).fetchone()[0] is True
    return primary


@pytest.fixture
def provisioned(provisioned_rows):
    """The provisioned primary with every login role's password set, as the roles step leaves it
    (each test that logs in as an application role gets them, whatever ran before)."""
    provisioned_rows.psql(pg.roles_sql(provisioned_rows.ctx))
    return provisioned_rows


@pytest.mark.parametrize("why,sql,params,error,where", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_constraints_refuse_bad_rows(provisioned, why, sql, params, error, where):
    params = tuple(json.dumps(p) if isinstance(p, dict) else p for p in params)
    with provisioned.connect(db=pg.DATABASE) as c:
        with pytest.raises(error) as exc:
            c.execute(sql, params)
        diag = exc.value.diag
        assert where in " ".join(filter(None, [diag.constraint_name, diag.message_primary])), str(exc.value)


def test_cdr_ingest_is_idempotent_and_lands_in_its_month(provisioned):
    with provisioned.connect(db=pg.DATABASE) as c:
        month = c.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')").fetchone()[0]
    start = month.replace(day=2, hour=8)
    row = cdr(start_time=f"{start.isoformat()}Z", answer_time=None, end_time=f"{start.replace(minute=1).isoformat()}Z",
              duration=60, billsec=0, hangup_cause="NO_ANSWER", raw={"variables": {"uuid": "x"}})
    with provisioned.connect("cdr_writer", pg.DATABASE) as c:
        assert c.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(row),)).fetchone()[0] is True
        assert c.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(row),)).fetchone()[0] is False  # re-delivery
        again = {**row, "start_time": f"{start.replace(second=1).isoformat()}Z"}  # start rounded differently
        assert c.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(again),)).fetchone()[0] is False
    part = f"calls_{month:%Y_%m}"
    with provisioned.connect(db=pg.DATABASE) as c:
        where = "SELECT tableoid::regclass::text FROM cdr.calls WHERE call_uuid = %s"
        assert c.execute(where, (row["call_uuid"],)).fetchone()[0] == f"cdr.{part}"
        assert c.execute("SELECT count(*) FROM cdr.calls WHERE call_uuid = %s", (row["call_uuid"],)).fetchone()[0] == 1
        months = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'cdr.calls'::regclass "
                           "AND inhrelid::regclass::text ~ '^cdr.calls_[0-9]{4}_[0-9]{2}$'").fetchone()[0]
        assert months == pg.PARTITIONS_AHEAD + 2  # last month, this one, 3 ahead
        assert c.execute("SELECT cdr.ensure_partitions(3)").fetchone()[0] == 0  # idempotent
        indexes = {r[0] for r in c.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (part,))}
        assert any("(caller_number, start_time)" in i for i in indexes)
        assert any("(callee_number, start_time)" in i for i in indexes)
        assert any("UNIQUE" in i and "(call_uuid, start_time)" in i for i in indexes)
        day = start.date().isoformat()
        plan = "\n".join(r[0] for r in c.execute(
            f"EXPLAIN SELECT * FROM cdr.calls WHERE start_time >= '{day}' AND start_time < '{day}'::date + 1 "
            "AND (caller_number = '1001' OR callee_number = '1001')"))
        assert part in plan and "calls_default" not in plan  # pruned to the month


def test_a_cdr_that_differs_from_the_one_stored_first_goes_to_review_not_over_it(provisioned):
    """First writer wins only over the same record: a re-delivery (or the same record through the
    peer's receiver) is a duplicate; a different record under the same call UUID (a forged 1-second
    call posted before the real one, or the real one after a forgery) is kept in cdr.conflicts once,
    never stored over the first; cdr_writer cannot read what it wrote there."""
    real = cdr()
    forged = {**real, "answer_time": None, "billsec": 0, "duration": 1, "end_time": "2031-01-15T10:00:01Z"}
    outcome = "SELECT cdr.ingest_outcome(%s::jsonb)"
    with provisioned.connect("cdr_writer", pg.DATABASE) as c:
        assert c.execute(outcome, (json.dumps(forged),)).fetchone()[0] == "stored"
        assert c.execute(outcome, (json.dumps(forged),)).fetchone()[0] == "duplicate"
        assert c.execute(outcome, (json.dumps({**forged, "node": "pbx2"}),)).fetchone()[0] == "duplicate"
        assert c.execute(outcome, (json.dumps(real),)).fetchone()[0] == "conflict"
        assert c.execute(outcome, (json.dumps(real),)).fetchone()[0] == "conflict"      # re-delivered: kept once
        assert c.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(real),)).fetchone()[0] is False
    with provisioned.connect("cdr_writer", pg.DATABASE) as c, pytest.raises(errors.InsufficientPrivilege):
        c.execute("SELECT count(*) FROM cdr.conflicts")
    with provisioned.connect(db=pg.DATABASE) as c:
        assert c.execute("SELECT duration FROM cdr.calls WHERE call_uuid = %s", (real["call_uuid"],)).fetchall() == [(1,)]
        kept = c.execute("SELECT record->>'duration' FROM cdr.conflicts WHERE call_uuid = %s",
                         (real["call_uuid"],)).fetchall()
        assert kept == [("65",)]


def test_ensure_partitions_moves_early_rows_out_of_the_default_partition(provisioned):
    """A CDR stamped next-next-...-month (beyond the partitions ahead) sits in the default
    partition until ensure_partitions creates its month, then it is moved there."""
    with provisioned.connect(db=pg.DATABASE) as c:
        ahead = c.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + interval '5 months'").fetchone()[0]
        start = ahead.replace(day=3).isoformat() + "Z"
        end = ahead.replace(day=3, hour=1).isoformat() + "Z"
        row = cdr(start_time=start, answer_time=None, end_time=end, duration=3600, billsec=0,
                  hangup_cause="CALL_REJECTED")
        assert c.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(row),)).fetchone()[0] is True
        where = "SELECT tableoid::regclass::text FROM cdr.calls WHERE call_uuid = %s"
        assert c.execute(where, (row["call_uuid"],)).fetchone()[0] == "cdr.calls_default"
        assert c.execute("SELECT cdr.ensure_partitions(5)").fetchone()[0] == 2
        assert c.execute(where, (row["call_uuid"],)).fetchone()[0] == f"cdr.calls_{ahead:%Y_%m}"
        c.rollback()  # the partitions past PARTITIONS_AHEAD are not left to the other tests


def test_policies_resolve_most_specific_first(provisioned):
    with provisioned.connect("pbx_admin", pg.DATABASE) as c:
        c.execute("INSERT INTO recording_policies (scope, extension_id, extension_type, mode, retention_days) "
                  "SELECT 'queue', id, type, 'always', 365 FROM extensions WHERE number = '2001'")
        c.execute("INSERT INTO outbound_routes (prefix, trunk_id, strip_digits, prepend) SELECT '00', id, 2, '+' "
                  "FROM trunks WHERE name = 'carrier'")
        c.execute("INSERT INTO trunks (name, host, transport) VALUES ('backup', '192.0.2.7', 'tls')")
        c.execute("INSERT INTO outbound_routes (prefix, trunk_id, priority) SELECT '', id, 500 FROM trunks "
                  "WHERE name = 'backup'")
        policy = "SELECT scope, mode, retention_days FROM recording_policy_for(%s, %s, %s)"
        assert c.execute(policy, ("2000", "2001", "carrier")).fetchone() == ("queue", "always", 365)
        assert c.execute(policy, ("2000", None, None)).fetchone() == ("global", "on-demand", 30)
        routes = c.execute("SELECT trunk, dial FROM outbound_routes_for('003222123456')").fetchall()
        assert routes == [("carrier", "+3222123456"), ("backup", "003222123456")]
        c.rollback()


def test_seed_is_idempotent_and_keeps_operator_rows(primary):
    seed = str(primary.seed)
    with primary.connect(db=pg.DATABASE) as c:
        c.execute("INSERT INTO kamailio.dispatcher (setid, destination, description) VALUES (2, 'sip:192.0.2.9', 'mine')")
        c.commit()
    for _ in range(2):
        primary.psql(db=pg.DATABASE, file=seed)
    with primary.connect(db=pg.DATABASE) as c:
        rows = c.execute("SELECT setid, destination, attrs, description FROM kamailio.dispatcher ORDER BY id").fetchall()
        assert rows == [(2, "sip:192.0.2.9", "", "mine"),
                        (1, "sip:127.0.0.1:5080", "duid=pbx1", "hapbx:pbx1"),
                        (1, "sip:127.0.0.1:5080", "duid=pbx2", "hapbx:pbx2")]
        assert c.execute("SELECT value FROM pbx.settings WHERE key = 'sip.domain'").fetchone()[0] == "127.0.0.1"


# --- Kamailio --------------------------------------------------------------------------------

def digest(ha1: str, method: str, uri: str, nonce: str, nc: str = "", cnonce: str = "", qop: str = "") -> str:
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    if qop:
        return hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()
    return hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()


def test_digest_check_against_the_auth_view(provisioned):
    """What auth_db does (calculate_ha1 0, password_column ha1): read the HA1 of username@domain
    from `subscriber` as the kamailio role and check the client's response with it."""
    nonce, uri = "5f2c1a0b9e", "sip:pbx.test"
    client_ha1 = hashlib.md5(b"2000:pbx.test:alice-secret-pw-1").hexdigest()
    response = digest(client_ha1, "REGISTER", uri, nonce, "00000001", "abc", "auth")
    with provisioned.connect("kamailio", pg.DATABASE) as c:
        row = c.execute("SELECT ha1, password FROM subscriber WHERE username = %s AND domain = %s",
                        ("2000", "pbx.test")).fetchone()
        assert row[1] == ""  # never a password
        assert digest(row[0], "REGISTER", uri, nonce, "00000001", "abc", "auth") == response
        wrong = hashlib.md5(b"2000:pbx.test:not-her-password").hexdigest()
        assert digest(wrong, "REGISTER", uri, nonce, "00000001", "abc", "auth") != response
    with provisioned.connect(db=pg.DATABASE, autocommit=True) as c:
        c.execute("UPDATE pbx.extensions SET enabled = false WHERE number = '2000'")
        try:
            with provisioned.connect("kamailio", pg.DATABASE) as k:  # a disabled extension cannot authenticate
                assert k.execute("SELECT count(*) FROM subscriber WHERE username = '2000'").fetchone()[0] == 0
        finally:
            c.execute("UPDATE pbx.extensions SET enabled = true WHERE number = '2000'")


KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "db_postgres.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "dispatcher.so"
modparam("auth_db", "db_url", "{db}")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "use_domain", 1)
modparam("auth_db", "load_credentials", "")
modparam("usrloc", "db_url", "{db}")
modparam("usrloc", "db_mode", 1)
modparam("dispatcher", "db_url", "{db}")
request_route {{
    if ($rm == "REGISTER") {{
        if (!auth_check("$fd", "subscriber", "1")) {{
            auth_challenge("$fd", "1");
            exit;
        }}
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    sl_send_reply("404", "Not here");
}}
"""


def sip_register(sock, port: int, user: str, domain: str, cseq: int, auth: str = "") -> str:
    lport = sock.getsockname()[1]
    msg = (f"REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-{cseq}-{uuid.uuid4().hex[:8]}\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=t{cseq}\r\nTo: <sip:{user}@{domain}>\r\n"
           f"Call-ID: reg-test@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{lport}>\r\n"
           f"Expires: 60\r\n{auth}Content-Length: 0\r\n\r\n")
    sock.sendto(msg.encode(), ("127.0.0.1", port))
    return sock.recv(65535).decode()


@pytest.mark.skipif(not os.path.exists("/usr/sbin/kamailio"), reason="needs kamailio + kamailio-postgres-modules")
def test_auth_lookup_is_one_index_scan_of_one_table(provisioned):
    """auth_db's query (sent unprepared, so planned every time) reads kamailio.subscriber by its
    (username, domain) key: no join of the pbx tables to plan per request (migration 011)."""
    with provisioned.connect(db=pg.DATABASE) as c:
        c.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN SELECT ha1 FROM kamailio.subscriber WHERE username = '2000' AND domain = 'pbx.test'"))
    assert "subscriber_account" in plan, plan
    assert "Join" not in plan and "Nested Loop" not in plan and "extensions" not in plan, plan


def test_subscriber_rows_follow_every_change_of_the_pbx_tables(provisioned):
    """kamailio.subscriber is a table kept by triggers: each change an administrator can make
    (a password, the number, disabling, the limits, deleting) is in it in the same transaction,
    row for row what pbx.subscriber_source says."""
    def same(c) -> bool:
        return c.execute("SELECT count(*) FROM (SELECT * FROM kamailio.subscriber EXCEPT ALL "
                         "SELECT * FROM pbx.subscriber_source) a").fetchone()[0] == 0 and \
            c.execute("SELECT count(*) FROM (SELECT * FROM pbx.subscriber_source EXCEPT ALL "
                      "SELECT * FROM kamailio.subscriber) b").fetchone()[0] == 0

    def row(c, number: str):
        return c.execute("SELECT username, cos, max_calls FROM kamailio.subscriber WHERE username = %s",
                         (number,)).fetchall()

    with provisioned.connect(db=pg.DATABASE) as c:
        c.execute("INSERT INTO pbx.extensions (number, type, display_name) VALUES ('7301', 'user', 'sync test')")
        assert row(c, "7301") == []                                  # no credentials yet
        c.execute("SELECT pbx.set_sip_password('7301', 'a-long-enough-secret-1', 'pbx.test')")
        assert row(c, "7301") == [("7301", "national", 2)] and same(c)
        c.execute("UPDATE pbx.calling_limits SET class = 'international', max_calls = 5 WHERE extension_id = "
                  "(SELECT id FROM pbx.extensions WHERE number = '7301')")
        assert row(c, "7301") == [("7301", "international", 5)] and same(c)
        # renumbering: the credentials go first (they are hashed with the number), then come again
        c.execute("DELETE FROM pbx.sip_credentials WHERE extension_id = (SELECT id FROM pbx.extensions "
                  "WHERE number = '7301')")
        assert row(c, "7301") == [] and same(c)
        c.execute("UPDATE pbx.extensions SET number = '7302' WHERE number = '7301'")
        c.execute("SELECT pbx.set_sip_password('7302', 'a-long-enough-secret-2', 'pbx.test')")
        assert row(c, "7301") == [] and row(c, "7302") == [("7302", "international", 5)] and same(c)
        c.execute("UPDATE pbx.extensions SET enabled = false WHERE number = '7302'")
        assert row(c, "7302") == [] and same(c)
        c.execute("UPDATE pbx.extensions SET enabled = true WHERE number = '7302'")
        assert row(c, "7302") == [("7302", "international", 5)] and same(c)
        c.execute("DELETE FROM pbx.extensions WHERE number = '7302'")
        assert row(c, "7302") == [] and same(c)
        c.rollback()


def test_real_kamailio_starts_against_the_schema_and_authenticates(provisioned, tmp_path):
    """Kamailio's own modules: auth_db, usrloc (db_mode 1) and dispatcher check their table
    versions at start; a REGISTER is challenged, then accepted with the right password, refused
    with a wrong one, and the contact is written to kamailio.location by the kamailio role."""
    port = free_port()
    db = f"postgres://kamailio:{SECRETS['postgres_kamailio']}@127.0.0.1:{provisioned.port}/{pg.DATABASE}"
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, db=db))
    proc = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "8", "-P", str(tmp_path / "pid"),
                             "-Y", str(tmp_path), "-w", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.5)
            reply = ""
            for i in range(40):  # up to ~20 s for the start
                try:
                    reply = sip_register(s, port, "2000", "pbx.test", 1)
                    break
                except socket.timeout:
                    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert reply.startswith("SIP/2.0 401"), reply
            s.settimeout(5)
            challenge = next(line for line in reply.split("\r\n") if line.lower().startswith("www-authenticate"))
            nonce = challenge.split('nonce="')[1].split('"')[0]

            def attempt(password: str, cseq: int) -> str:
                ha1 = hashlib.md5(f"2000:pbx.test:{password}".encode()).hexdigest()
                resp = digest(ha1, "REGISTER", "sip:pbx.test", nonce, "00000001", "0a1b2c", "auth")
                auth = (f'Authorization: Digest username="2000", realm="pbx.test", nonce="{nonce}", uri="sip:pbx.test", '
                        f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a1b2c"\r\n')
                return sip_register(s, port, "2000", "pbx.test", cseq, auth)

            assert attempt("wrong-password-00", 2).startswith("SIP/2.0 401")
            ok = attempt("alice-secret-pw-1", 3)
            assert ok.startswith("SIP/2.0 200"), ok
        with provisioned.connect(db=pg.DATABASE) as c:
            assert c.execute("SELECT count(*) FROM kamailio.location WHERE username = '2000'").fetchone()[0] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the pair: streaming, promotion, pg_rewind ---------------------------------------------------

def test_replication_is_refused_without_tls_and_against_another_ca(provisioned, tmp_path):
    """The replication role logs in over TLS only (hostssl), and the nodes' libpq options
    (layout.PG_PEER_SSL: verify-full) refuse a server whose certificate another CA signed."""
    primary = provisioned
    login = dict(host="127.0.0.1", port=primary.port, user="replicator", dbname="replication", replication="true",
                 password=SECRETS["postgres_replication"], connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(sslmode="disable", **login)
    with psycopg.connect(sslmode="verify-full", sslrootcert=str(primary.ca), **login) as c:
        assert c.info.pgconn.ssl_in_use
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(other), "-days", "1", "-subj", "/CN=not ours"],
                   check=True, capture_output=True)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(sslmode="verify-full", sslrootcert=str(other), **login)


def streaming_from(srv: Server):
    def check():
        try:
            with srv.connect() as c:
                return c.execute("SELECT status, sender_port, slot_name FROM pg_stat_wal_receiver "
                                 "WHERE status = 'streaming'").fetchone()
        except psycopg.OperationalError:
            return None
    return check


@pytest.mark.parametrize("major", ["15", "17"])
def test_pair_streams_promotes_and_rewinds(base, major, request):
    """On the host's 15 and on Debian 13's 17 (the release root): the same steps, each major's own
    pg_basebackup, pg_rewind and pg_controldata."""
    d, cert = base
    bins = pg_servers.binaries(major, lambda: request.getfixturevalue("trixie_root"))
    run = bins.run
    a_port, b_port = free_port(), free_port()
    a = Server(d, f"pair-{major}-a", "pbx1", a_port, b_port, cert, bins)  # each rendered with its peer's port
    b = Server(d, f"pair-{major}-b", "pbx2", b_port, a_port, cert, bins)
    timings = {}
    try:
        a.initdb()
        a.start()
        a.setup_primary()  # migrate + seed, roles, slot 'pbx2' and the pg_rewind grants

        # standby: pg_basebackup with the slot, as the standby step does; the password from .pgpass
        t0 = time.monotonic()
        run(bins.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(a_port), "-U", "replicator",
                    "--no-password", "-D", str(b.data), "-X", "stream", "-S", pg.slot_name("pbx2"), "-c", "fast",
                    env=b.env)
        run("touch", str(b.data / "standby.signal"))
        b.start()
        status = wait_for("standby streaming", streaming_from(b))
        timings["build"] = time.monotonic() - t0
        assert status == ("streaming", a_port, "pbx2")
        # the standby step's identity check: the primary's system id over a replication connection
        # (IDENTIFY_SYSTEM) equals the one in the standby's pg_control
        ident = run(bins.tool("psql"), "-X", "-A", "-t", "-q",
                            f"host=127.0.0.1 port={a_port} user=replicator dbname=replication replication=true "
                            "sslmode=prefer connect_timeout=5", "-c", "IDENTIFY_SYSTEM", env=b.env).stdout
        control = run(bins.tool("pg_controldata"), str(b.data)).stdout
        sysid = next(line.split(":")[1].strip() for line in control.splitlines()
                     if line.startswith("Database system identifier"))
        assert ident.split("|")[0] == sysid
        with a.connect() as c:
            rep = c.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
            assert rep == [("pbx2", "streaming")]
            # the walreceiver checked the primary's certificate against the CA (verify-full) over TLS
            assert c.execute("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)").fetchone() == (True,)
            assert c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'pbx2'").fetchone()[0]
        with b.connect() as c:
            conninfo = c.execute("SELECT conninfo FROM pg_stat_wal_receiver").fetchone()[0]
            assert "sslmode=verify-full" in conninfo and f"sslrootcert={b.ca}" in conninfo, conninfo
        # the standby's own slot for its peer (the replication step runs on a standby too)
        b.psql(pg.slot_sql(pg.slot_name("pbx1")))

        # a row written on the primary is read on the standby; the standby refuses writes
        with a.connect(db=pg.DATABASE) as c:
            c.execute(EXT, ("7001", "user", "On primary", "{}"))
        t0 = time.monotonic()

        def seen(number):
            with b.connect(db=pg.DATABASE) as c:
                return c.execute("SELECT count(*) FROM pbx.extensions WHERE number = %s", (number,)).fetchone()[0]
        wait_for("row on the standby", lambda: seen("7001"), 10, 0.01)
        timings["row visible on standby"] = time.monotonic() - t0
        with b.connect(db=pg.DATABASE) as c, pytest.raises(errors.ReadOnlySqlTransaction):
            c.execute(EXT, ("7002", "user", "On standby", "{}"))
        rc, out, err = b.migrate()
        assert rc == RUNNER.EXIT_STANDBY and "primary only" in err
        assert b.migrate("--if-primary")[0] == 0

        # failover: promote the standby, and the old primary diverges by one write
        t0 = time.monotonic()
        with b.connect() as c:
            assert c.execute("SELECT pg_promote(true, 30)").fetchone()[0] is True
            c.execute("CHECKPOINT")  # pg_rewind reads the new timeline from the control file
        with b.connect(db=pg.DATABASE) as c:
            c.execute(EXT, ("7002", "user", "On new primary", "{}"))
        with a.connect(db=pg.DATABASE) as c:
            c.execute(EXT, ("7003", "user", "Lost on old primary", "{}"))
        a.stop("fast")
        # pg_rewind as the replication role (no superuser), password from .pgpass
        out = run(bins.tool("pg_rewind"), f"--target-pgdata={a.data}",
                          f"--source-server=host=127.0.0.1 port={b_port} user=replicator dbname=postgres",
                          env=a.env)
        assert "Done!" in out.stdout + out.stderr
        run("touch", str(a.data / "standby.signal"))
        a.start()
        status = wait_for("old primary streaming from the new one", streaming_from(a))
        timings["promote to rejoined"] = time.monotonic() - t0
        assert status == ("streaming", b_port, "pbx1")
        with a.connect(db=pg.DATABASE) as c:
            wait_for("new primary's row on the rejoined standby", lambda: c.execute(
                "SELECT count(*) FROM pbx.extensions WHERE number = '7002'").fetchone()[0], 10)
            assert c.execute("SELECT count(*) FROM pbx.extensions WHERE number = '7003'").fetchone()[0] == 0
        with a.connect() as c:
            print(c.execute("SELECT version()").fetchone()[0])
        print("pair timings (s):", {k: round(v, 2) for k, v in timings.items()})
    except BaseException:
        print("--- a log ---\n" + a.log() + "\n--- b log ---\n" + b.log())
        raise
    finally:
        b.stop("immediate")
        a.stop("immediate")


# --- step scripts ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
@pytest.mark.parametrize("name", ["lab", "prod"])
def test_postgres_step_scripts_pass_shellcheck(name):
    from components.remote import script
    c = stack(name)
    for node in c.nodes:
        ctx = RenderContext(c, node, masked_secrets())
        for title, body in [("configure", pg.configure_script(ctx)), ("migrate", pg.migrate_script(ctx)),
                            ("roles", pg.roles_script(ctx)), ("replication", pg.replication_script(ctx)),
                            ("standby", pg.standby_script(ctx))]:
            text = script(node.name, title, body)
            out = subprocess.run(["shellcheck", "-s", "bash", "-e", "SC2317", "-"], input=text, capture_output=True,
                                 text=True)
            assert out.returncode == 0, (node.name, title, out.stdout)
            assert "hapbx: [$step]" in text  # every failure names the node and the step
