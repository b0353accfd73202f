"""The data tier under Pulumi mocks (ordering, placement, secrets) and its pure parts (tuning,
rendering of both roles and both versions)."""
import dataclasses
import hashlib
import re

import pytest
from pulumi.runtime import rpc

from components import pgtune
from components.config import load_stack_file
from components.render import PUBLIC_CERTIFICATES, RenderContext, masked_secrets
from components.render import postgres as pg
from components.render import redis as rd
from tests.mockrun import ROOT, ancestors, run_ok, stack_config


def host_of(rec) -> str:
    return rpc.unwrap_rpc_secret(rec.inputs["connection"])["host"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("ssh")
    (d / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfakekeyZk2\n-----END OPENSSH PRIVATE KEY-----\n")
    hosts = ["10.77.0.11", "10.77.0.12", "10.77.0.13", "192.168.1.101", "192.168.1.102", "192.168.1.103"]
    (d / "kh").write_text("".join(f"{h} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i}hostkey\n" for i, h in enumerate(hosts)))
    raw = stack_config("lab")
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": str(d / "id"), "knownHostsFile": str(d / "kh")}
    graph, generated = run_ok(raw)
    return graph, generated, raw


def test_components_and_child_names(lab):
    graph, _, _ = lab
    assert graph.resources["postgres"].type == "hapbx:index:PostgresPair"
    assert graph.resources["redis"].type == "hapbx:index:RedisPair"
    for comp in ("postgres", "redis"):
        children = [r for r in graph.resources.values() if r.parent == comp]
        assert children and all(re.match(rf"^{comp}-pbx[12]-", c.name) for c in children), comp
        for c in children:  # each child runs on the node its name says
            node = c.name.split("-")[1]
            assert host_of(c) == {"pbx1": "10.77.0.11", "pbx2": "10.77.0.12"}[node], c.name


def test_every_data_step_waits_for_its_nodes_baseline(lab):
    graph, _, _ = lab
    for node in ("pbx1", "pbx2"):
        for comp in ("postgres", "redis"):
            for r in graph.resources.values():
                if r.parent == comp and r.name.startswith(f"{comp}-{node}-"):
                    assert f"{node}-packages" in ancestors(graph, r.name), r.name


def test_standby_is_built_after_the_whole_primary_chain(lab):
    graph, _, _ = lab
    before = ancestors(graph, "postgres-pbx2-standby")
    assert {"postgres-pbx1-configure", "postgres-pbx1-migrate", "postgres-pbx1-roles",
            "postgres-pbx1-replication"} <= before
    assert "postgres-pbx2-file-var-lib-postgresql-.pgpass" in before  # its replication password is in place
    # and the standby's own handler and slot come after the build
    assert "postgres-pbx2-standby" in ancestors(graph, "postgres-pbx2-configure")
    assert "postgres-pbx2-configure" in ancestors(graph, "postgres-pbx2-replication")
    assert "postgres-pbx2-roles" in ancestors(graph, "postgres-pbx2-replication")
    # nothing of the primary waits for the standby
    for r in graph.resources.values():
        if r.name.startswith("postgres-pbx1-"):
            assert not any(d.startswith("postgres-pbx2-") for d in ancestors(graph, r.name)), r.name


def test_schema_steps_run_on_each_node_and_apply_on_whichever_is_primary(lab):
    graph, _, _ = lab
    steps = [r for r in graph.commands() if r.name.endswith(("-migrate", "-roles"))]
    assert sorted(r.name for r in steps) == ["postgres-pbx1-migrate", "postgres-pbx1-roles",
                                             "postgres-pbx2-migrate", "postgres-pbx2-roles"]
    assert {host_of(graph.resources[f"postgres-{n}-migrate"]) for n in ("pbx1", "pbx2")} == {"10.77.0.11", "10.77.0.12"}
    for node in ("pbx1", "pbx2"):
        migrate = graph.resources[f"postgres-{node}-migrate"]
        assert f"postgres-{node}-configure" in ancestors(graph, migrate.name)
        assert f"postgres-{node}-file-etc-postgresql-15-main-postgresql.conf" in ancestors(graph, migrate.name)
        assert f"postgres-{node}-migrate" in ancestors(graph, f"postgres-{node}-roles")
        assert "python3 /usr/local/lib/hapbx/postgres/migrate.py" in migrate.inputs["create"]
        # a standby skips when its peer is the primary (after a failover that is the other node)
        assert "writer_here || exit 0" in migrate.inputs["create"]
        assert "writer_here || exit 0" in graph.resources[f"postgres-{node}-roles"].inputs["create"]
        # re-run only when the migrations, the runner or the seed data change
        assert migrate.inputs["triggers"][0] == pg.migrations_digest()
    # the first deploy: the configured primary's schema is in place before the standby is built
    assert "postgres-pbx1-migrate" in ancestors(graph, "postgres-pbx2-standby")
    assert "postgres-pbx2-standby" in ancestors(graph, "postgres-pbx2-migrate")


def test_initial_primary_from_config_swaps_the_roles(lab):
    _, _, raw = lab
    graph, _ = run_ok({**raw, "postgres": {**raw["postgres"], "initialPrimary": "pbx2"}})
    assert host_of(graph.resources["postgres-pbx2-migrate"]) == "10.77.0.12"
    assert "postgres-pbx1-standby" in graph.resources and "postgres-pbx2-standby" not in graph.resources
    assert "postgres-pbx2-replication" in ancestors(graph, "postgres-pbx1-standby")
    assert "redis-pbx2-handler" in ancestors(graph, "redis-pbx1-handler")  # Redis master follows the PG primary
    assert "redis-pbx1-verify" in graph.resources


def test_passwords_are_secrets_and_in_no_command_string(lab):
    graph, generated, _ = lab
    passwords = list(generated.values())
    carrying = set()
    for r in graph.commands():
        if not r.name.startswith(("postgres-", "redis-")):
            continue
        for field in ("create", "update", "delete", "triggers"):
            value = r.inputs.get(field)
            text = str(rpc.unwrap_rpc_secret(value)) if value is not None else ""
            assert not any(p in text for p in passwords), (r.name, field)
        stdin = r.inputs.get("stdin")
        if stdin is not None and any(p in str(rpc.unwrap_rpc_secret(stdin)) for p in passwords):
            assert rpc.is_rpc_secret(stdin), r.name
            assert r.inputs.get("logging") == "none", r.name
            carrying.add(r.name)
    assert {"postgres-pbx1-file-var-lib-postgresql-.pgpass", "postgres-pbx2-file-var-lib-postgresql-.pgpass",
            "redis-pbx1-file-etc-redis-redis.conf", "redis-pbx2-file-etc-redis-admin.env"} <= carrying
    for name in ("postgres-pbx2-file-var-lib-postgresql-.pgpass", "redis-pbx1-file-etc-redis-redis.conf",
                 "redis-pbx1-file-etc-redis-admin.env"):
        assert rpc.is_rpc_secret(graph.resources[name].inputs["stdin"]), name


def test_role_passwords_travel_as_scram_verifiers_not_cleartext(lab):
    graph, generated, _ = lab
    roles = graph.resources["postgres-pbx1-roles"]
    assert rpc.is_rpc_secret(roles.inputs["stdin"]) and roles.inputs["logging"] == "none"
    sql = rpc.unwrap_rpc_secret(roles.inputs["stdin"])
    # the trigger is the SQL's digest, readable in a preview: it shows that the roles change
    assert roles.inputs["triggers"] == [hashlib.sha256(sql.encode()).hexdigest()]
    for role, secret in pg.LOGIN_ROLES.items():
        password = generated[f"secret-{secret.replace('_', '-')}"]
        assert password not in sql
        assert f"('{role}', '{pg.scram_verifier(password, role)}')" in sql


def test_redis_replica_after_master_and_verified(lab):
    graph, _, _ = lab
    assert "redis-pbx1-handler" in ancestors(graph, "redis-pbx2-handler")
    assert {"redis-pbx1-handler", "redis-pbx2-handler"} <= ancestors(graph, "redis-pbx2-verify")
    assert "redis-pbx1-role" in ancestors(graph, "redis-pbx1-file-etc-redis-redis.conf")  # validated with the role file
    assert "replicaof 10.77.0.11 6379" in graph.resources["redis-pbx2-role"].inputs["create"]
    assert "replicaof no one" in graph.resources["redis-pbx1-role"].inputs["create"]


def test_prod_uses_debian_13s_postgresql_17_with_the_same_templates(prod_config):
    graph, _ = run_ok(prod_config, ["vendorRepoToken"])
    names = set(graph.resources)
    assert "postgres-node1-file-etc-postgresql-17-main-postgresql.conf" in names
    assert "postgres-node2-standby" in names
    create = graph.resources["postgres-node2-standby"].inputs["create"]
    assert "PGBIN=/usr/lib/postgresql/17/bin" in create and "SVC=postgresql@17-main" in create


# --- pure parts -------------------------------------------------------------------------------

def stack(name):
    return load_stack_file(f"{ROOT}/Pulumi.{name}.yaml", assume_secrets=True)[0]


@pytest.mark.parametrize("name", ["lab", "prod"])
def test_tuning_fits_the_node_and_feeds_kamailio(name):
    c = stack(name)
    for node in c.nodes:
        t = pgtune.tune(c, node)
        assert t.max_connections >= pgtune.connection_need(c)
        assert t.shared_buffers_mb == int(node.memory_mb * c.postgres.memory_share)
        assert t.shared_buffers_mb <= t.effective_cache_size_mb <= node.memory_mb - pgtune.others_mb(c, node)
        # every connection using work_mem three times still fits next to the other tenants
        assert t.shared_buffers_mb + t.max_connections * 3 * t.work_mem_kb / 1024 \
            <= node.memory_mb - pgtune.others_mb(c, node) or t.work_mem_kb == 4096
        assert t.max_slot_wal_keep_size_mb > t.max_wal_size_mb  # a dead standby is cut off, bounded


def test_tuning_values_of_both_stacks():
    lab, prod = stack("lab"), stack("prod")
    # the lab's Kamailio takes 512 MB of shared memory (kamailio.shmMb), left out of PostgreSQL's share
    assert pgtune.tune(lab, lab.nodes[0]).settings() == {
        "max_connections": "100", "superuser_reserved_connections": "5", "shared_buffers": "1GB",
        "effective_cache_size": "2128MB", "work_mem": "5024kB", "maintenance_work_mem": "256MB", "wal_buffers": "16MB",
        "max_worker_processes": "8", "max_parallel_workers": "2", "max_parallel_workers_per_gather": "1",
        "max_parallel_maintenance_workers": "1", "min_wal_size": "256MB", "max_wal_size": "1GB",
        "wal_keep_size": "256MB", "max_slot_wal_keep_size": "4GB"}
    p = pgtune.tune(prod, prod.nodes[0]).settings()
    assert (p["shared_buffers"], p["effective_cache_size"], p["work_mem"], p["maintenance_work_mem"]) == \
        ("24GB", "53280MB", "43545kB", "2GB")
    assert (p["max_connections"], p["max_worker_processes"], p["max_parallel_workers_per_gather"]) == ("300", "24", "4")
    assert (p["max_wal_size"], p["max_slot_wal_keep_size"]) == ("8GB", "32GB")


def test_kamailio_heavy_config_raises_max_connections():
    c = stack("lab")
    c = dataclasses.replace(c, kamailio=dataclasses.replace(c.kamailio, children=64))
    assert pgtune.max_connections(c) == 2 * (64 * 3 + pgtune.KAMAILIO_AUX_PROCESSES) + pgtune.SERVICE_CONNECTIONS
    assert "max_connections = 428" in pg.postgresql_conf(RenderContext(c, c.nodes[0], masked_secrets()))


def test_standby_critical_settings_are_equal_on_both_nodes_even_with_different_hardware():
    c = stack("prod")
    c = dataclasses.replace(c, nodes=[c.nodes[0], dataclasses.replace(c.nodes[1], cpus=8, memory_mb=65536)])
    confs = [pg.postgresql_conf(RenderContext(c, n, masked_secrets())) for n in c.nodes]
    for setting in ("max_connections", "max_worker_processes", "max_wal_senders", "max_replication_slots",
                    "wal_level", "wal_log_hints", "hot_standby"):
        values = {re.search(rf"^{setting} = (\S+)", text, re.M).group(1) for text in confs}
        assert len(values) == 1, (setting, values)


def test_each_node_follows_its_peer_through_its_own_slot():
    c = stack("lab")
    for node in c.nodes:
        peer = c.peer_of(node)
        conf = pg.postgresql_conf(RenderContext(c, node, masked_secrets()))
        assert f"primary_conninfo = 'host={peer.address} port=5432 user=replicator application_name={node.name} " in conf
        assert f"primary_slot_name = '{pg.slot_name(node.name)}'" in conf
        hba = next(f for f in pg.files(RenderContext(c, node, masked_secrets())) if f.path.endswith("pg_hba.conf"))
        assert re.findall(r"^hostssl replication\s+replicator\s+(\S+)", hba.content, re.M) == [f"{peer.address}/32"]
        assert re.findall(r"^hostssl pbx\s+\S+\s+(\S+)", hba.content, re.M) == \
            [f"{n.address}/32" for n in c.nodes] + [f"{c.vip.address}/32"]
    assert pg.slot_name("node-a") == "node_a"


def test_scram_verifier_is_stable_and_role_specific():
    v1 = pg.scram_verifier("s3cret-password", "kamailio")
    assert v1 == pg.scram_verifier("s3cret-password", "kamailio")
    assert v1 != pg.scram_verifier("s3cret-password", "cdr_writer")
    assert re.match(r"^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$", v1)
    assert "s3cret" not in v1


def test_rendered_files_hold_no_secret_unless_marked_and_masked_in_render():
    c = stack("lab")
    secrets = {k: f"real-{k}-value" for k in masked_secrets()}
    for node in c.nodes:
        for f in pg.files(RenderContext(c, node, secrets)) + rd.files(RenderContext(c, node, secrets)):
            held = {k for k, v in secrets.items() if v in f.content}
            assert held <= set(f.secrets), (f.path, held)
            if set(f.secrets) - set(PUBLIC_CERTIFICATES):
                assert f.mode in ("0600", "0640"), f.path
        for f in pg.files(RenderContext(c, node, masked_secrets())) + rd.files(RenderContext(c, node, masked_secrets())):
            assert "real-" not in f.content


def test_migrations_are_numbered_and_checksummed_without_the_shipped_header():
    names = [n for n, _ in pg.migrations()]
    assert names == sorted(names) and all(re.match(r"^\d{3}_[a-z0-9_]+\.sql$", n) for n in names)
    assert [int(n[:3]) for n in names] == list(range(1, len(names) + 1))
    c = stack("lab")
    shipped = {f.path: f.content for f in pg.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    from hapbx_node import migrate as runner
    for name, sql in pg.migrations():
        text = shipped[f"{pg.LIB_DIR}/migrations/{name}"]
        assert text.startswith("-- Managed by ") and text.endswith(sql)
        assert runner.migration_checksum(text.encode()) == hashlib.sha256(sql.encode()).hexdigest()


def test_no_installed_file_carries_a_masked_placeholder(lab):
    """Every file a component installs is sent with its real content: a component that shipped the
    masked render (the etcd members' certificates once did) would install '@@SECRET:…@@'."""
    from harness.secrets import string_leaves
    graph, _, _ = lab
    files = [r for r in graph.commands() if "-file-" in r.name]
    assert len(files) > 100
    with_secrets = 0
    for r in files:
        stdin = r.inputs.get("stdin")
        leaves = list(string_leaves(rpc.unwrap_rpc_secret(stdin) if rpc.is_rpc_secret(stdin) else stdin))
        assert leaves and not any("@@SECRET:" in leaf for leaf in leaves), r.name
        with_secrets += rpc.is_rpc_secret(stdin)
    assert any(r.name.startswith("etcd-") and r.name.endswith("etcd.key") for r in files)
    assert with_secrets >= 20, with_secrets
