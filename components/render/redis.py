"""Redis files and step scripts of a PBX node (pure). Redis 7 from Debian on both stacks.

The same redis.conf on both nodes; the replication role lives in ROLE_FILE, written once at the
first deploy and owned by the failover tooling after that (see role_line and the role step).

TLS only: the configured port is Redis' TLS port (``port 0``: no plaintext TCP at all), on the node
address and loopback, with this node's certificate from the cluster CA; every client (the CDR
services, the failover scripts, the deploy steps, the replica: ``tls-replication``) verifies it
against the CA. Loopback clients use TLS too rather than a unix socket: one way to reach Redis for
every client, and the local and the peer endpoint of the CDR receiver are alike.
"""
from __future__ import annotations

from hapbx_node.layout import PENDING_DIR, TLS_CA, tls_certificate, tls_key

from ..config import ClusterConfig
from . import RenderContext, RenderedFile, header, template, tls

CONF = "/etc/redis/redis.conf"
ROLE_FILE = "/etc/redis/role.conf"
#: the default user's password for root's local tools (handler, failover scripts): sourced, REDISCLI_AUTH
AUTH_FILE = "/etc/redis/admin.env"
SERVICE = "redis-server.service"
CONF_MARKER = f"{PENDING_DIR}/{SERVICE}"
#: a new certificate or key (renewal, tls.rotate): the handler has Redis re-read its TLS files
#: (CONFIG SET tls-cert-file: Redis 7 reloads certificate, key and CA), no restart
TLS_MARKER = f"{PENDING_DIR}/{SERVICE}.tls"
TLS_SERVICE = "redis"
CERT, KEY = tls_certificate(TLS_SERVICE), tls_key(TLS_SERVICE)
#: redis-cli's TLS options (it checks the chain against the cluster CA, which signs only this
#: cluster's hosts; hiredis does not match the host name, the CDR services' Python clients do)
CLI_TLS = f"--tls --cacert {TLS_CA}"
REPLICATION_USER = "replicator"
CDR_USER = "cdr"
#: the failover scripts (hapbx_node/ha/drivers.py Redis, lib.sh rcli: check-local, status): no key,
#: no channel, only the commands they send. Not default: a leak of its password cannot read or
#: erase the queue, reconfigure Redis (CONFIG) or run scripts.
HA_USER = "hapbx-ha"
HA_COMMANDS = (
    "ping",                            # check-local: Redis answers
    "role",                            # master | slave, of this node and of the peer
    "replicaof",                       # promote (NO ONE), demote (follow the peer)
    "client|pause", "client|unpause",  # fence: a master stops acknowledging writes
)
#: prometheus-redis-exporter: INFO and PING (no key, no CONFIG; the exporter reports what those give), and
#: CLIENT SETNAME: it names its connection on every scrape and, refused, logs an error each time
MONITOR_USER = "hapbx-monitor"
MONITOR_COMMANDS = ("ping", "info", "client|setname")
CDR_PREFIX = "cdr:"
#: the CDR receiver pushes (then WAITs for the replica), the worker moves items to a processing
#: list and removes them when stored (reliable queue, MULTI/EXEC); nothing else: no KEYS/SCAN, no
#: FLUSH*, no CONFIG, no scripting. (CLIENT SETINFO, sent by redis-py >= 5, is not in Redis 7.0;
#: redis-py ignores its refusal.)
CDR_COMMANDS = (
    "ping", "echo", "hello", "client|setname", "client|getname", "client|id",
    "lpush", "rpush", "lpop", "rpop", "blpop", "brpop", "lmove", "blmove", "rpoplpush", "brpoplpush",
    "lrem", "llen", "lrange", "lindex", "exists", "del", "type",
    "multi", "exec", "discard", "watch", "unwatch",
    "wait",  # the receiver waits for the replica's ack of a push (no key, no data)
)


def _rules(commands) -> str:
    return " ".join(f"+{c}" for c in commands)


#: the HA user's rule: no key, no channel, nothing but HA_COMMANDS
HA_ACL = "resetkeys resetchannels -@all " + _rules(HA_COMMANDS)
MONITOR_ACL = "resetkeys resetchannels -@all " + _rules(MONITOR_COMMANDS)
#: AOF fsync before every reply. everysec write(2)s the AOF before replying too, so a SIGKILLed Redis reloads
#: what it acknowledged from the page cache (reports/cdr-drill.md, redis-kill: nothing lost either way), but
#: it postpones that write while a background fsync runs, and a kernel crash or power cut loses up to ~2 s;
#: a master restarted without those pushes has its replica resync to the same loss, so records the receiver
#: acknowledged (WAIT: on the replica) and the worker had not stored yet would be gone. The receiver pushes a
#: batch per LPUSH: one fsync per batch, measured (reports/cdr-bench.md) at p99 +20 ms at 2000 CDRs/s and 2500/s
#: sustained instead of 3500/s on 2 cores.
APPENDFSYNC = "always"
#: Redis secrets: user -> secret name
USERS = {"default": "redis_default", REPLICATION_USER: "redis_replication", CDR_USER: "redis_cdr", HA_USER: "redis_ha",
         MONITOR_USER: "redis_monitor"}
VERIFY_WAIT_SECONDS = 60


def is_initial_master(cluster: ClusterConfig, node_name: str) -> bool:
    """Redis starts as master where PostgreSQL starts as primary (the VIP owner)."""
    return node_name == cluster.primary.name


def role_line(ctx: RenderContext) -> str:
    c = ctx.cluster
    if is_initial_master(c, ctx.host.name):
        return "replicaof no one"
    return f"replicaof {c.primary.address} {c.redis.port}"


def backlog_mb(cluster: ClusterConfig) -> int:
    """Replication backlog: a replica that was away briefly resyncs partially."""
    return max(16, min(256, cluster.redis.maxmemory_mb // 4))


def _values(ctx: RenderContext) -> dict:
    return dict(role_file=ROLE_FILE, auth_file=AUTH_FILE, replication_user=REPLICATION_USER,
                master=ctx.cluster.primary, conf_marker=CONF_MARKER, tls_marker=TLS_MARKER, cert=CERT,
                cli_tls=CLI_TLS, wait=VERIFY_WAIT_SECONDS)


def redis_conf(ctx: RenderContext) -> str:
    return template("redis/redis.conf.j2", ctx, default_password=ctx.secret("redis_default"),
                    replication_password=ctx.secret("redis_replication"), cdr_password=ctx.secret("redis_cdr"),
                    cdr_user=CDR_USER, cdr_prefix=CDR_PREFIX, cdr_rules=_rules(CDR_COMMANDS),
                    ha_user=HA_USER, ha_password=ctx.secret("redis_ha"), ha_acl=HA_ACL,
                    monitor_user=MONITOR_USER, monitor_password=ctx.secret("redis_monitor"), monitor_acl=MONITOR_ACL,
                    key=KEY, ca=TLS_CA, backlog_mb=backlog_mb(ctx.cluster),
                    appendfsync=APPENDFSYNC, **_values(ctx))


def validator() -> str:
    """Redis has no config-check mode: a throwaway redis-server loads the staged configuration
    on a private unix socket, with no TCP port (TLS port 0: the running server has the real one,
    and the certificate files, checked on their own by openssl, may not be installed yet), as a
    master (never syncs from anyone), in a temporary directory; the socket appearing means the
    file (users included) loaded. The role file is included as installed (empty when not yet
    written). Prints Redis' own error otherwise. Self-contained: the same command runs on a node
    and in the render tests."""
    return (
        'd=$(mktemp -d /tmp/hapbx-redis-check.XXXXXX); '
        'sed "s|^include ' + ROLE_FILE + '\\$|include $d/role.conf|" {path} > "$d/redis.conf"; '
        f'if [ -f {ROLE_FILE} ]; then cp {ROLE_FILE} "$d/role.conf"; else : > "$d/role.conf"; fi; '
        'redis-server "$d/redis.conf" --port 0 --tls-port 0 --tls-replication no --bind 127.0.0.1 '
        '--unixsocket "$d/s" --unixsocketperm 700 '
        '--dir "$d" --logfile "$d/log" --pidfile "$d/pid" --daemonize no --supervised no '
        '--replicaof no one --appendonly no --save "" > "$d/out" 2>&1 & p=$!; '
        'ok=1; for _ in $(seq 100); do if [ -S "$d/s" ]; then ok=0; break; fi; '
        'kill -0 $p 2>/dev/null || break; sleep 0.05; done; '
        'kill $p 2>/dev/null; wait $p 2>/dev/null; '
        '[ $ok = 0 ] || cat "$d/out" "$d/log" 2>/dev/null | tail -n 8; rm -rf "$d"; [ $ok = 0 ]')


def admin_env(ctx: RenderContext) -> str:
    return (f"{header()}\n# The default user's password for root's local tools: . this file, then\n"
            f"# redis-cli {CLI_TLS} (local_cli()).\nREDISCLI_AUTH='{ctx.secret('redis_default')}'\n")


def local_cli() -> str:
    """Shell: redis-cli as root's default user against the local Redis (append the command)."""
    return f". {AUTH_FILE}; export REDISCLI_AUTH; redis-cli --no-auth-warning {CLI_TLS} -h 127.0.0.1"


def tls_files(ctx: RenderContext) -> list[RenderedFile]:
    """This node's Redis certificate and key (readable by redis only); a new one is re-read by the
    running server (the handler, TLS_MARKER), a change of redis.conf restarts it anyway."""
    mark = f"mkdir -p {PENDING_DIR} && touch {TLS_MARKER}"
    return tls.service_files(ctx, TLS_SERVICE, unit=None, action=mark, owner="redis", group="redis")


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    return [
        RenderedFile(CONF, redis_conf(ctx), service=SERVICE, action="restart", owner="redis", group="redis",
                     mode="0640", validate=validator(), secrets=tuple(USERS.values())),
        RenderedFile(AUTH_FILE, admin_env(ctx), mode="0600", secrets=("redis_default",)),
        *tls_files(ctx),
    ]


# --- step scripts ------------------------------------------------------------------------------

def role_script(ctx: RenderContext) -> str:
    return template("redis/steps/role.sh.j2", ctx, role_line=role_line(ctx), **_values(ctx))


def handler_script(ctx: RenderContext, defer: str = "") -> str:
    """Start Redis, or restart it when redis.conf changed; ``defer`` (remote.defer_on_vip) may
    leave a pending restart for a later pass."""
    return template("redis/steps/handler.sh.j2", ctx, defer=defer, **_values(ctx))


def verify_script(ctx: RenderContext) -> str:
    return template("redis/steps/verify.sh.j2", ctx, **_values(ctx))
