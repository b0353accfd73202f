"""What a lab is: its name, bridge, addresses and nodes, and where it keeps its files.

A spec is pure data; every path the lab machinery writes is derived here so the
layout lives in one place (``down`` removes exactly ``state_dir``).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

# Names end up in machine names, cgroup directory names, nft table names and
# file names: keep them to a charset that is safe in all of them.
_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")
_IFNAMSIZ = 15  # longest Linux interface name


@dataclass(frozen=True)
class LabNode:
    name: str                      # hostname inside the node, e.g. "pbx1"
    address: str                   # e.g. "10.77.0.11"
    packages: tuple[str, ...] = ()  # Debian packages baked into this node's image layer
    #: directories of the node that are one directory of the lab host, the same for every node that
    #: names it (the lab's off-node backup repository: LabSpec.shared_dir)
    shared: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the dataclass hashable.
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "shared", tuple(self.shared))


@dataclass(frozen=True)
class LabSpec:
    name: str            # e.g. "hapbx-lab"
    bridge: str          # e.g. "hapbx-br0"
    subnet: str          # e.g. "10.77.0.0/24"
    host_address: str    # the host on the bridge, the nodes' gateway
    nodes: tuple[LabNode, ...]
    release: str = "bookworm"  # Debian suite of every node's image
    state_dir: str = ""  # default /var/lib/hapbx/<name>
    cache_dir: str = "/var/cache/hapbx"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.state_dir:
            object.__setattr__(self, "state_dir", f"/var/lib/hapbx/{self.name}")
        problems = _validate(self)
        if problems:
            raise ValueError(f"invalid lab spec {self.name!r}: " + "; ".join(problems))

    # --- addressing -------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"lab {self.name} has no node {name!r} "
                       f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def machine_name(self, node_name: str) -> str:
        """systemd-nspawn machine name and cgroup name: unique across labs."""
        return f"{self.name}-{node_name}"

    @property
    def nft_table(self) -> str:
        # nft identifiers may not contain '-' unquoted; '_' keeps them plain.
        return self.name.replace("-", "_")

    # --- files ------------------------------------------------------------
    @property
    def state(self) -> Path:
        return Path(self.state_dir)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir)

    def shared_dir(self, node_path: str) -> Path:
        """Where on the host a node's shared directory lives (inside state_dir: `down` removes it)."""
        return self.state / "shared" / node_path.strip("/").replace("/", "-")

    @property
    def ssh_dir(self) -> Path:
        return self.state / "ssh"

    @property
    def private_key_path(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.ssh_dir / "known_hosts"


def _validate(spec: LabSpec) -> list[str]:
    problems = []
    if not _NAME.match(spec.name) or len(spec.name) > 40:
        problems.append(f"name {spec.name!r} must be lowercase letters, digits and '-', "
                        "start with a letter, at most 40 characters")
    if not spec.bridge or len(spec.bridge) > _IFNAMSIZ or "/" in spec.bridge or " " in spec.bridge:
        problems.append(f"bridge {spec.bridge!r} must be a valid interface name of at most "
                        f"{_IFNAMSIZ} characters")
    try:
        net = ipaddress.IPv4Network(spec.subnet)
    except ValueError as exc:
        return problems + [f"subnet {spec.subnet!r} is not an IPv4 network ({exc})"]
    if not net.is_private:
        problems.append(f"subnet {spec.subnet} must be a private range: the lab is isolated")
    addresses = {}
    for label, addr in [("host_address", spec.host_address)] + [
            (f"node {n.name} address", n.address) for n in spec.nodes]:
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            problems.append(f"{label} {addr!r} is not an IPv4 address")
            continue
        if ip not in net or ip in (net.network_address, net.broadcast_address):
            problems.append(f"{label} {addr} is not a host address in {spec.subnet}")
        if addr in addresses:
            problems.append(f"{label} {addr} is already used by {addresses[addr]}")
        addresses[addr] = label
    if not _NAME.match(spec.release):
        problems.append(f"release {spec.release!r} is not a Debian suite name")
    if not spec.nodes:
        problems.append("nodes must not be empty")
    names = [n.name for n in spec.nodes]
    for name in names:
        if not _NAME.match(name) or len(name) > 20:
            problems.append(f"node name {name!r} must be a short lowercase hostname")
    if len(set(names)) != len(names):
        problems.append(f"node names must be unique: {names}")
    return problems
