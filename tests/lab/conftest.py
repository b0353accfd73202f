"""The test suite's own lab: its own name, bridge and subnet, so a lab someone has up is left alone.

One per Debian release (TEST_LABS), each built from its release's lab stack
(Pulumi.lab.yaml, Pulumi.lab-trixie.yaml) with those three things changed, the
real program applied to it by the live harness, removed at the end.
"""
from __future__ import annotations

import copy
import fcntl
import os
import time
from dataclasses import dataclass

import pytest

from components.config import build
from hapbx_node.layout import HA_STATUS, parse_status
from lab import context, deploy, machinery
from tests.mockrun import ROOT, stack_config
from tests.release_root import STACKS

#: each release's test lab: (stack it is made from, name, bridge, first three octets of its subnet)
TEST_LABS = {"bookworm": (STACKS["bookworm"], "hapbx-test", "hapbx-tbr0", "10.78.0"),
             "trixie": (STACKS["trixie"], "hapbx-test13", "hapbx-tbr13", "10.88.0")}
#: the tiers the issue names run on both releases; the rest (abuse, rolling, Pulumi path, e2e) on Debian 12
BOTH_RELEASES = {"test_baseline_lab", "test_data_tier_lab", "test_ha_lab", "test_sip_lab", "test_cdr_lab",
                 "test_drill_lab", "test_monitoring_lab", "test_backup_lab"}


def test_lab_config(release: str = "bookworm") -> dict:
    stack, name, bridge, net = TEST_LABS[release]
    raw = copy.deepcopy(stack_config(stack))
    stack_net = raw["lab"]["subnet"].rsplit(".", 1)[0] + "."
    swap = lambda addr: addr.replace(stack_net, f"{net}.")  # noqa: E731
    raw["lab"] = {"name": name, "bridge": bridge, "subnet": f"{net}.0/24", "hostAddress": f"{net}.1"}
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": f"/var/lib/hapbx/{name}/ssh/id_ed25519",
                  "knownHostsFile": f"/var/lib/hapbx/{name}/ssh/known_hosts"}
    for node in raw["nodes"]:
        node["address"] = swap(node["address"])
    raw["witness"]["address"] = swap(raw["witness"]["address"])
    raw["vip"]["address"] = swap(raw["vip"]["address"])
    raw["network"]["gateway"] = f"{net}.1"
    for trunk in raw.get("dialplan", {}).get("trunks", []):
        trunk["host"] = swap(trunk["host"])
        trunk["addresses"] = [swap(a) for a in trunk.get("addresses", [])]
    # the lab host stays exempt from Kamailio's flood ban (probes, SIPp) on the test subnet too
    kam = raw["kamailio"]
    kam["floodExemptNetworks"] = [swap(n) for n in kam.get("floodExemptNetworks", [])]
    mon = raw.get("monitoring", {})
    for key in ("allowFrom", "webhookUrls"):
        if key in mon:
            mon[key] = [swap(v) for v in mon[key]]
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
        for _ in range(2):
            # ssh never reached the node (exit 255, "connect to host"): the command did not run, so
            # connecting again is safe. Seen once in CI on the Debian 13 lab (a 10 s connect timeout
            # in the middle of a module whose other commands all connected); not a product failure.
            if out.returncode != 255 or "ssh: connect to host" not in out.stderr:
                break
            time.sleep(2)
            out = machinery.run(self.spec, node, command, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{node}: {command}: {out.stderr}"
        return out.stdout

    def ha_file(self, node: str) -> dict[str, str]:
        """The node's HA status file (the leader daemon's, layout.HA_STATUS); {} where there is none."""
        return parse_status(self.sh(node, f"cat {HA_STATUS} 2>/dev/null || true"))

    def writer(self) -> str:
        """The node the HA layer made the writer (its status says so), else the initial primary."""
        for node in self.cluster.nodes:
            if self.ha_file(node.name).get("writer") == "1":
                return node.name
        return self.cluster.primary.name

    def apply(self, raw: dict | None = None, force: bool = False):
        return deploy.apply(raw or self.raw, self.spec, stack="labtest", force=force, log=lambda _: None)


def pytest_generate_tests(metafunc):
    """Every lab test gets the Debian 12 lab; those of BOTH_RELEASES get the Debian 13 lab too.

    Session-scoped and parametrized: pytest groups the tests by release and tears one
    release's lab down before it brings up the next, so only one lab runs at a time.
    """
    if "lab" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        releases = list(TEST_LABS) if module in BOTH_RELEASES else ["bookworm"]
        metafunc.parametrize("lab_release", releases, indirect=True, scope="session")


@pytest.fixture(scope="session")
def lab_release(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def lab(lab_release):
    if os.geteuid() != 0:
        pytest.fail("the lab tier needs root (CI runs as root)")
    # One test lab per host: concurrent suites (developers, CI) queue here instead of
    # tearing each other's lab down.
    lock = open("/run/lock/hapbx-test-lab.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    raw = test_lab_config(lab_release)
    cluster, _ = build(raw)
    spec = context.spec_for(cluster)
    machinery.down(spec, progress=lambda _: None)  # a run that died earlier: start from nothing
    started = time.monotonic()
    machinery.up(spec)
    up_seconds = time.monotonic() - started
    started = time.monotonic()
    first = deploy.apply(raw, spec, stack="labtest")
    apply_seconds = time.monotonic() - started
    print(f"\nlab tier ({lab_release}): up {up_seconds:.1f}s, first apply {apply_seconds:.1f}s "
          f"({len(first.executed)} commands)")
    yield Lab(raw, spec, cluster, first, up_seconds, apply_seconds)
    if os.environ.get("HAPBX_KEEP_TEST_LAB") != "1":
        machinery.down(spec)
    lock.close()
