"""SSH connection facts for pulumi-command: pinned host keys, bounded dialing."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from .config import HOST_KEY_TYPES, RSA_PIN_REFUSED, ClusterConfig, ConfigError


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one host; the private key is read once, as a secret, by __main__.py."""
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


#: which of a host's keys in known_hosts to pin, best first; ssh-rsa never (see config.RSA_PIN_REFUSED)
PREFERRED_KEY_TYPES = HOST_KEY_TYPES


def lookup_host_key(known_hosts: str, host: str, port: int) -> str | None:
    """The host's best key in a known_hosts file ('type base64'): ed25519, then ECDSA. ssh-keyscan
    lists a host's RSA key first most of the time; pulumi-command could not use it (it offers only
    the pinned key's type, and 'ssh-rsa' is refused by OpenSSH >= 8.8). Raises ConfigError when
    the host has only RSA (or other unusable) keys."""
    found: dict[str, str] = {}
    with open(known_hosts, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3 or line.startswith("#") or parts[0].startswith("@"):
                continue
            if _known_host_matches(parts[0], host, port):
                found.setdefault(parts[1], f"{parts[1]} {parts[2]}")
    for kind in PREFERRED_KEY_TYPES:
        if kind in found:
            return found[kind]
    if found:
        raise ConfigError([f"ssh.knownHostsFile: {known_hosts!r} has only {', '.join(sorted(found))} key(s) "
                           f"for {host}: " + RSA_PIN_REFUSED.removeprefix("is an ssh-rsa key: ")], "SSH settings")
    return None


def endpoints(cluster: ClusterConfig, preview: bool = False) -> tuple[dict[str, Endpoint], list[str]]:
    """Endpoints of every host, host keys resolved, and warnings. Under ``pulumi preview`` nothing
    connects, so a host key that cannot be read here (known_hosts on the deploy host only) is a
    warning; for an update every host without a pinned key is reported at once."""
    ssh = cluster.ssh
    hosts = list(cluster.nodes) + ([cluster.witness] if cluster.witness else []) + list(cluster.media_nodes)
    errors, warnings, out = [], [], {}
    known_hosts = ssh.known_hosts_file if ssh.known_hosts_file and os.path.exists(ssh.known_hosts_file) else None
    if ssh.known_hosts_file and not known_hosts and any(h.host_key is None for h in hosts):
        (warnings if preview else errors).append(
            f"ssh.knownHostsFile: {ssh.known_hosts_file!r} does not exist here (for a lab stack: run "
            "`./hapbx lab up` first; else ssh-keyscan -t ed25519 the hosts into it after checking them, or pin "
            "nodes[].hostKey in the stack)")
    for i, h in enumerate(hosts):
        key = h.host_key
        if key is None and known_hosts:
            try:
                key = lookup_host_key(known_hosts, h.address, ssh.port)
            except ConfigError as err:
                errors += err.errors
                continue
        if key is None and (known_hosts or not ssh.known_hosts_file):
            where = ("witness" if h is cluster.witness else f"nodes[{i}]" if i < len(cluster.nodes)
                     else f"mediaNodes[{cluster.media_nodes.index(h)}]")
            (warnings if preview else errors).append(
                f"{where}.hostKey: no pinned host key for {h.address} (allowed: a hostKey line, or an entry in "
                "ssh.knownHostsFile); refusing to connect unpinned")
        out[h.name] = Endpoint(h.name, h.address, ssh.port, ssh.user, key, ssh.dial_error_limit, ssh.per_dial_timeout)
    if errors:
        raise ConfigError(errors, "SSH settings")
    return out, warnings


def private_key_file(cluster: ClusterConfig, preview: bool = False) -> tuple[str | None, list[str]]:
    """The private key read from ``ssh.privateKeyFile`` (None when unset), and warnings. It is only
    needed to connect: under preview a file absent here is a warning, for an update an error."""
    path = cluster.ssh.private_key_file
    if not path:
        return None, []
    if not os.path.exists(path):
        message = (f"ssh.privateKeyFile: {path!r} does not exist here (set the key as secret config instead "
                   "to preview or update from any machine: `pulumi config set --secret high-cc-pbx:sshPrivateKey "
                   "< KEYFILE`)")
        if preview:
            return None, [message]
        raise ConfigError([message], "SSH settings")
    with open(path, encoding="utf-8") as fh:
        return fh.read(), []


def reach(cluster: ClusterConfig, preview: bool = False) -> tuple[dict[str, Endpoint], str | None, list[str]]:
    """Endpoints, the private key file's text and warnings; every SSH problem in one ConfigError."""
    errors: list[str] = []
    hosts: dict[str, Endpoint] = {}
    key_text, warnings = None, []
    try:
        hosts, found = endpoints(cluster, preview)
        warnings += found
    except ConfigError as err:
        errors += err.errors
    try:
        key_text, found = private_key_file(cluster, preview)
        warnings += found
    except ConfigError as err:
        errors += err.errors
    if errors:
        raise ConfigError(errors, "SSH settings")
    return hosts, key_text, warnings
