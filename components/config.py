"""Typed cluster configuration: one schema, two loaders, one validation.

``load_stack_file`` reads a ``Pulumi.<stack>.yaml`` (for ``hapbx check`` and
``render``); ``from_pulumi_config`` reads the running stack's config in
``__main__.py``. Both end in ``build`` which collects *every* problem and
raises one ``ConfigError`` naming each key, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from .releases import DEFAULT_RELEASE, RELEASES, SUPPORTED_KAMAILIO, SUPPORTED_POSTGRES, release
from .schema import ConfigError, Problems, describe, parse_object, setting

PROJECT = "high-cc-pbx"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# Secret config keys: values come from `pulumi config set --secret`, never from files in the repo.
SECRET_KEYS = ("vendorRepoToken", "sshPrivateKey", "kamailioTlsKey", "alertSmtpPassword", "alertWebhookToken",
               "backupCipherPass", "backupS3Key", "backupS3KeySecret", "backupSftpPrivateKey")
SUPPORTED = {"postgres": SUPPORTED_POSTGRES, "kamailio": SUPPORTED_KAMAILIO, "freeswitch": ("1.10",)}
#: how a version setting says "the one the node's Debian release packages"
RELEASE_OWN = ""


def _name(value: str) -> str | None:
    return None if NAME_RE.match(value) else "is not a valid name (lowercase letter first, then a-z, 0-9, '-', at most 31)"


def _ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return "is not an IPv4 address"
    return None


def _cidr(value: str) -> str | None:
    try:
        ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        return "is not an IPv4 network in CIDR form (e.g. 10.0.0.0/24)"
    return None


def _ifname(value: str) -> str | None:
    return None if re.match(r"^[A-Za-z0-9_.-]{1,15}$", value) else "is not an interface name (1-15 of A-Z a-z 0-9 _ . -)"


def _abspath(value: str) -> str | None:
    return None if value.startswith("/") and ".." not in value.split("/") else "is not an absolute path"


#: host key types a pin may have; pulumi-command offers only the pinned key's own type
#: (remote/connection.go: HostKeyAlgorithms = [publicKey.Type()])
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
RSA_PIN_REFUSED = ("is an ssh-rsa key: pulumi-command then offers only the 'ssh-rsa' (SHA-1) algorithm, which "
                   "OpenSSH 8.8 and later refuse, so no connection could be made (pin the host's ed25519 key "
                   "instead: `ssh-keyscan -t ed25519 HOST`, checked against the host's own "
                   "/etc/ssh/ssh_host_ed25519_key.pub)")


def _host_key(value: str) -> str | None:
    parts = value.split()
    if parts[:1] == ["ssh-rsa"]:
        return RSA_PIN_REFUSED
    ok = len(parts) >= 2 and parts[0] in HOST_KEY_TYPES
    return None if ok else "is not an SSH public host key line ('ssh-ed25519 AAAA...')"


PORT = {"minimum": 1, "maximum": 65535}


@dataclass(frozen=True, kw_only=True)
class LabSettings:
    name: str = setting("name", "Lab name: prefix of node machines, state dir /var/lib/hapbx/<name>.", check=_name)
    bridge: str = setting("bridge", "Bridge the lab creates on the host (no other network attached).", check=_ifname)
    subnet: str = setting("subnet", "The lab's own subnet on that bridge.", check=_cidr)
    host_address: str = setting("hostAddress", "The host's address on the bridge (the nodes' gateway).", check=_ipv4)


@dataclass(frozen=True, kw_only=True)
class SshSettings:
    user: str = setting("user", "SSH user on every node (root, or a user with passwordless sudo).", "root")
    port: int = setting("port", "SSH port on every node.", 22, **PORT)
    private_key_file: Optional[str] = setting(
        "privateKeyFile", "Private key file on the machine running `pulumi up`, read as a secret (not needed by "
        "`pulumi preview`). Unset: the `sshPrivateKey` secret, else ssh-agent.", None, check=_abspath)
    known_hosts_file: Optional[str] = setting(
        "knownHostsFile", "known_hosts file to pin host keys from when a host has no `hostKey` (ed25519, then "
        "ECDSA; not needed by `pulumi preview`).", None, check=_abspath)
    dial_error_limit: int = setting("dialErrorLimit", "SSH dial attempts before a step fails.", 10, minimum=1, maximum=100)
    per_dial_timeout: int = setting("perDialTimeout", "Seconds per SSH dial attempt.", 10, minimum=1, maximum=300)


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    name: str = setting("name", "Node name: hostname and resource name prefix.", check=_name)
    address: str = setting("address", "Node address on the cluster network.", check=_ipv4)
    host_key: Optional[str] = setting("hostKey", "Pinned SSH host public key of the node.", None, check=_host_key)
    memory_mb: int = setting("memoryMb", "Memory of the node in MiB; sizes PostgreSQL and checks every memory setting fits.",
                             minimum=512, maximum=4 * 1024 * 1024)
    cpus: int = setting("cpus", "CPU cores of the node; sizes workers.", minimum=1, maximum=1024)
    priority: int = setting("priority", "VRRP priority (both nodes are BACKUP + nopreempt; breaks the first tie).",
                            100, minimum=1, maximum=254)


@dataclass(frozen=True, kw_only=True)
class WitnessSettings:
    name: str = setting("name", "Witness name (third etcd member, holds no data).", check=_name)
    address: str = setting("address", "Witness address, reachable from both nodes.", check=_ipv4)
    host_key: Optional[str] = setting("hostKey", "Pinned SSH host public key of the witness.", None, check=_host_key)


@dataclass(frozen=True, kw_only=True)
class MediaNodeSettings:
    name: str = setting("name", "Media node name: hostname, resource name prefix, its recordings directory and "
                        "its CDR sender (cdr-<name>).", check=_name)
    address: str = setting("address", "Media node address, in the nodes' subnet: the dispatcher sends calls to "
                           "<address>:media.sipPort.", check=_ipv4)
    host_key: Optional[str] = setting("hostKey", "Pinned SSH host public key of the media node.", None,
                                      check=_host_key)


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    prefix: int = setting("prefix", "Prefix length of the nodes' subnet.", 24, minimum=8, maximum=30)
    gateway: str = setting("gateway", "Default gateway; also probed by keepalived to detect isolation.", check=_ipv4)
    interface: str = setting("interface", "Interface carrying node addresses and the VIP.", check=_ifname)
    domain: str = setting("domain", "DNS domain appended to node names in /etc/hosts.", "pbx.internal")


@dataclass(frozen=True, kw_only=True)
class VipSettings:
    address: str = setting("address", "The virtual IP every service is reached on.", check=_ipv4)
    router_id: int = setting("routerId", "VRRP virtual router id, unique on the segment.", 51, minimum=1, maximum=255)
    vrrp_version: int = setting("vrrpVersion", "VRRP version; 3 allows fractional advert intervals.", 3, choices=(2, 3))
    advert_interval: float = setting("advertInterval", "Seconds between VRRP adverts (0.1 s moved the VIP in 0.12 s on the lab).",
                                     1.0, minimum=0.01, maximum=255)
    garp_repeat: int = setting("garpRepeat", "Gratuitous ARPs sent on takeover.", 5, minimum=1, maximum=100)


@dataclass(frozen=True, kw_only=True)
class NtpSettings:
    servers: list[str] = setting("servers", "NTP servers; empty keeps the distribution's default pool.", [])
    orphan_peers: bool = setting("orphanPeers", "Nodes peer with each other in orphan mode (isolated networks).", False)
    clock_control: bool = setting("clockControl", "chrony may set the clock (false in containers, which cannot).", True)


@dataclass(frozen=True, kw_only=True)
class OsSettings:
    release: str = setting("release", "Debian release of the nodes and the witness (the deploy refuses a node running "
                           "another); it decides which PostgreSQL and Kamailio Debian itself provides.",
                           DEFAULT_RELEASE, choices=tuple(RELEASES))
    apply_sysctl: bool = setting("applySysctl", "Apply kernel tuning; false only where /proc/sys is read-only (containers).", True)
    nofile: int = setting("nofile", "Open-file limit for the daemons.", 1048576, minimum=1024, maximum=1 << 24)
    journald_max_use_mb: int = setting("journaldMaxUseMb", "Cap of the persistent journal.", 1024, minimum=16, maximum=1 << 20)
    timezone: str = setting("timezone", "Node timezone (CDR times are stored in UTC regardless).", "UTC")
    ntp: NtpSettings = setting("ntp", "Time synchronisation (chrony).", NtpSettings)


@dataclass(frozen=True, kw_only=True)
class FirewallSettings:
    ssh_allow_from: list[str] = setting("sshAllowFrom", "Networks allowed to SSH (empty: anywhere).", [])
    sip_allow_from: list[str] = setting("sipAllowFrom", "Networks allowed to send SIP and RTP (empty: anywhere).", [])
    rtp_port_min: int = setting("rtpPortMin", "First RTP port of the media engine.", 16384, **PORT)
    rtp_port_max: int = setting("rtpPortMax", "Last RTP port of the media engine.", 32768, **PORT)


@dataclass(frozen=True, kw_only=True)
class Repository:
    name: str = setting("name", "Repository file name under /etc/apt/sources.list.d.", check=_name)
    uri: str = setting("uri", "Repository URI.")
    suite: str = setting("suite", "Suite, e.g. bookworm-pgdg.")
    components: list[str] = setting("components", "Components, e.g. [main].", ["main"])
    key_url: str = setting("keyUrl", "URL of the archive signing key (stored under /etc/apt/keyrings).")
    token_auth: bool = setting("tokenAuth", "Repository needs the `vendorRepoToken` secret (apt auth.conf.d).", False)


@dataclass(frozen=True, kw_only=True)
class PackageSettings:
    repositories: list[Repository] = setting("repositories", "Vendor repositories added before installing packages.", [])
    extra: list[str] = setting("extra", "Additional Debian packages for every node.", [])


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    version: str = setting("version", "PostgreSQL major version; unset: the release's own (bookworm 15, trixie 17). "
                           "Another major needs its vendor repository in packages.repositories.", RELEASE_OWN,
                           choices=(RELEASE_OWN,) + SUPPORTED["postgres"])
    port: int = setting("port", "PostgreSQL port.", 5432, **PORT)
    initial_primary: str = setting("initialPrimary", "Node that is primary at first deploy.", "")
    max_connections: int = setting("maxConnections", "Connection limit (Kamailio children x 2 + services + headroom).",
                                   300, minimum=20, maximum=10000)
    memory_share: float = setting("memoryShare", "Share of node memory for shared_buffers.", 0.25, minimum=0.05, maximum=0.5)


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    port: int = setting("port", "Redis port.", 6379, **PORT)
    maxmemory_mb: int = setting("maxmemoryMb", "Redis maxmemory (noeviction: a full queue refuses, never drops).",
                                256, minimum=16, maximum=1 << 20)


@dataclass(frozen=True, kw_only=True)
class KamailioSettings:
    version: str = setting("version", "Kamailio version installed on the nodes; unset: the release's own (bookworm "
                           "5.6, trixie 6.0). Another needs its vendor repository in packages.repositories.",
                           RELEASE_OWN, choices=(RELEASE_OWN,) + SUPPORTED["kamailio"])
    sip_port: int = setting("sipPort", "SIP port (UDP and TCP) on the VIP and node addresses.", 5060, **PORT)
    tls: bool = setting("tls", "Also listen for SIP over TLS (phones choose UDP, TCP or TLS).", True)
    tls_port: int = setting("tlsPort", "SIP TLS port.", 5061, **PORT)
    tls_certificate: Optional[str] = setting(
        "tlsCertificate", "PEM chain (server certificate first) of the SIP TLS certificate, for the VIP's name; "
        "its key is the secret kamailioTlsKey. Unset: a certificate from the cluster's own CA (phones must "
        "trust that CA).", None, check=lambda v: None if "-----BEGIN CERTIFICATE-----" in v else "is not a PEM certificate")
    nonce_expire_seconds: int = setting("nonceExpireSeconds", "Lifetime of a digest challenge (nonce counts and "
                                        "one-time nonces guard replays within it).", 300, minimum=30, maximum=3600)
    dialog_timeout_seconds: int = setting("dialogTimeoutSeconds", "A call whose BYE never arrives stops counting "
                                          "against its extension's and trunk's limits after this long.", 14400,
                                          minimum=600, maximum=86400)
    dmq_port: int = setting("dmqPort", "Port of the DMQ replication listener (between nodes only).", 5090, **PORT)
    children: int = setting("children", "SIP worker processes per listener.", 16, minimum=1, maximum=256)
    shm_mb: int = setting("shmMb", "Shared memory (-m); 256+ for DMQ sync of 10k contacts.", 512, minimum=64, maximum=65536)
    pkg_mb: int = setting("pkgMb", "Private memory per process (-M).", 16, minimum=4, maximum=1024)
    flood_requests: int = setting("floodRequests", "Requests one address may send per floodWindowSeconds before "
                                  "it is banned (pike).", 40, minimum=5, maximum=1000000)
    flood_window_seconds: int = setting("floodWindowSeconds", "Sampling window of the flood check.", 2,
                                        minimum=1, maximum=60)
    ban_seconds: int = setting("banSeconds", "How long a flooding, scanning or password-guessing address is "
                               "ignored (the ban is replicated to the peer).", 300, minimum=10, maximum=86400)
    auth_fail_limit: int = setting("authFailLimit", "Failed digest authentications from one address (each within "
                                   "banSeconds of the last) before it is banned.", 10, minimum=1, maximum=100000)
    flood_exempt_networks: list[str] = setting("floodExemptNetworks", "Networks never flood- or auth-banned (an "
                                               "SBC, a load generator); they still authenticate.", [])


@dataclass(frozen=True, kw_only=True)
class MediaSettings:
    engine: str = setting("engine", "Media engine: FreeSWITCH, or a SIPp UAS stand-in where FreeSWITCH is not packaged.",
                          "freeswitch", choices=("freeswitch", "sipp-uas"))
    version: str = setting("version", "FreeSWITCH version (prod).", "1.10", choices=SUPPORTED["freeswitch"])
    sip_port: int = setting("sipPort", "Media engine SIP port on the node address (only Kamailio may reach it).", 5080, **PORT)
    max_sessions: int = setting("maxSessions", "Concurrent call limit of the engine.", 1000, minimum=1, maximum=100000)
    sessions_per_second: int = setting("sessionsPerSecond", "Call setup rate limit of the engine.", 200, minimum=1, maximum=10000)


def _number(value: str) -> str | None:
    return None if re.match(r"^[0-9]{2,15}$", value) else "is not an extension number (2 to 15 digits)"


def _prefix(value: str) -> str | None:
    return None if re.match(r"^\+?[0-9]{0,15}$", value) else "is not a dial prefix ('' or up to 15 digits, '+' first)"


def _regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as err:
        return f"is not a regular expression ({err})"
    return None if value.startswith("^") and value.endswith("$") else "must be anchored (^...$)"


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    number: str = setting("number", "Extension number of the queue.", check=_number)
    name: str = setting("name", "Queue name (mod_callcenter queue <name>@default).", check=_name)
    strategy: str = setting("strategy", "How agents are picked.", "longest-idle-agent", choices=(
        "ring-all", "longest-idle-agent", "round-robin", "top-down", "agent-with-least-talk-time",
        "agent-with-fewest-calls", "sequentially-by-agent-order", "random", "ring-progressively"))
    agents: list[str] = setting("agents", "User extension numbers answering this queue.", [])
    max_wait_seconds: int = setting("maxWaitSeconds", "Longest wait before the caller leaves the queue (0: no limit).",
                                    300, minimum=0, maximum=86400)
    moh: str = setting("moh", "Music on hold while waiting.", "local_stream://moh")


@dataclass(frozen=True, kw_only=True)
class IvrOption:
    digit: str = setting("digit", "Key pressed.", choices=tuple("0123456789*#"))
    target: str = setting("target", "Extension number it transfers to (user, queue or IVR).", check=_number)


@dataclass(frozen=True, kw_only=True)
class IvrSettings:
    number: str = setting("number", "Extension number of the IVR menu.", check=_number)
    name: str = setting("name", "Menu name.", check=_name)
    greeting: str = setting("greeting", "Sound played (a FreeSWITCH sound path).", "ivr/ivr-welcome.wav")
    options: list[IvrOption] = setting("options", "Keys and where they lead.", [])
    timeout_seconds: int = setting("timeoutSeconds", "Seconds to wait for a key.", 10, minimum=1, maximum=120)
    default_target: Optional[str] = setting("defaultTarget", "Where a caller who presses nothing goes (unset: hang up).",
                                            None, check=_number)


@dataclass(frozen=True, kw_only=True)
class TrunkSettings:
    name: str = setting("name", "Trunk (FreeSWITCH gateway) name.", check=_name)
    host: str = setting("host", "Provider's SIP host or address.")
    port: int = setting("port", "Provider's SIP port.", 5060, **PORT)
    transport: str = setting("transport", "Transport to the provider.", "udp", choices=("udp", "tcp", "tls"))
    prefixes: list[str] = setting("prefixes", "Dialled prefixes sent to this trunk ('' for any other number); trunks "
                                  "sharing a prefix are tried in the order listed.", [])
    strip_prefix: bool = setting("stripPrefix", "Remove the matched prefix before sending.", False)
    prepend: str = setting("prepend", "Digits put in front of the number sent.", "", check=_prefix)
    caller_id: Optional[str] = setting("callerId", "Caller ID number presented on this trunk (unset: the caller's).",
                                       None, check=_prefix)
    caller_id_name: Optional[str] = setting(
        "callerIdName", "Caller ID name presented on this trunk (unset: the number presented; an internal "
        "display name never leaves through a trunk).", None, check=lambda v: None if re.match(
            r"^[A-Za-z0-9 .'&()-]{1,40}$", v) else "is not a caller name (1-40 letters, digits, space, .'&()-)")
    national_prefixes: list[str] = setting("nationalPrefixes", "Dialled prefixes this trunk carries as national "
                                           "calls (class of service 'national').", [])
    international_prefixes: list[str] = setting("internationalPrefixes", "Dialled prefixes of international "
                                                "calls; any number of the trunk no class prefix names is "
                                                "international too.", [])
    premium_prefixes: list[str] = setting("premiumPrefixes", "Dialled prefixes of premium-rate and special "
                                          "numbers (class 'premium': no extension has it by default).", [])
    max_channels: int = setting("maxChannels", "Concurrent calls through this trunk; more are refused "
                                "(503) by Kamailio.", 30, minimum=1, maximum=10000)
    addresses: list[str] = setting("addresses", "Addresses the provider sends calls from (inbound ACL and "
                                   "firewall for dialplan.trunkSipPort); unset: host, when it is an address.", [])


@dataclass(frozen=True, kw_only=True)
class DialplanSettings:
    user_pattern: str = setting("userPattern", "Regular expression of user extension numbers (anchored).",
                                "^[1-6][0-9]{2,3}$", check=_regex)
    queues: list[QueueSettings] = setting("queues", "Call queues (mod_callcenter).", [])
    ivrs: list[IvrSettings] = setting("ivrs", "IVR menus.", [])
    trunks: list[TrunkSettings] = setting("trunks", "Outbound trunks (IP-authenticated gateways).", [])
    trunk_sip_port: int = setting("trunkSipPort", "FreeSWITCH port on the node address facing the trunks.", 5081, **PORT)
    recording_fallback: str = setting("recordingFallback", "Recording when the policy cannot be read from the "
                                      "database (the policies themselves are rows of pbx.recording_policies).",
                                      "never", choices=("always", "never"))


@dataclass(frozen=True, kw_only=True)
class RecordingSettings:
    directory: str = setting("directory", "Finished recordings, replicated to the peer by lsyncd.",
                             "/var/lib/hapbx/recordings", check=_abspath)
    tmpfs_dir: str = setting("tmpfsDir", "tmpfs where live calls are recorded.", "/var/spool/hapbx/live", check=_abspath)
    tmpfs_mb: int = setting("tmpfsMb", "Size of the live-recording tmpfs.", 20480, minimum=16, maximum=1 << 22)
    sync_delay_seconds: int = setting("syncDelaySeconds", "lsyncd batching delay.", 5, minimum=0, maximum=3600)
    rsync_options: list[str] = setting("rsyncOptions", "Extra rsync options for the copy to the peer "
                                       "(e.g. --bwlimit=20000).", [])


@dataclass(frozen=True, kw_only=True)
class EtcdSettings:
    client_port: int = setting("clientPort", "etcd client port (nodes and witness only).", 2379, **PORT)
    peer_port: int = setting("peerPort", "etcd peer port (nodes and witness only).", 2380, **PORT)
    lease_ttl_seconds: int = setting("leaseTtlSeconds", "Leader lease TTL.", 2, minimum=1, maximum=60)
    renew_interval_seconds: float = setting("renewIntervalSeconds", "Leader lease renewal period.", 0.25,
                                            minimum=0.05, maximum=30)


@dataclass(frozen=True, kw_only=True)
class CdrSettings:
    receiver_port: int = setting(
        "receiverPort", "CDR receiver port on the VIP, the node address (HTTPS, the cluster CA's certificate) and "
        "loopback (HTTP): FreeSWITCH's mod_json_cdr posts to http://127.0.0.1:<port>/cdr, the peer's "
        "https://<peer>:<port>/cdr as fallback.", 8088, **PORT)
    max_body_kb: int = setting("maxBodyKb", "Largest CDR body accepted; a larger post gets 413.", 256,
                               minimum=4, maximum=65536)
    batch_size: int = setting("batchSize", "CDRs per PostgreSQL transaction of the worker.", 500, minimum=1, maximum=10000)
    wait_replica_ms: int = setting(
        "waitReplicaMs", "After each push the receiver waits up to this long for the Redis replica's ack; "
        "what the replica did not confirm is committed to PostgreSQL before it is acknowledged, so a master "
        "crash loses nothing acknowledged (0: no wait, acknowledged once on the master).", 100, minimum=0,
        maximum=5000)
    redis_timeout_seconds: float = setting(
        "redisTimeoutSeconds", "How long a post may wait for a Redis master (a failover) before it gets 503 and "
        "FreeSWITCH retries.", 3.0, minimum=0.1, maximum=60)


@dataclass(frozen=True, kw_only=True)
class AdminSettings:
    port: int = setting("port", "Admin API port on the VIP and each node address (HTTPS, the cluster CA's "
                                                 "certificate: stack output clusterCa) and on loopback (HTTP).", 8080, **PORT)
    allow_from: list[str] = setting("allowFrom", "Networks allowed to reach the admin API (empty: the nodes only).", [])


@dataclass(frozen=True, kw_only=True)
class HaSettings:
    check_interval: int = setting("checkIntervalSeconds", "Seconds between keepalived health checks (whole seconds).",
                                  1, minimum=1, maximum=60)
    check_fall: int = setting("checkFall", "Failed local checks before FAULT (VIP released).", 2, minimum=1, maximum=30)
    check_rise: int = setting("checkRise", "Passed checks before leaving FAULT.", 2, minimum=1, maximum=30)
    reach_interval_ms: int = setting("reachIntervalMs", "Gateway/witness ping period of the reachability watcher.",
                                     100, minimum=20, maximum=1000)
    reach_lost_after_ms: int = setting("reachLostAfterMs", "No gateway/witness reply for this long: isolated, FAULT "
                                       "(VIP released).", 800, minimum=200, maximum=30000)
    promote_timeout: int = setting("promoteTimeoutSeconds", "pg_promote wait; failing this long, the leader resigns.",
                                   30, minimum=5, maximum=600)
    rejoin: str = setting("rejoin", "Rejoin a fenced or diverged ex-primary automatically, or leave it to the operator.",
                          "auto", choices=("auto", "manual"))
    rejoin_backoff: int = setting("rejoinBackoffSeconds", "Wait after a failed automatic rejoin.", 30,
                                  minimum=1, maximum=3600)
    sync_relax_after: int = setting("syncRelaxAfterSeconds", "Standby gone this long (no reply for syncReplyMaxMs): "
                                    "the lease holder marks it stale and relaxes synchronous replication; commits "
                                    "wait for it until then (a cut link: writes back after about syncReplyMaxMs + "
                                    "this + 1 s).", 2, minimum=1, maximum=3600)
    no_witness_timeout: int = setting("noWitnessTimeoutSeconds", "promote-after-timeout: peer silent this long.", 30,
                                      minimum=5, maximum=3600)
    leader_weight: int = setting("leaderWeight", "VRRP priority bonus of the lease holder.", 50, minimum=1, maximum=100)
    fast_stop_ms: int = setting("fastStopMs", "Orderly stop of a resigning primary before an immediate one.", 5000,
                                minimum=100, maximum=60000)
    moved_aside_retention_days: int = setting(
        "movedAsideRetentionDays", "A data directory rejoin moved aside (pg_rewind impossible) is deleted after this "
        "many days at the next rejoin; 0 keeps it until `hapbx-ha discard-moved-aside`.", 7, minimum=0, maximum=3650)
    stream_lost_after: int = setting("streamLostAfterSeconds", "A standby not streaming from the leading peer "
                                     "this long is rejoined (rejoin auto).", 15, minimum=2, maximum=3600)
    sync_reply_max_ms: int = setting("syncReplyMaxMs", "The standby counts as synchronous only if it replied within "
                                     "this (it replies every second; a cut link leaves it 'streaming' for 30 s).",
                                     2000, minimum=1500, maximum=30000)


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    rotate: int = setting(
        "rotate", "Raise it to issue every node's service keys and certificates again from the cluster CA (which "
        "stays); each node's services reload theirs, one node at a time. Certificates are renewed by themselves "
        "within 30 days of their end.", 0, minimum=0, maximum=1_000_000)


@dataclass(frozen=True, kw_only=True)
class AlertEmail:
    to: list[str] = setting("to", "Addresses alerts are mailed to (empty: no e-mail receiver).", [])
    sender: str = setting("from", "Envelope and From address of alert mail.", "")
    smarthost: str = setting("smarthost", "SMTP relay as host:port (submission, STARTTLS required).", "")
    username: str = setting("username", "SMTP login; its password is the secret config alertSmtpPassword.", "")


@dataclass(frozen=True, kw_only=True)
class MonitoringSettings:
    enabled: bool = setting("enabled", "Exporters, a Prometheus and an Alertmanager on each PBX node (both scrape both; "
                            "the two Alertmanagers gossip so a notification goes out once).", True)
    cluster_label: str = setting("clusterLabel", "The `cluster` label on every series and alert (routes group by it).",
                                 "hapbx", check=_name)
    allow_from: list[str] = setting("allowFrom", "Networks allowed to reach the Prometheus and Alertmanager UIs "
                                    "(empty: the nodes only).", [])
    scrape_interval_seconds: int = setting("scrapeIntervalSeconds", "Scrape and rule evaluation period.", 5,
                                           minimum=1, maximum=300)
    retention_days: int = setting("retentionDays", "Days of samples each Prometheus keeps.", 15, minimum=1, maximum=3650)
    node_exporter_port: int = setting("nodeExporterPort", "prometheus-node-exporter, on the node address.", 9100, **PORT)
    postgres_exporter_port: int = setting("postgresExporterPort", "prometheus-postgres-exporter, on the node address.",
                                          9187, **PORT)
    redis_exporter_port: int = setting("redisExporterPort", "prometheus-redis-exporter, on the node address.", 9121,
                                       **PORT)
    kamailio_port: int = setting("kamailioPort", "Kamailio's own statistics (xhttp_prom, HTTP), on the node address.",
                                 9494, **PORT)
    hapbx_exporter_port: int = setting("hapbxExporterPort", "The HA core's, CDR pipeline's and media engine's state "
                                       "(hapbx-exporter), on the node address.", 9480, **PORT)
    etcd_metrics_port: int = setting("etcdMetricsPort", "etcd's metrics listener (HTTP, /metrics only) on every "
                                     "member's address.", 2381, **PORT)
    prometheus_port: int = setting("prometheusPort", "Prometheus UI and API, on the node address.", 9090, **PORT)
    alertmanager_port: int = setting("alertmanagerPort", "Alertmanager UI and API, on the node address.", 9093, **PORT)
    alertmanager_cluster_port: int = setting("alertmanagerClusterPort", "Alertmanager gossip between the two nodes "
                                             "(TCP and UDP).", 9094, **PORT)
    webhook_urls: list[str] = setting("webhookUrls", "Alertmanager webhook receivers (alerts and resolutions POSTed as "
                                      "JSON); a bearer token, if any, is the secret config alertWebhookToken.", [])
    email: AlertEmail = setting("email", "Alertmanager e-mail receiver.", AlertEmail)
    # thresholds of the alert rules (README, monitoring)
    node_down_seconds: int = setting("nodeDownSeconds", "A scrape target unanswered this long: down (TargetDown, "
                                     "KamailioDown, ServiceDown, EtcdMemberDown; NodeDown needs no wait: every "
                                     "target of the node down at once).", 10,
                                     minimum=1, maximum=3600)
    replication_lag_bytes: int = setting("replicationLagBytes", "Standby replay behind the primary by more bytes.",
                                         16 << 20, minimum=1024)
    replication_lag_seconds: int = setting("replicationLagSeconds", "Standby replay behind by more seconds.", 30,
                                           minimum=1, maximum=86400)
    slot_retained_bytes: int = setting("slotRetainedBytes", "WAL a replication slot holds back on the primary.",
                                       1 << 30, minimum=1 << 20)
    cdr_queue_max: int = setting("cdrQueueMax", "CDRs waiting in the Redis queue (the worker is behind).", 5000,
                                 minimum=1)
    cdr_lag_seconds: int = setting("cdrLagSeconds", "Oldest queued CDR older than this: ingestion stalled.", 120,
                                   minimum=5, maximum=86400)
    disk_full_hours: int = setting("diskFullHours", "A filesystem or tmpfs predicted full within this many hours.",
                                   4, minimum=1, maximum=720)
    disk_used_percent: int = setting("diskUsedPercent", "A filesystem or tmpfs used above this share.", 90,
                                     minimum=50, maximum=99)
    registrations_drop_percent: int = setting("registrationsDropPercent", "Registrations fell by this share within "
                                              "10 minutes.", 30, minimum=5, maximum=100)
    auth_failures_per_minute: int = setting("authFailuresPerMinute", "SIP authentication failures per minute "
                                            "(a password-guessing attack).", 30, minimum=1)
    bans_per_minute: int = setting("bansPerMinute", "Source addresses banned (pike) per minute.", 5, minimum=1)
    relay_refusals_per_minute: int = setting("relayRefusalsPerMinute", "Requests refused as relay attempts per "
                                             "minute.", 10, minimum=1)


@dataclass(frozen=True, kw_only=True)
class BackupRepository:
    type: str = setting("type", "Where pgBackRest keeps backups and WAL, and recordings are copied: a mounted volume "
                        "(posix), an S3-compatible bucket (s3) or an SFTP server (sftp, pgBackRest 2.46 and later: "
                        "Debian 13). Off both nodes in prod.", "posix", choices=("posix", "s3", "sftp"))
    path: str = setting("path", "The repository's path: the mount point on both nodes (posix), the path inside the "
                        "bucket (s3) or on the server (sftp).", "/var/lib/hapbx-backup", check=_abspath)
    s3_endpoint: str = setting("s3Endpoint", "S3 endpoint host (s3).", "")
    s3_bucket: str = setting("s3Bucket", "S3 bucket (s3); its access key is the secret config backupS3Key and "
                             "backupS3KeySecret.", "")
    s3_region: str = setting("s3Region", "S3 region (s3).", "")
    s3_uri_style: str = setting("s3UriStyle", "S3 addressing (s3): host (virtual-hosted) or path.", "host",
                                choices=("host", "path"))
    sftp_host: str = setting("sftpHost", "SFTP server (sftp); the nodes log in with the secret config "
                             "backupSftpPrivateKey.", "")
    sftp_port: int = setting("sftpPort", "SFTP port (sftp).", 22, **PORT)
    sftp_user: str = setting("sftpUser", "SFTP login (sftp).", "")
    sftp_host_key: str = setting("sftpHostKey", "The SFTP server's SHA-1 host key fingerprint (sftp; pgBackRest "
                                 "checks it).", "")


@dataclass(frozen=True, kw_only=True)
class BackupSettings:
    enabled: bool = setting("enabled", "pgBackRest: continuous WAL archiving from whichever node is primary, "
                            "scheduled full and differential backups from the standby, an encrypted repository "
                            "(cipher pass: backupCipherPass); recordings retention and copy.", True)
    stanza: str = setting("stanza", "The pgBackRest stanza of the cluster.", "hapbx", check=_name)
    repository: BackupRepository = setting("repository", "The backup repository.", BackupRepository)
    full_schedule: str = setting("fullSchedule", "When full backups run (systemd OnCalendar).", "Sun *-*-* 02:30:00")
    diff_schedule: str = setting("diffSchedule", "When differential backups run (systemd OnCalendar).",
                                 "Mon..Sat *-*-* 02:30:00")
    retention_full: int = setting("retentionFull", "Full backups kept (and the WAL to restore to any time since the "
                                  "oldest).", 2, minimum=1, maximum=100)
    retention_diff: int = setting("retentionDiff", "Differential backups kept.", 6, minimum=1, maximum=100)
    archive_push_queue_max_mb: int = setting(
        "archivePushQueueMaxMb", "WAL waiting for the repository beyond this is dropped from the archive (and "
        "reported) rather than filling the primary's disk: a slow or lost repository never stops writes.",
        4096, minimum=64)
    process_max: int = setting("processMax", "Parallel processes of a backup or restore.", 2, minimum=1, maximum=32)
    tls_port: int = setting("tlsPort", "pgBackRest's TLS server on each node (the standby's backup reaches the "
                            "primary's PostgreSQL through it; client certificates from the cluster CA).", 8432, **PORT)
    max_age_hours: int = setting("maxAgeHours", "No successful backup for this long: BackupTooOld.", 26,
                                 minimum=1, maximum=24 * 60)
    recordings_schedule: str = setting("recordingsSchedule", "When recordings past their policy's retention are "
                                       "deleted and the rest copied to the repository (systemd OnCalendar).",
                                       "*-*-* 03:30:00")
    recordings_dry_run: bool = setting("recordingsDryRun", "Log what recordings retention would delete, delete "
                                       "nothing.", False)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    environment: str = setting("environment", "Which kind of stack this is.", choices=("prod", "lab"))
    lab: Optional[LabSettings] = setting("lab", "The local lab (lab stacks only).", None)
    ssh: SshSettings = setting("ssh", "How the program reaches the nodes.", SshSettings)
    nodes: list[NodeSettings] = setting("nodes", "Exactly two PBX nodes.")
    witness: Optional[WitnessSettings] = setting("witness", "Third small machine for the etcd quorum (strongly advised).", None)
    no_witness_policy: Optional[str] = setting(
        "noWitnessPolicy", "Risk taken when there is no witness: never promote automatically when the peer is lost, "
        "or promote after a timeout and accept divergence under a partition.", None,
        choices=("manual-promotion", "promote-after-timeout"))
    media_nodes: list[MediaNodeSettings] = setting(
        "mediaNodes", "Media-only hosts beside the two PBX nodes (scale-out): each gets the OS baseline and "
        "the media engine (media.engine), is one more dispatcher destination (probed with OPTIONS like the "
        "nodes' engines), posts its CDRs to the VIP's receiver over HTTPS and sends its recordings to both "
        "nodes (lsyncd). Empty: the nodes' own engines only.", [])
    network: NetworkSettings = setting("network", "The nodes' network.")
    vip: VipSettings = setting("vip", "The virtual IP (keepalived).")
    os: OsSettings = setting("os", "Operating-system baseline.", OsSettings)
    firewall: FirewallSettings = setting("firewall", "nftables firewall.", FirewallSettings)
    packages: PackageSettings = setting("packages", "Package sources and extra packages.", PackageSettings)
    postgres: PostgresSettings = setting("postgres", "PostgreSQL pair.", PostgresSettings)
    redis: RedisSettings = setting("redis", "Redis pair (CDR queue).", RedisSettings)
    kamailio: KamailioSettings = setting("kamailio", "Kamailio SIP proxy/registrar.", KamailioSettings)
    media: MediaSettings = setting("media", "Media engine.", MediaSettings)
    dialplan: DialplanSettings = setting("dialplan", "FreeSWITCH's static dialplan: queues, IVRs, trunks.",
                                         DialplanSettings)
    recordings: RecordingSettings = setting("recordings", "Call recordings.", RecordingSettings)
    etcd: EtcdSettings = setting("etcd", "etcd and the leader lease.", EtcdSettings)
    ha: HaSettings = setting("ha", "HA checks, promotion and rejoin timings (see README, failover).", HaSettings)
    cdr: CdrSettings = setting("cdr", "CDR pipeline (receiver, Redis queue, worker).", CdrSettings)
    admin: AdminSettings = setting("admin", "Admin API (token in the generated secret admin_api_token).", AdminSettings)
    monitoring: MonitoringSettings = setting("monitoring", "Exporters, Prometheus pair, Alertmanager cluster and alert "
                                             "thresholds (README, monitoring).", MonitoringSettings)
    backup: BackupSettings = setting("backup", "Backups (pgBackRest), point-in-time recovery and recordings "
                                     "retention (README, backup and restore).", BackupSettings)
    tls: TlsSettings = setting("tls", "The cluster's internal CA and the service certificates it issues "
                               "(PostgreSQL replication and connections between the nodes: verify-full).", TlsSettings)
    vendor_repo_token: Optional[str] = setting("vendorRepoToken", "Token of repositories with `tokenAuth` (secret).",
                                               None, secret=True)
    ssh_private_key: Optional[str] = setting(
        "sshPrivateKey", "Private key reaching the nodes, as secret config (`pulumi config set --secret "
        "high-cc-pbx:sshPrivateKey < KEYFILE`): previews and updates run anywhere, nothing on disk.",
        None, secret=True)
    alert_smtp_password: Optional[str] = setting(
        "alertSmtpPassword", "Password of monitoring.email.username at the smarthost (secret config).", None, secret=True)
    alert_webhook_token: Optional[str] = setting(
        "alertWebhookToken", "Bearer token sent with each webhook notification (secret config).", None, secret=True)
    backup_cipher_pass: Optional[str] = setting(
        "backupCipherPass", "Encryption passphrase of the backup repository (secret config); unset: the program "
        "generates one and keeps it in the stack's state (resource secret-backup-cipher-pass, shown by `pulumi stack "
        "export --show-secrets`). Keep a copy off the stack either way: without it no backup can be read.",
        None, secret=True)
    backup_s3_key: Optional[str] = setting("backupS3Key", "Access key id of backup.repository (s3; secret config).",
                                           None, secret=True)
    backup_s3_key_secret: Optional[str] = setting("backupS3KeySecret", "Secret access key of backup.repository (s3; "
                                                  "secret config).", None, secret=True)
    backup_sftp_private_key: Optional[str] = setting("backupSftpPrivateKey", "Private key (PEM) the nodes log in to "
                                                     "backup.repository with (sftp; secret config).", None, secret=True)
    kamailio_tls_key: Optional[str] = setting(
        "kamailioTlsKey", "Private key (PEM) of kamailio.tlsCertificate, as secret config (`pulumi config set "
        "--secret high-cc-pbx:kamailioTlsKey < KEYFILE`).", None, secret=True)

    # --- derived facts, used by components and the lab -----------------------------------
    @property
    def release(self):
        """The nodes' Debian release (components/releases.py)."""
        return release(self.os.release)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.nodes[0].address}/{self.network.prefix}", strict=False)

    @property
    def primary(self) -> NodeSettings:
        wanted = self.postgres.initial_primary or self.nodes[0].name
        return next(n for n in self.nodes if n.name == wanted)

    @property
    def standby(self) -> NodeSettings:
        return next(n for n in self.nodes if n.name != self.primary.name)

    def peer_of(self, node: NodeSettings) -> NodeSettings:
        return next(n for n in self.nodes if n.name != node.name)

    def node_packages(self) -> list[str]:
        """Every Debian package a PBX node needs; the lab bakes exactly this list."""
        base = ["chrony", "nftables", "sudo", "rsync", "lsyncd", "keepalived", "etcd-server", "etcd-client",
                "redis-server", *self.release.postgres_packages(self.postgres.version), "python3-psycopg2",
                "kamailio", "kamailio-postgres-modules", "kamailio-extra-modules", "sip-tester", "iputils-ping",
                "procps", "curl", "python3-aiohttp", "python3-redis",   # python3-*: the CDR/admin service
                "openssl"]   # checks each certificate and key before install (render/tls.py)
        if self.backup.enabled:
            base += ["pgbackrest"]
            if self.backup.repository.type != "posix":
                base += ["rclone"]   # the recordings' copy to an s3 or sftp repository
        if self.monitoring.enabled:
            base += ["prometheus", "prometheus-alertmanager", "prometheus-node-exporter",
                     "prometheus-postgres-exporter", "prometheus-redis-exporter"]
        if self.kamailio.tls:
            base += ["kamailio-tls-modules"]
        if self.media.engine == "freeswitch":
            # the IVR greetings and hold music are files of the sound packages
            base += ["freeswitch-meta-vanilla", "freeswitch-mod-json-cdr", "freeswitch-mod-callcenter",
                     "freeswitch-mod-lua", "freeswitch-sounds-en-us-callie", "freeswitch-music-default",
                     "lua5.3", "libxml2-utils"]
        return sorted(set(base + list(self.packages.extra)))

    def media_node_packages(self) -> list[str]:
        """Every Debian package a media node needs (mediaNodes): the baseline, the media engine, the
        recordings' sender (lsyncd over ssh) and the node exporter."""
        base = ["chrony", "nftables", "sudo", "rsync", "lsyncd", "iputils-ping", "procps", "curl",
                "python3",    # checks the stand-in's scenario before install (render/sipp_uas.py)
                "openssl"]    # as on the nodes
        if self.monitoring.enabled:
            base += ["prometheus-node-exporter"]
        if self.media.engine == "freeswitch":
            base += [p for p in self.node_packages() if p.startswith("freeswitch") or p in ("lua5.3", "libxml2-utils")]
            base += ["postgresql-client"]   # the policy cache reads the nodes' PostgreSQL (render/freeswitch.py)
        else:
            base += ["sip-tester"]
        return sorted(set(base + list(self.packages.extra)))

    def witness_packages(self) -> list[str]:
        return sorted({"chrony", "nftables", "etcd-server", "etcd-client", "iputils-ping", "procps",
                       "openssl"})   # openssl: as on the nodes


def _check_nodes(cfg: ClusterConfig, p: Problems) -> None:
    if len(cfg.nodes) != 2:
        p.add("nodes", f"{len(cfg.nodes)} node(s) given (allowed: exactly 2)")
    names = [n.name for n in cfg.nodes] + ([cfg.witness.name] if cfg.witness else [])
    addrs = [n.address for n in cfg.nodes] + ([cfg.witness.address] if cfg.witness else [])
    for dup in sorted({x for x in names if names.count(x) > 1}):
        p.add("nodes", f"name {dup!r} is used twice (allowed: unique names for nodes and witness)")
    for dup in sorted({x for x in addrs if addrs.count(x) > 1}):
        p.add("nodes", f"address {dup!r} is used twice (allowed: unique addresses)")


def _check_addresses(cfg: ClusterConfig, p: Problems) -> None:
    if not cfg.nodes or any(_ipv4(n.address) for n in cfg.nodes) or _ipv4(cfg.vip.address):
        return
    net = cfg.subnet
    for i, n in enumerate(cfg.nodes[1:], start=1):
        if ipaddress.IPv4Address(n.address) not in net:
            p.add(f"nodes[{i}].address", f"{n.address!r} is not in {net} (allowed: the first node's subnet)")
    vip = ipaddress.IPv4Address(cfg.vip.address)
    if vip not in net:
        p.add("vip.address", f"{cfg.vip.address!r} is not in the nodes' subnet {net}")
    if cfg.vip.address in {n.address for n in cfg.nodes}:
        p.add("vip.address", f"{cfg.vip.address!r} is a node's address (allowed: a free address of {net})")
    if vip in (net.network_address, net.broadcast_address):
        p.add("vip.address", f"{cfg.vip.address!r} is the network or broadcast address of {net}")
    if not _ipv4(cfg.network.gateway) and ipaddress.IPv4Address(cfg.network.gateway) not in net:
        p.add("network.gateway", f"{cfg.network.gateway!r} is not in the nodes' subnet {net}")
    if cfg.vip.vrrp_version == 2 and not float(cfg.vip.advert_interval).is_integer():
        p.add("vip.advertInterval", f"{cfg.vip.advert_interval!r} is fractional (allowed with vrrpVersion 3 only, "
              "or whole seconds with version 2)")


def _check_media_nodes(cfg: ClusterConfig, p: Problems) -> None:
    """Media nodes are told apart from every other host by name (hostname, resources, recordings
    directory, CDR sender) and by address (dispatcher row, firewall rules): both must be their own."""
    if not cfg.media_nodes:
        return
    names = {n.name: f"nodes[{i}]" for i, n in enumerate(cfg.nodes)}
    addrs = {n.address: f"nodes[{i}]" for i, n in enumerate(cfg.nodes)}
    if cfg.witness:
        names.setdefault(cfg.witness.name, "witness")
        addrs.setdefault(cfg.witness.address, "witness")
    addrs.setdefault(cfg.vip.address, "vip.address")
    addrs.setdefault(cfg.network.gateway, "network.gateway")
    if cfg.lab is not None:
        addrs.setdefault(cfg.lab.host_address, "lab.hostAddress")
    nodes_ok = cfg.nodes and not any(_ipv4(n.address) for n in cfg.nodes)
    net = cfg.subnet if nodes_ok else None
    for i, m in enumerate(cfg.media_nodes):
        key = f"mediaNodes[{i}]"
        if m.name in names:
            p.add(f"{key}.name", f"{m.name!r} is already {names[m.name]} (allowed: a name no node, witness or "
                  "other media node has: it names the host, its recordings directory and its CDR sender)")
        elif m.name == "vip":
            p.add(f"{key}.name", "'vip' is the VIP's name (vip.<domain> in /etc/hosts and the certificates)")
        names.setdefault(m.name, key)
        if _ipv4(m.address):
            continue
        if m.address in addrs:
            p.add(f"{key}.address", f"{m.address!r} is already {addrs[m.address]} (allowed: a free address: "
                  "the dispatcher and the firewalls tell the hosts apart by address)")
        elif net is not None:
            addr = ipaddress.IPv4Address(m.address)
            if addr not in net:
                p.add(f"{key}.address", f"{m.address!r} is not in the nodes' subnet {net} (allowed: an address of "
                      "it: the nodes' firewalls, pg_hba and chrony let the media nodes in from there)")
            elif addr in (net.network_address, net.broadcast_address):
                p.add(f"{key}.address", f"{m.address!r} is the network or broadcast address of {net}")
        addrs.setdefault(m.address, key)
    if cfg.media.engine == "freeswitch" and cfg.dialplan.trunks:
        p.warn("mediaNodes", "calls out through dialplan.trunks also leave from the media nodes' addresses: "
               "the providers must accept those addresses too (IP-authenticated trunks)")


def _check_roles(cfg: ClusterConfig, p: Problems) -> None:
    names = [n.name for n in cfg.nodes]
    if cfg.postgres.initial_primary and cfg.postgres.initial_primary not in names:
        p.add("postgres.initialPrimary", f"{cfg.postgres.initial_primary!r} is not a node (allowed: {', '.join(names)})")
    if cfg.witness is None and cfg.no_witness_policy is None:
        p.add("noWitnessPolicy", "is required when no witness is configured (allowed: 'manual-promotion', "
              "'promote-after-timeout')")
    if cfg.witness is None and cfg.no_witness_policy == "promote-after-timeout":
        p.warn("witness", "absent and noWitnessPolicy is 'promote-after-timeout': a cut link between the nodes "
               "can make two primaries and lose writes")
    elif cfg.witness is None:
        p.warn("witness", "absent: a lost peer is never promoted over automatically (manual-promotion)")
    if cfg.witness and cfg.no_witness_policy:
        p.add("noWitnessPolicy", f"{cfg.no_witness_policy!r} is set but a witness is configured (allowed: unset)")


def _check_environment(cfg: ClusterConfig, p: Problems) -> None:
    if cfg.environment == "lab":
        if cfg.lab is None:
            p.add("lab", "is required when environment is 'lab' (name, bridge, subnet, hostAddress)")
        elif not _cidr(cfg.lab.subnet) and not _ipv4(cfg.lab.host_address):
            lab_net = ipaddress.IPv4Network(cfg.lab.subnet, strict=False)
            hosts = [("lab.hostAddress", cfg.lab.host_address)] + [
                (f"nodes[{i}].address", n.address) for i, n in enumerate(cfg.nodes)] + [("vip.address", cfg.vip.address)]
            if cfg.witness:
                hosts.append(("witness.address", cfg.witness.address))
            hosts += [(f"mediaNodes[{i}].address", m.address) for i, m in enumerate(cfg.media_nodes)]
            for key, addr in hosts:
                if not _ipv4(addr) and ipaddress.IPv4Address(addr) not in lab_net:
                    p.add(key, f"{addr!r} is not in the lab subnet {lab_net}")
        if cfg.media.engine == "freeswitch":
            p.add("media.engine", "'freeswitch' is not packaged by Debian (allowed in lab: 'sipp-uas')")
    else:
        if cfg.lab is not None:
            p.add("lab", "is set but environment is 'prod' (allowed: only in lab stacks)")
        if cfg.media.engine != "freeswitch":
            p.warn("media.engine", f"{cfg.media.engine!r} in prod: a test stand-in carries no real media")
    if cfg.ssh_private_key and cfg.ssh.private_key_file:
        p.add("sshPrivateKey", "is set and so is ssh.privateKeyFile (allowed: one of them)")
    if bool(cfg.kamailio.tls_certificate) != bool(cfg.kamailio_tls_key):
        p.add("kamailioTlsKey" if cfg.kamailio.tls_certificate else "kamailio.tlsCertificate",
              "is required with " + ("kamailio.tlsCertificate" if cfg.kamailio.tls_certificate else "kamailioTlsKey")
              + " (allowed: both, or neither for a certificate from the cluster CA)")
    if any(r.token_auth for r in cfg.packages.repositories) and not cfg.vendor_repo_token:
        p.add("vendorRepoToken", "is required by a repository with tokenAuth; set it with "
              f"`pulumi config set --secret {PROJECT}:vendorRepoToken <token>`")


def _check_sizes(cfg: ClusterConfig, p: Problems) -> None:
    fw = cfg.firewall
    if fw.rtp_port_min >= fw.rtp_port_max:
        p.add("firewall.rtpPortMin", f"{fw.rtp_port_min} is not below rtpPortMax {fw.rtp_port_max}")
    for key, nets in (("firewall.sshAllowFrom", fw.ssh_allow_from), ("firewall.sipAllowFrom", fw.sip_allow_from),
                      ("kamailio.floodExemptNetworks", cfg.kamailio.flood_exempt_networks),
                      ("admin.allowFrom", cfg.admin.allow_from), ("monitoring.allowFrom", cfg.monitoring.allow_from)):
        for i, net in enumerate(nets):
            if _cidr(net):
                p.add(f"{key}[{i}]", f"{net!r} {_cidr(net)}")
    ports = {"kamailio.sipPort": cfg.kamailio.sip_port, "kamailio.dmqPort": cfg.kamailio.dmq_port,
             "media.sipPort": cfg.media.sip_port, "postgres.port": cfg.postgres.port, "redis.port": cfg.redis.port,
             "etcd.clientPort": cfg.etcd.client_port, "etcd.peerPort": cfg.etcd.peer_port, "ssh.port": cfg.ssh.port,
             "cdr.receiverPort": cfg.cdr.receiver_port, "admin.port": cfg.admin.port}
    if cfg.kamailio.tls:
        ports["kamailio.tlsPort"] = cfg.kamailio.tls_port
    if cfg.dialplan.trunks and cfg.media.engine == "freeswitch":
        ports["dialplan.trunkSipPort"] = cfg.dialplan.trunk_sip_port
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            p.add(key, f"{port} is already used by {seen[port]} (allowed: a distinct port)")
        elif fw.rtp_port_min <= port <= fw.rtp_port_max:
            p.add(key, f"{port} lies inside the RTP range {fw.rtp_port_min}-{fw.rtp_port_max}")
        seen.setdefault(port, key)
    if cfg.etcd.renew_interval_seconds * 4 > cfg.etcd.lease_ttl_seconds:
        p.add("etcd.renewIntervalSeconds", f"{cfg.etcd.renew_interval_seconds} leaves fewer than 4 renewals per "
              f"lease TTL of {cfg.etcd.lease_ttl_seconds} s (allowed: at most TTL/4)")
    if cfg.ha.reach_lost_after_ms < 3 * cfg.ha.reach_interval_ms:
        p.add("ha.reachLostAfterMs", f"{cfg.ha.reach_lost_after_ms} is shorter than 3 pings of ha.reachIntervalMs "
              f"{cfg.ha.reach_interval_ms} (allowed: at least 3 × reachIntervalMs)")
    for i, n in enumerate(cfg.nodes):
        need = memory_budget_mb(cfg, n)
        if need > n.memory_mb:
            p.add(f"nodes[{i}].memoryMb", f"{n.memory_mb} is less than the {need} MiB the settings need "
                  "(PostgreSQL shared_buffers + Redis maxmemory + Kamailio shm/pkg + recordings tmpfs + 512 for the OS)")


def _check_monitoring(cfg: ClusterConfig, p: Problems) -> None:
    m = cfg.monitoring
    for i, url in enumerate(m.webhook_urls):
        if not re.match(r"^https?://[^\s/@]+(:\d+)?(/\S*)?$", url):
            p.add(f"monitoring.webhookUrls[{i}]", f"{url!r} is not an http(s) URL without credentials (allowed: "
                  "https://host[:port]/path; a token goes in the secret config alertWebhookToken)")
    if m.email.to:
        for key, value in (("monitoring.email.from", m.email.sender), ("monitoring.email.smarthost", m.email.smarthost)):
            if not value:
                p.add(key, "is required with monitoring.email.to")
        if m.email.smarthost and not re.match(r"^[A-Za-z0-9.-]+:\d+$", m.email.smarthost):
            p.add("monitoring.email.smarthost", f"{m.email.smarthost!r} is not host:port")
    if m.email.username and not cfg.alert_smtp_password:
        p.add("alertSmtpPassword", "is required with monitoring.email.username; set it with "
              f"`pulumi config set --secret {PROJECT}:alertSmtpPassword <password>`")
    ports = {"etcd.clientPort": cfg.etcd.client_port, "etcd.peerPort": cfg.etcd.peer_port}
    if cfg.backup.enabled:
        ports["backup.tlsPort"] = cfg.backup.tls_port
    if m.enabled:
        ports.update({f"monitoring.{k}": v for k, v in (
            ("nodeExporterPort", m.node_exporter_port), ("postgresExporterPort", m.postgres_exporter_port),
            ("redisExporterPort", m.redis_exporter_port), ("kamailioPort", m.kamailio_port),
            ("hapbxExporterPort", m.hapbx_exporter_port), ("etcdMetricsPort", m.etcd_metrics_port),
            ("prometheusPort", m.prometheus_port), ("alertmanagerPort", m.alertmanager_port),
            ("alertmanagerClusterPort", m.alertmanager_cluster_port))})
        ports.update({"postgres.port": cfg.postgres.port, "redis.port": cfg.redis.port,
                      "kamailio.sipPort": cfg.kamailio.sip_port, "cdr.receiverPort": cfg.cdr.receiver_port,
                      "admin.port": cfg.admin.port})
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            p.add(key, f"{port} is also {seen[port]} (allowed: a port of its own)")
        seen.setdefault(port, key)


def _check_backup(cfg: ClusterConfig, p: Problems) -> None:
    b = cfg.backup
    if not b.enabled:
        return
    r = b.repository
    needed = {"s3": (("s3Endpoint", r.s3_endpoint), ("s3Bucket", r.s3_bucket), ("s3Region", r.s3_region)),
              "sftp": (("sftpHost", r.sftp_host), ("sftpUser", r.sftp_user), ("sftpHostKey", r.sftp_host_key))}
    for key, value in needed.get(r.type, ()):
        if not value:
            p.add(f"backup.repository.{key}", f"is required with backup.repository.type {r.type}")
    secrets = {"s3": ("backupS3Key", "backupS3KeySecret"), "sftp": ("backupSftpPrivateKey",)}
    have = {"backupS3Key": cfg.backup_s3_key, "backupS3KeySecret": cfg.backup_s3_key_secret,
            "backupSftpPrivateKey": cfg.backup_sftp_private_key}
    for key in secrets.get(r.type, ()):
        if not have[key]:
            p.add(key, f"is required with backup.repository.type {r.type}; set it with "
                  f"`pulumi config set --secret {PROJECT}:{key} ...`")
    if r.type == "sftp" and tuple(int(x) for x in cfg.release.versions["pgBackRest"].split(".")) < (2, 46):
        p.add("backup.repository.type", f"sftp needs pgBackRest 2.46 or later; Debian {cfg.release.debian} has "
              f"{cfg.release.versions['pgBackRest']} (allowed here: posix, s3)")
    for key, value in (("fullSchedule", b.full_schedule), ("diffSchedule", b.diff_schedule),
                       ("recordingsSchedule", b.recordings_schedule)):
        if not re.match(r"^[A-Za-z0-9*.,:/~ -]{1,80}$", value):
            p.add(f"backup.{key}", f"{value!r} is not a systemd OnCalendar expression")


def _check_dialplan(cfg: ClusterConfig, p: Problems) -> None:
    d = cfg.dialplan
    user = re.compile(d.user_pattern)
    numbers: dict[str, str] = {}
    for kind, items in (("queues", d.queues), ("ivrs", d.ivrs)):
        names = [i.name for i in items]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            p.add(f"dialplan.{kind}", f"name {dup!r} is used twice (allowed: unique names)")
        for i, item in enumerate(items):
            key = f"dialplan.{kind}[{i}].number"
            if item.number in numbers:
                p.add(key, f"{item.number!r} is already {numbers[item.number]} (allowed: a free number)")
            elif user.match(item.number):
                p.add(key, f"{item.number!r} matches dialplan.userPattern (allowed: a number no user can have)")
            numbers.setdefault(item.number, f"dialplan.{kind}[{i}]")
    for i, q in enumerate(d.queues):
        for j, agent in enumerate(q.agents):
            if not user.match(agent):
                p.add(f"dialplan.queues[{i}].agents[{j}]", f"{agent!r} is not a user number (dialplan.userPattern)")
    for i, ivr in enumerate(d.ivrs):
        targets = [(f"dialplan.ivrs[{i}].options[{j}].target", o.target) for j, o in enumerate(ivr.options)]
        if ivr.default_target:
            targets.append((f"dialplan.ivrs[{i}].defaultTarget", ivr.default_target))
        for key, target in targets:
            if target not in numbers and not user.match(target):
                p.add(key, f"{target!r} is no user, queue or IVR number")
        digits = [o.digit for o in ivr.options]
        for dup in sorted({x for x in digits if digits.count(x) > 1}):
            p.add(f"dialplan.ivrs[{i}].options", f"digit {dup!r} is used twice")
    names = [t.name for t in d.trunks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        p.add("dialplan.trunks", f"name {dup!r} is used twice (allowed: unique names)")
    for i, t in enumerate(d.trunks):
        if not t.prefixes:
            p.add(f"dialplan.trunks[{i}].prefixes", "is empty (allowed: at least one prefix, '' for any number)")
        for j, prefix in enumerate(t.prefixes):
            if _prefix(prefix):
                p.add(f"dialplan.trunks[{i}].prefixes[{j}]", f"{prefix!r} {_prefix(prefix)}")
        classed: dict[str, str] = {}
        for field in ("nationalPrefixes", "internationalPrefixes", "premiumPrefixes"):
            for j, prefix in enumerate(getattr(t, _attr(field))):
                key = f"dialplan.trunks[{i}].{field}[{j}]"
                if _prefix(prefix) or prefix == "":
                    p.add(key, f"{prefix!r} {_prefix(prefix) or 'is empty (allowed: 1 to 15 digits)'}")
                elif prefix in classed:
                    p.add(key, f"{prefix!r} is already in {classed[prefix]} (allowed: one class per prefix)")
                classed.setdefault(prefix, field)
        if not t.national_prefixes:
            p.warn(f"dialplan.trunks[{i}].nationalPrefixes", "is empty: every call through this trunk is "
                   "international or premium, which extensions of class 'national' (the default) may not place")
        for j, addr in enumerate(t.addresses):
            if _ipv4(addr):
                p.add(f"dialplan.trunks[{i}].addresses[{j}]", f"{addr!r} {_ipv4(addr)}")
        if not t.addresses and _ipv4(t.host):
            p.warn(f"dialplan.trunks[{i}].addresses", f"is empty and host {t.host!r} is a name: calls from this "
                   "trunk are refused (no address to let in)")


def _attr(key: str) -> str:
    """nationalPrefixes -> national_prefixes"""
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)


def memory_budget_mb(cfg: ClusterConfig, node: NodeSettings) -> int:
    pg = int(node.memory_mb * cfg.postgres.memory_share)
    kam = cfg.kamailio.shm_mb + cfg.kamailio.pkg_mb * (cfg.kamailio.children * 2 + 8)
    return pg + cfg.redis.maxmemory_mb + kam + cfg.recordings.tmpfs_mb + 512


def _with_release_versions(cfg: ClusterConfig, p: Problems) -> ClusterConfig:
    """Unset versions become the release's own; another version needs a vendor repository."""
    rel = cfg.release
    pg = cfg.postgres.version or rel.postgres
    kam = cfg.kamailio.version or rel.kamailio
    for key, want, own, package in (("postgres.version", pg, rel.postgres, f"postgresql-{pg}"),
                                    ("kamailio.version", kam, rel.kamailio, f"kamailio {kam}")):
        if want != own and not cfg.packages.repositories:
            p.add(key, f"{want!r} is not what Debian {rel.codename} packages ({own!r}) and no vendor repository is "
                  f"configured (allowed: {own!r} or unset, or add the repository providing {package} to "
                  "packages.repositories)")
    return dataclasses.replace(cfg, postgres=dataclasses.replace(cfg.postgres, version=pg),
                               kamailio=dataclasses.replace(cfg.kamailio, version=kam))


def build(raw: dict[str, Any], source: str = "configuration") -> tuple[ClusterConfig, list[str]]:
    """Validate raw key->value config (keys without the project prefix). Returns config and warnings."""
    p = Problems()
    cfg = parse_object(ClusterConfig, raw, "", p)
    typed = not p.errors
    if typed:
        cfg = _with_release_versions(cfg, p)
    for check in (_check_nodes, _check_addresses, _check_media_nodes, _check_roles, _check_environment, _check_sizes,
                  _check_dialplan, _check_monitoring, _check_backup):
        try:
            check(cfg, p)
        except (TypeError, AttributeError, ValueError, StopIteration):
            if typed:  # a bug, not bad input: the values were well-typed
                raise
            # values already reported as badly typed: this check cannot run on them
    if p.errors:
        raise ConfigError(p.errors, source)
    return cfg, p.warnings


def read_stack_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """Return (config without project prefix, problems) from a Pulumi.<stack>.yaml.

    Encrypted values (``secure: ...``) count as present: their plaintext is only
    known to the Pulumi engine, and nothing here needs it before deploy.
    """
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    problems = []
    raw: dict[str, Any] = {}
    for key, value in (doc.get("config") or {}).items():
        ns, _, name = key.partition(":")
        if ns != PROJECT or not name:
            problems.append(f"{key}: unknown key (allowed: keys of the '{PROJECT}' namespace)")
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = SecretPlaceholder(name)
        elif name in SECRET_KEYS and value not in (None, ""):
            problems.append(f"{key}: is in clear text in the stack file (allowed: an encrypted value, set with "
                            f"`pulumi config set --secret {key}`)")
            continue
        raw[name] = value
    return raw, problems


class SecretPlaceholder(str):
    """Stands for a secret whose value is not available (render and check)."""

    def __new__(cls, key: str):
        obj = super().__new__(cls, f"<secret:{key}>")
        obj.key = key
        return obj


def load_stack_file(path: str, assume_secrets: bool = False) -> tuple[ClusterConfig, list[str]]:
    """Load and validate a stack file. ``assume_secrets``: absent secrets count as set
    (render masks them anyway; `check` must report them)."""
    raw, problems = read_stack_file(path)
    if assume_secrets:
        raw.setdefault("vendorRepoToken", SecretPlaceholder("vendorRepoToken"))  # the one a render reads
    try:
        cfg, warnings = build(raw, source=path)
    except ConfigError as err:
        raise ConfigError(problems + err.errors, source=path) from None
    if problems:
        raise ConfigError(problems, source=path)
    return cfg, warnings


def unset_default(f: dataclasses.Field) -> Any:
    """The `default` Pulumi.yaml declares for a key a stack may leave out, or MISSING for a key
    every stack must set. The CLI hands the default to the program as if the stack had set it
    (pkg/workspace/config.go, mergeConfig), so for optional keys it is a value that reads as
    "unset": "" for a string, {} for an object (each key its own default), [] for a list."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return dataclasses.MISSING
    tp = typing.get_type_hints(ClusterConfig)[f.name]
    if typing.get_origin(tp) is list:   # an optional list (mediaNodes): []
        return []
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return {} if dataclasses.is_dataclass(inner[0]) else ""


def from_pulumi_config(config: Any) -> tuple[ClusterConfig, list[str]]:
    """Read every declared key from a ``pulumi.Config``; secrets stay secret Outputs elsewhere.
    A key holding its Pulumi.yaml default (see :func:`unset_default`) counts as not set."""
    raw: dict[str, Any] = {}
    for f in dataclasses.fields(ClusterConfig):
        key = f.metadata["key"]
        if f.metadata.get("secret"):
            # Only presence matters for validation; the value is read as an Output by __main__.py.
            if config.get(key):
                raw[key] = SecretPlaceholder(key)
            continue
        text = config.get(key)
        if text is None:
            continue
        # Structured values reach the program as JSON text; plain strings stay strings.
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if value == unset_default(f) or text == "":
            continue
        raw[key] = value
    return build(raw, source=f"stack configuration ({PROJECT}:*)")


def documented_settings() -> list[dict]:
    return describe(ClusterConfig)
