"""VirtualIp: keepalived and the HA scripts on both PBX nodes (the VIP, the leader
daemon holding the lease, promote/demote/rejoin, fencing).

Order on each node, after PostgreSQL and Redis are configured and the etcd quorum
authenticates: HA scripts, env files and units -> the leader daemon (the running primary
takes the lease as incumbent) -> keepalived.conf (validated by `keepalived -t` with the
scripts in place) and the unit drop-in -> keepalived. The initial primary goes first and
must settle as leader (lease + VIP) before keepalived starts on the standby, so the VIP
lands on the primary without a detour. Names: ``<name>-<node>-...``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi

from . import remote as rc
from .config import ClusterConfig
from .node import real_contents
from .render import RenderContext, failover, keepalived, masked_secrets


@dataclass
class VirtualIpArgs:
    cluster: ClusterConfig
    #: the PBX nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    #: what must be in place first: the data tier's ``ready``, the Witness's ``ready``
    after: Sequence[pulumi.Resource] = ()


class VirtualIp(pulumi.ComponentResource):
    def __init__(self, name: str, args: VirtualIpArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:VirtualIp", name, None, opts)
        c = args.cluster
        self.keepalived: dict[str, list[pulumi.Resource]] = {}
        self.settled: dict[str, pulumi.Resource] = {}
        previous: list[pulumi.Resource] = []
        for node in (c.primary, c.standby):
            ctx = RenderContext(c, node, masked_secrets())
            conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
            ready = list(getattr(args.nodes[node.name], "ready", []))
            prefix = f"{name}-{node.name}"
            ha = rc.deploy_files(prefix, node.name, conn,
                                 real_contents(c, node, args.secrets, failover.files, failover.files(ctx)),
                                 # the standby's leader daemon starts with these files: only once the
                                 # primary holds the lease, or it may win the race and promote
                                 self, depends_on=[*ready, *args.after, *previous])
            ka = rc.deploy_files(prefix, node.name, conn, [(f, f.content) for f in keepalived.files(ctx)], self,
                                 depends_on=[*ha, *previous])
            settle = rc.step(f"{prefix}-settled", node.name, conn, "HA settled (leader elected)",
                             failover.settle_script(ctx), pulumi.ResourceOptions(parent=self, depends_on=ka),
                             triggers=[f.sha256 for f in keepalived.files(ctx)])
            self.keepalived[node.name] = ka
            self.settled[node.name] = settle
            previous = [settle]
        #: keepalived runs on both nodes and the cluster has a leader
        self.ready: list[pulumi.Resource] = list(self.settled.values())
        self.register_outputs({
            "vip": c.vip.address,
            "interface": c.network.interface,
            "routerId": c.vip.router_id,
            "advertInterval": c.vip.advert_interval,
            "vrrpVersion": c.vip.vrrp_version,
            "nodes": [n.name for n in c.nodes],
            "scripts": failover.HA_BIN,
            "witness": c.witness.name if c.witness else None,
            "noWitnessPolicy": c.no_witness_policy,
        })
