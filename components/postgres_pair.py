"""PostgresPair: the streaming-replication pair with the PBX schema.

Order (every step idempotent; each re-runs only when its inputs change):

  primary:  files -> configure -> migrate (schema + seed) -> roles (SCRAM verifiers)
            -> replication (slot for the standby, pg_rewind grants)
  standby:  files -> standby (pg_basebackup -S <slot> unless already a standby of that primary,
            then streaming verified) -> configure -> migrate -> roles -> replication (slot for the primary)

The standby step waits for the primary's whole chain. ``initialPrimary`` names the primary of the
first deploy only: after a failover the nodes have swapped roles, so the writing steps (migrate,
roles) are on both chains and apply on whichever node is the primary at apply time (the other
says it skipped), and the standby step accepts a node promoted by a failover whose peer is its
standby. Names: ``<name>-<node>-<step>``.
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
from .render import postgres as pg


@dataclass
class PostgresPairArgs:
    cluster: ClusterConfig
    #: the PBX nodes' Node components by name (``connection`` and ``ready`` are used)
    nodes: Mapping[str, object]
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


class PostgresPair(pulumi.ComponentResource):
    def __init__(self, name: str, args: PostgresPairArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:PostgresPair", name, None, opts)
        c = args.cluster
        self._name, self._args = name, args
        primary, standby = c.primary, c.standby
        service = pg.paths(c).service

        # --- files on both nodes (in parallel, each after its node's baseline) ---------------
        files: dict[str, tuple[list[remote.Command], list[remote.Command]]] = {}
        for node in (primary, standby):
            files[node.name] = self._files(node, service)

        # --- primary -----------------------------------------------------------------------
        p_conf_files, p_other = files[primary.name]
        p_conn, p_ctx = self._conn(primary), self._ctx(primary)
        p_configure = rc.step(
            f"{name}-{primary.name}-configure", primary.name, p_conn, "apply PostgreSQL configuration",
            pg.configure_script(p_ctx), self._opts(p_conf_files + p_other),
            triggers=[rc.file_digest(f) for f in p_conf_files])
        self.migrate = self._migrate(primary, [p_configure])
        self.roles = self._roles(primary, [self.migrate])
        p_replication = rc.step(
            f"{name}-{primary.name}-replication", primary.name, p_conn, "replication slot for the standby",
            pg.replication_script(p_ctx), self._opts([self.roles]),
            triggers=[pg.slot_name(standby.name)])

        # --- standby: only after the whole primary chain --------------------------------------
        s_conf_files, s_other = files[standby.name]
        s_conn, s_ctx = self._conn(standby), self._ctx(standby)
        self.standby = rc.step(
            f"{name}-{standby.name}-standby", standby.name, s_conn, f"standby of {primary.name}",
            pg.standby_script(s_ctx),
            self._opts(s_conf_files + s_other + [p_configure, self.migrate, self.roles, p_replication]),
            triggers=[primary.address, str(c.postgres.port), c.postgres.version, pg.slot_name(standby.name)])
        s_configure = rc.step(
            f"{name}-{standby.name}-configure", standby.name, s_conn, "apply PostgreSQL configuration",
            pg.configure_script(s_ctx), self._opts([self.standby]),
            triggers=[rc.file_digest(f) for f in s_conf_files])
        s_migrate = self._migrate(standby, [s_configure])
        s_roles = self._roles(standby, [s_migrate])
        s_replication = rc.step(
            f"{name}-{standby.name}-replication", standby.name, s_conn, "replication slot for the primary",
            pg.replication_script(s_ctx), self._opts([s_roles]),
            triggers=[pg.slot_name(primary.name)])

        #: the schema is in place on the primary (Kamailio and the CDR worker wait for this)
        self.schema_ready: list[pulumi.Resource] = [self.migrate, self.roles, s_migrate, s_roles]
        #: both nodes configured, the standby streaming
        self.ready: list[pulumi.Resource] = [p_replication, s_configure, s_replication]
        self.primary_name, self.standby_name = primary.name, standby.name
        self.register_outputs({
            "primary": primary.name,
            "standby": standby.name,
            "version": c.postgres.version,
            "port": c.postgres.port,
            "database": pg.DATABASE,
            "slots": {standby.name: pg.slot_name(standby.name), primary.name: pg.slot_name(primary.name)},
            "migrations": [n for n, _ in pg.migrations()],
        })

    # --- helpers -----------------------------------------------------------------------------
    def _conn(self, node: NodeSettings) -> remote.ConnectionArgs:
        return self._args.nodes[node.name].connection  # type: ignore[attr-defined]

    def _ctx(self, node: NodeSettings) -> RenderContext:
        return RenderContext(self._args.cluster, node, masked_secrets())

    def _opts(self, depends_on: Sequence[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, depends_on=list(depends_on))

    def _files(self, node: NodeSettings, service: str) -> tuple[list[remote.Command], list[remote.Command]]:
        """PostgreSQL's own config files (applied by the configure step) and the rest (the
        runner, migrations, seed, maintenance timer with its standard handler)."""
        c, args = self._args.cluster, self._args
        ready = list(getattr(args.nodes[node.name], "ready", []))
        rendered = pg.files(self._ctx(node))
        pairs = real_contents(c, node, args.secrets, pg.files, rendered)
        prefix = f"{self._name}-{node.name}"
        conn = self._conn(node)
        conf_files = [rc.remote_file(f"{prefix}-file-{f.slug}", node.name, conn, f, content, self._opts(ready))
                      for f, content in pairs if f.service == service]
        other = rc.deploy_files(prefix, node.name, conn, [(f, content) for f, content in pairs if f.service != service],
                                self, depends_on=ready)
        return conf_files, other

    def _migrate(self, node: NodeSettings, after: Sequence[pulumi.Resource]) -> remote.Command:
        """Schema migrations and seed data, applied if this node is the primary at apply time."""
        ctx = self._ctx(node)
        seed = next(f for f in pg.files(ctx) if f.path.endswith("/seed.sql"))
        return rc.step(f"{self._name}-{node.name}-migrate", node.name, self._conn(node),
                       "apply schema migrations and seed data (on the primary)", pg.migrate_script(ctx),
                       self._opts(after), triggers=[pg.migrations_digest(), seed.sha256])

    def _roles(self, node: NodeSettings, after: Sequence[pulumi.Resource]) -> remote.Command:
        """Set the login roles' SCRAM verifiers (if this node is the primary at apply time):
        computed here, sent on stdin, output not logged."""
        c, args = self._args.cluster, self._args
        names = list(pg.role_secret_names())
        sql = pulumi.Output.all(*[args.secrets[n] for n in names]).apply(
            lambda vals: pg.roles_sql(RenderContext(c, node, {**masked_secrets(), **dict(zip(names, vals))})))
        return rc.command(
            f"{self._name}-{node.name}-roles", self._conn(node),
            rc.script(node.name, "set role passwords", pg.roles_script(self._ctx(node))), self._opts(after),
            stdin=pulumi.Output.secret(sql),
            triggers=[rc.digest_of(sql)],
            logging=remote.Logging.NONE,
        )
