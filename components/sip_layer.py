"""SipLayer: Kamailio on both PBX nodes, after the database schema exists.

Per node: hapbx-secrets.cfg (secret) + kamailio.cfg (checked by `kamailio -c` on the node, against
its installed modules) + the unit drop-in (-m/-M) -> the Kamailio handler, which starts Kamailio, or
restarts it when one of them changed: a rolling change (``remote.rolling``), one node at a time and
the node holding the VIP last, each restart waiting until Kamailio answers again and (if it was
before) lists the peer active in DMQ, so the registrations are back before the next node restarts
-> a dispatcher reload whenever the media destinations the data tier seeds change. Kamailio reads the auth view and the dispatcher table from the node's local
PostgreSQL (the primary, or the standby's read-only replica), so every node's Kamailio waits for
the schema on the primary and for its own node's PostgreSQL (PostgresPair.schema_ready + ready).

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-kamailio`` (first pass: the VIP holder
defers), ``<name>-<node>-svc-kamailio-last`` (final pass), ``<name>-<node>-dispatcher``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi
from pulumi_command import remote

from . import remote as rc
from .config import ClusterConfig, NodeSettings
from .node import real_contents
from .render import RenderContext, masked_secrets
from .render import kamailio as kam
from .render import postgres as pg

CTL = "unix:/run/kamailio/kamailio_ctl"


@dataclass
class SipLayerArgs:
    cluster: ClusterConfig
    #: the PBX nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    #: resources after which the database Kamailio reads exists on every node (schema, roles, standby)
    database_ready: Sequence[pulumi.Resource] = ()


def dmq_peer_active(peer: str) -> str:
    """Shell condition: this node's Kamailio lists the peer's DMQ node as active."""
    return (f"kamcmd -s {CTL} dmq.list_nodes 2>/dev/null | "
            f"awk -v peer={peer} '$1 == \"host:\" {{h = $2}} $1 == \"status:\" && h == peer && $2 == \"active\" {{ok = 1}} "
            "END {exit !ok}'")


def kamailio_handler(peer: str) -> rc.Handler:
    """Restart on a change; healthy once the control socket answers and, when the peer was active in
    DMQ before the restart, once it is again (the peer has sent the registrations back)."""
    return rc.Handler(
        kam.SERVICE, "restart",
        before=f"peer_was_active=0; if {dmq_peer_active(peer)}; then peer_was_active=1; fi",
        health=(f"kamcmd -s {CTL} core.uptime >/dev/null 2>&1 || return 1\n"
                f"[ \"${{peer_was_active:-0}}\" = 1 ] || return 0\n{dmq_peer_active(peer)}"),
        health_seconds=60)


def dispatcher_reload_script() -> str:
    """Reload the media destinations from the database (a no-op when they did not change)."""
    return f"""
if ! systemctl is-active -q kamailio; then echo "kamailio not running: it loads the table at start"; exit 0; fi
for i in 1 2 3 4 5; do
  if out=$(kamcmd -s {CTL} dispatcher.reload 2>&1); then echo reloaded; exit 0; fi
  sleep 1
done
echo "hapbx: [$step] kamcmd dispatcher.reload: $out" >&2
exit 1
"""


class SipLayer(pulumi.ComponentResource):
    def __init__(self, name: str, args: SipLayerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:SipLayer", name, None, opts)
        c = args.cluster
        self._name, self._args = name, args
        destinations = hashlib.sha256(json.dumps(pg.seed_destinations(c), sort_keys=True).encode()).hexdigest()
        #: per node: the first and the final pass of Kamailio's rolling handler
        self.handlers: dict[str, tuple[remote.Command, remote.Command]] = {}
        self.ready: list[pulumi.Resource] = []
        members = []
        for node in c.nodes:
            files = self._files(node)
            members.append(rc.RollingMember(node.name, self._conn(node), [rc.file_digest(f) for f in files], files))
        peer = {n.name: c.peer_of(n).address for n in c.nodes}
        self.handlers = rc.rolling_handlers(f"{name}-{{node}}-svc-kamailio", members,
                                            lambda node: kamailio_handler(peer[node]), c.vip.address, self)
        for node in c.nodes:
            conn = self._conn(node)
            last = self.handlers[node.name][1]
            reload = rc.step(f"{name}-{node.name}-dispatcher", node.name, conn, "reload media destinations",
                             dispatcher_reload_script(), pulumi.ResourceOptions(parent=self, depends_on=[last]),
                             triggers=[destinations])
            self.ready += [*self.handlers[node.name], reload]
        self.register_outputs({
            "version": c.kamailio.version,
            "listen": {n.name: [f"{n.address}:{c.kamailio.sip_port}", f"{c.vip.address}:{c.kamailio.sip_port}"]
                       for n in c.nodes},
            "dmq": {n.name: f"{n.address}:{c.kamailio.dmq_port}" for n in c.nodes},
            "mediaDestinations": [d["destination"] for d in pg.seed_destinations(c)],
            "files": [kam.CFG, kam.SECRETS_CFG, kam.DROPIN],
        })

    def _conn(self, node: NodeSettings) -> remote.ConnectionArgs:
        return self._args.nodes[node.name].connection  # type: ignore[attr-defined]

    def _files(self, node: NodeSettings) -> list[remote.Command]:
        c, args = self._args.cluster, self._args
        ready = list(getattr(args.nodes[node.name], "ready", [])) + list(args.database_ready)
        rendered = kam.files(RenderContext(c, node, masked_secrets()))
        pairs = real_contents(c, node, args.secrets, kam.files, rendered)
        return rc.deploy_files(f"{self._name}-{node.name}", node.name, self._conn(node), pairs, self,
                               depends_on=ready, handlers=False)
