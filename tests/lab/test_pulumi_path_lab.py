"""The lab applied the way `pulumi up` and pulumi-command really connect and fail.

- One SSH connection per command at the engine's parallelism, against nodes whose sshd the
  baseline prepares for that burst (MaxStartups): no refused dial is left unretried, also with
  a large deploy host's parallelism (64 = 4 x 16 CPUs).
- A failing validator on a file that holds secrets: pulumi-command's error carries the script
  and all output and the engine masks only config secrets, so the node itself must keep every
  generated secret out of the output. The whole apply log is searched for each of them.
"""
from __future__ import annotations

import json

import pytest

from lab import deploy

pytestmark = pytest.mark.timeout(900)


def _generated_secrets(lab) -> set[str]:
    """Every secret value the stack generated (pulumi-random results kept in the lab's state)."""
    with open(deploy.state_path(lab.spec)) as fh:
        state = json.load(fh)
    return {s for e in state["resources"].values() if e["type"].startswith("random:")
            for s in e.get("secrets", []) if len(s) >= 8}


def _report(result) -> str:
    return ", ".join(f"{host} {d['max_concurrent']} at once ({d['dials']} dials, {d['retried']} retried)"
                     for host, d in sorted(result.dials.items()))


def test_first_apply_dialed_once_per_command_at_the_engines_parallelism(lab):
    first = lab.first_apply
    addresses = {n.address for n in lab.cluster.nodes} | {lab.cluster.witness.address}
    assert set(first.dials) == addresses
    assert sum(d["dials"] for d in first.dials.values()) == len(first.executed)  # no connection reused
    print(f"\nfirst apply, {len(first.executed)} commands: {_report(first)}")


def test_a_large_deploy_hosts_burst_is_taken_without_a_refused_dial(lab):
    lines: list[str] = []
    result = deploy.apply(lab.raw, lab.spec, stack="labtest", force=True, log=lines.append, parallel=64)
    print(f"\nforced apply at parallelism 64, {len(result.executed)} commands: {_report(result)}")
    # every dial got through (a refused one retried: the apply succeeded), with more connections
    # being set up at once than a stock sshd's MaxStartups 10 lets in, because the baseline's
    # drop-in is what sshd runs with on every host
    assert max(d["max_concurrent"] for d in result.dials.values()) > 10
    for host in [*lab.cluster.nodes, lab.cluster.witness]:
        effective = lab.sh(host.name, "sshd -T 2>/dev/null | grep -E '^(maxstartups|maxsessions) '")
        assert sorted(effective.splitlines()) == ["maxsessions 64", "maxstartups 128:30:256"], (host.name, effective)
    assert not result.warnings  # no PULUMI_COMMAND_* request for sshd to refuse


def test_a_failing_validator_on_a_secret_file_leaks_no_secret_into_the_apply_log(lab):
    secrets = _generated_secrets(lab)
    assert len(secrets) >= 10
    node = lab.cluster.nodes[0].name
    # redis-server refusing the staged file the way it refuses a bad line: it quotes the line, here
    # the one holding the replication password (an ACL `user ... >password` line would be the same).
    wrapper = ("#!/bin/sh\n"
               "printf '*** FATAL CONFIG FILE ERROR ***\\n>>> %s\\nBad directive\\n' \"$(grep -m1 '^masterauth' \"$1\")\" >&2\n"
               "exit 1\n")
    lab.sh(node, "mv /usr/bin/redis-server /usr/bin/redis-server.hapbx-test && "
                 f"cat > /usr/bin/redis-server <<'EOF'\n{wrapper}EOF\nchmod 0755 /usr/bin/redis-server")
    lines: list[str] = []
    try:
        with pytest.raises(Exception) as caught:
            deploy.apply(lab.raw, lab.spec, stack="labtest", force=True, log=lines.append)
    finally:
        lab.sh(node, "mv -f /usr/bin/redis-server.hapbx-test /usr/bin/redis-server")
    log = "\n".join(lines) + "\n" + str(caught.value)
    assert "redis.conf" in str(caught.value) and "rejected the new file" in str(caught.value)
    assert "Bad directive" in log and "[secret]" in log   # the validator's own words, secrets masked
    assert "running \"set -euo pipefail" in log            # the script, as pulumi-command quotes it
    leaked = sorted(s[:4] + "…" for s in secrets if s in log)
    assert not leaked, f"generated secrets in the apply log: {leaked}"
    print(f"\napply log with the failed step: {len(log.splitlines())} lines, {len(log)} bytes, "
          f"searched for {len(secrets)} generated secrets: none found")
