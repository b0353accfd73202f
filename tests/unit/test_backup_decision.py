"""Which node takes a scheduled backup (hapbx_node/backup/decide.py) and what the runner records
(status.py: the contract's pgbackrest.json), without PostgreSQL or pgBackRest."""
from __future__ import annotations

import json
import os

import pytest

from hapbx_node.backup import run, status
from hapbx_node.backup.decide import Decision, LocalState, decide
from hapbx_node.backup import stanza
from hapbx_node.backup.stanza import current_db, other_system_message

CASES = [
    # (why, state, backs up, --backup-standby, words in the reason)
    ("streaming standby backs up from the standby", LocalState(True, True, receiving=True), True, True, "standby"),
    ("standby cut from its primary leaves it to the primary", LocalState(True, True, receiving=False), False, False,
     "primary backs up"),
    ("primary with a streaming standby leaves it to the standby", LocalState(True, False, standbys_streaming=1),
     False, False, "standby takes"),
    ("primary alone backs up from itself", LocalState(True, False, standbys_streaming=0), True, False,
     "no streaming standby"),
    ("PostgreSQL down: the peer does it", LocalState(False, error="connection refused"), False, False,
     "connection refused"),
]


@pytest.mark.parametrize("why,state,backs_up,standby,words", CASES, ids=[c[0] for c in CASES])
def test_one_node_backs_up(why, state, backs_up, standby, words):
    d = decide(state)
    assert isinstance(d, Decision)
    assert (d.backup, d.backup_standby) == (backs_up, standby)
    assert words in d.reason


def test_exactly_one_of_a_healthy_pair_and_of_a_cut_pair_backs_up():
    healthy = [LocalState(True, False, standbys_streaming=1), LocalState(True, True, receiving=True)]
    cut = [LocalState(True, False, standbys_streaming=0), LocalState(True, True, receiving=False)]
    standby_down = [LocalState(True, False, standbys_streaming=0), LocalState(False, error="down")]
    for pair in (healthy, cut, standby_down):
        assert sum(decide(s).backup for s in pair) == 1, pair


def test_record_keeps_last_success_and_counts():
    first = status.backup_record({}, kind="full", outcome="success", reason="r", started=100.0, finished=160.5,
                                 size_bytes=1234, repo_size_bytes=5000, label="20240101-000000F")
    assert first == {"type": "full", "outcome": "success", "reason": "r", "started": 100, "finished": 160,
                     "duration_seconds": 60.5, "size_bytes": 1234, "repo_size_bytes": 5000,
                     "label": "20240101-000000F", "last_success": 160, "last_success_type": "full",
                     "successes": 1, "failures": 0}
    failed = status.backup_record(first, kind="diff", outcome="failed", reason="boom", started=200, finished=201,
                                  size_bytes=99, label="x")
    assert (failed["size_bytes"], failed["label"], failed["last_success"], failed["last_success_type"]) == (0, "", 160, "full")
    assert (failed["successes"], failed["failures"], failed["repo_size_bytes"]) == (1, 1, 5000)
    skipped = status.backup_record(failed, kind="diff", outcome="skipped", reason="peer", started=300, finished=300)
    assert (skipped["successes"], skipped["failures"], skipped["outcome"]) == (1, 1, "skipped")
    with pytest.raises(ValueError):
        status.backup_record({}, kind="full", outcome="ok", reason="", started=0, finished=0)


def test_status_file_is_replaced_whole(tmp_path):
    path = str(tmp_path / status.PGBACKREST_STATUS)
    assert status.read(path) == {}
    status.write_atomic(path, {"a": 1})
    status.write_atomic(path, {"a": 2})
    assert json.loads(open(path).read()) == {"a": 2}
    assert os.listdir(tmp_path) == [status.PGBACKREST_STATUS]   # no temporary left behind
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"          # hapbx-exporter reads it
    (tmp_path / "bad.json").write_text("{not json")
    assert status.read(str(tmp_path / "bad.json")) == {}


def test_the_new_backup_is_the_newest_of_its_type_since_the_run_started():
    entry = {"backup": [
        {"label": "F1", "type": "full", "timestamp": {"start": 50}},
        {"label": "D1", "type": "diff", "timestamp": {"start": 90}},
        {"label": "D2", "type": "diff", "timestamp": {"start": 120}, "info": {"repository": {"delta": 7, "size": 9}}},
    ]}
    assert run.new_backup(entry, "diff", 100)["label"] == "D2"
    assert run.new_backup(entry, "full", 100) is None
    assert run.tool.stored_bytes(run.new_backup(entry, "diff", 100)) == 7


def test_stanza_of_another_system_is_named_with_the_way_out():
    entry = {"db": [{"id": 1, "system-id": 111, "version": "15"}, {"id": 2, "system-id": 222, "version": "16"}]}
    assert current_db(entry)["system-id"] == 222
    assert current_db({"db": []}) is None
    msg = other_system_message("hapbx", current_db(entry), "333", 150004)
    assert "./hapbx restore" in msg and "222" in msg and "333" in msg


def test_stanza_step_waits_for_a_postgresql_that_is_restarting(monkeypatch):
    # a handler's restart or a rejoin as standby: the socket is back after a few tries
    answers = iter([OSError("No such file or directory"), OSError("the database system is starting up"),
                    ("7311", 150004)])

    def system(target):
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a
    monkeypatch.setattr(stanza.local, "system", system)
    assert stanza.local_system(stanza.local.Target(), wait=5, pause=0) == ("7311", 150004)


def _always_failing(monkeypatch, error: str) -> list:
    """The local PostgreSQL answering every connection with this error; the list of tries."""
    calls: list = []

    def system(target):
        calls.append(target)
        raise OSError(error)
    monkeypatch.setattr(stanza.local, "system", system)
    return calls


def test_stanza_step_gives_up_on_a_postgresql_that_stays_down(monkeypatch):
    calls = _always_failing(monkeypatch, "No such file or directory")
    with pytest.raises(RuntimeError, match=r"No such file or directory \(waited 0.05 s\)"):
        stanza.local_system(stanza.local.Target(), wait=0.05, pause=0.01)
    assert len(calls) >= 2


def test_stanza_step_does_not_wait_on_an_error_that_is_no_restart(monkeypatch):
    calls = _always_failing(monkeypatch, 'FATAL:  password authentication failed for user "postgres"')
    with pytest.raises(OSError, match="password authentication failed"):
        stanza.local_system(stanza.local.Target(), wait=5, pause=0)
    assert len(calls) == 1


def test_unknown_kind_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("PGBACKREST_STANZA", "hapbx")
    assert run.main("incr") == 2
    assert "full, diff" in capsys.readouterr().err
