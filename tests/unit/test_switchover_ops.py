"""`hapbx switchover` from the operator's machine (ops/switchover.py) against a stand-in Runner:
it asks every node who holds the lease, runs `hapbx-ha switchover` on that node only, and turns
the node's refusal (exit 3) or failure into an error naming the node and its stderr."""
from __future__ import annotations

import pytest

from hapbx_node.layout import HA_CLI
from ops.switchover import SwitchoverError, leader_of, main
from tests.mockrun import ROOT


@pytest.fixture(scope="module")
def cluster():
    from components.config import load_stack_file
    c, _ = load_stack_file(f"{ROOT}/Pulumi.prod.yaml", assume_secrets=True)
    return c


class Nodes:
    """Answers `hapbx-ha status` per node from `holds`, and `hapbx-ha switchover` with `answer`."""

    def __init__(self, holds: dict[str, str], answer=(0, "pbx2 leads\n", "")):
        self.holds, self.answer, self.calls = holds, answer, []

    def __call__(self, node: str, script: str, timeout: float):
        self.calls.append((node, script))
        if script.endswith(" status"):
            if self.holds.get(node) == "down":
                return 255, "", "ssh: connect to host: Connection refused"
            return 0, f"daemon_node={node}\ndaemon_hold={self.holds.get(node, '0')}\n", ""
        return self.answer


def test_the_switchover_runs_on_the_leader_only(cluster):
    a, b = (n.name for n in cluster.nodes)
    nodes = Nodes({a: "1", b: "0"})
    result = main(cluster, None, nodes, log=lambda _: None)
    assert (result["from"], result["to"]) == (a, b)
    switch = [(n, s) for n, s in nodes.calls if "switchover" in s]
    assert switch == [(a, f"{HA_CLI} switchover --to {b} --timeout 60")]


def test_refusals_and_failures_name_the_node(cluster):
    a, b = (n.name for n in cluster.nodes)
    with pytest.raises(SwitchoverError, match=f"{b} leads already") as e:
        main(cluster, b, Nodes({a: "0", b: "1"}), log=lambda _: None)
    assert e.value.refused
    with pytest.raises(SwitchoverError, match="not a node of this stack") as e:
        main(cluster, "pbx9", Nodes({a: "1"}), log=lambda _: None)
    assert e.value.refused
    refused = Nodes({a: "1", b: "0"}, answer=(3, "", "hapbx-ha switchover: refused: pbx2 is not streaming\n"))
    with pytest.raises(SwitchoverError, match=f"{a}: hapbx-ha switchover: refused: pbx2 is not streaming") as e:
        main(cluster, None, refused, log=lambda _: None)
    assert e.value.refused
    failed = Nodes({a: "1", b: "0"}, answer=(1, "", "pbx2 did not take the lead within 60 s\n"))
    with pytest.raises(SwitchoverError, match=r"exit 1\): pbx2 did not take the lead") as e:
        main(cluster, None, failed, log=lambda _: None)
    assert not e.value.refused


def test_no_single_leader_is_refused_before_anything_runs(cluster):
    a, b = (n.name for n in cluster.nodes)
    for holds in ({a: "0", b: "0"}, {a: "1", b: "1"}):
        nodes = Nodes(holds)
        with pytest.raises(SwitchoverError, match="holds the lease") as e:
            leader_of(cluster, nodes)
        assert e.value.refused and not any("switchover" in s for _, s in nodes.calls)
    with pytest.raises(SwitchoverError, match=f"{b}: `hapbx-ha status` failed: ssh: connect"):
        leader_of(cluster, Nodes({a: "1", b: "down"}))
