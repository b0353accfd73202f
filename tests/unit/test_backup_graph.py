"""The Backup component under Pulumi mocks: pgBackRest and the recordings retention on both PBX
nodes (none on the witness), pgbackrest.conf checked by pgBackRest's own parser before install,
the stanza step after both nodes' files, and every backup credential a Pulumi secret that travels
on stdin and appears in no command."""
from pulumi.runtime import rpc

from components.render import pgbackrest, recordings_retention
from tests.mockrun import ancestors, run_ok

CIPHER = "cipher-Pass-83kQ-not-real-0123456789"
S3_KEY, S3_SECRET = "AKIA-not-real-4711", "s3-Secret-61zR-not-real"


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "-")


def test_pgbackrest_and_retention_on_both_nodes_only(stack):
    graph, _, raw = stack
    for node in [n["name"] for n in raw["nodes"]]:
        for path in (pgbackrest.CONF, f"/etc/systemd/system/{pgbackrest.SERVER_UNIT}",
                     f"/etc/systemd/system/{recordings_retention.TIMER}"):
            r = graph.resources[f"backup-{node}-file-{_slug(path)}"]
            assert r.parent == "backup", (r.name, r.parent)
        for timer in pgbackrest.TIMERS.values():
            assert f"backup-{node}-svc-{timer}" in graph.resources, timer
        assert f"backup-{node}-first-backup" in graph.resources
    witness = raw["witness"]["name"]
    assert not [n for n in graph.resources if n.startswith(f"backup-{witness}-")]
    assert graph.resources["backup"].type == "hapbx:index:Backup"


def test_the_stanza_step_runs_after_both_nodes_files_and_before_the_first_backup(stack):
    graph, _, raw = stack
    stanza = graph.resources["backup-stanza"]
    deps = set(stanza.depends_on)
    for node in [n["name"] for n in raw["nodes"]]:
        assert f"backup-{node}-file-{_slug(pgbackrest.CONF)}" in deps, node
        assert "backup-stanza" in graph.resources[f"backup-{node}-first-backup"].depends_on
    assert "python3 -m hapbx_node.backup stanza" in str(rpc.unwrap_rpc_secret(stanza.inputs["create"]))
    # HA settled first: a leader-daemon restart in the same apply may fence and rejoin PostgreSQL
    before = ancestors(graph, "backup-stanza")
    for node in [n["name"] for n in raw["nodes"]]:
        assert f"vip-{node}-settled" in before, node


def test_pgbackrest_conf_is_checked_by_pgbackrest_before_install(stack):
    graph, _, raw = stack
    node = raw["nodes"][0]["name"]
    create = str(rpc.unwrap_rpc_secret(graph.resources[f"backup-{node}-file-{_slug(pgbackrest.CONF)}"].inputs["create"]))
    assert "pgbackrest --config=" in create and " help " in create, create[:400]


def test_every_backup_credential_is_a_secret(prod_config):
    prod_config["backup"] = {"repository": {"type": "s3", "s3Endpoint": "s3.example.org", "s3Bucket": "pbx-backup",
                                            "s3Region": "eu-west-1"}}
    prod_config.update(backupCipherPass=CIPHER, backupS3Key=S3_KEY, backupS3KeySecret=S3_SECRET)
    graph, generated = run_ok(prod_config, ["vendorRepoToken", "backupCipherPass", "backupS3Key", "backupS3KeySecret"])
    assert "secret-backup-cipher-pass" not in generated   # the stack's own passphrase, not a generated one
    node = prod_config["nodes"][0]["name"]
    conf = graph.resources[f"backup-{node}-file-{_slug(pgbackrest.CONF)}"]
    assert rpc.is_rpc_secret(conf.inputs["stdin"]) and conf.inputs["logging"] == "none"
    text = rpc.unwrap_rpc_secret(conf.inputs["stdin"])
    assert all(v in text for v in (CIPHER, S3_KEY, S3_SECRET)), "pgbackrest.conf holds the repository's credentials"
    rclone = graph.resources[f"backup-{node}-file-{_slug(recordings_retention.RCLONE_CONF)}"]
    assert rpc.is_rpc_secret(rclone.inputs["stdin"]) and S3_SECRET in rpc.unwrap_rpc_secret(rclone.inputs["stdin"])
    for r in graph.commands():
        for field in ("create", "update", "delete"):
            command = str(rpc.unwrap_rpc_secret(r.inputs.get(field, "")))
            assert not any(s in command for s in (CIPHER, S3_KEY, S3_SECRET)), (r.name, field)


def test_without_config_the_cipher_pass_is_generated(stack):
    graph, generated, raw = stack
    assert "secret-backup-cipher-pass" in generated
    node = raw["nodes"][0]["name"]
    conf = rpc.unwrap_rpc_secret(graph.resources[f"backup-{node}-file-{_slug(pgbackrest.CONF)}"].inputs["stdin"])
    assert f"repo1-cipher-pass={generated['secret-backup-cipher-pass']}" in conf
