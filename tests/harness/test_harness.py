"""The live harness against a real sshd: ordering, concurrency, diff semantics, secrets."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import harness

from .conftest import PROJECT, free_port

pytestmark = pytest.mark.timeout(120)


class Stack:
    """One throwaway stack: the program, its state file and the marker directory."""

    def __init__(self, program: Path, sshd, tmp_path: Path):
        self.program, self.sshd = program, sshd
        self.dir = tmp_path / "markers"
        self.dir.mkdir()
        self.state = str(tmp_path / "state" / "stack.json")
        self.logs: list[str] = []

    def config(self, **extra) -> dict:
        base = {"dir": str(self.dir), "port": self.sshd.port, "hostKey": self.sshd.host_key,
                "key": self.sshd.client_key}
        base.update(extra)
        return {f"{PROJECT}:{k}": v for k, v in base.items()}

    def apply(self, force=False, reveal=False, **extra) -> harness.ApplyResult:
        self.mark()
        return harness.apply(str(self.program), PROJECT, "test", self.config(**extra),
                             [f"{PROJECT}:key"], self.state, force=force, log=self.logs.append,
                             reveal=reveal)

    def mark(self) -> None:
        """Start a new section of the event log, so events() shows only the latest run."""
        with open(self.dir / "events", "a") as fh:
            fh.write("--- run\n")

    def events(self) -> list[tuple[str, float]]:
        lines = (self.dir / "events").read_text().split("--- run\n")[-1].splitlines()
        return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])) for line in lines]

    def names(self) -> list[str]:
        return [text for text, _ in self.events()]

    def when(self, text: str) -> float:
        return dict(self.events())[text]


@pytest.fixture
def stack(program, sshd, tmp_path) -> Stack:
    return Stack(program, sshd, tmp_path)


def test_first_apply_creates_in_dependency_order_and_concurrently(stack):
    result = stack.apply()
    commands = {"secret-file", "a", "b", "c", "trig-cbd", "trig-dbr", "with-update", "no-update"}
    assert set(result.created) == commands | {"pw"}
    assert sorted(result.executed) == sorted(commands)
    # c depends on a (depends_on and a's stdout): it starts after a ended.
    assert stack.when("start c") >= stack.when("end a")
    # a and b are independent: they overlap in time.
    assert stack.when("start b") < stack.when("end a") and stack.when("start a") < stack.when("end b")
    assert result.outputs["c"] == "got out-a"  # one trailing newline trimmed, stdin fed
    assert result.outputs["password"] == harness.MASK


def test_second_apply_runs_nothing(stack):
    stack.apply()
    result = stack.apply()
    assert result.executed == [] and stack.events() == []
    assert result.created == result.updated == result.replaced == result.deleted == []
    assert "a" in result.unchanged and "pw" in result.unchanged
    assert result.outputs["a"] == "out-a"  # outputs come from state


def test_changed_trigger_replaces_create_before_delete_unless_delete_before_replace(stack):
    stack.apply()
    result = stack.apply(trig="2")
    assert set(result.replaced) == {"trig-cbd", "trig-dbr"}
    names = stack.names()
    # default: the new one is created, the old one deleted after the whole program
    assert names.index("create trig-cbd 2") < names.index("delete trig-cbd 1")
    assert names[-1] == "delete trig-cbd 1"
    # delete_before_replace: the old one goes first
    assert names.index("delete trig-dbr 1") < names.index("create trig-dbr 2")


def test_changed_create_runs_update_if_given_else_create_and_never_delete(stack):
    stack.apply()
    result = stack.apply(ver="2")
    assert set(result.updated) == {"with-update", "no-update"}
    assert sorted(stack.names()) == ["create no-update 2", "update with-update 2"]
    # addPreviousOutputInEnv: the previous stdout reaches the update (sshd accepts
    # PULUMI_COMMAND_*); the create printed nothing, and an empty one is not sent.
    assert _entry(stack, "with-update")["outputs"]["stdout"] == "previous=\nv2"
    stack.apply(ver="3")
    assert _entry(stack, "with-update")["outputs"]["stdout"] == "previous=previous=\nv2\nv3"


def test_removed_resource_runs_its_delete(stack):
    stack.apply(optional=True)
    assert "create optional" in stack.names()
    result = stack.apply(optional=False)
    assert result.deleted == ["optional"] and stack.names() == ["delete optional"]
    assert _entry(stack, "optional") is None


def test_failure_names_resource_host_and_stderr_masked_and_keeps_successes(stack):
    stack.apply()
    password = stack.apply(reveal=True).outputs["password"]
    with pytest.raises(harness.ApplyError) as caught:
        stack.apply(fail=True)
    err = caught.value
    message = str(err)
    assert err.resource == "failing" and err.host == "127.0.0.1" and err.step == "create"
    assert err.exit_status == 3
    assert "failing" in message and "127.0.0.1" in message and "exit status 3" in message
    # as pulumi-command builds it: the quoted script, then stdout and stderr
    assert 'running "cat >&2; echo to-stderr >&2; exit 3":' in message and "to-stderr" in message
    # the engine masks secret config only: a generated secret a command prints is in the error, as
    # it would be in `pulumi up` output (the program's own scripts must never print one)
    assert password in message and password in err.stderr
    assert stack.sshd.client_key.strip() not in message
    assert "c" in err.partial.unchanged and err.partial.created == []  # what ran before it
    names = {e["name"] for e in _state(stack)["resources"].values()}
    assert "failing" not in names and "after-failing" not in names and "c" in names
    # fixed, the next apply continues where it stopped
    result = stack.apply()
    assert result.executed == [] and result.created == []


def test_old_half_of_a_replacement_left_by_a_failure_is_deleted_first_next_time(stack):
    stack.apply()
    with pytest.raises(harness.ApplyError):
        stack.apply(trig="2", fail=True)
    assert "delete trig-cbd 1" not in stack.names()  # deletes wait for the end of a run
    assert [e["name"] for e in _state(stack)["pending"]] == ["trig-cbd"]
    result = stack.apply(trig="2")
    assert stack.names()[0] == "delete trig-cbd 1" and result.executed == ["trig-cbd"]
    assert _state(stack)["pending"] == []


def test_partial_apply_resumes(stack):
    with pytest.raises(harness.ApplyError):
        stack.apply(fail=True)
    created = {e["name"] for e in _state(stack)["resources"].values()}
    assert {"a", "c", "pw"} <= created
    result = stack.apply()
    assert "a" not in result.executed and "a" in result.unchanged


def test_random_password_stable_secret_and_never_logged(stack):
    first = stack.apply(reveal=True).outputs["password"]
    second = stack.apply(reveal=True).outputs["password"]
    assert first == second and len(first) == 24
    assert sum(ch.isdigit() for ch in first) >= 2 and set(first) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert (stack.dir / "pw").read_text() == first  # reached the command on stdin
    stack.apply(force=True)
    assert (stack.dir / "pw").read_text() == first  # force keeps random values
    assert stack.logs and not any(first in line for line in stack.logs)
    assert not any(stack.sshd.client_key.strip() in line for line in stack.logs)


def test_force_reruns_every_create_without_deletes(stack):
    stack.apply(optional=True)
    result = stack.apply(force=True, optional=True)
    assert not any(n.startswith("delete") for n in stack.names())
    assert "create optional" in stack.names() and "create trig-cbd 1" in stack.names()
    assert "pw" in result.unchanged and "a" in result.replaced


def test_wrong_host_key_is_refused(stack):
    with pytest.raises(harness.ApplyError) as caught:
        stack.apply(hostKey=stack.sshd.other_key)
    assert "host key" in str(caught.value)
    assert not (stack.dir / "events").read_text().replace("--- run\n", "")


def test_unreachable_host_fails_after_bounded_dial_retries(stack):
    with pytest.raises(harness.ApplyError) as caught:
        stack.apply(port=free_port())  # nothing listens there
    # dialErrorLimit 1 in the program: the first dial and one retry, as the provider counts
    assert "failed after 2 attempts" in str(caught.value) and caught.value.host == "127.0.0.1"


def test_state_file_is_private_and_destroy_deletes_dependants_first(stack):
    stack.apply(optional=True)
    mode = stat.S_IMODE(os.stat(stack.state).st_mode)
    assert mode == 0o600
    stack.mark()
    result = harness.destroy(stack.state, log=stack.logs.append)
    assert set(result.deleted) >= {"optional", "trig-cbd", "a", "c", "pw"}
    assert {"delete optional", "delete no-update", "delete with-update"} <= set(stack.names())
    assert _state(stack)["resources"] == {}


def test_apply_is_repeatable_in_one_process_with_different_programs(stack, tmp_path, sshd):
    other = tmp_path / "other"
    other.mkdir()
    (other / "Pulumi.yaml").write_text("name: other\nruntime: python\n")
    (other / "__main__.py").write_text("import pulumi\npulumi.export('x', pulumi.Config().require('x'))\n")
    out = harness.apply(str(other), "other", "s", {"other:x": "1"}, [], str(tmp_path / "o.json"),
                        log=lambda _: None)
    assert out.outputs == {"x": "1"}
    assert stack.apply().created


def test_environment_needs_acceptenv_like_the_provider(stack):
    assert _entry_after(stack, env="HARNESS_OK")["outputs"]["stdout"] == "yes"
    with pytest.raises(harness.ApplyError) as caught:
        stack.apply(env="NOT_ACCEPTED")
    assert "NOT_ACCEPTED" in str(caught.value) and caught.value.resource == "env"


def test_program_error_is_an_apply_error_with_secrets_masked(stack, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "__main__.py").write_text(
        "import pulumi\nraise ValueError('bad key ' + pulumi.Config().require('key'))\n")
    with pytest.raises(harness.ApplyError) as caught:
        harness.apply(str(broken), PROJECT, "test", stack.config(), [f"{PROJECT}:key"],
                      str(tmp_path / "b.json"), log=stack.logs.append)
    assert "ValueError: bad key [secret]" in str(caught.value)


def _entry_after(stack: Stack, **extra) -> dict:
    stack.apply(**extra)
    return _entry(stack, "env")


def _entry(stack: Stack, name: str) -> dict | None:
    return next((e for e in _state(stack)["resources"].values() if e["name"] == name), None)


def _state(stack: Stack) -> dict:
    return json.loads(Path(stack.state).read_text())
