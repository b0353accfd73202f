"""Monitoring: exporters, a Prometheus and an Alertmanager on each PBX node (render/monitoring.py).

Each Prometheus scrapes both nodes, the three etcd members and every media node's node exporter
(mediaNodes: the only file a media node gets here), so losing a node never blinds monitoring; the
two Alertmanagers gossip, so a notification goes out once. Per node: the files
(each checked by its own tool on the node before install: ``promtool check rules``, ``promtool
check config``, ``amtool check-config``) -> one handler per unit, which reloads Prometheus and
Alertmanager for a new configuration and restarts a unit whose arguments changed.

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-<unit>``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi

from . import remote as rc
from .config import ClusterConfig
from .node import real_contents
from .render import RenderContext, masked_secrets
from .render import monitoring


@dataclass
class MonitoringArgs:
    cluster: ClusterConfig
    #: the PBX nodes' and media nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    #: what the exporters read should exist first: the monitoring role, the Redis users, the services
    after: Sequence[pulumi.Resource] = ()


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Monitoring", name, None, opts)
        c = args.cluster
        self.ready: list[pulumi.Resource] = []
        for node in [*c.nodes, *c.media_nodes]:
            ctx = RenderContext(c, node, masked_secrets())
            files = real_contents(c, node, args.secrets, monitoring.files, monitoring.files(ctx))
            after = [*getattr(args.nodes[node.name], "ready", []), *args.after]
            self.ready += rc.deploy_files(f"{name}-{node.name}", node.name,
                                          args.nodes[node.name].connection,  # type: ignore[attr-defined]
                                          files, self, depends_on=after)
        #: the UIs of both nodes, as the stack exports them
        self.urls = monitoring.ui_urls(c)
        self.register_outputs({
            "nodes": [n.name for n in c.nodes] if c.monitoring.enabled else [],
            **({"mediaNodes": [n.name for n in c.media_nodes]} if c.monitoring.enabled and c.media_nodes else {}),
            **self.urls,
            "units": list(monitoring.UNITS) if c.monitoring.enabled else [],
        })
