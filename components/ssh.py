"""SSH connection facts for pulumi-command: pinned host keys, bounded dialing."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from .config import ClusterConfig, ConfigError


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one host; private_key is read once, as a secret, by __main__.py."""
    name: str
    host: str
    port: int
    user: str
    host_key: str | None
    dial_error_limit: int
    per_dial_timeout: int


def _known_host_matches(pattern: str, host: str, port: int) -> bool:
    wanted = host if port == 22 else f"[{host}]:{port}"
    if pattern.startswith("|1|"):  # hashed entry: |1|salt|hmac-sha1(salt, host)
        _, _, salt, digest = pattern.split("|", 3)
        mac = hmac.new(base64.b64decode(salt), wanted.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    return wanted in pattern.split(",")


def lookup_host_key(known_hosts: str, host: str, port: int) -> str | None:
    """First non-revoked key for host in a known_hosts file ('type base64')."""
    with open(known_hosts, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3 or line.startswith("#") or parts[0].startswith("@"):
                continue
            if _known_host_matches(parts[0], host, port):
                return f"{parts[1]} {parts[2]}"
    return None


def endpoints(cluster: ClusterConfig) -> dict[str, Endpoint]:
    """Endpoints of every host, host keys resolved; every host without one is reported at once."""
    ssh = cluster.ssh
    hosts = list(cluster.nodes) + ([cluster.witness] if cluster.witness else [])
    errors, out = [], {}
    for i, h in enumerate(hosts):
        key = h.host_key
        if key is None and ssh.known_hosts_file:
            if not os.path.exists(ssh.known_hosts_file):
                errors.append(f"ssh.knownHostsFile: {ssh.known_hosts_file!r} does not exist (for a lab stack: run "
                              "`./hapbx lab up` first; else ssh-keyscan the hosts into it after checking them)")
                break
            key = lookup_host_key(ssh.known_hosts_file, h.address, ssh.port)
        if key is None:
            where = "witness" if h is cluster.witness else f"nodes[{i}]"
            errors.append(f"{where}.hostKey: no pinned host key for {h.address} (allowed: a hostKey line, or an "
                          "entry in ssh.knownHostsFile); refusing to connect unpinned")
        out[h.name] = Endpoint(h.name, h.address, ssh.port, ssh.user, key, ssh.dial_error_limit, ssh.per_dial_timeout)
    if ssh.private_key_file and not os.path.exists(ssh.private_key_file):
        errors.append(f"ssh.privateKeyFile: {ssh.private_key_file!r} does not exist")
    if errors:
        raise ConfigError(errors, "SSH settings")
    return out
