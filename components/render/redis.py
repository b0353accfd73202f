"""Redis files and step scripts of a PBX node (pure). Redis 7 from Debian on both stacks.

The same redis.conf on both nodes; the replication role lives in ROLE_FILE, written once at the
first deploy and owned by the failover tooling after that (see role_line and the role step).
"""
from __future__ import annotations

import hashlib
import os

from ..config import ClusterConfig
from . import TEMPLATES, RenderContext, RenderedFile, template

CONF = "/etc/redis/redis.conf"
ACL_FILE = "/etc/redis/users.acl"
ROLE_FILE = "/etc/redis/role.conf"
#: the default user's password for root's local tools (handler, failover scripts): REDISCLI_AUTH=$(cat ...)
AUTH_FILE = "/etc/redis/admin.auth"
CHECKER = "/usr/local/lib/hapbx/redis/check-config"
SERVICE = "redis-server.service"
PENDING_DIR = "/var/lib/hapbx/pending"
CONF_MARKER = f"{PENDING_DIR}/{SERVICE}"
ACL_MARKER = f"{PENDING_DIR}/redis-acl"
REPLICATION_USER = "replicator"
CDR_USER = "cdr"
CDR_PREFIX = "cdr:"
#: the CDR receiver pushes, the worker moves items to a processing list and removes them when
#: stored (reliable queue); nothing else: no KEYS/SCAN, no FLUSH*, no CONFIG, no scripting.
CDR_COMMANDS = (
    "ping", "echo", "hello", "client|setname", "client|getname", "client|id",
    "lpush", "rpush", "lpop", "rpop", "blpop", "brpop", "lmove", "blmove", "rpoplpush", "brpoplpush",
    "lrem", "llen", "lrange", "lindex", "exists", "del", "type",
    "multi", "exec", "discard", "watch", "unwatch",
)
#: Redis secrets: user -> secret name
USERS = {"default": "redis_default", REPLICATION_USER: "redis_replication", CDR_USER: "redis_cdr"}
VERIFY_WAIT_SECONDS = 60


def is_initial_master(cluster: ClusterConfig, node_name: str) -> bool:
    """Redis starts as master where PostgreSQL starts as primary (the VIP owner)."""
    return node_name == cluster.primary.name


def role_line(ctx: RenderContext) -> str:
    c = ctx.cluster
    if is_initial_master(c, ctx.host.name):
        return "replicaof no one"
    return f"replicaof {c.primary.address} {c.redis.port}"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def backlog_mb(cluster: ClusterConfig) -> int:
    """Replication backlog: a replica that was away briefly resyncs partially."""
    return max(16, min(256, cluster.redis.maxmemory_mb // 4))


def _static(name: str) -> str:
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as fh:
        return fh.read()


def _values(ctx: RenderContext) -> dict:
    return dict(role_file=ROLE_FILE, acl_file=ACL_FILE, auth_file=AUTH_FILE, replication_user=REPLICATION_USER,
                master=ctx.cluster.primary, conf_marker=CONF_MARKER, acl_marker=ACL_MARKER,
                wait=VERIFY_WAIT_SECONDS)


def redis_conf(ctx: RenderContext) -> str:
    return template("redis/redis.conf.j2", ctx, replication_password=ctx.secret("redis_replication"),
                    backlog_mb=backlog_mb(ctx.cluster), **_values(ctx))


def users_acl(ctx: RenderContext) -> str:
    rules = " ".join(f"+{c}" for c in CDR_COMMANDS)
    return template("redis/users.acl.j2", ctx, sha256=_sha256, default_password=ctx.secret("redis_default"),
                    replication_password=ctx.secret("redis_replication"), cdr_password=ctx.secret("redis_cdr"),
                    cdr_user=CDR_USER, cdr_prefix=CDR_PREFIX, cdr_rules=rules, **_values(ctx))


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    return [
        RenderedFile(CHECKER, _static("redis/check-config.sh"), mode="0755", validate="bash -n {path}"),
        # The ACL file has no comment syntax, hence no "managed by" header (redis.conf says it).
        RenderedFile(ACL_FILE, users_acl(ctx), owner="redis", group="redis", mode="0640",
                     action=f"mkdir -p {PENDING_DIR} && touch {ACL_MARKER}",
                     validate=f"{CHECKER} {CONF} {{path}}",
                     secrets=tuple(USERS.values())),
        RenderedFile(CONF, redis_conf(ctx), service=SERVICE, action="restart", owner="redis", group="redis",
                     mode="0640", validate=f"{CHECKER} {{path}} {ACL_FILE}", secrets=("redis_replication",)),
        RenderedFile(AUTH_FILE, ctx.secret("redis_default") + "\n", mode="0600", secrets=("redis_default",)),
    ]


# --- step scripts ------------------------------------------------------------------------------

def role_script(ctx: RenderContext) -> str:
    return template("redis/steps/role.sh.j2", ctx, role_line=role_line(ctx), **_values(ctx))


def handler_script(ctx: RenderContext) -> str:
    return template("redis/steps/handler.sh.j2", ctx, **_values(ctx))


def verify_script(ctx: RenderContext) -> str:
    return template("redis/steps/verify.sh.j2", ctx, **_values(ctx))
