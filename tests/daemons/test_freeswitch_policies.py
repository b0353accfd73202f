"""FreeSWITCH's per-call lookups never wait on the database: the rendered policy-cache script
against a real PostgreSQL with our schema, and the rendered Lua scripts run by a real Lua 5.3 with
FreeSWITCH's `session`/`freeswitch` API stubbed (a database handle is refused outright).

- the Lua answers exactly what pbx.recording_policy_for / pbx.inbound_routes answer;
- with PostgreSQL frozen (SIGSTOP: it accepts nothing and answers nothing) the cache refresh gives
  up within its timeout and leaves the last copy, and a call's lookup still answers from it;
- the database password reaches psql through PGPASSFILE only: never argv, never a DSN.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from components.render import RenderContext
from components.render import freeswitch as fs
from components.render import postgres as pg
from tests.daemons.test_freeswitch_render import cluster as fs_cluster
from tests.daemons.test_postgres import SECRETS, base, primary  # noqa: F401  (module-scoped PostgreSQL)

LUA = "lua5.3"
pytestmark = pytest.mark.timeout(180)

# FreeSWITCH's API as the scripts use it; freeswitch.Dbh is a failure: no call may touch PostgreSQL
STUB = textwrap.dedent("""\
    local vars, globals = VARS, GLOBALS
    session = {
      getVariable = function(_, k) return vars[k] end,
      setVariable = function(_, k, v) vars[k] = v end,
      execute = function(_, app, data) vars["executed"] = app .. " " .. data end,
      answered = function() return vars["answered"] == "yes" end,
    }
    freeswitch = {
      getGlobalVariable = function(k) return globals[k] end,
      consoleLog = function(level, text) io.stderr:write(level .. ": " .. text) end,
      Dbh = function() error("a call opened a database handle") end,
    }
    argv = ARGV
    dofile(SCRIPT)
    for _, k in ipairs({"hapbx_recording_mode", "hapbx_route_target", "executed", "execute_on_answer",
                        "hapbx_recording_path", "hapbx_recording_retention_days"}) do
      print(k .. "=" .. tostring(vars[k]))
    end
    """)


def lua_table(d: dict) -> str:
    return "{" + ", ".join(f"[{k!r}] = {v!r}" for k, v in d.items()) + "}"


@dataclasses.dataclass
class Rig:
    dir: Path
    files: dict
    cache: Path
    pgpass: Path
    srv: object

    def refresh(self, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.dir / "policy-cache")], capture_output=True, text=True,
                              timeout=timeout)

    def lua(self, script: str, variables: dict, args: list[str] = ()) -> tuple[dict, float]:
        driver = STUB.replace("VARS", lua_table(variables)).replace("ARGV", lua_table(
            {i + 1: a for i, a in enumerate(args)}) if args else "{}").replace(
            "GLOBALS", lua_table({"hapbx_policy_cache": str(self.cache), "hapbx_policy_max_age": "60",
                                  "hapbx_recording_fallback": "never", "hapbx_live_dir": "/live",
                                  "hapbx_recordings_dir": "/rec", "hapbx_lib": str(self.dir)})).replace(
            "SCRIPT", repr(str(self.dir / script)))
        started = time.monotonic()
        out = subprocess.run([LUA, "-"], input=driver, capture_output=True, text=True, timeout=10)
        elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.splitlines()), elapsed


@pytest.fixture(scope="module")
def rig(primary, tmp_path_factory):  # noqa: F811
    primary.psql(pg.roles_sql(primary.ctx))          # the login roles, pbx_readonly among them
    c = fs_cluster()
    c = dataclasses.replace(c, postgres=dataclasses.replace(c.postgres, port=primary.port))
    files = {f.path: f for f in fs.render(RenderContext(c, c.nodes[0], SECRETS))}
    d = tmp_path_factory.mktemp("fs-lib")
    cache, pgpass = d / "policies.tsv", d / "pgpass"
    for path, f in files.items():
        if path.startswith(fs.LIB_DIR + "/"):
            text = f.content.replace(fs.LIB_DIR, str(d)).replace(fs.POLICY_CACHE, str(cache))
            (d / os.path.basename(path)).write_text(text.replace(fs.POLICY_PGPASS, str(pgpass)))
    pgpass.write_text(files[fs.POLICY_PGPASS].content)
    pgpass.chmod(0o600)
    with primary.connect(db=pg.DATABASE) as conn:
        ext = ("INSERT INTO pbx.extensions (number, type, display_name) VALUES (%s, %s, %s) "
               "ON CONFLICT (number) DO NOTHING")
        for number, kind in (("1001", "user"), ("1002", "user"), ("8000", "queue")):
            conn.execute(ext, (number, kind, f"ext {number}"))
        conn.execute("INSERT INTO pbx.trunks (name, host) VALUES ('carrier-a', '203.0.113.5') ON CONFLICT DO NOTHING")
        conn.execute("DELETE FROM pbx.recording_policies")
        conn.execute("DELETE FROM pbx.inbound_routes")
        # each policy its own retention: the call must carry the one of the policy that decided
        policy = ("INSERT INTO pbx.recording_policies (scope, extension_id, extension_type, mode, retention_days) "
                  "SELECT %s, id, type, %s, %s FROM pbx.extensions WHERE number = %s")
        conn.execute(policy, ("extension", "always", 30, "1001"))
        conn.execute(policy, ("queue", "on-demand", 14, "8000"))
        conn.execute("INSERT INTO pbx.recording_policies (scope, trunk_id, mode, retention_days) "
                     "SELECT 'trunk', id, 'always', 365 FROM pbx.trunks WHERE name = 'carrier-a'")
        conn.execute("INSERT INTO pbx.recording_policies (scope, mode, retention_days) VALUES ('global', 'never', 60)")
        route = ("INSERT INTO pbx.inbound_routes (did, extension_id, trunk_id) SELECT %s, e.id, "
                 "(SELECT id FROM pbx.trunks WHERE name = %s) FROM pbx.extensions e WHERE e.number = %s")
        conn.execute(route, ("+3222000000", None, "8000"))
        conn.execute(route, ("+3222000001", "carrier-a", "1002"))
    return Rig(d, files, cache, pgpass, primary)


def test_the_cache_holds_every_policy_and_route_and_the_lua_answers_as_the_database(rig):
    out = rig.refresh()
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in rig.cache.read_text().splitlines()]
    assert rows[0][0] == "generated" and abs(int(rows[0][1]) - time.time()) < 60
    assert ["policy", "extension:1001", "always"] in rows and ["policy", "global:", "never"] in rows
    assert ["route", "+3222000001:carrier-a", "1002"] in rows and ["route", "+3222000000:*", "8000"] in rows
    assert oct(rig.cache.stat().st_mode & 0o777) == "0o640"
    cases = [  # (argv, caller, trunk) -> the SQL function's answer
        (["extension", "1002"], "1001", None), (["extension", "1002"], "5555", None),
        (["queue", "8000"], "1002", None), (["queue", "8000"], "1001", None),
        (["trunk", "carrier-a"], "1002", None), (["extension", "1002"], "+3212345678", "carrier-a"),
    ]
    with rig.srv.connect(db=pg.DATABASE) as conn:
        for (kind, target), caller, trunk in cases:
            # the parties as the script counts them: the callee, or the caller when one of ours
            ext = target if kind == "extension" else (caller if caller.isdigit() else None)
            queue = target if kind == "queue" else None
            trunk_name = target if kind == "trunk" else trunk
            want = conn.execute("SELECT mode, retention_days FROM pbx.recording_policy_for(%s, %s, %s)",
                                (ext, queue, trunk_name)).fetchone()
            got, _ = rig.lua("hapbx_recording.lua", {"caller_id_number": caller, "uuid": "u1",
                                                     **({"hapbx_trunk": trunk} if trunk else {})}, [kind, target])
            assert got["hapbx_recording_mode"] == (want[0] if want else "never"), (kind, target, caller, trunk)
            # the retention of the same policy, for the CDR (the recordings retention honours it)
            assert got["hapbx_recording_retention_days"] == str(want[1]), (kind, target, caller, trunk)
    got, _ = rig.lua("hapbx_inbound.lua", {"destination_number": "+3222000001", "hapbx_trunk": "carrier-a"})
    assert got["hapbx_route_target"] == "1002"                # a route of this trunk
    got, _ = rig.lua("hapbx_inbound.lua", {"destination_number": "+3222000001", "hapbx_trunk": "other"})
    assert got["executed"] == "respond 404"                   # ... and of no other
    got, _ = rig.lua("hapbx_inbound.lua", {"destination_number": "+3222000000", "hapbx_trunk": ""})
    assert got["hapbx_route_target"] == "8000"                # a route for any trunk
    got, _ = rig.lua("hapbx_inbound.lua", {"destination_number": "+3299999999"})
    assert got["executed"] == "respond 404" and got["hapbx_route_target"] == "nil"


def test_a_frozen_database_costs_a_call_nothing_and_the_refresh_keeps_the_last_copy(rig):
    assert rig.refresh().returncode == 0
    before = rig.cache.read_text()
    pid = int((rig.srv.data / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)   # accepts nothing, answers nothing: a failover's worst moment
    try:
        started = time.monotonic()
        out = rig.refresh()
        refresh_seconds = time.monotonic() - started
        assert out.returncode != 0
        assert refresh_seconds < fs.POLICY_TIMEOUT_SECONDS + 5
        assert rig.cache.read_text() == before and not list(rig.dir.glob("policies.tsv.*"))
        answers = []
        for _ in range(5):
            got, elapsed = rig.lua("hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "u2"},
                                   ["extension", "1001"])
            assert got["hapbx_recording_mode"] == "always"   # 1001's own policy, from the last copy
            answers.append(elapsed)
        # the whole lookup (a Lua process start included) is far inside the 200 ms a call may wait
        assert max(answers) < 0.2, answers
    finally:
        os.kill(pid, signal.SIGCONT)
    assert rig.refresh().returncode == 0


def test_no_cache_at_all_means_the_documented_fallback(rig, tmp_path):
    missing = dataclasses.replace(rig, cache=tmp_path / "absent.tsv")
    got, _ = missing.lua("hapbx_recording.lua", {"caller_id_number": "1001", "uuid": "u3"}, ["extension", "1002"])
    assert got["hapbx_recording_mode"] == "never"   # dialplan.recordingFallback of the stack
    got, _ = missing.lua("hapbx_inbound.lua", {"destination_number": "+3222000000"})
    assert got["executed"] == "respond 404"


def test_the_password_reaches_psql_through_pgpassfile_only(rig):
    script = (rig.dir / "policy-cache").read_text()
    assert SECRETS["postgres_readonly"] not in script and "password" not in script.lower().replace(
        "the password is in pgpassfile", "")
    assert "PGPASSFILE=" in script
    unit = rig.files[f"/etc/systemd/system/{fs.POLICY_UNIT}.service"].content
    assert f"User={fs.USER}" in unit and SECRETS["postgres_readonly"] not in unit


def test_a_recorded_call_already_answered_starts_recording_at_once(rig):
    """A transfer out of an IVR (which answers first) never fires execute_on_answer: seen on a real
    FreeSWITCH 1.10.12, the CDR then named a recording that was never made."""
    assert rig.refresh().returncode == 0
    ringing, _ = rig.lua("hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "u4"}, ["extension", "1001"])
    assert ringing["execute_on_answer"] == "record_session /live/u4.wav" and ringing["executed"] == "nil"
    up, _ = rig.lua("hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "u5", "answered": "yes"},
                    ["extension", "1001"])
    assert up["executed"] == "record_session /live/u5.wav" and up["execute_on_answer"] == "nil"
    assert up["hapbx_recording_path"].endswith("/u5.wav")


def test_the_retention_of_the_deciding_policy_is_set_and_an_older_cache_still_decides(rig, tmp_path):
    assert rig.refresh().returncode == 0
    rows = [line.split("\t") for line in rig.cache.read_text().splitlines()]
    assert ["retention", "extension:1001", "30"] in rows and ["retention", "global:", "60"] in rows
    # a queue call from 1001: 1001's own policy is more specific than the queue's (14 days), so
    # its mode and its 30 days; from 1002 (no policy of its own): the queue's mode and 14 days
    got, _ = rig.lua("hapbx_recording.lua", {"caller_id_number": "1001", "uuid": "r1"}, ["queue", "8000"])
    assert (got["hapbx_recording_mode"], got["hapbx_recording_retention_days"]) == ("always", "30")
    got, _ = rig.lua("hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "r2"}, ["queue", "8000"])
    assert (got["hapbx_recording_mode"], got["hapbx_recording_retention_days"]) == ("on-demand", "14")
    # a cache written before retention lines existed: the same modes, no retention (the
    # retention run then takes the policy of the moment)
    old = tmp_path / "old.tsv"
    old.write_text("".join(line + "\n" for line in rig.cache.read_text().splitlines()
                           if not line.startswith("retention\t")))
    older = dataclasses.replace(rig, cache=old)
    for caller, args, mode in (("1002", ["extension", "1001"], "always"), ("1002", ["queue", "8000"], "on-demand"),
                               ("5555", ["extension", "1002"], "never")):
        got, _ = older.lua("hapbx_recording.lua", {"caller_id_number": caller, "uuid": "r3"}, args)
        assert got["hapbx_recording_mode"] == mode and got["hapbx_recording_retention_days"] == "nil"
    # a malformed retention is no retention (never a wrong number in the CDR)
    bad = tmp_path / "bad.tsv"
    bad.write_text(rig.cache.read_text().replace("retention\textension:1001\t30", "retention\textension:1001\t3x"))
    got, _ = dataclasses.replace(rig, cache=bad).lua("hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "r4"},
                                                     ["extension", "1001"])
    assert got["hapbx_recording_mode"] == "always" and got["hapbx_recording_retention_days"] == "nil"
    # no cache at all: the fallback decides, no retention is claimed
    got, _ = dataclasses.replace(rig, cache=tmp_path / "absent.tsv").lua(
        "hapbx_recording.lua", {"caller_id_number": "1002", "uuid": "r5"}, ["extension", "1001"])
    assert got["hapbx_recording_retention_days"] == "nil"


def test_the_retention_variable_reaches_the_cdr_raw_json():
    """records.normalize keeps every posted variable in ``raw`` (only callflow is dropped): the
    retention run reads raw.variables.hapbx_recording_retention_days from cdr.calls."""
    from hapbx_node.cdr import records
    row = records.normalize({"variables": {"uuid": "7d0f6a36-5d5c-4c52-9b7e-0a3c1f1e2d01", "start_epoch": "1750000000",
                                           "end_epoch": "1750000060", "destination_number": "1001",
                                           "hapbx_recording_mode": "always", "hapbx_recording_retention_days": "30",
                                           "hapbx_recording_path": "/rec/pbx1/2025/06/15/x.wav"},
                             "callflow": [{"caller_profile": {"caller_id_number": "1002"}}]}, "pbx1")
    assert row["raw"]["variables"]["hapbx_recording_retention_days"] == "30" and "callflow" not in row["raw"]
