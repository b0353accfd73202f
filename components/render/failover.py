"""The HA programs of a PBX node and the per-node env file that parameterises them all (so the
same programs run in the tests against local ports and temp dirs).

The programs are node code, not templates: the HA core in ``hapbx_node/ha`` (Python: the state
machine, drivers, daemon) and its bash entry points in ``hapbx_node/ha/bin`` (keepalived's
notify/track scripts, promote/demote/rejoin jobs, the PostgreSQL start guard, the operator's
``hapbx-ha``). They are installed under HA_BIN as they are, with the managed-by header after the
shebang; the Python package keeps its layout (HA_BIN/hapbx_node/...), which ``leader`` imports.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from hapbx_node import layout
from hapbx_node.ha.entry import ENTRY_POINTS
from hapbx_node.layout import (HA_BIN, HA_CLI, HA_ENV, HA_LIB_DIR, HA_RUN_DIR, HA_SECRETS_ENV, HA_TMPFILES,
                               LEADER_UNIT, PG_PASSFILE, PG_PEER_SSL, REACH_UNIT, TLS_CA, slot_name)

from . import NODE_PACKAGE, RenderContext, RenderedFile, header, node_module_source, node_package_modules, secret_refs, \
    template
from .cdr import OWNER_SERVICES as CDR_OWNER_SERVICES   # the CDR worker
from .postgres import REPLICATION_ROLE as PG_REPL_USER
from .postgres import paths as pg_paths
from .redis import HA_USER as REDIS_HA_USER
from . import etcd
from .etcd import ETCD_NODE_USER

BIN_DIR = os.path.join(NODE_PACKAGE, "ha", "bin")
#: bash entry points under HA_BIN (keepalived's notify/track scripts, the unit hooks); lib.sh is sourced
SCRIPTS = ("lib.sh", "notify", "check-local", "reach", "vip-release", "sip-down", "pg-guard")
#: track file sip-down writes (keepalived FAULT while Kamailio is down on this node)
SIP_DOWN_FILE = f"{HA_RUN_DIR}/sip-down"
#: the Python entry points: bin/launcher under each name
PY_ENTRY_POINTS = tuple(ENTRY_POINTS)
#: the Python modules they import, installed as HA_BIN/hapbx_node/...
PY_MODULES = tuple(node_package_modules("ha"))

# What the data tier provides (components/render/postgres.py, redis.py): the replication
# role, granted what pg_rewind needs, with its password in the postgres user's ~/.pgpass;
# primary_conninfo + primary_slot_name in postgresql.conf on both nodes (standby.signal decides);
# synchronous_standby_names left to the lease holder; Redis's role in an included file.
REDIS_ROLE_FILE = "/etc/redis/role.conf"
#: units that run on the writer only (promote starts them, demotion/fencing stops them)
OWNER_SERVICES: tuple[str, ...] = tuple(CDR_OWNER_SERVICES)


def owner_services(cluster) -> tuple[str, ...]:
    """OWNER_SERVICES, and with backups the archive check a promotion starts (render/pgbackrest.py)."""
    from .pgbackrest import ARCHIVE_CHECK_UNIT
    return (*OWNER_SERVICES, *((ARCHIVE_CHECK_UNIT,) if cluster.backup.enabled else ()))
#: the lease holder stops writing this long before its lease can expire in etcd
FENCE_MARGIN_S = 0.5
#: bound of one etcd call of the leader daemon (below TTL - margin: a renewal always fits)
ETCD_TIMEOUT_S = 0.8


@dataclass(frozen=True)
class Timings:
    """Derived thresholds; their order is what makes the hand-overs converge."""
    hung_after: float      # keepalived heartbeat (check-local) stale -> hung: resign + kill it
    yield_after: float     # MASTER without the lease while the peer leads -> give the VIP up
    resign_grace: float    # lease holder not MASTER for this long -> resign

    @staticmethod
    def of(cluster) -> "Timings":
        hung = 3.0 * cluster.ha.check_interval
        master_down = 3 * cluster.vip.advert_interval + 1.0   # VRRP master-down timer + skew, rounded up
        yield_after = hung + 2 * float(cluster.etcd.lease_ttl_seconds)   # a hung holder resigns first
        return Timings(hung_after=hung, yield_after=yield_after, resign_grace=yield_after + master_down + 2.0)


def reach_targets(ctx: RenderContext) -> list[str]:
    c = ctx.cluster
    out = [c.network.gateway]
    if c.witness:
        out.append(c.witness.address)
    return out


def reach_env(ctx: RenderContext) -> dict[str, str]:
    """The reachability watcher's parameters: in its unit (a change restarts it), not in ha.env."""
    ha = ctx.cluster.ha
    return {"REACH_TARGETS": " ".join(reach_targets(ctx)),
            "REACH_INTERVAL": f"{ha.reach_interval_ms / 1000:g}",
            "REACH_LOST_AFTER": f"{ha.reach_lost_after_ms / 1000:g}"}


def env_values(ctx: RenderContext) -> dict[str, str]:
    """Every parameter of the HA programs for this node (tests override a few). The programs keep
    no defaults of their own: hapbx_node/ha/settings.py refuses to start without these."""
    c, node, peer = ctx.cluster, ctx.host, ctx.peer
    ha, t, pg = c.ha, Timings.of(c), pg_paths(c)
    return {
        "HAPBX_NODE": node.name,
        "HAPBX_PEER": peer.name,
        "HA_BIN": HA_BIN,
        "HA_RUN_DIR": HA_RUN_DIR,
        "HA_LIB_DIR": HA_LIB_DIR,
        "HA_SECRETS_ENV": HA_SECRETS_ENV,
        "HA_SYSLOG": "1",
        "HA_CHECK_VIP": "1",
        "HA_HEARTBEAT": "1",
        "VIP": c.vip.address,
        "VIP_PREFIX": str(c.network.prefix),
        "VIP_IFACE": c.network.interface,
        "CHECK_SIP": "1",
        "SIP_ADDR": node.address,
        "SIP_PORT": str(c.kamailio.sip_port),
        "KEEPALIVED_KILL_CMD": "systemctl kill -s KILL keepalived.service",
        "KEEPALIVED_PIDFILE": "/run/keepalived.pid",
        "PG_BIN": pg.bin_dir,
        "PG_DATA": pg.data_dir,
        "PG_CONFIG_FILE": pg.conf_file,
        "PG_SOCKET": layout.PG_SOCKET_DIR,
        "PG_PORT": str(c.postgres.port),
        "PG_OS_USER": layout.PG_OS_USER,
        "PG_PEER_USER": PG_REPL_USER,
        "PG_PEER_SSL": PG_PEER_SSL,
        "PG_REPL_USER": PG_REPL_USER,
        "PG_PASSFILE": PG_PASSFILE,
        "PG_WRITE_CONNINFO": "0",
        "PG_PEER_HOST": peer.address,
        "PG_PEER_PORT": str(c.postgres.port),
        "PG_SLOT": slot_name(node.name),
        "PG_PEER_SLOT": slot_name(peer.name),
        "PG_SYNC_NAMES": f'"{peer.name}"' if c.witness else "",
        "PG_START_CMD": f"systemctl reset-failed {pg.service} 2>/dev/null; systemctl start {pg.service}",
        "PG_PROMOTE_TIMEOUT": str(ha.promote_timeout),
        "PG_FAST_STOP_MS": str(ha.fast_stop_ms),
        "PG_CRASH_GRACE": "10",   # s check-local ignores a primary restarting in place after a crash
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(c.redis.port),
        "REDIS_PEER_HOST": peer.address,
        "REDIS_PEER_PORT": str(c.redis.port),
        "REDIS_ROLE_FILE": REDIS_ROLE_FILE,
        "REDIS_USER": REDIS_HA_USER,
        "REDIS_TLS_CA": TLS_CA,
        "OWNER_SERVICES": " ".join(owner_services(c)),
        "SERVICE_CMD": "systemctl",
        "WITNESS": "1" if c.witness else "0",
        "NO_WITNESS_POLICY": c.no_witness_policy or "",
        "NO_WITNESS_TIMEOUT": str(ha.no_witness_timeout),
        "ETCD_ENDPOINTS": ",".join(etcd.endpoints_for(c, node)) if c.witness else "",
        **(etcd.CLIENT_TLS_ENV if c.witness else {}),
        "ETCD_PREFIX": "/hapbx/cluster",
        "LEASE_TTL": str(c.etcd.lease_ttl_seconds),
        "RENEW_INTERVAL": f"{c.etcd.renew_interval_seconds:g}",
        "FENCE_MARGIN": f"{FENCE_MARGIN_S:g}",
        "ETCD_TIMEOUT": f"{ETCD_TIMEOUT_S:g}",
        "HUNG_AFTER": f"{t.hung_after:g}",
        "YIELD_AFTER": f"{t.yield_after:g}",
        "RESIGN_GRACE": f"{t.resign_grace:g}",
        "PROMOTE_TIMEOUT": str(ha.promote_timeout),
        "REJOIN_MODE": ha.rejoin,
        "REJOIN_BACKOFF": str(ha.rejoin_backoff),
        "SYNC_RELAX_AFTER": str(ha.sync_relax_after),
        "STREAM_LOST_AFTER": str(ha.stream_lost_after),
        "MOVED_ASIDE_RETENTION_DAYS": str(ha.moved_aside_retention_days),
        "SYNC_REPLY_MAX": f"{ha.sync_reply_max_ms / 1000:g}",
    }


def format_env(values: dict[str, str], title: str = "") -> str:
    lines = [header(), f"# {title}" if title else ""]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(line for line in lines if line is not None) + "\n"


def script_text(name: str) -> str:
    """An entry point from hapbx_node/ha/bin with the managed-by header after the shebang."""
    with open(os.path.join(BIN_DIR, name), encoding="utf-8") as fh:
        text = fh.read()
    first, _, rest = text.partition("\n")
    return f"{first}\n{header()}\n{rest}"


def program_files() -> list[RenderedFile]:
    """The HA programs under HA_BIN: the entry points and the Python package the leader imports
    (a change re-executes the daemon: reload, the lease kept; the watcher restarts)."""
    out = []
    for name in SCRIPTS:
        service, action = (REACH_UNIT, "restart") if name == "reach" else (LEADER_UNIT, "reload")
        out.append(RenderedFile(f"{HA_BIN}/{name}", script_text(name), service=service, action=action,
                                mode="0644" if name.endswith(".sh") else "0755", validate="bash -n {path}"))
    launcher = script_text("launcher")
    for name in PY_ENTRY_POINTS:
        out.append(RenderedFile(f"{HA_BIN}/{name}", launcher, service=LEADER_UNIT, action="reload", mode="0755",
                                validate="python3 -m py_compile {path}"))
    for rel in PY_MODULES:
        out.append(RenderedFile(f"{HA_BIN}/hapbx_node/{rel}", f"{header()}\n{node_module_source(rel)}", service=LEADER_UNIT,
                                action="reload", mode="0644", validate="python3 -m py_compile {path}"))
    return out


def secrets_env(ctx: RenderContext) -> str:
    values = {"REDISCLI_AUTH": ctx.secret("redis_ha")}   # REDIS_USER's
    if ctx.cluster.witness:
        values.update({"ETCDCTL_USER": ETCD_NODE_USER, "ETCDCTL_PASSWORD": ctx.secret("etcd_node")})
    return format_env(values, "Credentials of the HA scripts (environment only, never argv).")




def tmpfiles_file(ctx: RenderContext) -> RenderedFile:
    """HA_RUN_DIR from early boot on: installed with the HA scripts, so before keepalived.conf
    (whose validation on the node, keepalived -t, needs the directory from 2.3 on), and
    created at once. Checked against a scratch root next to the staged copy."""
    return RenderedFile(HA_TMPFILES, template("failover/hapbx-ha.tmpfiles.j2", ctx, run_dir=HA_RUN_DIR),
                        action=f"systemd-tmpfiles --create {HA_TMPFILES}",
                        validate='systemd-tmpfiles --root="$(dirname {path})/root" --create {path}')


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    pg = pg_paths(ctx.cluster)
    out = [tmpfiles_file(ctx),
           RenderedFile(HA_ENV, format_env(env_values(ctx), "Parameters of the HA scripts on this node."),
                        service=LEADER_UNIT, action="reload")]
    sec = secrets_env(ctx)
    out.append(RenderedFile(HA_SECRETS_ENV, sec, service=LEADER_UNIT, action="reload", mode="0600",
                            secrets=secret_refs(ctx, sec) or ("redis_ha",)))
    out += program_files()
    out.append(RenderedFile(HA_CLI, script_text("hapbx-ha"), mode="0755", validate="bash -n {path}"))
    out.append(RenderedFile(f"/etc/systemd/system/{LEADER_UNIT}", template("failover/hapbx-leader.service.j2", ctx,
                                                                           ha_bin=HA_BIN),
                            service=LEADER_UNIT, action="reload"))
    out.append(RenderedFile(f"/etc/systemd/system/{REACH_UNIT}", template(
        "failover/hapbx-reach.service.j2", ctx, ha_bin=HA_BIN, run_dir=HA_RUN_DIR, env=reach_env(ctx),
        interval_ms=ctx.cluster.ha.reach_interval_ms), service=REACH_UNIT, action="restart"))
    out.append(RenderedFile(f"/etc/systemd/system/{pg.service}.d/hapbx-guard.conf",
                            template("failover/pg-guard.conf.j2", ctx, ha_bin=HA_BIN),
                            action="systemctl daemon-reload"))
    return out


def settle_script(ctx: RenderContext, wait: int = 60) -> str:
    """Deploy step after keepalived started on a node: wait until the cluster has a
    leader (this node holding the lease and the VIP, or the peer leading), print the
    node's HA status."""
    peer = ctx.peer.name
    return f"""
settled() {{
  s=$({HA_BIN}/status 2>/dev/null) || true
  if grep -qx 'daemon_hold=1' <<<"$s" && grep -qx 'vip=present' <<<"$s"; then
    echo "leader: {ctx.host.name} (lease and VIP)"
  elif grep -qx 'daemon_hold=0' <<<"$s" && grep -qE '^(etcd_leader={peer}|daemon_holder={peer})$' <<<"$s"; then
    echo "follower: {peer} leads"
  elif grep -qx 'daemon_witness=0' <<<"$s" && grep -qx 'daemon_hold=0' <<<"$s" && grep -qx 'postgres=standby' <<<"$s"; then
    echo "follower (no witness)"
  else
    return 1
  fi
  grep -E '^(vip|postgres|redis|etcd_leader)=' <<<"$s" || true
}}
s=""
for _ in $(seq 1 {wait * 2}); do
  if settled; then exit 0; fi
  sleep 0.5
done
echo "hapbx: [$step] no leader after {wait} s:" >&2
echo "$s" >&2
false
"""
