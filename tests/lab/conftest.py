"""The test suite's own lab: its own name, bridge and subnet, so a lab someone has up is left alone.

Built once per session from Pulumi.lab.yaml with those three things changed,
the real program applied to it by the live harness, removed at the end.
"""
from __future__ import annotations

import copy
import fcntl
import os
import time
from dataclasses import dataclass

import pytest

from cli import lab_cmd
from components.config import build
from lab import machinery
from tests.mockrun import ROOT, stack_config

NAME, BRIDGE, NET = "hapbx-test", "hapbx-tbr0", "10.78.0"


def test_lab_config() -> dict:
    raw = copy.deepcopy(stack_config("lab"))
    swap = lambda addr: addr.replace("10.77.0.", f"{NET}.")  # noqa: E731
    raw["lab"] = {"name": NAME, "bridge": BRIDGE, "subnet": f"{NET}.0/24", "hostAddress": f"{NET}.1"}
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": f"/var/lib/hapbx/{NAME}/ssh/id_ed25519",
                  "knownHostsFile": f"/var/lib/hapbx/{NAME}/ssh/known_hosts"}
    for node in raw["nodes"]:
        node["address"] = swap(node["address"])
    raw["witness"]["address"] = swap(raw["witness"]["address"])
    raw["vip"]["address"] = swap(raw["vip"]["address"])
    raw["network"]["gateway"] = f"{NET}.1"
    for trunk in raw.get("dialplan", {}).get("trunks", []):
        trunk["host"] = swap(trunk["host"])
        trunk["addresses"] = [swap(a) for a in trunk.get("addresses", [])]
    # the lab host stays exempt from Kamailio's flood ban (probes, SIPp) on the test subnet too
    kam = raw["kamailio"]
    kam["floodExemptNetworks"] = [swap(n) for n in kam.get("floodExemptNetworks", [])]
    return raw


test_lab_config.__test__ = False  # a helper, not a test


@dataclass
class Lab:
    raw: dict
    spec: object
    cluster: object
    first_apply: object
    up_seconds: float
    apply_seconds: float

    def sh(self, node: str, command: str, timeout: float = 60, check: bool = True) -> str:
        out = machinery.run(self.spec, node, command, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{node}: {command}: {out.stderr}"
        return out.stdout

    def apply(self, raw: dict | None = None, force: bool = False):
        return lab_cmd.apply(raw or self.raw, self.spec, stack="labtest", force=force, log=lambda _: None)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.fail("the lab tier needs root (CI runs as root)")
    # One test lab per host: concurrent suites (developers, CI) queue here instead of
    # tearing each other's lab down.
    lock = open("/run/lock/hapbx-test-lab.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    raw = test_lab_config()
    cluster, _ = build(raw)
    spec = lab_cmd.spec_for(cluster)
    machinery.down(spec, progress=lambda _: None)  # a run that died earlier: start from nothing
    started = time.monotonic()
    machinery.up(spec)
    up_seconds = time.monotonic() - started
    started = time.monotonic()
    first = lab_cmd.apply(raw, spec, stack="labtest")
    apply_seconds = time.monotonic() - started
    print(f"\nlab tier: up {up_seconds:.1f}s, first apply {apply_seconds:.1f}s "
          f"({len(first.executed)} commands)")
    yield Lab(raw, spec, cluster, first, up_seconds, apply_seconds)
    if os.environ.get("HAPBX_KEEP_TEST_LAB") != "1":
        machinery.down(spec)
    lock.close()
