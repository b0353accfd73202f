"""The harness connects as pulumi-command does, against an sshd configured like a stock Debian node:
one connection per command, refused dials retried with the provider's backoff, the engine's
parallelism, and the PULUMI_COMMAND_* environment request refused with the provider's warning."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.timeout(180)
PROJECT = "dials-test"

PROGRAM = '''
import pulumi
from pulumi_command import remote

cfg = pulumi.Config()
conn = remote.ConnectionArgs(host="127.0.0.1", port=cfg.require_int("port"), user="root",
                             private_key=cfg.require_secret("key"), host_key=cfg.require("hostKey"),
                             dial_error_limit=cfg.require_int("dialErrorLimit"), per_dial_timeout=5)
ver = cfg.get("ver") or "1"
for i in range(cfg.require_int("n")):
    remote.Command(f"c{i}", connection=conn, create=f"sleep 0.3; echo out-{i}-{ver}",
                   add_previous_output_in_env=cfg.get_bool("previousEnv"))
'''


def _program(tmp_path: Path) -> Path:
    prog = tmp_path / "program"
    prog.mkdir()
    (prog / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
    (prog / "__main__.py").write_text(PROGRAM)
    return prog


def _apply(prog: Path, server, state: str, logs: list, parallel: int, **config) -> harness.ApplyResult:
    cfg = {"port": server.port, "key": server.client_key, "hostKey": server.host_key, **config}
    return harness.apply(str(prog), PROJECT, "test", {f"{PROJECT}:{k}": v for k, v in cfg.items()},
                         [f"{PROJECT}:key"], state, parallel=parallel, log=logs.append)


def test_default_parallelism_is_the_engines(monkeypatch):
    monkeypatch.delenv("PULUMI_PARALLEL", raising=False)
    assert harness.engine_parallelism() == 4 * os.cpu_count()
    monkeypatch.setenv("PULUMI_PARALLEL", "7")
    assert harness.engine_parallelism() == 7


def test_one_connection_per_command_and_refused_dials_are_retried(strict_sshd, tmp_path):
    logs: list[str] = []
    result = _apply(_program(tmp_path), strict_sshd, str(tmp_path / "s" / "state.json"), logs,
                    parallel=12, n=12, dialErrorLimit=20, previousEnv=False)
    dials = result.dials["127.0.0.1"]
    assert len(result.created) == 12 and dials["dials"] == 12          # one connection per command
    assert dials["max_concurrent"] > 2                                  # the burst reached sshd
    assert dials["retried"] > 0                                         # MaxStartups 2 refused some
    assert "refused and retried" in logs[-1]


def test_refused_dials_beyond_the_limit_fail_the_step(strict_sshd, tmp_path):
    with pytest.raises(harness.ApplyError) as caught:
        _apply(_program(tmp_path), strict_sshd, str(tmp_path / "s" / "state.json"), [],
               parallel=16, n=16, dialErrorLimit=0, previousEnv=False)
    assert "failed after 1 attempts" in str(caught.value)


def test_previous_output_env_is_refused_by_a_stock_sshd_with_the_providers_warning(strict_sshd, tmp_path):
    prog, state, logs = _program(tmp_path), str(tmp_path / "s" / "state.json"), []
    _apply(prog, strict_sshd, state, logs, parallel=2, n=2, dialErrorLimit=20)
    updated = _apply(prog, strict_sshd, state, logs, parallel=2, n=2, dialErrorLimit=20, ver="2")
    assert sorted(updated.updated) == ["c0", "c1"]
    assert updated.warnings and all("Unable to set 'PULUMI_COMMAND_STDOUT'" in w for w in updated.warnings)
    assert any("AcceptEnv" in line for line in logs)
    assert len(updated.executed) == 2  # the commands still ran
    # the program's way out: addPreviousOutputInEnv false asks for nothing, warns of nothing
    quiet = _apply(prog, strict_sshd, state, logs, parallel=2, n=2, dialErrorLimit=20, ver="3",
                   previousEnv=False)
    assert sorted(quiet.updated) == ["c0", "c1"] and quiet.warnings == []
