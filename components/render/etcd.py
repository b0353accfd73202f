"""etcd members of the leader-lease quorum: both PBX nodes and the witness (Debian's
etcd-server, configured through /etc/default/etcd), plus the step scripts that start
the members, wait for the quorum and enable authentication.

Security: etcd listens on the member's address (and loopback); nftables admits the
client and peer ports from the other two members only (baseline peer_ports). Peers and
clients speak TLS only, both ways verified against the cluster CA (components/certificates.py):
a member or client without a certificate from it gets no connection (client-cert-auth on
both ports). Clients then authenticate as a user too (`hapbx`, read-write on /hapbx/ only;
root for administration): each host's certificate is also its client certificate, so a
stolen certificate alone reads nothing. Credentials travel in the environment
(ETCDCTL_USER/ETCDCTL_PASSWORD) or JSON on stdin, never in argv.
"""
from __future__ import annotations

from hapbx_node.layout import PENDING_DIR, TLS_CA, tls_certificate, tls_key

from . import RenderContext, RenderedFile, template, tls

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
#: the user of the HA core's lease calls (read-write on KEY_PREFIX only)
ETCD_NODE_USER = "hapbx"
#: the member's certificate from the cluster CA: server on both ports, client of its peers, and the
#: client certificate of every etcdctl and curl on the host
TLS_SERVICE = "etcd"
CERT, KEY = tls_certificate(TLS_SERVICE), tls_key(TLS_SERVICE)
#: etcdctl (v3) reads its TLS files from these: the HA core's env, the lab's probes
CLIENT_TLS_ENV = {"ETCDCTL_CACERT": TLS_CA, "ETCDCTL_CERT": CERT, "ETCDCTL_KEY": KEY}
#: curl's options for a member's HTTPS endpoints (health, the gRPC gateway)
CURL_TLS = f"--cacert {TLS_CA} --cert {CERT} --key {KEY}"


def members(cluster) -> list:
    return list(cluster.nodes) + ([cluster.witness] if cluster.witness else [])


def endpoints_for(cluster, host) -> list[str]:
    """The client endpoints in the order `host`'s HA core tries them (hapbx_node/ha/store.py: one at
    a time, the next after a failure): its own member, the witness, the peer last, because a cut
    between the two nodes is the likeliest partition (a peer's member first cost each call there
    its whole timeout)."""
    rank = {host.name: 0, **({cluster.witness.name: 1} if cluster.witness else {})}
    order = sorted(members(cluster), key=lambda m: rank.get(m.name, 2))
    return [f"https://{m.address}:{cluster.etcd.client_port}" for m in order]


def token(cluster) -> str:
    return "hapbx-" + "-".join(m.name for m in members(cluster))


def initial_cluster(cluster) -> str:
    return ",".join(f"{m.name}=https://{m.address}:{cluster.etcd.peer_port}" for m in members(cluster))


def endpoints(cluster) -> list[str]:
    return [f"https://{m.address}:{cluster.etcd.client_port}" for m in members(cluster)]


def default_file(ctx: RenderContext) -> str:
    c = ctx.cluster
    return template("etcd/etcd.default.j2", ctx, members=members(c), data_dir=DATA_DIR,
                    initial_cluster=initial_cluster(c), token=token(c), heartbeat_ms=HEARTBEAT_MS,
                    election_ms=ELECTION_MS, quota_bytes=QUOTA_BYTES, ca=TLS_CA, cert=CERT, key=KEY)


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.cluster.witness is None:
        return []
    mark = f"mkdir -p {PENDING.rsplit('/', 1)[0]} && touch {PENDING}"
    # a new certificate (tls.rotate, renewal) restarts the member like a new configuration: one
    # member at a time (the start steps are chained), so the quorum never drops
    return [
        RenderedFile(DROPIN, template("etcd/unit-override.conf.j2", ctx), action=mark),
        *tls.service_files(ctx, TLS_SERVICE, unit=None, action=mark, owner="etcd", group="etcd"),
        RenderedFile(DEFAULT_FILE, default_file(ctx), action=mark,
                     validate="grep -q '^ETCD_INITIAL_CLUSTER=' {path}"),
    ]


# --- step scripts ------------------------------------------------------------------------

def start_script(ctx: RenderContext) -> str:
    return template("etcd/start.sh.j2", ctx, marker=PENDING, data_dir=DATA_DIR)


def wait_quorum_script(ctx: RenderContext, wait: int = QUORUM_WAIT_SECONDS) -> str:
    return template("etcd/wait-quorum.sh.j2", ctx, wait=wait, curl_tls=CURL_TLS,
                    health_urls=[f"{e}/health" for e in endpoints(ctx.cluster)])


def bootstrap_auth_script(ctx: RenderContext) -> str:
    """Run on one node; stdin: the root password, then the node user's password."""
    prefix_end = KEY_PREFIX[:-1] + chr(ord(KEY_PREFIX[-1]) + 1)
    return template("etcd/bootstrap-auth.sh.j2", ctx, node_user=ETCD_NODE_USER, prefix=KEY_PREFIX,
                    prefix_end=prefix_end, curl_tls=CURL_TLS)
