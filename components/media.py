"""Media: the media engine on both PBX nodes and on every media node (mediaNodes), behind
Kamailio's dispatcher.

prod (media.engine freeswitch): FreeSWITCH's configuration (vars, the internal profile on the node
address accepting only the two Kamailios, event socket on loopback, the static dialplan generated
from the stack configuration, recording, JSON CDR to the local receiver) -> one handler.
lab (media.engine sipp-uas): Debian has no FreeSWITCH, so a SIPp UAS service on the same address
and port answers and holds calls; dispatcher probes and fails over on it exactly as on FreeSWITCH.

A media node gets the same engine, files and handlers as a PBX node; its CDRs go to the VIP's receiver
(render/cdr.py receiver_urls) and its policy cache reads the nodes' PostgreSQL (render/freeswitch.py).

A change restarts (or reloads) the engine one node at a time, the VIP holder last (``remote.rolling``;
the media nodes after the PBX nodes),
each node's pass waiting until its engine listens on the media port again: a restart drops the calls
of that node only, and Kamailio's dispatcher sends new calls to the other one meanwhile.

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-<unit>`` (+ ``-last``), ``<name>-<node>-dirs``.
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
    #: the Node components of the PBX nodes and of the media nodes, by name
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


class Media(pulumi.ComponentResource):
    def __init__(self, name: str, args: MediaArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Media", name, None, opts)
        c = args.cluster
        self.ready: list[pulumi.Resource] = []
        members: dict[str, list[rc.RollingMember]] = {}   # per service
        actions: dict[str, str] = {}
        for node in [*c.nodes, *c.media_nodes]:
            conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
            after = list(getattr(args.nodes[node.name], "ready", []))
            ctx = RenderContext(c, node, masked_secrets())
            steps = freeswitch.setup_script(ctx) if c.media.engine == "freeswitch" else None
            if steps:
                after.append(rc.step(f"{name}-{node.name}-dirs", node.name, conn, "media directories", steps,
                                     pulumi.ResourceOptions(parent=self, depends_on=after), triggers=[steps]))
            pairs = real_contents(c, node, args.secrets, files, files(ctx))
            installed = rc.deploy_files(f"{name}-{node.name}", node.name, conn, pairs, self, depends_on=after,
                                        handlers=False)
            self.ready += installed
            for service, (action, mine) in rc.by_service([f for f, _ in pairs], installed).items():
                members.setdefault(service, []).append(
                    rc.RollingMember(node.name, conn, [rc.file_digest(cmd) for cmd in mine], mine))
                actions[service] = "restart" if "restart" in (action, actions.get(service)) else action
        for service, nodes in members.items():
            # FreeSWITCH opens its SIP port once its profile is up; the SIPp stand-in once it runs
            # (a timer of the engine's, the stand-in's CDR poster have no port of their own)
            engine = service in (freeswitch.SERVICE, sipp_uas.UNIT)
            health = rc.listening(c.media.sip_port, "udp") if engine else ""
            handler = rc.Handler(service, actions[service], health=health)
            passes = rc.rolling_handlers(f"{name}-{{node}}-svc-{service.removesuffix('.service')}", nodes,
                                         handler, c.vip.address, self)
            self.ready += [cmd for pair in passes.values() for cmd in pair]
        self.register_outputs({
            "engine": c.media.engine,
            "destinations": {n.name: f"{n.address}:{c.media.sip_port}" for n in [*c.nodes, *c.media_nodes]},
            "maxSessions": c.media.max_sessions,
            "files": [f.path for f in files(RenderContext(c, c.nodes[0], masked_secrets()))],
        })
