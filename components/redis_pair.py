"""RedisPair: the CDR queue, master on the initial primary, replica on the peer.

Per node: role (first deploy only) -> redis.conf (users inline) + admin env file + TLS
certificate and key -> handler (start, or restart when redis.conf changed, or have Redis re-read
a new certificate). The handlers are a rolling change
(``remote.rolling``): master then replica, each waiting for the previous, and on the node that
holds the VIP a restart is deferred to a final pass (``<name>-<node>-handler-last``) after the
peer's, so a change never restarts both at once and the VIP owner's Redis goes last. A last
step on the replica verifies the link is up. Names: ``<name>-<node>-<step>``.
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
        members = [self._node(master), self._node(replica)]
        ctxs = {n.name: RenderContext(c, n, masked_secrets()) for n in (master, replica)}
        #: per node: the first and the final pass of the rolling handler
        self.handlers = rc.rolling(f"{name}-{{node}}-handler", "apply Redis configuration", members, c.vip.address,
                                   lambda node, defer: rd.handler_script(ctxs[node], defer), self)
        handlers = [h for pair in self.handlers.values() for h in pair]
        self.verify = rc.step(
            f"{name}-{replica.name}-verify", replica.name, self._conn(replica), f"replication from {master.name}",
            rd.verify_script(ctxs[replica.name]), self._opts(handlers),
            triggers=[t for m in members for t in m.triggers])
        self.ready: list[pulumi.Resource] = [*handlers, self.verify]
        self.register_outputs({
            "master": master.name,
            "replica": replica.name,
            "port": c.redis.port,
            "users": list(rd.USERS),
            "tls": True,
            "queuePrefix": rd.CDR_PREFIX,
        })

    def _conn(self, node: NodeSettings) -> remote.ConnectionArgs:
        return self._args.nodes[node.name].connection  # type: ignore[attr-defined]

    def _opts(self, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, depends_on=list(depends_on))

    def _node(self, node: NodeSettings) -> rc.RollingMember:
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
        cert, key = (install(path, ready) for path in (rd.CERT, rd.KEY))
        files = [conf, auth, cert, key]
        return rc.RollingMember(node.name, conn, [rc.file_digest(f) for f in files], files)
