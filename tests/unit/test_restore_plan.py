"""`hapbx restore`'s plan and executor, without a cluster: the order that keeps one writer (HA off on
both nodes before the data is replaced, the restored node's HA before the peer's rebuild), a bad
target or node refused before anything runs, and a failing step named with its node and stderr."""
import dataclasses

import pytest

from cli import restore as restore_cli
from ops import restore
from components.config import load_stack_file
from tests.mockrun import ROOT


@pytest.fixture(scope="module")
def cluster():
    return load_stack_file(f"{ROOT}/Pulumi.lab.yaml")[0]


@pytest.mark.parametrize("text, want", [
    ("latest", "latest"),
    ("2026-12-07T09:30:00+01:00", "2026-12-07 08:30:00.000000+00"),
    ("2026-12-07T08:30:00.25Z", "2026-12-07 08:30:00.250000+00"),
    ("2026-12-07 08:30:00+00:00", "2026-12-07 08:30:00.000000+00"),
])
def test_targets_are_utc_for_pgbackrest(text, want):
    assert restore.parse_target(text) == want


@pytest.mark.parametrize("text, says", [("2026-12-07T09:30:00", "no time zone"), ("yesterday", "is not a time"),
                                        ("", "is not a time")])
def test_an_ambiguous_or_bad_target_is_refused(text, says):
    with pytest.raises(restore.RestoreError, match=says):
        restore.parse_target(text)


def test_ha_stops_on_both_nodes_before_the_data_is_replaced_and_the_peer_follows_last(cluster):
    steps = restore.plan(cluster, "pbx2", "latest", "20261207T000000Z")
    where = [(s.node, s.title) for s in steps]
    stops = [i for i, (_, t) in enumerate(where) if t.startswith("HA, writer units and PostgreSQL stopped")]
    restored = next(i for i, (_, t) in enumerate(where) if t.startswith("PostgreSQL restored"))
    lease = next(i for i, (_, t) in enumerate(where) if t == "leader lease expired")
    ha_on = next(i for i, (_, t) in enumerate(where) if t.startswith("HA started"))
    rejoin = next(i for i, (_, t) in enumerate(where) if t.startswith("rebuilt as the standby"))
    assert sorted(where[i][0] for i in stops) == ["pbx1", "pbx2"]
    assert max(stops) < lease < restored < ha_on < rejoin
    assert where[restored][0] == where[ha_on][0] == "pbx2" and where[rejoin][0] == "pbx1"
    assert "--type=default" in steps[restored].script
    # nothing is deleted: the old data directory is moved aside and listed for discard-moved-aside
    assert "rm -rf" not in steps[restored].script and "moved-aside" in steps[restored].script


def test_a_time_target_promotes_at_the_target(cluster):
    steps = restore.plan(cluster, "pbx1", "2026-12-07 08:30:00.000000+00", "s")
    script = next(s.script for s in steps if s.title.startswith("PostgreSQL restored"))
    assert "--type=time --target='2026-12-07 08:30:00.000000+00' --target-action=promote" in script


def test_an_unknown_node_or_no_backup_is_refused(cluster):
    with pytest.raises(restore.RestoreError, match="not a PBX node"):
        restore.plan(cluster, "witness", "latest", "s")
    off = dataclasses.replace(cluster, backup=dataclasses.replace(cluster.backup, enabled=False))
    with pytest.raises(restore.RestoreError, match="no repository"):
        restore.plan(off, "pbx1", "latest", "s")


def test_the_first_failing_step_stops_the_run_naming_node_step_and_stderr(cluster):
    steps = restore.plan(cluster, "pbx1", "latest", "s")
    ran = []

    def run(node, script, timeout):
        ran.append(node)
        if len(ran) == 3:
            return 1, "", "ERROR: [075]: no backup set found to restore"
        return 0, "[]" if len(ran) == 3 else "", ""

    with pytest.raises(restore.RestoreError) as e:
        restore.execute(steps, run, log=lambda _: None)
    assert len(ran) == 3
    assert str(e.value).startswith(f"{steps[2].node}: step '{steps[2].title}' failed (exit 1)")
    assert "no backup set found" in str(e.value)


def test_without_yes_nothing_runs(cluster, capsys, monkeypatch):
    monkeypatch.setattr(restore_cli, "node_runner", lambda c: pytest.fail("ran without --yes"))
    monkeypatch.setattr(restore_cli, "main", lambda *a, **k: pytest.fail("ran without --yes"))
    args = type("A", (), {"to": "latest", "node": None, "yes": False})()
    assert restore_cli.cmd(args, f"{ROOT}/Pulumi.lab.yaml") == 0
    assert "--yes to do it" in capsys.readouterr().out
