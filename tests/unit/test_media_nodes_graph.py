"""Scale-out media nodes (mediaNodes) under Pulumi mocks: each is a Node with the baseline, gets the
media engine from the same Media component, is a dispatcher destination, sends its recordings to
both PBX nodes, is scraped by both Prometheus servers; its CDR credential is a secret. Without
media nodes the graph is the one it was."""
from __future__ import annotations

import pytest
import yaml
from pulumi.runtime import rpc

from lab.media_variant import with_media_node
from tests.mockrun import ancestors, run_ok

MEDIA = {"name": "media1", "address": "10.77.0.21",
         "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMediaNodeOneKeyZ"}
PROD_MEDIA = {**MEDIA, "address": "192.168.1.121"}


def text(value) -> str:
    return str(rpc.unwrap_rpc_secret(value))


@pytest.fixture
def lab_media(lab_config):
    # the lab stack with one media node, as a bench builds it (lab/media_variant.py)
    raw = with_media_node(lab_config, host_key=MEDIA["hostKey"])
    assert raw["mediaNodes"] == [MEDIA]
    return run_ok(raw)


@pytest.fixture
def prod_media(prod_config):
    prod_config["mediaNodes"] = [PROD_MEDIA]
    return run_ok(prod_config, ["vendorRepoToken"])


def test_a_media_node_is_a_node_with_its_own_packages_and_firewall(lab_media):
    graph, _ = lab_media
    node = graph.resources["media1"]
    assert node.type == "hapbx:index:Node"
    children = {r.name: r for r in graph.resources.values() if r.parent == "media1"}
    for name in ("media1-packages", "media1-release", "media1-file-etc-nftables.conf", "media1-svc-nftables",
                 "media1-file-etc-chrony-chrony.conf", "media1-file-etc-hapbx-tls-ca.crt"):
        assert name in children, name
    for c in children.values():
        conn = rpc.unwrap_rpc_secret(c.inputs["connection"])
        assert conn["host"] == MEDIA["address"] and conn["hostKey"] == MEDIA["hostKey"]
    packages = children["media1-packages"].inputs["create"]
    assert "sip-tester" in packages and "lsyncd" in packages and "prometheus-node-exporter" in packages
    assert "kamailio" not in packages and "postgresql" not in packages and "redis" not in packages
    nft = text(children["media1-file-etc-nftables.conf"].inputs["stdin"])
    # the engine's SIP port from the PBX nodes and the VIP only; no Kamailio, no VRRP
    assert "elements = { 10.77.0.11, 10.77.0.12, 10.77.0.10 }" in nft
    assert 'th dport { 5080, 9100 } ip saddr @media_peers accept' not in nft
    assert 'th dport { 5080 } ip saddr @media_peers accept comment "media-sip"' in nft
    assert "ip protocol 112" not in nft and "dport 5060" not in nft


def test_pbx_nodes_let_the_media_nodes_in(lab_media):
    graph, _ = lab_media
    for node in ("pbx1", "pbx2"):
        nft = text(graph.resources[f"{node}-file-etc-nftables.conf"].inputs["stdin"])
        assert "set media_peers {" in nft and "elements = { 10.77.0.21 }" in nft
        for purpose in ("kamailio-sip", "cdr-receiver", "recordings-sync", "ntp"):
            assert f'ip saddr @media_peers accept comment "{purpose}"' in nft, purpose
        assert "10.77.0.21\tmedia1.lab.internal media1" in text(graph.resources[f"{node}-file-etc-hosts"].inputs["stdin"])


def test_the_media_node_gets_the_same_engine_rolled_after_the_pbx_nodes(lab_media):
    graph, _ = lab_media
    for f in ("usr-local-share-hapbx-sipp-uas.xml", "etc-systemd-system-hapbx-media-uas.service",
              "usr-local-lib-hapbx-media-uas-post-cdr", "etc-hapbx-media-uas-cdr.env"):
        r = graph.resources[f"media-media1-file-{f}"]
        assert r.parent == "media"
        assert "media1-packages" in ancestors(graph, r.name)
    first, last = graph.resources["media-media1-svc-hapbx-media-uas"], graph.resources["media-media1-svc-hapbx-media-uas-last"]
    assert "media-pbx2-svc-hapbx-media-uas" in first.depends_on          # one engine at a time
    assert "media-media1-svc-hapbx-media-uas" in graph.resources["media-pbx1-svc-hapbx-media-uas-last"].depends_on
    assert "ss -Hlun" in first.inputs["create"] and last.name in graph.resources
    post = text(graph.resources["media-media1-file-usr-local-lib-hapbx-media-uas-post-cdr"].inputs["stdin"])
    # the media node has no receiver: the VIP's over HTTPS, then the initial standby's
    assert 'LOCAL_URL = "https://10.77.0.10:8088/cdr"' in post and 'PEER_URL = "https://10.77.0.12:8088/cdr"' in post


def test_the_dispatcher_gets_the_media_node_probed_like_the_others(lab_media):
    graph, _ = lab_media
    seeds = [r for r in graph.commands() if r.name.endswith("-file-usr-local-lib-hapbx-postgres-seed.sql")]
    assert seeds
    for seed in seeds:
        sql = text(seed.inputs["stdin"])
        for name, addr in (("pbx1", "10.77.0.11"), ("pbx2", "10.77.0.12"), ("media1", "10.77.0.21")):
            assert f"'sip:{addr}:5080', 0, 0, 'duid={name}', 'hapbx:{name}'" in sql, name
    cfg = text(graph.resources["sip-pbx1-file-etc-kamailio-kamailio.cfg"].inputs["stdin"])
    assert 'modparam("dispatcher", "ds_probing_mode", 1)' in cfg       # every destination probed
    assert '|| $si == "10.77.0.21")' in cfg                            # never flood-banned
    sip = graph.resources["sip"]
    assert sip.type == "hapbx:index:SipLayer"
    reload = graph.resources["sip-pbx1-dispatcher"]
    assert "dispatcher.reload" in reload.inputs["create"]


def test_recordings_go_from_the_media_node_to_both_pbx_nodes(lab_media):
    graph, _ = lab_media
    keys = graph.resources["recsync-media1-keys"]
    assert "ssh-keygen -q -t ed25519" in keys.inputs["create"]
    auth = graph.resources["recsync-media1-authorize"]
    assert set(auth.depends_on) == {"recsync-media1-keys", "recsync-pbx1-keys", "recsync-pbx2-keys"}
    assert "known_hosts" in auth.inputs["create"] and "authorized_keys" not in auth.inputs["create"]
    for node, peer in (("pbx1", "pbx2"), ("pbx2", "pbx1")):
        a = graph.resources[f"recsync-{node}-authorize"]
        assert set(a.depends_on) == {f"recsync-{node}-keys", f"recsync-{peer}-keys", "recsync-media1-keys"}
        assert 'from="10.77.0.21",command="/usr/bin/rrsync -wo -no-del /var/lib/hapbx/recordings/media1"' in \
            a.inputs["create"]
        assert "/var/lib/hapbx/recordings/media1" in graph.resources[f"recsync-{node}-keys"].inputs["create"]
    conf = graph.resources["recsync-media1-file-etc-hapbx-lsyncd.conf.lua"]
    assert {"recsync-media1-authorize", "recsync-pbx1-authorize", "recsync-pbx2-authorize"} <= set(conf.depends_on)
    lua = text(conf.inputs["stdin"])
    assert 'target = "hapbx-rec@10.77.0.11:/"' in lua and 'target = "hapbx-rec@10.77.0.12:/"' in lua
    assert 'source = "/var/lib/hapbx/recordings/media1/"' in lua
    assert "recsync-media1-svc-hapbx-recsync" in graph.resources


def test_both_prometheus_servers_scrape_the_media_node(lab_media):
    graph, _ = lab_media
    for node in ("pbx1", "pbx2"):
        prom = text(graph.resources[f"monitoring-{node}-file-etc-prometheus-prometheus.yml"].inputs["stdin"])
        jobs = {j["job_name"]: j["static_configs"] for j in yaml.safe_load(prom)["scrape_configs"]}
        assert {"targets": ["10.77.0.21:9100"], "labels": {"node": "media1"}} in jobs["node"]
        assert prom.count("10.77.0.21") == 1                          # the node exporter only
        rules = text(graph.resources[f"monitoring-{node}-file-etc-prometheus-rules-hapbx.yml"].inputs["stdin"])
        assert 'up{node=~"pbx1|pbx2|witness"}' in rules                 # media nodes hold no quorum vote
    exporter = graph.resources["monitoring-media1-file-etc-default-prometheus-node-exporter"]
    assert "--web.listen-address=10.77.0.21:9100" in text(exporter.inputs["stdin"])
    assert "monitoring-media1-svc-prometheus-node-exporter" in graph.resources
    assert not [n for n in graph.resources if n.startswith("monitoring-media1-") and "prometheus.yml" in n]


def test_the_media_nodes_cdr_credential_is_a_secret_the_receivers_accept(lab_media):
    graph, generated = lab_media
    assert graph.resources["secret-cdr-sender-media-media1"].type == "random:index/randomPassword:RandomPassword"
    password = generated["secret-cdr-sender-media-media1"]
    env = graph.resources["media-media1-file-etc-hapbx-media-uas-cdr.env"]
    assert rpc.is_rpc_secret(env.inputs["stdin"]) and env.inputs["logging"] == "none"
    assert f'HAPBX_CDR_POST_USER="cdr-media1"' in text(env.inputs["stdin"])
    assert f'HAPBX_CDR_POST_PASSWORD="{password}"' in text(env.inputs["stdin"])
    for node in ("pbx1", "pbx2"):
        receiver = graph.resources[f"cdr-{node}-file-etc-hapbx-cdr-receiver.env"]
        assert rpc.is_rpc_secret(receiver.inputs["stdin"])
        assert f"cdr-media1:{password}" in text(receiver.inputs["stdin"])
    secrets = list(generated.values())
    for r in graph.commands():
        for field in ("create", "update", "delete"):
            assert not any(s in text(r.inputs.get(field, "")) for s in secrets), (r.name, field)


def test_prod_media_node_runs_freeswitch_reading_the_nodes_database(prod_media):
    graph, generated = prod_media
    assert "media-media1-svc-freeswitch" in graph.resources
    assert not any(n.startswith("media-media1-") and "media-uas" in n for n in graph.resources)
    cdr = text(graph.resources["media-media1-file-etc-freeswitch-autoload-configs-json-cdr.conf.xml"].inputs["stdin"])
    assert "https://192.168.1.100:8088/cdr" in cdr and "127.0.0.1" not in cdr
    pgpass = graph.resources["media-media1-file-etc-hapbx-freeswitch.pgpass"]
    assert rpc.is_rpc_secret(pgpass.inputs["stdin"])
    assert "192.168.1.102:5432:pbx:pbx_readonly:" in text(pgpass.inputs["stdin"])
    cache = text(graph.resources["media-media1-file-usr-local-lib-hapbx-freeswitch-policy-cache"].inputs["stdin"])
    assert "PGSSLMODE=verify-full" in cache and "-h 192.168.1.102,192.168.1.101" in cache
    hba = text(graph.resources["postgres-node1-file-etc-postgresql-17-hapbx-pg-hba.conf"].inputs["stdin"]) \
        if "postgres-node1-file-etc-postgresql-17-hapbx-pg-hba.conf" in graph.resources else \
        text(next(r for r in graph.commands() if r.name.startswith("postgres-node1-") and r.name.endswith("pg-hba.conf")
                  ).inputs["stdin"])
    assert "hostssl pbx             pbx_readonly    192.168.1.121/32" in hba
    secret = graph.resources["media-media1-file-etc-freeswitch-secrets.xml"]
    assert rpc.is_rpc_secret(secret.inputs["stdin"])
    assert generated["secret-cdr-sender-media-media1"] in text(secret.inputs["stdin"])
    packages = graph.resources["media1-packages"].inputs["create"]
    assert "freeswitch-meta-vanilla" in packages and "postgresql-client" in packages and "sip-tester" not in packages


def test_without_media_nodes_the_graph_is_unchanged(lab_config, lab_media):
    """An empty mediaNodes is the stack without the key; the media node adds resources of its own
    and changes none of the others' names, types or parents."""
    assert "mediaNodes" not in lab_config   # lab_media added it to a copy (with_media_node)
    plain, _ = run_ok(lab_config)
    lab_config["mediaNodes"] = []
    empty, _ = run_ok(lab_config)
    assert set(plain.resources) == set(empty.resources)
    assert all(plain.resources[n].depends_on == empty.resources[n].depends_on for n in plain.resources)
    with_media, _ = lab_media
    extra = set(with_media.resources) - set(plain.resources)
    assert set(plain.resources) <= set(with_media.resources)
    assert extra and all("media1" in n for n in extra), sorted(n for n in extra if "media1" not in n)
    for n, r in plain.resources.items():
        assert (r.type, r.parent) == (with_media.resources[n].type, with_media.resources[n].parent), n
    assert "mediaNodes" not in plain.outputs
