"""CdrPipeline: the CDR receiver, the CDR worker and the admin API on both PBX nodes.

Per node, after its baseline and ``after`` (the data tier's schema and Redis, the HA layer
settled): the service package, the three units and their env files (0600, secrets on stdin,
logging off) and the node's HTTPS certificate and key -> a restart handler for the receiver and for the admin API (enabled, running on
both nodes; restarted only when one of their files changed, one node at a time with the VIP holder
last, each waiting until the service listens again: ``remote.rolling``; a FreeSWITCH posting while
its node's receiver restarts falls back to the peer's) -> the worker placement step:
the worker runs only where this node is the writer (HA status ``writer=1``, or without the HA
layer a local primary), is stopped where PostgreSQL is a standby, and is otherwise left to the
failover scripts, which start it on promotion and stop it on demotion (OWNER_SERVICES).
With FreeSWITCH as the media engine, each node also gets hapbx-cdr-replay.timer (enabled and
started by the standard handler, restarted when its units change): it posts what mod_json_cdr
left in its error directory to the receivers.
Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-<unit>`` (+ ``-last``), ``<name>-<node>-worker``,
``<name>-<node>-svc-hapbx-cdr-replay.timer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi
from pulumi_command import remote

from . import remote as rc
from .config import ClusterConfig, NodeSettings
from .node import real_contents
from .render import RenderContext, masked_secrets
from .render import cdr


@dataclass
class CdrPipelineArgs:
    cluster: ClusterConfig
    #: the PBX nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    #: in place first: PostgreSQL schema and roles, Redis, the HA layer (who is the writer)
    after: Sequence[pulumi.Resource] = ()


class CdrPipeline(pulumi.ComponentResource):
    def __init__(self, name: str, args: CdrPipelineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:CdrPipeline", name, None, opts)
        c = args.cluster
        self.handlers: dict[str, list[remote.Command]] = {n.name: [] for n in c.nodes}
        self.workers: dict[str, remote.Command] = {}
        #: hapbx-cdr-replay.timer's handler per node (FreeSWITCH only)
        self.replays: dict[str, remote.Command] = {}
        members: dict[str, list[rc.RollingMember]] = {cdr.RECEIVER_UNIT: [], cdr.ADMIN_UNIT: []}
        for node in c.nodes:
            own, self.workers[node.name] = self._node(name, node, args)
            conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
            for unit, cmds in own.items():
                members[unit].append(rc.RollingMember(node.name, conn, [rc.file_digest(x) for x in cmds], cmds))
        ports = {cdr.RECEIVER_UNIT: c.cdr.receiver_port, cdr.ADMIN_UNIT: c.admin.port}
        for unit, nodes in members.items():
            handler = rc.Handler(unit, "restart", health=rc.listening(ports[unit]))
            passes = rc.rolling_handlers(f"{name}-{{node}}-svc-{unit.removesuffix('.service')}", nodes, handler,
                                         c.vip.address, self)
            for node, pair in passes.items():
                self.handlers[node] += list(pair)
        #: receivers and admin APIs running on both nodes, the worker placed, the replay timers on
        self.ready: list[pulumi.Resource] = [*(h for hs in self.handlers.values() for h in hs),
                                             *self.workers.values(), *self.replays.values()]
        self.register_outputs({
            "nodes": [n.name for n in c.nodes],
            "receiverPort": c.cdr.receiver_port,
            "receiverUrl": f"http://127.0.0.1:{c.cdr.receiver_port}/cdr",
            "adminUrl": f"https://{c.vip.address}:{c.admin.port}",
            "units": list(cdr.UNITS) + ([cdr.REPLAY_UNIT, cdr.REPLAY_TIMER] if cdr.replays(c) else []),
            "ownerServices": list(cdr.OWNER_SERVICES),
        })

    def _node(self, name: str, node: NodeSettings, args: CdrPipelineArgs):
        c = args.cluster
        prefix = f"{name}-{node.name}"
        conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
        ready = [*getattr(args.nodes[node.name], "ready", []), *args.after]
        ctx = RenderContext(c, node, masked_secrets())
        rendered = cdr.files(ctx)
        opts = pulumi.ResourceOptions(parent=self, depends_on=ready)
        installed = {f.path: rc.remote_file(f"{prefix}-file-{f.slug}", node.name, conn, f, content, opts)
                     for f, content in real_contents(c, node, args.secrets, cdr.files, rendered)}
        # the package's modules: every daemon restarts when they change; the HTTPS pair the receiver and
        # the admin API (cdr.restarts; the sender credential and the operator's tools restart nothing)
        code = [installed[f.path] for f in rendered if f.path.startswith(f"{cdr.LIB_DIR}/")]

        def own(unit: str) -> list[remote.Command]:
            return [installed[f.path] for f in rendered if unit in cdr.restarts(f)]

        replay = [installed[f.path] for f in rendered if f.service == cdr.REPLAY_TIMER]
        if replay:
            self.replays[node.name] = rc.service_handler(
                f"{prefix}-svc-{cdr.REPLAY_TIMER}", node.name, conn, rc.Handler(cdr.REPLAY_TIMER, "restart"),
                [rc.file_digest(x) for x in replay], pulumi.ResourceOptions(parent=self, depends_on=code + replay))
        cmds = own(cdr.WORKER_UNIT)
        worker = rc.step(f"{prefix}-worker", node.name, conn, "CDR worker on the writer only",
                         rc.SYSTEMD_LOCK + cdr.worker_placement_script(ctx),
                         pulumi.ResourceOptions(parent=self, depends_on=cmds), triggers=[rc.file_digest(x) for x in cmds])
        return {unit: own(unit) for unit in (cdr.RECEIVER_UNIT, cdr.ADMIN_UNIT)}, worker
