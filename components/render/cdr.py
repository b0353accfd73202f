"""CDR pipeline and admin service files of a PBX node (pure: config + node + secrets -> files).

The service code is the ``hapbx_node.cdr`` package (with hapbx_node's ``__init__`` and ``layout``
modules it imports), shipped as files under LIB_DIR/hapbx_node and run as ``python3 -m
hapbx_node.cdr`` by Debian's /usr/bin/python3 with Debian's packages (python3-aiohttp, python3-redis,
python3-psycopg2: ClusterConfig.node_packages). Per node:

  hapbx-cdr-receiver.service  both nodes, enabled; VIP (freebind) + node address + loopback, cdr.receiverPort
  hapbx-cdr-worker.service    never enabled: VIP owner only (WORKER_UNIT is what the failover
                              scripts start on promotion and stop on demotion: OWNER_SERVICES)
  hapbx-admin.service         both nodes, enabled; VIP (freebind) + node address + loopback
  /etc/hapbx/tls/https.{crt,key}   the node's HTTPS certificate (cluster CA; SANs node address, VIP,
                              127.0.0.1) and key (0600 root): the receiver and the admin API serve
                              HTTPS on the VIP and the node address, plain HTTP on loopback only;
                              each unit gets its own copy of both through systemd's LoadCredential=
                              (their dynamic users never read /etc/hapbx/tls); a new pair restarts both
  /etc/hapbx/{cdr-receiver,cdr-worker,admin}.env   0600 root, each with only its own secrets
  /etc/hapbx/cdr-sender.env   0600 root: this node's CDR sender credential (replay, lab stand-in)
  hapbx-cdr-replay.service    media.engine freeswitch only (the lab's SIPp stand-in writes no CDRs):
  + .timer (enabled)          every minute, posts what mod_json_cdr left in its err-log-dir to
                              this node's receiver, then the peer's (hapbx_node/cdr/replay.py); its
                              credential from cdr-sender.env; runs as FreeSWITCH's user
  /usr/local/sbin/hapbx-cdr-deadletters   root's command for the worker's dead letters (list,
                              replay, drop: hapbx_node/cdr/deadletters.py) with cdr-worker.env

Code files touch the pending markers of the three daemons' units (one restart each when any
changed); the replay needs none (each run starts afresh).
"""
from __future__ import annotations

import os
import shlex

from hapbx_node.cdr import auth
from hapbx_node.layout import (CDR_WORKER_RUN_DIR, ETC_DIR, HA_STATUS, LIB_ROOT, PENDING_DIR, PG_PEER_SSL,
                               PG_SOCKET_DIR, TLS_CA, tls_certificate, tls_key)

from ..config import ClusterConfig
from . import (NODE_PACKAGE, RenderContext, RenderedFile, header, node_module_source, node_package_modules,
               node_secret, template, tls)
from .postgres import DATABASE
from .postgres import paths as pg_paths
from .redis import CDR_USER

#: the services: hapbx_node's ``cdr`` subpackage
PACKAGE_DIR = os.path.join(NODE_PACKAGE, "cdr")
LIB_DIR = f"{LIB_ROOT}/cdr"
RECEIVER_UNIT = "hapbx-cdr-receiver.service"
WORKER_UNIT = "hapbx-cdr-worker.service"
ADMIN_UNIT = "hapbx-admin.service"
UNITS = (RECEIVER_UNIT, WORKER_UNIT, ADMIN_UNIT)
REPLAY_UNIT = "hapbx-cdr-replay.service"
REPLAY_TIMER = "hapbx-cdr-replay.timer"
#: seconds an error file must be old before it is replayed (mod_json_cdr may still be writing it)
REPLAY_MIN_AGE = 10
#: this node's CDR sender credential (replay timer, the lab's media stand-in), under ETC_DIR
SENDER_ENV = "cdr-sender.env"
#: the worker's settings and credentials, under ETC_DIR (its unit's and the dead-letter command's)
WORKER_ENV = "cdr-worker.env"
#: root's command for the dead letters: runs ``python3 -m hapbx_node.cdr deadletters`` with the worker's env
DEADLETTERS_CLI = "/usr/local/sbin/hapbx-cdr-deadletters"
#: what the failover scripts start on the VIP owner and stop elsewhere (components/render/failover.py)
OWNER_SERVICES = (WORKER_UNIT,)
#: the HTTP services, HTTPS beyond loopback with the node's "https" certificate (render.TLS_SERVICES)
HTTPS_SERVICE = "https"
HTTPS_UNITS = (RECEIVER_UNIT, ADMIN_UNIT)
#: the names of the certificate and key in each unit's credentials directory (LoadCredential=, %d)
HTTPS_CREDENTIALS = ("https.crt", "https.key")


def package_files() -> list[tuple[str, str]]:
    """(path under LIB_DIR, source) of what the services run: hapbx_node's shared modules and the
    whole hapbx_node.cdr package (its admin subpackage too), sorted."""
    return [(f"hapbx_node/{name}", node_module_source(name)) for name in node_package_modules("cdr")]


def _quote(value: str) -> str:
    """A value for a systemd EnvironmentFile: double-quoted, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_file(values: dict[str, str], title: str) -> str:
    lines = [header(), f"# {title}", "# Read by systemd (EnvironmentFile); mode 0600 root: it holds credentials."]
    lines += [f"{k}={_quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def redis_endpoints(ctx: RenderContext, with_peer: bool) -> str:
    c = ctx.cluster
    out = [f"127.0.0.1:{c.redis.port}"]
    if with_peer:
        out.append(f"{ctx.peer.address}:{c.redis.port}")
    return ",".join(out)


def redis_env(ctx: RenderContext, with_peer: bool) -> dict[str, str]:
    """Where a service finds Redis, as the cdr user, over TLS checked against the cluster CA
    (every service's environment)."""
    return {"HAPBX_REDIS_ENDPOINTS": redis_endpoints(ctx, with_peer), "HAPBX_REDIS_CA": TLS_CA,
            "HAPBX_REDIS_USER": CDR_USER, "HAPBX_REDIS_PASSWORD": ctx.secret("redis_cdr")}


def pg_dsn(cluster: ClusterConfig, user: str) -> str:
    # the local socket: the worker and the admin write where they run (the primary on the VIP owner)
    return f"host={PG_SOCKET_DIR} port={cluster.postgres.port} dbname={DATABASE} user={user}"


def primary_dsn(ctx: RenderContext, user: str) -> str:
    """The primary wherever it is: the local socket, else the peer over TLS, its certificate checked
    (libpq skips a standby: target_session_attrs). For the receiver's direct path, on both nodes."""
    port = ctx.cluster.postgres.port
    return (f"host={PG_SOCKET_DIR},{ctx.peer.address} port={port},{port} dbname={DATABASE} user={user} "
            f"target_session_attrs=read-write {PG_PEER_SSL}")


def sender_secret(cluster: ClusterConfig, node: str) -> str:
    """The secret holding a PBX node's CDR sender password."""
    return node_secret(cluster, "cdr_sender", node)


def senders(cluster: ClusterConfig) -> list[str]:
    """The hosts whose media engines post CDRs: both PBX nodes, then the media nodes."""
    return [n.name for n in cluster.nodes] + [m.name for m in cluster.media_nodes]


def sender_secrets(cluster: ClusterConfig) -> tuple[str, ...]:
    return tuple(sender_secret(cluster, n) for n in senders(cluster))


def sender_credential(ctx: RenderContext) -> tuple[str, str]:
    """(user, password) this node's CDR senders post as."""
    return auth.sender_user(ctx.host.name), ctx.secret(sender_secret(ctx.cluster, ctx.host.name))


def sender_env(ctx: RenderContext) -> dict[str, str]:
    """This node's CDR sender credential, for what posts CDRs from it (replay timer, the lab's
    media stand-in, an operator's curl): /etc/hapbx/cdr-sender.env."""
    user, password = sender_credential(ctx)
    return {"HAPBX_CDR_POST_USER": user, "HAPBX_CDR_POST_PASSWORD": password}


def receiver_env(ctx: RenderContext) -> dict[str, str]:
    c, node = ctx.cluster, ctx.host
    return {
        "HAPBX_NODE": node.name,
        # the VIP too (freebind, as the admin API): a poster off the nodes (the CDR drill) reaches the owner's
        "HAPBX_CDR_LISTEN": f"{c.vip.address},{node.address},127.0.0.1",
        "HAPBX_CDR_PORT": str(c.cdr.receiver_port),
        "HAPBX_CDR_MAX_BODY": str(c.cdr.max_body_kb * 1024),
        "HAPBX_CDR_REDIS_TIMEOUT": f"{c.cdr.redis_timeout_seconds:g}",
        "HAPBX_CDR_WAIT_REPLICA_MS": str(c.cdr.wait_replica_ms),
        # the local Redis first; when it is a replica (READONLY) the peer's master
        **redis_env(ctx, with_peer=True),
        # both nodes' senders may post here (a node posts to the peer when its own receiver is down),
        # and every media node's (mediaNodes: they post to the VIP, then to each node)
        "HAPBX_CDR_SENDERS": ",".join(f"{auth.sender_user(n)}:{ctx.secret(sender_secret(c, n))}"
                                      for n in senders(c)),
        # what the Redis replica did not confirm is committed here before it is acknowledged
        "HAPBX_PG_DSN": primary_dsn(ctx, "cdr_writer"),
        "HAPBX_PG_PASSWORD": ctx.secret("postgres_cdr"),
    }


def worker_env(ctx: RenderContext) -> dict[str, str]:
    c, node = ctx.cluster, ctx.host
    return {
        "HAPBX_NODE": node.name,
        "HAPBX_CDR_NODES": ",".join(n.name for n in c.nodes),
        "HAPBX_CDR_BATCH": str(c.cdr.batch_size),
        **redis_env(ctx, with_peer=False),
        "HAPBX_PG_DSN": pg_dsn(c, "cdr_writer"),
        "HAPBX_PG_PASSWORD": ctx.secret("postgres_cdr"),
    }


def admin_env(ctx: RenderContext) -> dict[str, str]:
    c, node = ctx.cluster, ctx.host
    return {
        "HAPBX_NODE": node.name,
        "HAPBX_ADMIN_LISTEN": f"{c.vip.address},{node.address},127.0.0.1",
        "HAPBX_ADMIN_PORT": str(c.admin.port),
        "HAPBX_ADMIN_TOKEN": ctx.secret("admin_api_token"),
        "HAPBX_VIP": c.vip.address,
        "HAPBX_HA_STATUS": HA_STATUS,
        **redis_env(ctx, with_peer=False),
        "HAPBX_PG_DSN": pg_dsn(c, "pbx_admin"),
        "HAPBX_PG_PASSWORD": ctx.secret("postgres_admin"),
    }


def _values(ctx: RenderContext) -> dict:
    return dict(lib_dir=LIB_DIR, env_dir=ETC_DIR, pg_service=pg_paths(ctx.cluster).service,
                stats_dir=CDR_WORKER_RUN_DIR,
                https_credentials=list(zip(HTTPS_CREDENTIALS, (tls_certificate(HTTPS_SERVICE), tls_key(HTTPS_SERVICE)))))


def https_files(ctx: RenderContext) -> list[RenderedFile]:
    """The node's HTTPS certificate and key (root's: each unit loads its own copy, LoadCredential=);
    a change marks both HTTP services for their rolling restart (components/cdr.py)."""
    return tls.service_files(ctx, HTTPS_SERVICE, unit=None, action=touch_markers(HTTPS_UNITS))


def restarts(f: RenderedFile) -> tuple[str, ...]:
    """The daemons a change of ``f`` restarts: the code every one, the HTTPS pair the HTTP services,
    any other file its own service."""
    if f.path.startswith(f"{LIB_DIR}/"):
        return UNITS
    if f.path in (tls_certificate(HTTPS_SERVICE), tls_key(HTTPS_SERVICE)):
        return HTTPS_UNITS
    return (f.service,) if f.service else ()


def replays(cluster: ClusterConfig) -> bool:
    """Whether the nodes get the replay timer: only FreeSWITCH writes json_cdr error files."""
    return cluster.media.engine == "freeswitch"


def receiver_urls(ctx: RenderContext) -> list[str]:
    """This node's receiver (loopback: plain HTTP), then the peer's (HTTPS, its certificate checked
    against TLS_CA): where json_cdr.conf, the replay and the lab's media stand-in post, in that order.
    A media node has no receiver: the VIP's (whichever node holds it), then the initial standby's (the
    node least likely to hold the VIP), then the initial primary's, all HTTPS (the nodes' certificates
    name their addresses and the VIP)."""
    c = ctx.cluster
    port = c.cdr.receiver_port
    if ctx.is_media_node:
        return [f"https://{a}:{port}/cdr" for a in (c.vip.address, c.standby.address, c.primary.address)]
    return [f"http://127.0.0.1:{port}/cdr", f"https://{ctx.peer.address}:{port}/cdr"]


def replay_files(ctx: RenderContext) -> list[RenderedFile]:
    from . import freeswitch as fs
    c = ctx.cluster
    values = dict(lib_dir=LIB_DIR, error_dir=fs.CDR_ERROR_DIR, fs_user=fs.USER, fs_group=fs.GROUP,
                  sender_env=f"{ETC_DIR}/{SENDER_ENV}",
                  receiver_unit=RECEIVER_UNIT, urls=receiver_urls(ctx), ca=TLS_CA, min_age=REPLAY_MIN_AGE,
                  # a receiver may hold a post for cdr.redisTimeoutSeconds before its 503
                  timeout=f"{c.cdr.redis_timeout_seconds + 5:g}")
    return [
        RenderedFile(f"/etc/systemd/system/{REPLAY_UNIT}", template(f"cdr/{REPLAY_UNIT}.j2", ctx, **values),
                     service=REPLAY_TIMER, action="restart", validate=unit_validator(REPLAY_UNIT)),
        RenderedFile(f"/etc/systemd/system/{REPLAY_TIMER}", template(f"cdr/{REPLAY_TIMER}.j2", ctx, **values),
                     service=REPLAY_TIMER, action="restart", validate=unit_validator(REPLAY_TIMER)),
    ]


def deadletters_cli(ctx: RenderContext) -> RenderedFile:
    """The dead-letter command: no secret in it (it sources the worker's env file when run)."""
    text = template("cdr/hapbx-cdr-deadletters.j2", ctx, lib_dir=LIB_DIR, env_file=f"{ETC_DIR}/{WORKER_ENV}")
    return RenderedFile(DEADLETTERS_CLI, text, mode="0755", validate="bash -n {path}")


def unit_validator(unit: str) -> str:
    return f"systemd-analyze verify --man=no {{path}}:{unit}"


def touch_markers(units: tuple[str, ...] = UNITS) -> str:
    return f"mkdir -p {PENDING_DIR} && touch " + " ".join(shlex.quote(f"{PENDING_DIR}/{u}") for u in units)


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    out = []
    for name, source in package_files():
        out.append(RenderedFile(f"{LIB_DIR}/{name}", f"{header()}\n{source}", action=touch_markers(),
                                validate="python3 -m py_compile {path}"))
    envs = [("cdr-receiver.env", RECEIVER_UNIT, receiver_env(ctx),
             ("redis_cdr", "postgres_cdr", *sender_secrets(ctx.cluster)),
             "CDR receiver: where it listens, the senders it accepts, the Redis endpoints and its Redis "
             "user, the primary (role cdr_writer) for what the Redis replica did not confirm."),
            (SENDER_ENV, None, sender_env(ctx), (sender_secret(ctx.cluster, ctx.host.name),),
             "This node's CDR sender credential (HTTP basic to the CDR receivers)."),
            (WORKER_ENV, WORKER_UNIT, worker_env(ctx), ("redis_cdr", "postgres_cdr"),
             "CDR worker: the local Redis and PostgreSQL (role cdr_writer)."),
            ("admin.env", ADMIN_UNIT, admin_env(ctx), ("admin_api_token", "redis_cdr", "postgres_admin"),
             "Admin API: its token, the local PostgreSQL (role pbx_admin), the local Redis (queue depth).")]
    for name, unit, values, secrets, title in envs:
        out.append(RenderedFile(f"{ETC_DIR}/{name}", env_file(values, title), service=unit,
                                action="restart" if unit else "none", mode="0600", secrets=secrets))
    for unit in UNITS:
        out.append(RenderedFile(f"/etc/systemd/system/{unit}",
                                template(f"cdr/{unit}.j2", ctx, **_values(ctx)),
                                service=unit, action="restart", validate=unit_validator(unit)))
    out += https_files(ctx)
    out.append(deadletters_cli(ctx))
    if replays(ctx.cluster):
        out += replay_files(ctx)
    return out


# --- step script: where the worker runs --------------------------------------------------------

def worker_placement_script(ctx: RenderContext) -> str:
    """Start (or restart on change) the worker where this node is the writer, stop it where the
    local PostgreSQL is a standby; leave it to the failover scripts otherwise. The writer: the HA
    leader daemon's status says ``writer=1``; without the HA layer (no status file), a local
    PostgreSQL that is not in recovery. Idempotent: a second run with nothing pending changes
    nothing (the pending marker is what a changed file left)."""
    marker = f"{PENDING_DIR}/{WORKER_UNIT}"
    return f"""
marker={marker}
if [ -e "$marker" ]; then systemctl daemon-reload; fi
# The failover scripts may start or stop the worker at the same moment (a promotion or a fence
# during the deploy): a start/stop job they cancel is their decision; look again, up to 3 times.
place() {{
  local role writer=no active=no
  role=$(runuser -u postgres -- psql -XAtq -p {ctx.cluster.postgres.port} -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null || echo down)
  case $role in f) role=primary ;; t) role=standby ;; *) role=down ;; esac
  if [ -r {HA_STATUS} ]; then
    if grep -qx 'writer=1' {HA_STATUS}; then writer=yes; fi
  elif [ "$role" = primary ]; then
    writer=yes
  fi
  if systemctl is-active -q {WORKER_UNIT}; then active=yes; fi
  if [ "$role" = primary ] && [ "$writer" = yes ]; then
    if [ "$active" = no ]; then systemctl start {WORKER_UNIT} && echo "worker started (writer)"
    elif [ -e "$marker" ]; then systemctl restart {WORKER_UNIT} && echo "worker restarted (writer, files changed)"
    else echo "unchanged (worker runs here, the writer)"; fi
  elif [ "$role" != primary ] && [ "$active" = yes ]; then
    systemctl stop {WORKER_UNIT} && echo "worker stopped (PostgreSQL here is $role)"
  elif [ "$active" = yes ] && [ -e "$marker" ]; then
    systemctl restart {WORKER_UNIT} && echo "worker restarted (files changed)"
  else
    echo "unchanged (worker not here: PostgreSQL $role, writer $writer)"
  fi
}}
for attempt in 1 2 3; do
  if place; then rm -f "$marker"; exit 0; fi
  echo "worker: systemctl did not complete (attempt $attempt; a failover in progress?)" >&2
  sleep 2
done
echo "hapbx: [$step] the worker could not be placed after 3 attempts" >&2
exit 1
"""
