"""harness.preview.preview: `pulumi preview` from the harness state, with nothing run, dialled or written.

No sshd is needed: the program's connection points at a port nothing listens on,
and the SSH layer is replaced by a tripwire.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import harness
from harness import preview as plan
from harness import providers, ssh_pool

from .conftest import free_port
from .stack import ThrowawayStack

pytestmark = pytest.mark.timeout(60)

PROJECT, STACK = "plan-test", "test"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nfake-key-material-Qw7\n-----END OPENSSH PRIVATE KEY-----\n"
PASSWORD = "Pw-from-state-8hQz2"  # what an apply would have generated for pw

PROGRAM = '''
import pulumi
import pulumi_random as random
from pulumi_command import remote

cfg = pulumi.Config()
conn = remote.ConnectionArgs(host="127.0.0.1", port=cfg.require_int("port"), user="root",
                             private_key=cfg.require_secret("key"), dial_error_limit=50, per_dial_timeout=5)


def cmd(name, create, **kw):
    return remote.Command(name, connection=conn, create=create, **kw)


pw = random.RandomPassword("pw", length=20, special=False)
long_tail = "".join(f"\\necho line {i}" for i in range(cfg.get_int("long") or 0))
a = cmd("a", f"echo {cfg.get('ver') or '1'}" + long_tail)
secret = cmd("secret", "cat > /dev/null", stdin=pulumi.Output.secret(cfg.require("secret")))
c = cmd("c", "cat", stdin=a.stdout, triggers=[cfg.get("trig") or "1"], opts=pulumi.ResourceOptions(depends_on=[a]))
dry = cmd("dry", f"echo dry-run={pulumi.runtime.is_dry_run()}", stdin=pw.result)
if cfg.get_bool("optional"):
    cmd("optional", "true", delete="true")
'''


class Stack(ThrowawayStack):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, PROJECT, PROGRAM)
        self.port = free_port()  # nothing listens there

    def config(self, **extra) -> dict:
        base = {"port": self.port, "key": KEY, "secret": "old-stdin-secret-1", **extra}
        return {f"{PROJECT}:{k}": v for k, v in base.items()}

    def preview(self, **extra) -> plan.PreviewResult:
        return plan.preview(str(self.program), PROJECT, STACK, self.config(**extra), [f"{PROJECT}:key"],
                            str(self.state), log=self.logs.append)

    def settle(self, **extra) -> plan.PreviewResult:
        """State as an apply of this config would leave it (built from the previews' registrations)."""
        for _ in range(3):  # c's stdin is known once a is in state
            result = self.preview(**extra)
            if not (result.create or result.update or result.replace or result.delete):
                return result
            self.write(result)
        raise AssertionError(f"state does not settle:\n{result.text}")

    def write(self, result: plan.PreviewResult) -> None:
        resources = {}
        for seq, (urn, planned) in enumerate(result.planned.items(), 1):
            entry = {**planned, "seq": seq, "id": planned["id"] or f"{planned['name']}-0001"}
            if entry["type"] == "command:remote:Command":
                entry["outputs"] = entry["outputs"] or {"stdout": f"out-{entry['name']}", "stderr": ""}
            elif entry["type"].startswith("random:") and not planned["id"]:
                entry.update(outputs={"result": PASSWORD, "bcryptHash": "$2b$10$notreal"}, id="none",
                             secrets=[PASSWORD, "$2b$10$notreal"])
            resources[urn] = entry
        self.state.parent.mkdir(exist_ok=True)
        self.state.write_text(json.dumps({"version": harness.STATE_VERSION, "seq": len(resources),
                                          "resources": resources, "pending": [], "project": PROJECT,
                                          "stack": STACK}, indent=1))

    def edit(self, name: str, change) -> None:
        data = json.loads(self.state.read_text())
        change(next(e for e in data["resources"].values() if e["name"] == name))
        self.state.write_text(json.dumps(data, indent=1))


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Stack:
    def tripwire(*args, **kwargs):
        raise AssertionError("preview dialled SSH")
    monkeypatch.setattr(ssh_pool, "dial", tripwire)
    monkeypatch.setattr(ssh_pool.Dialer, "connect", tripwire)
    return Stack(tmp_path)


ALL = {"pw", "a", "secret", "c", "dry"}


def test_no_state_everything_is_a_create_and_nothing_is_written(stack):
    started = time.monotonic()
    result = stack.preview()
    # a dial of the closed port would retry 50 times with backoff: far longer than this
    assert time.monotonic() - started < 10
    assert set(result.create) == ALL and not (result.update or result.replace or result.delete or result.same)
    assert "+ create  command:remote:Command a" in result.text
    assert "+ create  random:index/randomPassword:RandomPassword pw" in result.text
    assert result.text.splitlines()[-1] == ("Resources: + 5 to create, ~ 0 to update, +- 0 to replace, "
                                            "- 0 to delete, 0 unchanged")
    inputs = {p["name"]: p["inputs"] for p in result.planned.values()}
    assert inputs["c"]["stdin"] == plan.UNKNOWN_TEXT  # a's stdout: only an apply knows it
    assert inputs["dry"]["create"] == "echo dry-run=True"  # is_dry_run() was True in the program
    assert not stack.state.parent.exists()  # no state, lock or temp file made
    assert not [t for t in threading.enumerate() if t.name.startswith("harness")]


def test_identical_state_is_all_same_and_state_bytes_unchanged(stack):
    stack.settle()
    before = stack.state.read_bytes()
    stat_before = stack.state.stat()
    result = stack.preview()
    assert set(result.same) == ALL and result.create == result.update == result.replace == result.delete == []
    assert result.text == ("Resources: + 0 to create, ~ 0 to update, +- 0 to replace, - 0 to delete, "
                           "5 unchanged")
    assert stack.state.read_bytes() == before and stack.state.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert sorted(p.name for p in stack.state.parent.iterdir()) == ["stack.json"]  # no lock, no temp file


def test_changed_create_is_an_update_with_a_diff(stack):
    stack.settle()
    before = stack.state.read_bytes()
    result = stack.preview(ver="2")
    assert result.update == ["a"] and result.changes == {"a": ["create"]}
    assert set(result.same) == ALL - {"a"}  # c sees a's stored stdout: unchanged
    assert "~ update  command:remote:Command a [changed: create]" in result.text
    lines = result.text.splitlines()
    assert "      -echo 1" in lines and "      +echo 2" in lines
    assert lines[-1].startswith("Resources: + 0 to create, ~ 1 to update, +- 0 to replace")
    assert stack.state.read_bytes() == before


def test_changed_triggers_replace(stack):
    stack.settle()
    result = stack.preview(trig="2")
    assert result.replace == ["c"] and result.changes == {"c": ["triggers"]} and result.update == []
    assert "+- replace command:remote:Command c [changed: triggers]" in result.text
    assert "+- 1 to replace" in result.text


def test_resource_gone_from_the_program_is_a_delete(stack):
    stack.settle(optional=True)
    result = stack.preview(optional=False)
    assert result.delete == ["optional"] and set(result.same) == ALL
    assert "- delete  command:remote:Command optional" in result.text
    assert "- 1 to delete" in result.text


def test_old_half_of_a_failed_replacement_is_a_delete(stack):
    stack.settle()
    data = json.loads(stack.state.read_text())
    old_c = next(e for e in data["resources"].values() if e["name"] == "c")
    data["pending"] = [{**old_c, "id": "c-old", "inputs": {**old_c["inputs"], "triggers": ["0"]}}]
    stack.state.write_text(json.dumps(data))
    result = stack.preview()
    assert result.delete == ["c"] and "c" in result.same
    assert "- delete  command:remote:Command c (old half of a replacement)" in result.text


def test_state_of_another_stack_is_refused(stack):
    stack.settle()
    with pytest.raises(harness.ApplyError, match="belongs to stack 'test'"):
        plan.preview(str(stack.program), PROJECT, "other", stack.config(), [], str(stack.state),
                     log=stack.logs.append)


def test_secret_inputs_and_old_secrets_never_shown(stack):
    stack.settle()
    # an old value that held a secret the state knows: masked even though the new value is not secret
    def old_secret_in_a(entry):
        entry["inputs"]["create"] = "echo tok-Old-Zq81"
        entry["secrets"].append("tok-Old-Zq81")
    stack.edit("a", old_secret_in_a)
    result = stack.preview(secret="new-stdin-secret-2")
    assert sorted(result.update) == ["a", "secret"]
    assert result.changes == {"a": ["create"], "secret": ["stdin"]}
    assert "~ update  command:remote:Command secret [changed: stdin]" in result.text
    assert f"    stdin: {harness.MASK}" in result.text.splitlines()
    assert f"      -echo {harness.MASK}" in result.text.splitlines()
    for value in ("old-stdin-secret-1", "new-stdin-secret-2", "tok-Old-Zq81", PASSWORD, "fake-key-material"):
        assert value not in result.text
    assert not any("secret-1" in line or "secret-2" in line for line in stack.logs)


def test_changed_connection_is_an_update_shown_as_secret(stack):
    stack.settle()
    result = stack.preview(key=KEY.replace("Qw7", "Xy9"))
    assert sorted(result.update) == sorted(ALL - {"pw"})
    assert result.changes == {name: ["connection"] for name in ALL - {"pw"}}
    assert f"    connection: {harness.MASK}" in result.text.splitlines()
    assert "fake-key-material" not in result.text


def test_long_diff_is_truncated(stack):
    stack.settle()
    result = stack.preview(long=100)
    diff = result.text.split("~ command:remote:Command a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(diff) == plan.MAX_DIFF_LINES + 1 and "more lines not shown" in diff[-1]


def test_random_missing_from_state_gets_a_placeholder_and_generates_nothing(stack):
    stack.settle()
    data = json.loads(stack.state.read_text())
    data["resources"] = {u: e for u, e in data["resources"].items() if e["name"] != "pw"}
    stack.state.write_text(json.dumps(data))
    result = stack.preview()
    assert result.create == ["pw"]
    # dry's stdin is now the placeholder: an update, shown as secret
    assert result.update == ["dry"] and result.changes["dry"] == ["stdin"]
    assert PASSWORD not in result.text
    planned = next(p for p in result.planned.values() if p["name"] == "pw")
    assert planned["outputs"]["result"] == "[pw.result: known after apply]"


def test_placeholders_cover_every_emulated_random_type():
    assert set(plan.RANDOM_OUTPUTS) == {t for t in providers.HANDLERS if t.startswith("random:")}


def test_state_written_by_a_real_apply_previews_as_same(stack, tmp_path):
    """The harness's own state (commands without a create step: nothing to dial) reads back as same."""
    program = tmp_path / "applied"
    program.mkdir()
    (program / "__main__.py").write_text(
        PROGRAM.split("pw = random", 1)[0] + 'pw = random.RandomPassword("pw", length=20)\n'
        'n = remote.Command("noop", connection=conn, stdin=pw.result, delete=cfg.get("del") or "true")\n'
        'remote.Command("after", connection=conn, stdin=n.stdout, opts=pulumi.ResourceOptions(depends_on=[n]))\n')
    state = str(tmp_path / "applied-state" / "stack.json")
    applied = harness.apply(str(program), PROJECT, STACK, stack.config(), [f"{PROJECT}:key"], state,
                            log=stack.logs.append, reveal=True)
    assert set(applied.created) == {"pw", "noop", "after"} and applied.executed == []
    before = Path(state).read_bytes()

    def preview(**extra):
        return plan.preview(str(program), PROJECT, STACK, stack.config(**extra), [f"{PROJECT}:key"], state,
                            log=stack.logs.append)
    assert set(preview().same) == {"pw", "noop", "after"}
    result = preview(**{"del": "echo bye"})
    assert result.update == ["noop"] and result.changes == {"noop": ["delete"]}
    assert "      -true" in result.text.splitlines() and "      +echo bye" in result.text.splitlines()
    assert Path(state).read_bytes() == before
