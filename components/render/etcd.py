"""etcd members of the leader-lease quorum: both PBX nodes and the witness (Debian's
etcd-server, configured through /etc/default/etcd), plus the step scripts that start
the members, wait for the quorum and enable authentication.

Security: etcd listens on the member's address (and loopback); nftables admits the
client and peer ports from the other two members only (baseline peer_ports). Clients
authenticate (user `hapbx`, read-write on /hapbx/ only; root for administration);
credentials travel in the environment (ETCDCTL_USER/ETCDCTL_PASSWORD) or JSON on
stdin, never in argv. Peer and client TLS are not enabled (see README).
"""
from __future__ import annotations

from hapbx_node.layout import PENDING_DIR

from . import RenderContext, RenderedFile, template
from .failover import ETCD_NODE_USER

DEFAULT_FILE = "/etc/default/etcd"
DROPIN = "/etc/systemd/system/etcd.service.d/hapbx.conf"
SERVICE = "etcd.service"
DATA_DIR = "/var/lib/etcd/hapbx"   # not Debian's default dir: the package may have started a single member there
PENDING = f"{PENDING_DIR}/{SERVICE}"
HEARTBEAT_MS = 100
ELECTION_MS = 500
KEY_PREFIX = "/hapbx/"
QUOTA_BYTES = 512 * 1024 * 1024
QUORUM_WAIT_SECONDS = 120


def members(cluster) -> list:
    return list(cluster.nodes) + ([cluster.witness] if cluster.witness else [])


def token(cluster) -> str:
    return "hapbx-" + "-".join(m.name for m in members(cluster))


def initial_cluster(cluster) -> str:
    return ",".join(f"{m.name}=http://{m.address}:{cluster.etcd.peer_port}" for m in members(cluster))


def endpoints(cluster) -> list[str]:
    return [f"http://{m.address}:{cluster.etcd.client_port}" for m in members(cluster)]


def default_file(ctx: RenderContext) -> str:
    c = ctx.cluster
    return template("etcd/etcd.default.j2", ctx, members=members(c), data_dir=DATA_DIR,
                    initial_cluster=initial_cluster(c), token=token(c), heartbeat_ms=HEARTBEAT_MS,
                    election_ms=ELECTION_MS, quota_bytes=QUOTA_BYTES)


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.cluster.witness is None:
        return []
    mark = f"mkdir -p {PENDING.rsplit('/', 1)[0]} && touch {PENDING}"
    return [
        RenderedFile(DROPIN, template("etcd/unit-override.conf.j2", ctx), action=mark),
        RenderedFile(DEFAULT_FILE, default_file(ctx), action=mark,
                     validate="grep -q '^ETCD_INITIAL_CLUSTER=' {path}"),
    ]


# --- step scripts ------------------------------------------------------------------------

def start_script(ctx: RenderContext) -> str:
    return template("etcd/start.sh.j2", ctx, marker=PENDING, data_dir=DATA_DIR)


def wait_quorum_script(ctx: RenderContext, wait: int = QUORUM_WAIT_SECONDS) -> str:
    return template("etcd/wait-quorum.sh.j2", ctx, wait=wait,
                    health_urls=[f"{e}/health" for e in endpoints(ctx.cluster)])


def bootstrap_auth_script(ctx: RenderContext) -> str:
    """Run on one node; stdin: the root password, then the node user's password."""
    prefix_end = KEY_PREFIX[:-1] + chr(ord(KEY_PREFIX[-1]) + 1)
    return template("etcd/bootstrap-auth.sh.j2", ctx, node_user=ETCD_NODE_USER, prefix=KEY_PREFIX,
                    prefix_end=prefix_end)
