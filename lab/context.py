"""The running lab as the drills and the benches see it: its stack, its nodes and addresses, and
commands on its nodes. One context for both (lab/drills.py, bench/sip.py).

    ctx = LabContext.from_stack("Pulumi.lab.yaml")      # or LabContext.from_cluster(spec, cluster)
    ctx.sh("pbx1", "systemctl is-active keepalived")     # LabCommandError when it fails
    ctx.psql(ctx.vip_owner(), "SELECT 1;")

The stack file is read here too (`load`, `spec_for`): what a lab stack must be, and the lab spec
it describes, for every lab command.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from components.config import ClusterConfig, ConfigError, build, read_stack_file
from hapbx_node.layout import parse_status

from . import machinery
from .health import STATUS
from .spec import LabNode, LabSpec


class LabCommandError(RuntimeError):
    """A command on a lab node failed (exit status, or no answer in time): says which and why."""


# ------------------------------------------------------------------ the stack file


def load(path: str) -> tuple[dict, ClusterConfig]:
    """A lab stack file: (its raw config, the cluster); ConfigError listing every problem."""
    raw, problems = read_stack_file(path)
    if problems:
        raise ConfigError(problems, path)
    cluster, warnings = build(raw, source=path)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cluster.environment != "lab" or cluster.lab is None:
        raise ConfigError([f"environment: {cluster.environment!r} is not a lab stack (allowed: 'lab')"], path)
    return raw, cluster


def spec_for(cluster: ClusterConfig) -> LabSpec:
    """The lab a lab stack describes (its nodes' images get the packages the stack's nodes need)."""
    lab = cluster.lab
    # the lab's backup repository: a directory of the host, off both nodes, mounted on each
    repo = cluster.backup.repository
    shared = (repo.path,) if cluster.backup.enabled and repo.type == "posix" else ()
    nodes = [LabNode(n.name, n.address, tuple(cluster.node_packages()), shared) for n in cluster.nodes]
    if cluster.witness:
        nodes.append(LabNode(cluster.witness.name, cluster.witness.address, tuple(cluster.witness_packages())))
    # media nodes (mediaNodes): their own image layer; no backup repository (they keep no database)
    nodes += [LabNode(m.name, m.address, tuple(cluster.media_node_packages())) for m in cluster.media_nodes]
    spec = LabSpec(name=lab.name, bridge=lab.bridge, subnet=lab.subnet, host_address=lab.host_address,
                   nodes=tuple(nodes), release=cluster.release.codename)
    wanted = {"ssh.privateKeyFile": (cluster.ssh.private_key_file, str(spec.private_key_path)),
              "ssh.knownHostsFile": (cluster.ssh.known_hosts_file, str(spec.known_hosts_path))}
    bad = [f"{k}: {have!r} is not the lab's file (allowed: {want!r})" for k, (have, want) in wanted.items()
           if have != want]
    if bad:
        raise ConfigError(bad, "lab stack")
    return spec


# ------------------------------------------------------------------ the context


@dataclass
class LabContext:
    spec: LabSpec
    cluster: ClusterConfig
    host: str                     # this host's address on the lab bridge
    vip: str
    names: tuple[str, str]        # the two PBX nodes
    addresses: dict[str, str]     # the two PBX nodes' (etcd members with the witness: lab/drills.py)
    pg_port: int
    sip_port: int
    iface: str                    # the nodes' interface (the VIP's)
    log: Callable[[str], None] = print
    path: str = ""                # the stack file, when made from one
    raw: dict = field(default_factory=dict)
    workdir: str | None = None    # commands on the nodes run from here (None: ssh's default, root's home)
    timeout: float = 30           # seconds a command may take, unless told
    # what a drill run made on the cluster (lab/drills.py: setup)
    pg_password: str = ""
    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_cluster(cls, spec: LabSpec, cluster: ClusterConfig, log=print, **kw) -> LabContext:
        return cls(spec=spec, cluster=cluster, host=str(spec.host_address), vip=cluster.vip.address,
                   names=tuple(n.name for n in cluster.nodes), addresses={n.name: n.address for n in cluster.nodes},
                   pg_port=cluster.postgres.port, sip_port=cluster.kamailio.sip_port,
                   iface=cluster.network.interface, log=log, **kw)

    @classmethod
    def from_stack(cls, path: str, log=print, **kw) -> LabContext:
        """From a lab stack file (ConfigError when it is not one)."""
        raw, cluster = load(path)
        return cls.from_cluster(spec_for(cluster), cluster, log=log, path=path, raw=raw, **kw)

    # -------------------------------------------------------------- commands on the nodes

    def sh(self, node: str, cmd: str, timeout: float | None = None, check: bool = True, input: str | None = None,
           cwd: str | None = None) -> str:
        """A command's stdout. check: LabCommandError when it fails or does not end within timeout;
        otherwise what it printed ("" when it did not end)."""
        where = cwd or self.workdir
        full = f"cd {where} && {cmd}" if where else cmd
        try:
            out = machinery.run(self.spec, node, full, timeout=self.timeout if timeout is None else timeout,
                                input=input)
        except Exception as exc:  # subprocess.TimeoutExpired
            if check:
                raise LabCommandError(f"{node}: `{cmd[:200]}`: {exc}") from exc
            return ""
        if check and out.returncode != 0:
            raise LabCommandError(f"{node}: `{cmd[:200]}` exited {out.returncode}: {out.stderr.strip()[-800:]}")
        return out.stdout

    def psql(self, node: str, sql: str, db: str = "pbx", timeout: float = 120) -> str:
        """SQL as the postgres superuser on a node (on stdin: nothing in the process list); unaligned
        tuples only, stops at the first error."""
        return self.sh(node, f"runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d {db}", input=sql,
                       timeout=timeout, cwd="/")

    # -------------------------------------------------------------- the cluster

    def up(self) -> bool:
        return machinery.status(self.spec).up

    def peer(self, node: str) -> str:
        return self.names[1] if node == self.names[0] else self.names[0]

    def address(self, node: str) -> str:
        return self.addresses[node]

    def vip_owner(self) -> str | None:
        """The node holding the VIP (None: neither)."""
        for n in self.names:
            if f" {self.vip}/" in self.sh(n, "ip -4 -o addr show", check=False):
                return n
        return None

    def ha_status(self, node: str, extra: str = "") -> dict[str, str]:
        """The node's HA status (`hapbx-ha status`: vip, postgres, redis, daemon_hold, ...); extra: more
        shell whose key=value lines join it. {} when the node does not answer."""
        return parse_status(self.sh(node, f"{{ {STATUS}; {extra}; }}" if extra else STATUS,
                                    timeout=20, check=False, cwd="/"))

    def dsn(self) -> dict:
        """PostgreSQL through the VIP as pbx_admin (the drill writer)."""
        return dict(host=self.vip, port=self.pg_port, dbname="pbx", user="pbx_admin", password=self.pg_password,
                    sslmode="require", connect_timeout=2, application_name="hapbx-drill")
