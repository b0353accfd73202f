"""OS baseline files of every host (nodes and witness)."""
from __future__ import annotations

from . import RenderContext, RenderedFile, secret_refs, template, tls
from .dialing import all_trunk_addresses

# Ports only the other cluster members may reach, by purpose (used by nftables and tests).
def peer_ports(ctx: RenderContext) -> dict[str, list[int]]:
    c = ctx.cluster
    etcd = [c.etcd.client_port, c.etcd.peer_port]
    if c.monitoring.enabled:   # scraped by the nodes' Prometheus (render/monitoring.py)
        etcd.append(c.monitoring.etcd_metrics_port)
    if ctx.is_witness:
        return {"etcd": etcd}
    if ctx.is_media_node:   # nothing of the cluster's own runs there: media_node_ports
        return {}
    ports = {"postgres": [c.postgres.port], "redis": [c.redis.port], "kamailio-dmq": [c.kamailio.dmq_port],
             "media-sip": [c.media.sip_port], "cdr-receiver": [c.cdr.receiver_port], "etcd": etcd}
    if c.backup.enabled:   # the standby's backup reaches the primary's PostgreSQL through it (render/pgbackrest.py)
        ports["pgbackrest"] = [c.backup.tls_port]
    if not c.admin.allow_from:  # the admin API for the nodes only; else its own rule below
        ports["admin-api"] = [c.admin.port]
    if c.monitoring.enabled:
        m = c.monitoring
        # the peer's Prometheus scrapes all of these and sends its alerts to this Alertmanager; the
        # operators' networks reach the two UIs through their own rule (nftables.conf, allowFrom)
        ports["monitoring"] = [m.node_exporter_port, m.postgres_exporter_port, m.redis_exporter_port, m.kamailio_port,
                               m.hapbx_exporter_port, m.prometheus_port, m.alertmanager_port,
                               m.alertmanager_cluster_port]
    return ports


#: chrony's NTP port: a media node follows the PBX nodes' time in orphan mode (chrony.conf)
NTP_PORT = 123


def media_node_ports(ctx: RenderContext) -> dict[str, list[int]]:
    """Ports between the PBX nodes and the media nodes (mediaNodes), by purpose: on a PBX node what
    the media nodes reach there (Kamailio, the CDR receiver, ssh for the recordings, PostgreSQL for
    FreeSWITCH's policy cache, chrony in orphan mode); on a media node what the PBX nodes reach
    there (the engine's SIP port: only Kamailio may send it calls; the node exporter)."""
    c = ctx.cluster
    if ctx.is_witness or not c.media_nodes:
        return {}
    if ctx.is_media_node:
        ports = {"media-sip": [c.media.sip_port]}
        if c.monitoring.enabled:
            ports["monitoring"] = [c.monitoring.node_exporter_port]
        return ports
    ports = {"kamailio-sip": [c.kamailio.sip_port], "cdr-receiver": [c.cdr.receiver_port],
             "recordings-sync": [c.ssh.port]}
    if c.media.engine == "freeswitch":
        ports["postgres"] = [c.postgres.port]
    if c.os.ntp.orphan_peers:
        ports["ntp"] = [NTP_PORT]
    return ports


def media_peers(ctx: RenderContext) -> list[str]:
    """The addresses media_node_ports are open to: on a media node the PBX nodes and the VIP, on a PBX
    node the media nodes."""
    c = ctx.cluster
    if ctx.is_media_node:
        return [n.address for n in c.nodes] + [c.vip.address]
    return [m.address for m in c.media_nodes]


def trunk_ingress(ctx: RenderContext) -> tuple[int, list[str]] | None:
    """(FreeSWITCH's trunk port, the trunks' addresses): the only senders let in on that port;
    None where no trunk call can arrive (a witness, no FreeSWITCH, no trunk address)."""
    c = ctx.cluster
    if ctx.is_witness or ctx.is_media_node or c.media.engine != "freeswitch":
        return None
    addresses = all_trunk_addresses(c.dialplan)
    return (c.dialplan.trunk_sip_port, sorted(addresses)) if addresses else None


def systemd_escape_path(path: str) -> str:
    """systemd-escape --path, for mount unit names."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif ch.isalnum() or ch in "_:" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append("\\x%02x" % ord(ch))
    return "".join(out)


def recordings_mount_unit(ctx: RenderContext) -> str:
    return systemd_escape_path(ctx.cluster.recordings.tmpfs_dir) + ".mount"


#: sshd limits for the deploy's connection burst (one connection per command): well above
#: 4 x CPUs of a large deploy host, each unauthenticated connection costs sshd ~1 process
SSHD_MAX_STARTUPS = 128
SSHD_MAX_SESSIONS = 64
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/hapbx.conf"


def sshd_drop_in(ctx: RenderContext) -> RenderedFile:
    """Installed before the packages step, so the rest of the deploy already meets it."""
    return RenderedFile(SSHD_DROP_IN, template("sshd/hapbx.conf.j2", ctx, max_startups=SSHD_MAX_STARTUPS,
                                                max_sessions=SSHD_MAX_SESSIONS),
                        service="ssh.service", action="reload",
                        # the drop-in alone as a whole config (sshd -t needs its privilege-separation dir)
                        validate="install -d -m 0755 /run/sshd && sshd -t -f {path}")


def files(ctx: RenderContext) -> list[RenderedFile]:
    c = ctx.cluster
    members = list(c.nodes) + ([c.witness] if c.witness else [])
    out = [
        sshd_drop_in(ctx),
        tls.ca_file(ctx),
        RenderedFile("/etc/hostname", f"{ctx.host.name}\n", action="hostname -F /etc/hostname"),
        RenderedFile("/etc/hosts", template("hosts/hosts.j2", ctx, members=members, media_nodes=list(c.media_nodes))),
        RenderedFile("/etc/chrony/chrony.conf", template("chrony/chrony.conf.j2", ctx, members=members),
                     service="chrony.service", action="restart", validate="chronyd -p -f {path}"),
        RenderedFile("/etc/default/chrony", template("chrony/default.j2", ctx),
                     service="chrony.service", action="restart"),
        RenderedFile("/etc/systemd/system/chrony.service.d/hapbx.conf", template("chrony/unit-override.conf.j2", ctx),
                     service="chrony.service", action="restart"),
        RenderedFile("/etc/nftables.conf", template("nftables/nftables.conf.j2", ctx, members=members,
                                                    peer_ports=peer_ports(ctx), trunks=trunk_ingress(ctx),
                                                    media_ports=media_node_ports(ctx), media_peers=media_peers(ctx)),
                     service="nftables.service", action="reload", validate="nft -c -f {path}", mode="0755"),
        RenderedFile("/etc/systemd/journald.conf.d/hapbx.conf", template("journald/hapbx.conf.j2", ctx),
                     service="systemd-journald.service", action="restart"),
        RenderedFile("/etc/security/limits.d/hapbx.conf", template("limits/limits.conf.j2", ctx)),
        RenderedFile("/etc/systemd/system.conf.d/hapbx-limits.conf", template("limits/system.conf.j2", ctx),
                     action="systemctl daemon-reexec"),
    ]
    if c.os.apply_sysctl:
        out.append(RenderedFile("/etc/sysctl.d/60-hapbx.conf", template("sysctl/60-hapbx.conf.j2", ctx),
                                action="sysctl -q -p /etc/sysctl.d/60-hapbx.conf"))
    if not ctx.is_witness:
        unit = recordings_mount_unit(ctx)
        out.append(RenderedFile(f"/etc/systemd/system/{unit}", template("systemd/recordings.mount.j2", ctx),
                                service=unit, action="reload",
                                # verify only warns on unknown keys: any output at all is a failure
                                validate="! systemd-analyze verify --man=no {path} 2>&1 | grep ."))
    for repo in c.packages.repositories:
        out.append(RenderedFile(f"/etc/apt/sources.list.d/{repo.name}.sources",
                                template("apt/repo.sources.j2", ctx, repo=repo), action="apt-get update -qq"))
        if repo.token_auth:
            auth = template("apt/auth.conf.j2", ctx, repo=repo, token=ctx.secret("vendor_repo_token"))
            out.append(RenderedFile(f"/etc/apt/auth.conf.d/{repo.name}.conf", auth, mode="0600",
                                    secrets=secret_refs(ctx, auth) or ("vendor_repo_token",)))
    return out
