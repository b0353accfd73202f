"""PostgreSQL files and step scripts of a PBX node (pure: config + node + secrets -> text).

One set of templates for PostgreSQL 15 (Debian 12), 16 (a vendor repository) and 17 (Debian 13),
each run by the daemons tier (tests/daemons/test_postgres_versions.py): Debian's cluster layout
(/etc/postgresql/<v>/main, /var/lib/postgresql/<v>/main, postgresql@<v>-main). The
configuration is the same on both nodes whatever their role; the role is state (standby.signal).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
from hapbx_node.layout import (LIB_ROOT, PENDING_DIR, PG_PASSFILE, PG_PEER_SSL, PG_SOCKET_DIR, PgPaths,
                               slot_name, tls_certificate, tls_key)

from .. import pgtune
from ..config import ClusterConfig, NodeSettings
from . import NODE_PACKAGE, RenderContext, RenderedFile, header, template, tls

DATABASE = "pbx"
REPLICATION_ROLE = "replicator"
#: the service name of PostgreSQL's certificate (one of render.TLS_SERVICES)
TLS_SERVICE = "postgres"
#: login role -> secret name holding its password
LOGIN_ROLES = {
    "postgres": "postgres_superuser",
    REPLICATION_ROLE: "postgres_replication",
    "kamailio": "postgres_kamailio",
    "cdr_writer": "postgres_cdr",
    "pbx_admin": "postgres_admin",
    "pbx_readonly": "postgres_readonly",
    "hapbx_monitor": "postgres_monitor",   # prometheus-postgres-exporter (migration 010: pg_monitor only)
}
APP_ROLES = ("kamailio", "cdr_writer", "pbx_admin", "pbx_readonly")
MONITOR_ROLE = "hapbx_monitor"
LIB_DIR = f"{LIB_ROOT}/postgres"
#: the replication password for the walreceiver, pg_basebackup and pg_rewind; named explicitly
#: (primary_conninfo passfile=, PGPASSFILE=) since a postmaster or tool started from a root shell
#: keeps HOME=/root and would not find ~postgres/.pgpass
PGPASS = PG_PASSFILE
PARTITIONS_AHEAD = 3
DISPATCHER_SET = 1
STREAM_WAIT_SECONDS = 60
#: the migration runner and its migrations (node programs), shipped to LIB_DIR as they are
MIGRATE = os.path.join(NODE_PACKAGE, "migrate.py")
MIGRATIONS_DIR = os.path.join(NODE_PACKAGE, "migrations")


def paths(cluster: ClusterConfig) -> PgPaths:
    """The cluster's PostgreSQL layout (hapbx_node.layout.PgPaths of its major version)."""
    return PgPaths(cluster.postgres.version)


def pending_marker(cluster: ClusterConfig) -> str:
    return f"{PENDING_DIR}/{paths(cluster).service}"


def pgpass_escape(value: str) -> str:
    if value.startswith("@@SECRET:") and value.endswith("@@"):
        return value  # a render mask, shown as is
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _pad(addr: str) -> str:
    return " " * max(1, 21 - len(addr))


def scram_verifier(password: str, role: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for a password, computed here so the cleartext never
    reaches the node. The salt is derived from the password and role, so the verifier is stable
    across applies (re-applying changes nothing) and differs between roles."""
    salt = hmac.new(password.encode(), f"hapbx-scram-salt:{role}".encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def migrations() -> list[tuple[str, str]]:
    """(file name, SQL) of every migration, in order."""
    names = sorted(n for n in os.listdir(MIGRATIONS_DIR) if n.endswith(".sql"))
    out = []
    for n in names:
        with open(os.path.join(MIGRATIONS_DIR, n), encoding="utf-8") as fh:
            out.append((n, fh.read()))
    return out


def migrations_digest() -> str:
    h = hashlib.sha256()
    for name, sql in migrations():
        h.update(name.encode() + b"\0" + sql.encode() + b"\0")
    with open(MIGRATE, "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()


def _static(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _values(ctx: RenderContext, **extra) -> dict:
    c = ctx.cluster
    return dict(pg=paths(c), pgpass=PGPASS, socket_dir=PG_SOCKET_DIR, database=DATABASE, replication_role=REPLICATION_ROLE, lib_dir=LIB_DIR,
                partitions_ahead=PARTITIONS_AHEAD, stream_wait=STREAM_WAIT_SECONDS,
                own_slot=slot_name(ctx.host.name), peer_slot=slot_name(ctx.peer.name),
                marker=pending_marker(c), peer_ssl=PG_PEER_SSL, tls_certificate=tls_certificate(TLS_SERVICE),
                tls_key=tls_key(TLS_SERVICE), **extra)


def postgresql_conf(ctx: RenderContext) -> str:
    c, node = ctx.cluster, ctx.host
    tune = pgtune.tune(c, node)  # type: ignore[arg-type]
    return template("postgresql/postgresql.conf.j2", ctx, tune=tune.settings(),
                    others_mb=pgtune.others_mb(c, node), kamailio_conns=2 * pgtune.kamailio_connections(c),  # type: ignore[arg-type]
                    service_conns=pgtune.SERVICE_CONNECTIONS, max_wal_senders=pgtune.MAX_WAL_SENDERS,
                    max_replication_slots=pgtune.MAX_REPLICATION_SLOTS, **_values(ctx))


def app_sources(cluster: ClusterConfig) -> list[str]:
    return [n.address for n in cluster.nodes] + [cluster.vip.address]


def seed_destinations(cluster: ClusterConfig) -> list[dict]:
    """One dispatcher destination per media engine: each PBX node's, then each media node's
    (mediaNodes). Kamailio probes every one alike (ds_probing_mode 1) and trusts each as a media
    engine (ds_is_from_list)."""
    hosts = [*cluster.nodes, *cluster.media_nodes]
    return [{"destination": f"sip:{n.address}:{cluster.media.sip_port}", "priority": 0,
             "attrs": f"duid={n.name}", "description": f"hapbx:{n.name}"} for n in hosts]


def policy_readers(cluster: ClusterConfig) -> list[str]:
    """Addresses FreeSWITCH's policy cache reads the PBX database from besides the nodes: the media
    nodes' (role pbx_readonly only, over TLS: pg_hba)."""
    return [m.address for m in cluster.media_nodes] if cluster.media.engine == "freeswitch" else []


def conf_validator(pg: PgPaths) -> str:
    """PostgreSQL's own parser on the staged file: ``postgres -C`` reads the whole configuration
    (and the data directory's postgresql.auto.conf), rejects unknown parameters and bad values,
    and starts nothing. Runs as postgres (it refuses root). Falls back to the newest installed
    major version only where the configured one is absent (a host rendering the other stack)."""
    return (f'b={pg.bin_dir}/postgres; if [ ! -x "$b" ]; then for c in /usr/lib/postgresql/*/bin/postgres; do b=$c; done; fi; '
            'chmod 0755 "$(dirname {path})" && chmod 0644 {path} && '
            'runuser -u postgres -- "$b" --config-file={path} -C wal_level')


# pg_hba.conf has no offline checker in PostgreSQL: this checks the syntax and the policy (no
# trust/password/md5, CIDR addresses) before install; after the reload the configure step reads
# pg_hba_file_rules (PostgreSQL's own parser) and fails on any error, the old rules staying active.
HBA_VALIDATOR = "awk " + shlex.quote(" ".join("""
function bad(msg) { printf "line %d: %s: %s\\n", FNR, msg, $0; errors++ }
/^[[:space:]]*(#|$)/ { next }
{ sub(/[[:space:]]+#.*$/, "") }
$1 == "local" { if (NF < 4) { bad("local needs database, user, method"); next } method = $4 }
$1 ~ /^host(ssl|nossl|gssenc|nogssenc)?$/ {
  if (NF < 5) { bad("host needs database, user, address, method"); next }
  if ($4 !~ /^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+[/][0-9]+$/ && $4 !~ /^[0-9a-fA-F:]+[/][0-9]+$/) { bad("address is not CIDR"); next }
  method = $5 }
$1 != "local" && $1 !~ /^host/ { bad("unknown connection type"); next }
method ~ /^(trust|password|md5)$/ { bad("method " method " is not allowed (scram-sha-256)"); next }
method !~ /^(scram-sha-256|peer|reject|cert)$/ { bad("unexpected method " method); next }
END { exit errors ? 1 : 0 }""".split())) + " {path}"


def tls_files(ctx: RenderContext) -> list[RenderedFile]:
    """This node's server certificate and key (PostgreSQL reloads them on SIGHUP); installed with
    postgresql.conf, which names them (the CA comes with the baseline: render/tls.py)."""
    return tls.service_files(ctx, TLS_SERVICE, unit=paths(ctx.cluster).service, action="reload",
                             owner="postgres", group="postgres")


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    c = ctx.cluster
    pg = paths(c)
    svc = pg.service
    hba = template("postgresql/pg_hba.conf.j2", ctx, app_sources=app_sources(c), app_roles=APP_ROLES, pad=_pad,
                   policy_readers=policy_readers(c), **_values(ctx))
    out = [
        RenderedFile(pg.conf_file, postgresql_conf(ctx), service=svc, action="reload",
                     validate=conf_validator(pg), owner="postgres", group="postgres", mode="0644"),
        RenderedFile(f"{pg.conf_dir}/pg_hba.conf", hba, service=svc, action="reload",
                     validate=HBA_VALIDATOR, owner="postgres", group="postgres", mode="0640"),
        *tls_files(ctx),
        RenderedFile(PGPASS,
                     template("postgresql/pgpass.j2", ctx, password=ctx.secret("postgres_replication"),
                              pgpass_escape=pgpass_escape, **_values(ctx)),
                     owner="postgres", group="postgres", mode="0600", secrets=("postgres_replication",)),
        RenderedFile(f"{LIB_DIR}/migrate.py", _static(MIGRATE), mode="0755",
                     validate="python3 -m py_compile {path}"),
        RenderedFile(f"{LIB_DIR}/seed.sql",
                     template("postgresql/seed.sql.j2", ctx, destinations=seed_destinations(c),
                              dispatcher_set=DISPATCHER_SET, sip_domain=c.vip.address)),
    ]
    for name, sql in migrations():
        out.append(RenderedFile(f"{LIB_DIR}/migrations/{name}", header("--") + "\n" + sql))
    unit = "hapbx-pg-maintenance"
    out += [
        RenderedFile(f"/etc/systemd/system/{unit}.service",
                     template("postgresql/hapbx-pg-maintenance.service.j2", ctx, **_values(ctx)),
                     service=f"{unit}.timer", action="restart",
                     validate=f"systemd-analyze verify --man=no {{path}}:{unit}.service"),
        RenderedFile(f"/etc/systemd/system/{unit}.timer", template("postgresql/hapbx-pg-maintenance.timer.j2", ctx),
                     service=f"{unit}.timer", action="restart"),
    ]
    return out


# --- step scripts (bodies for components.remote.step; the node's shell runs them as root) ----------

def _step(name: str, ctx: RenderContext) -> str:
    return template(f"postgresql/steps/{name}.sh.j2", ctx, **_values(ctx))


def configure_script(ctx: RenderContext) -> str:
    return _step("configure", ctx)


def migrate_script(ctx: RenderContext) -> str:
    return _step("migrate", ctx)


def roles_script(ctx: RenderContext) -> str:
    return _step("roles", ctx)


def replication_script(ctx: RenderContext) -> str:
    return template("postgresql/steps/replication.sh.j2", ctx, slot_sql=slot_sql(slot_name(ctx.peer.name)),
                    rewind_grants_sql=REWIND_GRANTS_SQL, **_values(ctx))


def standby_script(ctx: RenderContext) -> str:
    return _step("standby", ctx)


def slot_sql(slot: str) -> str:
    """Create a physical slot unless it exists (works on a primary and on a standby)."""
    return (f"SELECT pg_create_physical_replication_slot('{slot}') "
            f"WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}')")


#: what pg_rewind's source role needs (PostgreSQL documentation of pg_rewind); primary only
REWIND_GRANTS_SQL = "".join(
    f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {REPLICATION_ROLE};\n" for fn in (
        "pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)", "pg_read_binary_file(text)",
        "pg_read_binary_file(text, bigint, bigint, boolean)"))


def roles_sql(ctx: RenderContext) -> str:
    """SQL (psql, on stdin) setting every login role's SCRAM verifier where it differs; prints the
    roles it changed. Holds verifiers, not passwords; still shipped as a secret."""
    rows = ",\n    ".join(f"('{role}', '{scram_verifier(ctx.secret(secret), role)}')"
                          for role, secret in LOGIN_ROLES.items())
    return f"""SET log_statement = 'none';
SET log_min_error_statement = 'panic';
CREATE TEMPORARY TABLE hapbx_roles (name name, verifier text);
INSERT INTO hapbx_roles VALUES
    {rows};
SELECT string_agg(r.name, ',' ORDER BY r.name) FROM hapbx_roles r JOIN pg_authid a ON a.rolname = r.name
 WHERE a.rolpassword IS DISTINCT FROM r.verifier;
SELECT format('ALTER ROLE %I PASSWORD %L', r.name, r.verifier) FROM hapbx_roles r JOIN pg_authid a ON a.rolname = r.name
 WHERE a.rolpassword IS DISTINCT FROM r.verifier \\gexec
"""


def role_secret_names() -> tuple[str, ...]:
    return tuple(LOGIN_ROLES.values())


def node_of(cluster: ClusterConfig, name: str) -> NodeSettings:
    return next(n for n in cluster.nodes if n.name == name)
