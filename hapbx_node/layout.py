"""Where things live on a node: paths, directories, unit names and the HA status format.

The one place for these facts. The render layer (components/render), the components and
the node programs (hapbx_node.*) all import them from here; nothing else spells them.
Standard library only (it ships to the nodes).
"""
from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------- hapbx's own directories
ETC_DIR = "/etc/hapbx"
LIB_ROOT = "/usr/local/lib/hapbx"
#: changed files a handler has not yet acted on (a restart postponed by a failed step)
PENDING_DIR = "/var/lib/hapbx/pending"
#: the cluster CA's certificate and this node's service certificates and keys (components/certificates.py)
TLS_DIR = f"{ETC_DIR}/tls"
TLS_CA = f"{TLS_DIR}/ca.crt"


def tls_certificate(service: str) -> str:
    return f"{TLS_DIR}/{service}.crt"


def tls_key(service: str) -> str:
    return f"{TLS_DIR}/{service}.key"


#: libpq's options of every connection to the peer's PostgreSQL: its certificate, checked against
#: the cluster CA and its address (the certificate names the node's address)
PG_PEER_SSL = f"sslmode=verify-full sslrootcert={TLS_CA}"

# ---------------------------------------------------------------- HA
HA_BIN = f"{LIB_ROOT}/ha"
HA_ENV = f"{ETC_DIR}/ha.env"
HA_SECRETS_ENV = f"{ETC_DIR}/ha-secrets.env"
HA_RUN_DIR = "/run/hapbx/ha"
HA_STATUS = f"{HA_RUN_DIR}/status"
#: creates HA_RUN_DIR at boot (keepalived 2.3 needs it when it parses its track files)
HA_TMPFILES = "/etc/tmpfiles.d/hapbx-ha.conf"
HA_LIB_DIR = "/var/lib/hapbx/ha"
#: in HA_LIB_DIR: the data directories rejoin moved aside, "<dir> <epoch seconds>" per line
#: (hapbx-ha discard-moved-aside reads it too)
MOVED_ASIDE_LIST = "moved-aside"
#: in HA_RUN_DIR: "<hold 0|1> <fence deadline, boot-clock ms> <lease id>", written by the leader
#: daemon each cycle, read by the jobs (may this node write?) and by `leader stopped`
AUTHORITY_FILE = "authority"
HA_CLI = "/usr/local/sbin/hapbx-ha"
LEADER_UNIT = "hapbx-leader.service"
REACH_UNIT = "hapbx-reach.service"
#: where a handler notes the restart it is making (epoch seconds): check-local does not count
#: that daemon's brief absence, so a planned restart never moves the VIP
PLANNED_DIR = HA_RUN_DIR


def planned_restart_marker(service: str) -> str:
    return f"{PLANNED_DIR}/planned-restart.{service}"


# ---------------------------------------------------------------- CDR worker's stats, media stats, exporter
#: the CDR worker's RuntimeDirectory= (systemd removes it when the worker stops: no file, no worker here)
CDR_WORKER_RUN_DIR = "/run/hapbx-cdr-worker"
#: its stats, rewritten atomically each loop (key=value lines, format_stats): read by hapbx-exporter
CDR_STATS = f"{CDR_WORKER_RUN_DIR}/stats"
#: the lab media stand-in's (SIPp) RuntimeDirectory= and its statistics file (-trace_stat -stf)
MEDIA_UAS_RUN_DIR = "/run/hapbx-media-uas"
MEDIA_UAS_STATS = f"{MEDIA_UAS_RUN_DIR}/stat.csv"
#: seconds between SIPp's statistics dumps (-fd)
MEDIA_UAS_STATS_EVERY = 5
EXPORTER_UNIT = "hapbx-exporter.service"
EXPORTER_LIB_DIR = f"{LIB_ROOT}/exporter"
EXPORTER_ENV = f"{ETC_DIR}/hapbx-exporter.env"

# ---------------------------------------------------------------- PostgreSQL (Debian's layout)
PG_OS_USER = "postgres"
PG_SOCKET_DIR = "/var/run/postgresql"
PG_PASSFILE = "/var/lib/postgresql/.pgpass"


@dataclass(frozen=True)
class PgPaths:
    version: str

    @property
    def bin_dir(self) -> str:
        return f"/usr/lib/postgresql/{self.version}/bin"

    @property
    def conf_dir(self) -> str:
        return f"/etc/postgresql/{self.version}/main"

    @property
    def conf_file(self) -> str:
        return f"{self.conf_dir}/postgresql.conf"

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{self.version}/main"

    @property
    def service(self) -> str:
        return f"postgresql@{self.version}-main.service"


def slot_name(node_name: str) -> str:
    """The physical slot a node streams from on its peer: named after the node itself
    ('-' is not allowed in slot names and becomes '_')."""
    return node_name.replace("-", "_")


# ---------------------------------------------------------------- HA status (HA_STATUS)
#: the leader daemon's status file: one `key=value` per line, these keys in this order
STATUS_KEYS = ("node", "role", "reason", "hold", "holder", "vrrp", "hung", "yield", "stale", "writer",
               "deadline_in_ms", "last_renew_ms_ago", "last_renew_at_ms", "renew_max_gap_ms",
               "last_fence_at_ms", "witness", "moved_aside", "role_since_ms")


def format_status(values: dict) -> str:
    return "".join(f"{k}={values.get(k, '')}\n" for k in STATUS_KEYS)


#: the CDR worker's stats file (CDR_STATS): these keys, times in epoch seconds (0: none)
STATS_KEYS = ("node", "at", "queue", "processing", "dead", "review", "oldest_queued_at", "last_ingest_at")


def format_stats(values: dict) -> str:
    return "".join(f"{k}={values.get(k, '')}\n" for k in STATS_KEYS)


def parse_status(text: str) -> dict[str, str]:
    """key=value lines (the daemon's status file, or `hapbx-ha status`) into a dict; other lines
    are ignored. The value is everything after the first '='."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            out[key.strip()] = value.strip()
    return out
