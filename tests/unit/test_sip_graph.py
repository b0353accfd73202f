"""SIP, media and recordings in the resource graph of both stacks (Pulumi mocks)."""
from pulumi.runtime import rpc

from tests.mockrun import ancestors, run_ok

CMD = "command:remote:Command"


def test_components_and_children(stack):
    graph, _, raw = stack
    assert graph.resources["sip"].type == "hapbx:index:SipLayer"
    assert graph.resources["media"].type == "hapbx:index:Media"
    for node in (n["name"] for n in raw["nodes"]):
        children = {r.name for r in graph.resources.values() if r.parent == "sip" and f"-{node}-" in r.name}
        assert {f"sip-{node}-file-etc-kamailio-kamailio.cfg", f"sip-{node}-file-etc-kamailio-hapbx-secrets.cfg",
                f"sip-{node}-file-etc-systemd-system-kamailio.service.d-hapbx.conf", f"sip-{node}-svc-kamailio",
                f"sip-{node}-svc-kamailio-last",
                f"sip-{node}-dispatcher"} <= children
    assert not any(r.name.startswith("sip-") and raw["witness"]["name"] in r.name for r in graph.resources.values())


def test_kamailio_starts_after_the_schema_exists_on_every_node(stack):
    graph, _, raw = stack
    primary = raw["postgres"]["initialPrimary"]
    standby = next(n["name"] for n in raw["nodes"] if n["name"] != primary)
    for node in (n["name"] for n in raw["nodes"]):
        before = ancestors(graph, f"sip-{node}-svc-kamailio")
        assert {f"postgres-{primary}-migrate", f"postgres-{primary}-roles"} <= before, node
        # the standby's Kamailio reads its local replica: that must exist too
        assert f"postgres-{standby}-standby" in before, node
        assert f"{node}-packages" in before
        for f in (r for r in graph.resources.values() if r.name.startswith(f"sip-{node}-file-")):
            assert f"postgres-{primary}-migrate" in ancestors(graph, f.name)
        assert f"sip-{node}-svc-kamailio-last" in graph.resources[f"sip-{node}-dispatcher"].depends_on


def test_kamailio_secrets_travel_secret_and_appear_nowhere_else(prod_config):
    graph, generated = run_ok(prod_config, ["vendorRepoToken"])
    kam_pw, auth = generated["secret-postgres-kamailio"], generated["secret-kamailio-auth-secret"]
    for node in ("node1", "node2"):
        sec = graph.resources[f"sip-{node}-file-etc-kamailio-hapbx-secrets.cfg"]
        assert rpc.is_rpc_secret(sec.inputs["stdin"])
        text = rpc.unwrap_rpc_secret(sec.inputs["stdin"])
        assert kam_pw in text and auth in text
        assert sec.inputs.get("logging") == "none"
        cfg = graph.resources[f"sip-{node}-file-etc-kamailio-kamailio.cfg"]
        assert not rpc.is_rpc_secret(cfg.inputs["stdin"])   # the routing script stays reviewable
        assert 'include_file "hapbx-secrets.cfg"' in cfg.inputs["stdin"]
    for r in graph.commands():
        for field in ("create", "delete", "update", "triggers"):
            text = str(rpc.unwrap_rpc_secret(r.inputs.get(field, "")))
            assert kam_pw not in text and auth not in text, (r.name, field)
        if not rpc.is_rpc_secret(r.inputs.get("stdin", "")):
            assert kam_pw not in str(r.inputs.get("stdin", "")), r.name


def test_media_engine_follows_the_stack(lab_config, prod_config):
    graph, _ = run_ok(lab_config)
    for node in ("pbx1", "pbx2"):
        assert f"media-{node}-svc-hapbx-media-uas" in graph.resources
        assert f"media-{node}-file-usr-local-share-hapbx-sipp-uas.xml" in graph.resources
    graph, _ = run_ok(prod_config, ["vendorRepoToken"])
    assert not any("hapbx-media-uas" in name for name in graph.resources)


def test_the_stand_ins_cdr_poster_restarts_only_itself(lab_config):
    """post-cdr and its unit belong to the CDR poster (hapbx-media-uas-cdr): a change to them
    restarts that one (no SIP port to wait for), never SIPp and the calls it holds."""
    from components.render import sipp_uas
    graph, _ = run_ok(lab_config)
    for node in ("pbx1", "pbx2"):
        poster = graph.resources[f"media-{node}-file-usr-local-lib-hapbx-media-uas-post-cdr"]
        assert sipp_uas.POST_CDR in poster.inputs["create"] and "install -D -o root -g root -m 0755" in \
            poster.inputs["create"]
        digest = poster.inputs["triggers"][0]
        uas = [graph.resources[f"media-{node}-svc-hapbx-media-uas{last}"] for last in ("", "-last")]
        cdr = [graph.resources[f"media-{node}-svc-hapbx-media-uas-cdr{last}"] for last in ("", "-last")]
        assert all(digest not in str(r.inputs.get("triggers", "")) for r in uas)
        assert all(digest in str(r.inputs.get("triggers", "")) for r in cdr)
        assert poster.name in ancestors(graph, cdr[0].name)
        assert "ss -Hlun" in uas[0].inputs["create"] and "ss -Hl" not in cdr[0].inputs["create"]


def is_secret(value) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def test_lsyncd_keys_never_leave_the_nodes(stack):
    """The recordings key is made on each node: Pulumi carries public keys only, so no private key
    is in any input, output, trigger or state; the key step prints public keys only; each node's
    lsyncd starts only once the peer authorized its key (fed the peer's public keys on stdin)."""
    graph, _, raw = stack
    names = [n["name"] for n in raw["nodes"]]
    assert graph.resources["recsync"].type == "hapbx:index:RecordingSync"
    for r in graph.resources.values():   # (the deployer's own key is in every `connection`, as it must)
        # the SIP TLS key is pulumi-tls's and shipped to Kamailio: only ever as a secret value
        plain = {k: v for k, v in r.inputs.items() if k != "connection" and not is_secret(v)}
        assert "PRIVATE KEY" not in str(plain), r.name
    for node in names:
        peer = next(n for n in names if n != node)
        keys = graph.resources[f"recsync-{node}-keys"]
        create = keys.inputs["create"]
        assert "ssh-keygen -q -t ed25519" in create and "id_ed25519.pub" in create
        assert not any(line.startswith("cat ") and line.rstrip().endswith("id_ed25519") for line in create.splitlines())
        auth = graph.resources[f"recsync-{node}-authorize"]
        assert set(auth.depends_on) == {f"recsync-{node}-keys", f"recsync-{peer}-keys"}
        assert "rrsync -wo -no-del" in auth.inputs["create"]
        conf = graph.resources[f"recsync-{node}-file-etc-hapbx-lsyncd.conf.lua"]
        assert {f"recsync-{node}-authorize", f"recsync-{peer}-authorize"} <= set(conf.depends_on)
        assert f"recsync-{node}-svc-hapbx-recsync" in graph.resources
