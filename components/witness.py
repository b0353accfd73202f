"""Witness: the three-member etcd quorum (both PBX nodes + the witness) that holds the
leader lease of DESIGN.md's "HA safety" section.

Order: each member's files after its host's baseline -> start the members one after the
other without waiting (first start: they must come up together; later restarts: one at a
time, each waiting for its own health, so the quorum never drops) -> wait for the whole
quorum -> enable authentication (idempotent, secrets on stdin). Names: ``<name>-<host>-...``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

import pulumi
from pulumi_command import remote

from . import remote as rc
from .config import ClusterConfig
from .node import real_contents
from .render import RenderContext, etcd, masked_secrets
from .render.etcd import ETCD_NODE_USER


@dataclass
class WitnessArgs:
    cluster: ClusterConfig
    #: Node components of the two PBX nodes and the witness, by name (``connection``, ``ready``)
    hosts: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


class Witness(pulumi.ComponentResource):
    def __init__(self, name: str, args: WitnessArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Witness", name, None, opts)
        c = args.cluster
        if c.witness is None:
            raise ValueError("Witness needs cluster.witness")
        order = [c.witness, *c.nodes]
        starts: list[remote.Command] = []
        digests: list[str] = []
        for host in order:
            ctx = RenderContext(c, host, masked_secrets())
            conn = args.hosts[host.name].connection  # type: ignore[attr-defined]
            ready = list(getattr(args.hosts[host.name], "ready", []))
            fs = etcd.files(ctx)
            # the member's certificate and key: their real content waits on the cluster CA's outputs
            cmds = rc.deploy_files(f"{name}-{host.name}", host.name, conn,
                                   real_contents(c, host, args.secrets, etcd.files, fs), self, depends_on=ready)
            digests += [f.sha256 for f in fs]
            starts.append(rc.step(f"{name}-{host.name}-start", host.name, conn, "start etcd",
                                  etcd.start_script(ctx),
                                  pulumi.ResourceOptions(parent=self, depends_on=cmds + starts[-1:]),
                                  # the installs' own triggers: a new certificate (real content) restarts too
                                  triggers=[cmd.triggers.apply(lambda t: t[0]) for cmd in cmds]))
        first = c.nodes[0]
        f_ctx = RenderContext(c, first, masked_secrets())
        f_conn = args.hosts[first.name].connection  # type: ignore[attr-defined]
        cluster_digest = hashlib.sha256("".join(digests).encode()).hexdigest()
        self.quorum = rc.step(f"{name}-quorum", first.name, f_conn, "etcd quorum healthy",
                              etcd.wait_quorum_script(f_ctx), pulumi.ResourceOptions(parent=self, depends_on=starts),
                              triggers=[cluster_digest])
        creds = pulumi.Output.all(args.secrets["etcd_root"], args.secrets["etcd_node"]).apply(
            lambda v: f"{v[0]}\n{v[1]}\n")
        self.auth = rc.command(
            f"{name}-auth", f_conn, rc.script(first.name, "etcd authentication", etcd.bootstrap_auth_script(f_ctx)),
            pulumi.ResourceOptions(parent=self, depends_on=[self.quorum]),
            stdin=pulumi.Output.secret(creds),
            triggers=[rc.digest_of(creds), cluster_digest],
            logging=remote.Logging.NONE)
        #: the quorum answers and clients must authenticate: the leader daemons may start
        self.ready: list[pulumi.Resource] = [self.quorum, self.auth]
        self.endpoints = etcd.endpoints(c)
        self.register_outputs({
            "witness": c.witness.name,
            "members": [h.name for h in order],
            "endpoints": self.endpoints,
            "user": ETCD_NODE_USER,
            "heartbeatMs": etcd.HEARTBEAT_MS,
            "electionMs": etcd.ELECTION_MS,
        })
