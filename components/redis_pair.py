"""RedisPair: the CDR queue, master on the initial primary, replica on the peer.

Per node: role (first deploy only) -> redis.conf (users inline) + admin env file -> handler
(start, or restart when redis.conf changed). The replica's handler waits for the
master's; a last step on the replica verifies the link is up. Names: ``<name>-<node>-<step>``.
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
from .render import redis as rd


@dataclass
class RedisPairArgs:
    cluster: ClusterConfig
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


class RedisPair(pulumi.ComponentResource):
    def __init__(self, name: str, args: RedisPairArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:RedisPair", name, None, opts)
        c = args.cluster
        self._name, self._args = name, args
        master = c.primary
        replica = c.peer_of(master)
        m_handler, m_digests = self._node(master, after=[])
        r_handler, r_digests = self._node(replica, after=[m_handler])
        ctx = RenderContext(c, replica, masked_secrets())
        self.verify = rc.step(
            f"{name}-{replica.name}-verify", replica.name, self._conn(replica), f"replication from {master.name}",
            rd.verify_script(ctx), self._opts([m_handler, r_handler]), triggers=m_digests + r_digests)
        self.ready: list[pulumi.Resource] = [m_handler, r_handler, self.verify]
        self.register_outputs({
            "master": master.name,
            "replica": replica.name,
            "port": c.redis.port,
            "users": list(rd.USERS),
            "queuePrefix": rd.CDR_PREFIX,
        })

    def _conn(self, node: NodeSettings) -> remote.ConnectionArgs:
        return self._args.nodes[node.name].connection  # type: ignore[attr-defined]

    def _opts(self, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, depends_on=list(depends_on))

    def _node(self, node: NodeSettings, after: Sequence[pulumi.Resource]):
        c, args = self._args.cluster, self._args
        prefix, conn = f"{self._name}-{node.name}", self._conn(node)
        ready = list(getattr(args.nodes[node.name], "ready", []))
        ctx = RenderContext(c, node, masked_secrets())
        pairs = {f.path: (f, content) for f, content in real_contents(c, node, args.secrets, rd.files, rd.files(ctx))}

        def install(path: str, deps: Sequence[pulumi.Resource]) -> remote.Command:
            f, content = pairs[path]
            return rc.remote_file(f"{prefix}-file-{f.slug}", node.name, conn, f, content, self._opts(deps))

        role = rc.step(f"{prefix}-role", node.name, conn, "initial replication role", rd.role_script(ctx),
                       self._opts(ready), triggers=[rd.role_line(ctx)])
        conf = install(rd.CONF, [role])
        auth = install(rd.AUTH_FILE, ready)
        digests = [f.triggers.apply(lambda t: t[0]) for f in (conf, auth)]
        handler = rc.step(f"{prefix}-handler", node.name, conn, "apply Redis configuration", rd.handler_script(ctx),
                          self._opts([conf, auth, *after]), triggers=digests)
        return handler, digests
