"""SipLayer: Kamailio on both PBX nodes, after the database schema exists.

Per node: hapbx-secrets.cfg (secret) + kamailio.cfg (checked by `kamailio -c` on the node, against
its installed modules) + the unit drop-in (-m/-M) -> one handler that starts Kamailio, or restarts
it when one of them changed -> a dispatcher reload whenever the media destinations the data tier
seeds change. Kamailio reads the auth view and the dispatcher table from the node's local
PostgreSQL (the primary, or the standby's read-only replica), so every node's Kamailio waits for
the schema on the primary and for its own node's PostgreSQL (PostgresPair.schema_ready + ready).

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-kamailio``, ``<name>-<node>-dispatcher``.
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
        self.handlers: dict[str, remote.Command] = {}
        self.ready: list[pulumi.Resource] = []
        for node in c.nodes:
            conn = self._conn(node)
            commands = self._files(node)
            handler = next(cmd for cmd in commands if cmd._name.endswith("-svc-kamailio"))  # type: ignore[attr-defined]
            reload = rc.step(f"{name}-{node.name}-dispatcher", node.name, conn, "reload media destinations",
                             dispatcher_reload_script(), pulumi.ResourceOptions(parent=self, depends_on=[handler]),
                             triggers=[destinations])
            self.handlers[node.name] = handler
            self.ready += [handler, reload]
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
                               depends_on=ready)
