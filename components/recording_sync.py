"""RecordingSync: lsyncd on both PBX nodes, each sending its own recordings to the peer.

Per node: keys (the user hapbx-rec, directories, an ed25519 key generated on the node: the
private key never leaves it, so it is in no Pulumi state, input, output or log; the step prints
public keys only) -> authorize (the peer's public key into authorized_keys, restricted with
rrsync to <recordings>/<peer>, write-only, no deletes, from the peer's addresses; the peer's host
key pinned for our ssh) -> lsyncd config (checked by lsyncd's own loader) + unit -> handler.
A node's lsyncd starts once the peer has authorized its key.

Names: ``<name>-<node>-keys``, ``<name>-<node>-authorize``, ``<name>-<node>-file-<path>``,
``<name>-<node>-svc-hapbx-recsync``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi

from . import remote as rc
from .config import ClusterConfig
from .render import RenderContext, masked_secrets
from .render import lsyncd


@dataclass
class RecordingSyncArgs:
    cluster: ClusterConfig
    nodes: Mapping[str, object]
    #: resources after which the recordings directory may be shared (e.g. the media engine's setup)
    after: Sequence[pulumi.Resource] = ()


class RecordingSync(pulumi.ComponentResource):
    def __init__(self, name: str, args: RecordingSyncArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:RecordingSync", name, None, opts)
        c = args.cluster
        conn = {n.name: args.nodes[n.name].connection for n in c.nodes}  # type: ignore[attr-defined]
        ctx = {n.name: RenderContext(c, n, masked_secrets()) for n in c.nodes}
        keys = {}
        for n in c.nodes:
            after = list(getattr(args.nodes[n.name], "ready", [])) + list(args.after)
            keys[n.name] = rc.step(f"{name}-{n.name}-keys", n.name, conn[n.name], "recordings user and key",
                                   lsyncd.keys_script(ctx[n.name]), pulumi.ResourceOptions(parent=self, depends_on=after))
        authorize = {}
        for n in c.nodes:
            peer = c.peer_of(n)
            # the peer's public keys on stdin; a new key there (rotation) re-runs this step
            authorize[n.name] = rc.command(
                f"{name}-{n.name}-authorize", conn[n.name],
                rc.script(n.name, f"authorize {peer.name}'s recordings key", lsyncd.authorize_script(ctx[n.name])),
                pulumi.ResourceOptions(parent=self, depends_on=[keys[n.name], keys[peer.name]]),
                stdin=keys[peer.name].stdout, triggers=[keys[peer.name].stdout])
        self.ready: list[pulumi.Resource] = []
        for n in c.nodes:
            peer = c.peer_of(n)
            files = lsyncd.files(ctx[n.name])
            self.ready += rc.deploy_files(f"{name}-{n.name}", n.name, conn[n.name], [(f, f.content) for f in files],
                                          self, depends_on=[keys[n.name], authorize[n.name], authorize[peer.name]])
        self.register_outputs({
            "directory": c.recordings.directory,
            "delaySeconds": c.recordings.sync_delay_seconds,
            "user": lsyncd.USER,
            "publicKeys": {n.name: keys[n.name].stdout for n in c.nodes},
        })

