"""Backup: pgBackRest and the recordings retention on both PBX nodes (render/pgbackrest.py,
render/recordings_retention.py).

Per node: the files (pgbackrest.conf checked by pgBackRest's own parser before install, its TLS
server and certificate, the backup runner and its timers, the recordings retention and its timer)
-> one handler per unit. Then, on the initial primary, the stanza step: create the stanza if the
repository has none, check that WAL reaches it. Both nodes carry the same stanza, so whichever is
primary archives; a promotion starts the archive check (render/failover.py, OWNER_SERVICES).

A repository that belongs to another database system (new hardware, before `./hapbx restore`)
fails the stanza step with pgBackRest's and our explanation; nothing in it is touched.

A repository without a backup gets its first full backup right after (``<name>-<node>-first-backup``,
started on both nodes without waiting: the runner backs up on the one that should).

Names: ``<name>-<node>-file-<path>``, ``<name>-<node>-svc-<unit>``, ``<name>-stanza``,
``<name>-<node>-first-backup``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi

from . import remote as rc
from .config import ClusterConfig
from .node import real_contents
from .render import RenderContext, masked_secrets, pgbackrest, recordings_retention


@dataclass
class BackupArgs:
    cluster: ClusterConfig
    #: the PBX nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    #: PostgreSQL configured on both nodes (archive_command set, the standby streaming)
    after: Sequence[pulumi.Resource] = ()


class Backup(pulumi.ComponentResource):
    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Backup", name, None, opts)
        c = args.cluster
        self.ready: list[pulumi.Resource] = []
        installed: list[pulumi.Resource] = []
        for node in c.nodes:
            ctx = RenderContext(c, node, masked_secrets())
            conn = args.nodes[node.name].connection  # type: ignore[attr-defined]
            after = [*getattr(args.nodes[node.name], "ready", []), *args.after]
            # pgBackRest first: the recordings retention's ACLs are on directories it makes
            for render in (pgbackrest.files, recordings_retention.files):
                files = real_contents(c, node, args.secrets, render, render(ctx))
                after = rc.deploy_files(f"{name}-{node.name}", node.name, conn, files, self, depends_on=after)
                installed += after
        self.ready += installed
        if c.backup.enabled:
            primary = c.primary.name
            stanza = rc.step(
                f"{name}-stanza", primary, args.nodes[primary].connection,  # type: ignore[attr-defined]
                f"pgBackRest stanza {c.backup.stanza}", pgbackrest.stanza_command(c),
                pulumi.ResourceOptions(parent=self, depends_on=installed),
                # another stanza or repository: created and checked again
                triggers=[c.backup.stanza, c.backup.repository.type, c.backup.repository.path])
            self.ready.append(stanza)
            # a new repository gets its first full backup now, not at the next scheduled one (the
            # runner on each node decides which one takes it)
            for node in c.nodes:
                self.ready.append(rc.step(
                    f"{name}-{node.name}-first-backup", node.name, args.nodes[node.name].connection,  # type: ignore[attr-defined]
                    "first full backup", pgbackrest.first_backup_script(c),
                    pulumi.ResourceOptions(parent=self, depends_on=[stanza]),
                    triggers=[c.backup.stanza, c.backup.repository.type, c.backup.repository.path]))
        self.register_outputs({
            "stanza": c.backup.stanza if c.backup.enabled else None,
            "repository": {"type": c.backup.repository.type, "path": c.backup.repository.path}
            if c.backup.enabled else None,
            "timers": [*pgbackrest.TIMERS.values(), recordings_retention.TIMER] if c.backup.enabled else [],
        })
