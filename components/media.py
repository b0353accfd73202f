"""Media: the media engine on both PBX nodes, behind Kamailio's dispatcher.

prod (media.engine freeswitch): FreeSWITCH's configuration (vars, the internal profile on the node
address accepting only the two Kamailios, event socket on loopback, the static dialplan generated
from the stack configuration, recording, JSON CDR to the local receiver) -> one handler.
lab (media.engine sipp-uas): Debian has no FreeSWITCH, so a SIPp UAS service on the same address
and port answers and holds calls; dispatcher probes and fails over on it exactly as on FreeSWITCH.

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-<unit>``, ``<name>-<node>-dirs``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pulumi

from . import remote as rc
from .config import ClusterConfig
from .node import real_contents
from .render import RenderContext, RenderedFile, masked_secrets
from .render import freeswitch, sipp_uas


def files(ctx: RenderContext) -> list[RenderedFile]:
    """The engine's files for this node (only one of the two renders anything)."""
    return sipp_uas.files(ctx) + freeswitch.files(ctx)


@dataclass
class MediaArgs:
    cluster: ClusterConfig
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


class Media(pulumi.ComponentResource):
    def __init__(self, name: str, args: MediaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Media", name, None, opts)
        c = args.cluster
        self.ready: list[pulumi.Resource] = []
        for node in c.nodes:
            conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
            after = list(getattr(args.nodes[node.name], "ready", []))
            ctx = RenderContext(c, node, masked_secrets())
            steps = freeswitch.setup_script(ctx) if c.media.engine == "freeswitch" else None
            if steps:
                after.append(rc.step(f"{name}-{node.name}-dirs", node.name, conn, "media directories", steps,
                                     pulumi.ResourceOptions(parent=self, depends_on=after), triggers=[steps]))
            pairs = real_contents(c, node, args.secrets, files, files(ctx))
            self.ready += rc.deploy_files(f"{name}-{node.name}", node.name, conn, pairs, self, depends_on=after)
        self.register_outputs({
            "engine": c.media.engine,
            "destinations": {n.name: f"{n.address}:{c.media.sip_port}" for n in c.nodes},
            "maxSessions": c.media.max_sessions,
            "files": [f.path for f in files(RenderContext(c, c.nodes[0], masked_secrets()))],
        })
