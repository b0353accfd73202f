"""``python3 -m hapbx_node.cdr deadletters`` (and the node's hapbx-cdr-deadletters) against the real
Redis, PostgreSQL and worker of the shared CDR stack (tests/daemons/cdr_stack.py), run as the
operator runs it: a process with the worker's Redis settings in its environment.

Shown: list names each dead letter without its record; a dead letter whose cause is gone is
replayed onto the end the worker takes from and stored exactly once; what would only die again is
refused unless --force; drop needs --yes; a dry run changes nothing; bad input and an unusable
Redis give one line and an exit status, never a traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from bench import devstack
from bench.devstack import NODE_PATH, SYSTEM_PYTHON, Stack
from bench.loadgen import fs_cdr
from hapbx_node.cdr import records
from tests.daemons.cdr_stack import clean, stack  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]
DEAD = "cdr:dead"


def deadletters(st: Stack, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as a process, with the worker's Redis settings (as its env file gives them)."""
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1", **st.redis_env(),
            **(env or {})}
    return subprocess.run([SYSTEM_PYTHON, "-m", "hapbx_node.cdr", "deadletters", *args], env=full, cwd=NODE_PATH,
                          capture_output=True, text=True, timeout=30)


def one_line_error(out: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert len(out.stderr.splitlines()) == 1 and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def envelope(call_uuid: str, **columns) -> str:
    return records.envelope({**records.normalize(fs_cdr(call_uuid), "pbx1"), **columns}, time.time())


def dead_letter(item: str, reason: str = "PostgreSQL refused it: 23514 a constraint fixed since") -> str:
    """A dead letter as Worker.release writes it."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"reason": reason, "node": "pbx1", "at": at, "item": item})


def bury(st: Stack, *letters: str) -> None:
    """Push dead letters as the worker does (LPUSH: the first given is the oldest, index 0)."""
    st.redis.cli("LPUSH", DEAD, *letters)


def dead(st: Stack) -> list[str]:
    """The dead-letter list, oldest first (the command's indexes)."""
    return st.redis.cli("LRANGE", DEAD, "0", "-1").splitlines()[::-1]


def stored_ids(st: Stack) -> list[str]:
    return st.pg.psql("SELECT call_uuid FROM cdr.calls").split()


def test_list_names_the_dead_letters_without_their_records(clean):
    st = clean
    bad = str(uuid.uuid4())
    # the worker's own dead letters: a row the table refuses, an item that is no JSON, one no envelope
    items = [envelope(bad, duration=-5, caller_name="Secret-Caller-Name"), "{not json", json.dumps({"v": 9})]
    st.redis.cli("LPUSH", "cdr:queue", *items)
    st.start_worker()
    devstack._wait(lambda: st.queue_lengths()["dead"] == 3, 15, "3 dead letters")
    st.worker.stop()
    st.worker = None

    out = deadletters(st, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "3 dead letter(s) in cdr:dead (index 0 is the oldest)", lines
    rows = [line.split("\t") for line in lines[:-1]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(r[2] == "pbx1" for r in rows), rows
    by_uuid = {r[3]: r for r in rows}
    assert "23514" in by_uuid[bad][4] and "violates check constraint" in by_uuid[bad][4]
    reasons = " ".join(r[4] for r in rows)
    assert "not JSON" in reasons and "version-1 envelope" in reasons
    assert [r[3] for r in rows].count("-") == 2, "no call UUID shown for an item that is no envelope"
    assert "Secret-Caller-Name" not in out.stdout and "{not json" not in out.stdout, "never the record"

    out = deadletters(st, "list", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["key"] == DEAD and doc["count"] == 3
    assert [d["item"] for d in doc["dead_letters"]] == [json.loads(x)["item"] for x in dead(st)], "index 0: oldest"
    assert {d["call_uuid"] for d in doc["dead_letters"]} == {bad, None}
    assert "Secret-Caller-Name" in out.stdout, "--json shows everything"


def test_a_dead_letter_whose_cause_is_gone_is_replayed_and_stored_exactly_once(clean):
    st = clean
    fixed, waiting = str(uuid.uuid4()), str(uuid.uuid4())
    item = envelope(fixed)
    letter = dead_letter(item)
    bury(st, dead_letter("{not json", "queue item is not JSON"), letter)
    st.redis.cli("LPUSH", "cdr:queue", envelope(waiting))   # a record the receiver queued meanwhile

    out = deadletters(st, "replay", "1", "--dry-run")
    assert out.returncode == 0 and "would replay 1 (" in out.stdout and fixed in out.stdout, out
    assert st.queue_lengths() == {"queue": 1, "processing": 0, "dead": 2}, "a dry run changes nothing"

    out = deadletters(st, "replay", "1")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "replayed 1 (" in out.stdout and fixed in out.stdout and "1 replayed, 0 not" in out.stdout
    assert st.queue_lengths() == {"queue": 2, "processing": 0, "dead": 1}, "moved, not copied"
    assert st.redis.cli("LINDEX", "cdr:queue", "-1") == item, "on the end the worker takes next"
    assert [json.loads(x)["item"] for x in dead(st)] == ["{not json"], "the other dead letter stays"

    st.start_worker()
    st.wait_stored(2)
    devstack._wait(lambda: st.queue_lengths()["queue"] == 0, 10, "queue drained")
    # the same dead letter replayed again (a re-delivery) is a duplicate: still stored once
    bury(st, letter)
    assert deadletters(st, "replay", "1").returncode == 0
    devstack._wait(lambda: st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 1}, 10, "stored again")
    time.sleep(0.5)
    assert sorted(stored_ids(st)) == sorted([fixed, waiting])
    assert st.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{fixed}'") == "1"


def test_replay_refuses_what_would_only_die_again_unless_forced(clean):
    st = clean
    bury(st, dead_letter("{not json", "queue item is not JSON"), dead_letter('{"v": 9}', "not an envelope"),
         "garbage that is no dead letter")

    out = deadletters(st, "replay", "--all")
    assert out.returncode == 1, out
    refused = [line for line in out.stdout.splitlines() if line.startswith("refused")]
    assert len(refused) == 3, out.stdout
    assert "queue item is not JSON" in refused[2] and "--force" in refused[2]     # newest first: index 0 last
    assert "version-1 envelope" in refused[1] and "--force" in refused[1]
    assert "nothing to replay" in refused[0]
    assert st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 3}

    out = deadletters(st, "replay", "--all", "--force")
    assert out.returncode == 1 and "2 replayed, 1 not" in out.stdout, out
    assert st.queue_lengths() == {"queue": 2, "processing": 0, "dead": 1}
    assert dead(st) == ["garbage that is no dead letter"], "what is no dead letter is never replayed"
    # forced, they die again at the worker
    st.start_worker()
    devstack._wait(lambda: st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 3}, 15, "dead again")


def test_drop_needs_yes(clean):
    st = clean
    a, b = dead_letter(envelope(str(uuid.uuid4()))), dead_letter("{not json", "queue item is not JSON")
    bury(st, a, b)

    out = deadletters(st, "drop", "0")
    one_line_error(out, 2, "add --yes")
    assert "would drop 0 (" in out.stdout and dead(st) == [a, b]
    out = deadletters(st, "drop", "--all", "--yes", "--dry-run")
    assert out.returncode == 0 and out.stdout.count("would drop") == 2 and dead(st) == [a, b]

    out = deadletters(st, "drop", "0", "--yes")
    assert out.returncode == 0 and "dropped 0 (" in out.stdout and "1 dropped, 0 not" in out.stdout, out
    assert dead(st) == [b] and st.queue_lengths()["queue"] == 0, "deleted, not replayed"
    assert deadletters(st, "drop", "--all", "--yes").returncode == 0 and dead(st) == []


def test_bad_input_and_unusable_redis_give_one_line(clean):
    st = clean
    bury(st, dead_letter("{not json", "queue item is not JSON"))
    one_line_error(deadletters(st, "replay", "3"), 2, "no dead letter 3 (there are 1: 0..0")
    one_line_error(deadletters(st, "drop", "0", "7", "--yes"), 2, "no dead letter 7")
    assert len(dead(st)) == 1, "an unknown index: nothing done, the known ones neither"
    one_line_error(deadletters(st, "replay"), 2, "--all")
    one_line_error(deadletters(st, "replay", "0", "--all"), 2, "--all")
    one_line_error(deadletters(st, "replay", "zero"), 2, "not an index")
    one_line_error(deadletters(st, "list", env={"HAPBX_REDIS_ENDPOINTS": f"127.0.0.1:{devstack.free_port()}"}),
                   1, "unavailable")
    one_line_error(deadletters(st, "list", env={"HAPBX_REDIS_PASSWORD": "wrong-password"}), 1, "Redis")
    one_line_error(deadletters(st, "list", env={"HAPBX_REDIS_PASSWORD": ""}), 78, "HAPBX_REDIS_PASSWORD")


def test_on_a_replica_list_works_and_replay_says_where_to_run_it(clean):
    st = clean
    bury(st, dead_letter(envelope(str(uuid.uuid4()))))
    replica = devstack.Redis(os.path.join(st.base, "replica-dl"))
    replica.start()
    try:
        replica.cli("CONFIG", "SET", "masteruser", "default")
        replica.cli("CONFIG", "SET", "masterauth", devstack.REDIS_DEFAULT_PASSWORD)
        st.redis.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        replica.cli("REPLICAOF", "127.0.0.1", str(st.redis.port))
        devstack._wait(lambda: replica.cli("LLEN", DEAD) == "1", 10, "replication")
        env = {"HAPBX_REDIS_ENDPOINTS": f"127.0.0.1:{replica.port}"}
        out = deadletters(st, "list", env=env)
        assert out.returncode == 0 and "1 dead letter(s)" in out.stdout, out
        one_line_error(deadletters(st, "replay", "0", env=env), 1, "replica")
        one_line_error(deadletters(st, "drop", "0", "--yes", env=env), 1, "replica")
        assert st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 1}
    finally:
        replica.stop()


def test_a_letter_changed_since_it_was_read_is_left_alone(clean):
    """Another operator dropped a dead letter between this one's read and its move: the indexes
    moved, so nothing is taken on a guess (the transaction checks the letter at its index)."""
    st = clean
    first, second = dead_letter(envelope(str(uuid.uuid4()))), dead_letter(envelope(str(uuid.uuid4())))
    bury(st, first, second)
    script = ("import sys; import os; from hapbx_node.cdr import deadletters as d; from hapbx_node.cdr.settings import "
              "RedisSettings; s = RedisSettings.from_env(os.environ); r = d.connect(s); "
              "letters = d.read_all(r, s.keys); r.lrem(s.keys.dead, 1, letters[0].raw); "
              "print(d.take_out(r, s.keys, letters[1], letters[1].item.encode()))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1", **st.redis_env()}
    out = subprocess.run([SYSTEM_PYTHON, "-c", script], env=env, cwd=NODE_PATH, capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "False", (out.stdout, out.stderr)
    assert dead(st) == [second] and st.queue_lengths()["queue"] == 0


def test_the_node_command_reads_the_worker_env_file(clean, tmp_path):
    """hapbx-cdr-deadletters as rendered, pointed at this stack: the worker's env file (as
    components/render/cdr.py writes it) sourced, the package started as the units start it."""
    from components.config import load_stack_file
    from components.render import RenderContext, cdr, masked_secrets
    from tests.mockrun import ROOT
    st = clean
    bury(st, dead_letter("{not json", "queue item is not JSON"))
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.lab.yaml", assume_secrets=True)
    cli = cdr.deadletters_cli(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
    env_file = tmp_path / cdr.WORKER_ENV
    env_file.write_text(cdr.env_file(st.redis_env(), "test"))
    script = tmp_path / "hapbx-cdr-deadletters"
    script.write_text(cli.content.replace(f"/etc/hapbx/{cdr.WORKER_ENV}", str(env_file))
                      .replace(f"PYTHONPATH={cdr.LIB_DIR}", f"PYTHONPATH={NODE_PATH}"))
    out = subprocess.run(["bash", str(script), "list"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0 and "1 dead letter(s) in cdr:dead" in out.stdout, (out.stdout, out.stderr)
    env_file.chmod(0)
    if os.geteuid() != 0:   # root reads a 0000 file: the check is for an operator who is not root
        one_line_error(subprocess.run(["bash", str(script), "list"], capture_output=True, text=True, timeout=30),
                       1, "run it as root")
