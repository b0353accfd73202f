"""mediaNodes: refused before anything is touched when a media node could not be told apart from
another host (name, address) or lies outside the network the firewalls and pg_hba let it in from."""
from __future__ import annotations

import copy
import dataclasses

import pytest

from components.config import ConfigError, MediaNodeSettings, build
from components.ssh import endpoints
from tests.mockrun import stack_config

MEDIA = {"name": "media1", "address": "10.77.0.21"}


def with_media(*nodes: dict, stack: str = "lab") -> dict:
    raw = copy.deepcopy(stack_config(stack))
    raw["mediaNodes"] = [dict(n) for n in nodes]
    return raw


def errors_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        build(raw)
    return err.value.errors


def test_default_is_none_and_a_valid_media_node_is_typed():
    cfg, _ = build(stack_config("lab"))
    assert cfg.media_nodes == []
    cfg, warnings = build(with_media(MEDIA, {"name": "media2", "address": "10.77.0.22", "hostKey":
                                             "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMediaKey"}))
    assert cfg.media_nodes[0] == MediaNodeSettings(name="media1", address="10.77.0.21")
    assert cfg.media_nodes[1].host_key.startswith("ssh-ed25519 ")
    assert not [w for w in warnings if w.startswith("mediaNodes")]   # the lab has no FreeSWITCH trunks


@pytest.mark.parametrize("media, key, text", [
    ({"name": "pbx1", "address": "10.77.0.21"}, "mediaNodes[0].name", "already nodes[0]"),
    ({"name": "witness", "address": "10.77.0.21"}, "mediaNodes[0].name", "already witness"),
    ({"name": "vip", "address": "10.77.0.21"}, "mediaNodes[0].name", "VIP's name"),
    ({"name": "Media_1", "address": "10.77.0.21"}, "mediaNodes[0].name", "not a valid name"),
    ({"name": "media1", "address": "10.77.0.12"}, "mediaNodes[0].address", "already nodes[1]"),
    ({"name": "media1", "address": "10.77.0.13"}, "mediaNodes[0].address", "already witness"),
    ({"name": "media1", "address": "10.77.0.10"}, "mediaNodes[0].address", "already vip.address"),
    ({"name": "media1", "address": "10.77.0.1"}, "mediaNodes[0].address", "already network.gateway"),
    ({"name": "media1", "address": "10.77.0.255"}, "mediaNodes[0].address", "broadcast"),
    ({"name": "media1", "address": "10.78.0.21"}, "mediaNodes[0].address", "not in the nodes' subnet"),
    ({"name": "media1", "address": "10.77.0.300"}, "mediaNodes[0].address", "not an IPv4 address"),
    ({"name": "media1", "address": "10.77.0.21", "hostKey": "ssh-rsa AAAA"}, "mediaNodes[0].hostKey", "ssh-rsa"),
    ({"name": "media1"}, "mediaNodes[0].address", ""),
])
def test_a_bad_media_node_is_refused_naming_its_key(media, key, text):
    errors = errors_of(with_media(media))
    assert any(e.startswith(f"{key}:") and text in e for e in errors), errors


def test_two_media_nodes_may_not_share_a_name_or_an_address():
    errors = errors_of(with_media(MEDIA, {"name": "media1", "address": "10.77.0.22"},
                                  {"name": "media3", "address": "10.77.0.21"}))
    assert any(e.startswith("mediaNodes[1].name:") and "already mediaNodes[0]" in e for e in errors), errors
    assert any(e.startswith("mediaNodes[2].address:") and "already mediaNodes[0]" in e for e in errors), errors


def test_in_a_lab_stack_the_media_node_lies_in_the_lab_subnet():
    raw = with_media({"name": "media1", "address": "10.77.0.21"})
    raw["lab"] = {**raw["lab"], "subnet": "10.77.0.0/28"}
    errors = errors_of(raw)
    assert any(e.startswith("mediaNodes[0].address:") and "lab subnet" in e for e in errors), errors


def test_prod_with_trunks_warns_that_providers_must_accept_the_media_nodes():
    raw = with_media({"name": "media1", "address": "192.168.1.121"}, stack="prod")
    raw["vendorRepoToken"] = "tok"
    cfg, warnings = build(raw)
    assert cfg.dialplan.trunks
    assert any(w.startswith("mediaNodes:") and "providers must accept" in w for w in warnings), warnings


def test_a_media_node_without_a_pinned_host_key_is_refused_for_an_update():
    cfg, _ = build(with_media(MEDIA))
    ssh = dataclasses.replace(cfg.ssh, known_hosts_file=None, private_key_file=None)
    cfg = dataclasses.replace(cfg, ssh=ssh, nodes=[dataclasses.replace(n, host_key="ssh-ed25519 AAAAk") for n in cfg.nodes],
                              witness=dataclasses.replace(cfg.witness, host_key="ssh-ed25519 AAAAk"))
    with pytest.raises(ConfigError) as err:
        endpoints(cfg)
    assert err.value.errors == ["mediaNodes[0].hostKey: no pinned host key for 10.77.0.21 (allowed: a hostKey line, or "
                                "an entry in ssh.knownHostsFile); refusing to connect unpinned"]
    out, warnings = endpoints(cfg, preview=True)
    assert out["media1"].host == "10.77.0.21" and warnings
