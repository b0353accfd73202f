"""keepalived on the PBX nodes: the VIP (VRRP unicast, both BACKUP + nopreempt)
and the systemd drop-in that drops the VIP whenever keepalived stops."""
from __future__ import annotations

from . import RenderContext, RenderedFile, template
from . import failover
from .failover import HA_BIN, HA_RUN_DIR, LEADER_UNIT, REACH_UNIT, reach_targets

CONF = "/etc/keepalived/keepalived.conf"
DROPIN = "/etc/systemd/system/keepalived.service.d/hapbx.conf"
SERVICE = "keepalived.service"


def vip_label(interface: str) -> str:
    """' label <if>:vip' (shows in `ip addr`), unless the name would exceed IFNAMSIZ."""
    label = f"{interface}:vip"
    return f" label {label}" if len(label) <= 15 else ""


def validate_command(ctx: RenderContext) -> str:
    """`keepalived -t` on the node (its interface, the HA scripts installed first).
    Where the interface does not exist (not a node: `hapbx render` checks, CI), the
    same check runs in a throwaway mount+network namespace holding that interface,
    stub scripts and an empty HA run directory (keepalived 2.3 resolves the track files
    at parse time; on a node failover.tmpfiles_file has made it), so syntax and semantics
    are still checked."""
    iface = ctx.cluster.network.interface
    stubs = " ".join(f"{HA_BIN}/{name}" for name in failover.SCRIPTS[1:])
    sandbox = (f"mount -t tmpfs hapbx /usr/local/lib && mkdir -p {HA_BIN} && touch {stubs} && chmod 755 {stubs} && "
               f"mount -t tmpfs hapbx /run && mkdir -p {HA_RUN_DIR} && "
               f"ip link add {iface} type veth peer name hapbx-kt0 && keepalived -t -f keepalived.conf")
    return (f"keepalived -t -f {{path}} || {{ ! ip link show {iface} >/dev/null 2>&1 && "
            f"(cd \"$(dirname {{path}})\" && unshare -m -n sh -ec '{sandbox}'); }}")


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    c = ctx.cluster
    conf = template("keepalived/keepalived.conf.j2", ctx, ha=c.ha, ha_bin=HA_BIN, run_dir=HA_RUN_DIR,
                    reach=reach_targets(ctx), reach_unit=REACH_UNIT, vip_label=vip_label(c.network.interface),
                    sip_down_file=failover.SIP_DOWN_FILE)
    return [
        RenderedFile(DROPIN, template("keepalived/unit-override.conf.j2", ctx, ha_bin=HA_BIN, leader_unit=LEADER_UNIT,
                                         reach_unit=REACH_UNIT),
                     service=SERVICE, action="reload"),
        RenderedFile(CONF, conf, service=SERVICE, action="reload", validate=validate_command(ctx)),
    ]
