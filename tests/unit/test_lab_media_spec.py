"""The lab with a media node (mediaNodes): spec_for makes its machine (its own image layer, on the lab
subnet, no shared backup directory) beside pbx1, pbx2 and the witness; the lab stack without
mediaNodes gives the same three machines as before. with_media_node (lab/media_variant.py) adds one
to a copy of the lab stack's config and refuses a name or address another host has."""
from __future__ import annotations

import json

import pytest

from components.config import ConfigError, build
from lab.context import LabContext, spec_for
from lab.media_variant import with_media_node
from lab.spec import LabNode
from tests.mockrun import stack_config


@pytest.fixture
def lab_raw():
    return stack_config("lab")   # the lab's own ssh paths: spec_for insists on them


def spec_of(raw):
    cluster, _ = build(raw)
    return spec_for(cluster), cluster


def test_the_lab_with_a_media_node_has_four_machines_the_media_node_with_its_own_packages(lab_raw):
    spec, cluster = spec_of(with_media_node(lab_raw))
    assert [n.name for n in spec.nodes] == ["pbx1", "pbx2", "witness", "media1"]
    media = spec.node("media1")
    assert media.address == "10.77.0.21" and media.address in {str(a) for a in spec.network.hosts()}
    assert media.packages == tuple(cluster.media_node_packages()) and media.shared == ()
    assert "sip-tester" in media.packages and "lsyncd" in media.packages
    assert not [p for p in media.packages if p.startswith(("postgresql", "kamailio", "redis", "etcd"))]
    # an image layer of its own: three package sets, three layers (lab/machinery.py _ensure_images)
    assert len({n.packages for n in spec.nodes}) == 3
    plain, _ = spec_of(lab_raw)
    assert spec.nodes[:3] == plain.nodes                 # the other machines as they were
    assert (spec.name, spec.bridge, spec.subnet, spec.host_address) == \
        (plain.name, plain.bridge, plain.subnet, plain.host_address)


def test_without_media_nodes_the_spec_is_the_one_it_was(lab_raw):
    spec, cluster = spec_of(lab_raw)
    shared = (cluster.backup.repository.path,) if cluster.backup.enabled else ()
    assert spec.nodes == (
        LabNode("pbx1", "10.77.0.11", tuple(cluster.node_packages()), shared),
        LabNode("pbx2", "10.77.0.12", tuple(cluster.node_packages()), shared),
        LabNode("witness", "10.77.0.13", tuple(cluster.witness_packages())))
    assert spec_of({**lab_raw, "mediaNodes": []})[0] == spec


def test_the_lab_context_still_knows_the_two_pbx_nodes_only(lab_raw):
    spec, cluster = spec_of(with_media_node(lab_raw))
    ctx = LabContext.from_cluster(spec, cluster, log=lambda _: None)
    assert ctx.names == ("pbx1", "pbx2") and ctx.peer("pbx1") == "pbx2"
    assert ctx.addresses == {"pbx1": "10.77.0.11", "pbx2": "10.77.0.12"}   # etcd members + witness (drills)


def test_with_media_node_copies_and_uses_the_stacks_own_subnet(lab_raw):
    before = json.dumps(lab_raw, sort_keys=True)
    raw = with_media_node(lab_raw)
    assert json.dumps(lab_raw, sort_keys=True) == before and "mediaNodes" not in lab_raw
    raw["nodes"][0]["address"] = "changed"                # a deep copy: the input is not touched
    assert lab_raw["nodes"][0]["address"] == "10.77.0.11"
    trixie = stack_config("lab-trixie")                   # the other lab stack: its own subnet
    assert trixie["lab"]["subnet"] == "10.87.0.0/24"
    assert with_media_node(trixie, last_octet=30)["mediaNodes"] == [{"name": "media1", "address": "10.87.0.30"}]
    spec, _ = spec_of(with_media_node(trixie))
    assert (spec.node("media1").address, spec.release) == ("10.87.0.21", "trixie")
    two = with_media_node(with_media_node(lab_raw), "media2", 22)
    assert [(m["name"], m["address"]) for m in two["mediaNodes"]] == [("media1", "10.77.0.21"),
                                                                      ("media2", "10.77.0.22")]
    assert [n.name for n in spec_of(two)[0].nodes][3:] == ["media1", "media2"]


@pytest.mark.parametrize("name, octet, says", [
    ("media1", 12, "mediaNodes[0].address: '10.77.0.12' is already nodes[1]"),
    ("media1", 13, "is already witness"),
    ("media1", 10, "is already vip.address"),
    ("media1", 1, "'10.77.0.1' is already network.gateway"),
    ("pbx2", 21, "mediaNodes[0].name: 'pbx2' is already nodes[1]"),
])
def test_with_media_node_refuses_what_another_host_has(lab_raw, name, octet, says):
    with pytest.raises(ConfigError) as err:
        with_media_node(lab_raw, name, octet)
    assert says in str(err.value)
    assert f"media node {name} at 10.77.0.{octet}" in str(err.value)   # which call added it
    assert "mediaNodes" not in lab_raw


def test_with_media_node_refuses_a_second_node_on_the_same_address(lab_raw):
    with pytest.raises(ConfigError, match=r"mediaNodes\[1\]\.address: '10.77.0.21' is already mediaNodes\[0\]"):
        with_media_node(with_media_node(lab_raw), "media2", 21)


@pytest.mark.parametrize("octet", [0, 255, 300, -1])
def test_with_media_node_refuses_an_octet_that_is_no_host_of_the_subnet(lab_raw, octet):
    with pytest.raises(ValueError, match=rf"last_octet {octet} is not a host of the lab subnet 10.77.0.0/24"):
        with_media_node(lab_raw, last_octet=octet)


def test_with_media_node_refuses_a_stack_that_is_not_a_lab():
    with pytest.raises(ValueError, match="not a lab stack"):
        with_media_node(stack_config("prod"))
