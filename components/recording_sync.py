"""RecordingSync: lsyncd on both PBX nodes, each sending its own recordings to the peer, and on
every media node (mediaNodes), sending its own to both PBX nodes.

Per host: keys (the user hapbx-rec, directories, an ed25519 key generated on the host: the
private key never leaves it, so it is in no Pulumi state, input, output or log; the step prints
public keys only) -> authorize -> lsyncd config (checked by lsyncd's own loader) + unit -> handler.
A PBX node's authorize step puts the peer's public key, and each media node's, into
authorized_keys, each restricted with rrsync to <recordings>/<sender>, write-only, no deletes, from
the sender's addresses, and pins the peer's host key for its own ssh. A media node's pins both PBX
nodes' host keys (it receives nothing). A host's lsyncd starts once every host it sends to has
authorized its key.

Names: ``<name>-<host>-keys``, ``<name>-<host>-authorize``, ``<name>-<host>-file-<path>``,
``<name>-<host>-svc-hapbx-recsync``.
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
    #: the Node components of the PBX nodes and of the media nodes, by name
    nodes: Mapping[str, object]
    #: resources after which the recordings directory may be shared (e.g. the media engine's setup)
    after: Sequence[pulumi.Resource] = ()


def _prefixed(outputs: Sequence[pulumi.Output[str]], prefixes: Sequence[str]) -> pulumi.Output[str]:
    """The keys steps' outputs, every line of each after its prefix, one text."""
    return pulumi.Output.all(*outputs).apply(lambda texts: "".join(
        f"{prefix}{line}\n" for prefix, text in zip(prefixes, texts) for line in (text or "").splitlines() if line))


def _media_keys(stdout: pulumi.Output[str], name: str) -> pulumi.Output[str]:
    """A media node's user key as a PBX node's authorize step reads it (lsyncd.media_key_line)."""
    return stdout.apply(lambda text: "".join(f"{lsyncd.media_key_line(name)}{line.removeprefix('user-key ')}\n"
                                             for line in (text or "").splitlines() if line.startswith("user-key ")))


class RecordingSync(pulumi.ComponentResource):
    def __init__(self, name: str, args: RecordingSyncArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:RecordingSync", name, None, opts)
        c = args.cluster
        hosts = [*c.nodes, *c.media_nodes]
        conn = {n.name: args.nodes[n.name].connection for n in hosts}  # type: ignore[attr-defined]
        ctx = {n.name: RenderContext(c, n, masked_secrets()) for n in hosts}
        keys = {}
        for n in hosts:
            after = list(getattr(args.nodes[n.name], "ready", [])) + list(args.after)
            keys[n.name] = rc.step(f"{name}-{n.name}-keys", n.name, conn[n.name], "recordings user and key",
                                   lsyncd.keys_script(ctx[n.name]), pulumi.ResourceOptions(parent=self, depends_on=after))
        authorize = {}
        for n in c.nodes:
            peer = c.peer_of(n)
            # the peer's public keys on stdin (then each media node's user key); a new key there
            # (rotation) re-runs this step
            stdin = keys[peer.name].stdout
            if c.media_nodes:
                stdin = pulumi.Output.all(stdin, *[_media_keys(keys[m.name].stdout, m.name) for m in c.media_nodes]
                                          ).apply(lambda texts: "".join(t if t.endswith("\n") else t + "\n"
                                                                        for t in texts if t))
            authorize[n.name] = rc.command(
                f"{name}-{n.name}-authorize", conn[n.name],
                rc.script(n.name, f"authorize {peer.name}'s recordings key", lsyncd.authorize_script(ctx[n.name])),
                pulumi.ResourceOptions(parent=self, depends_on=[keys[n.name], keys[peer.name],
                                                                *[keys[m.name] for m in c.media_nodes]]),
                stdin=stdin, triggers=[stdin])
        for m in c.media_nodes:
            # both PBX nodes' keys, each line after the node's name (lsyncd.pbx_key_line)
            stdin = _prefixed([keys[n.name].stdout for n in c.nodes], [lsyncd.pbx_key_line(n.name) for n in c.nodes])
            authorize[m.name] = rc.command(
                f"{name}-{m.name}-authorize", conn[m.name],
                rc.script(m.name, "pin the PBX nodes' host keys", lsyncd.authorize_script(ctx[m.name])),
                pulumi.ResourceOptions(parent=self, depends_on=[keys[m.name], *[keys[n.name] for n in c.nodes]]),
                stdin=stdin, triggers=[stdin])
        self.ready: list[pulumi.Resource] = []
        for n in hosts:
            # this host's lsyncd once every host it sends to has authorized its key
            receivers = [authorize[t.name] for t in lsyncd.targets(ctx[n.name])]
            files = lsyncd.files(ctx[n.name])
            self.ready += rc.deploy_files(f"{name}-{n.name}", n.name, conn[n.name], [(f, f.content) for f in files],
                                          self, depends_on=[keys[n.name], authorize[n.name], *receivers])
        self.register_outputs({
            "directory": c.recordings.directory,
            "delaySeconds": c.recordings.sync_delay_seconds,
            "user": lsyncd.USER,
            "publicKeys": {n.name: keys[n.name].stdout for n in hosts},
        })
