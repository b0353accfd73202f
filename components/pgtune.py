"""PostgreSQL sizing from the node's memory and CPUs (pure; used by the render layer).

The node is shared: Redis, Kamailio and the recordings tmpfs take their part
first (the same budget the config check uses), PostgreSQL sizes itself from
what is left. Settings that a hot standby must have at least as high as its
primary (max_connections, max_worker_processes, max_wal_senders...) are
computed cluster-wide, so both nodes always carry the same values and either
can follow the other after a failover.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ClusterConfig, NodeSettings

#: WAL senders and slots: the peer, a pg_basebackup/pg_rewind in flight, tools, headroom.
MAX_WAL_SENDERS = 10
MAX_REPLICATION_SLOTS = 10
SUPERUSER_RESERVED = 5
#: Kamailio processes besides the SIP workers (timer, RPC, DMQ, TCP main...), each may open a connection.
KAMAILIO_AUX_PROCESSES = 12
#: CDR worker, admin tools, monitoring, migrations.
SERVICE_CONNECTIONS = 20


def kamailio_connections(cluster: ClusterConfig) -> int:
    """Connections one Kamailio may open: one per process (UDP workers on the node address and
    the VIP, TCP workers, auxiliary processes)."""
    return cluster.kamailio.children * 3 + KAMAILIO_AUX_PROCESSES


def connection_need(cluster: ClusterConfig) -> int:
    """Connections the primary must accept: both Kamailios (the VIP may send both to it) + services."""
    return 2 * kamailio_connections(cluster) + SERVICE_CONNECTIONS


def max_connections(cluster: ClusterConfig) -> int:
    """The configured limit, raised to what Kamailio and the services need (never starve Kamailio)."""
    return max(cluster.postgres.max_connections, connection_need(cluster))


def others_mb(cluster: ClusterConfig, node: NodeSettings) -> int:
    """Memory the other tenants of the node take (Redis, Kamailio shm+pkg, tmpfs, OS)."""
    kam = cluster.kamailio.shm_mb + cluster.kamailio.pkg_mb * (cluster.kamailio.children * 2 + 8)
    return cluster.redis.maxmemory_mb + kam + cluster.recordings.tmpfs_mb + 512


def _mb(value: int) -> str:
    if value >= 1024 and value % 1024 == 0:
        return f"{value // 1024}GB"
    return f"{value}MB"


def _kb(value: int) -> str:
    if value % 1024 == 0:
        return _mb(value // 1024)
    return f"{value}kB"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@dataclass(frozen=True)
class Tuning:
    """Computed values, in MB/kB as integers, plus their rendered form."""
    shared_buffers_mb: int
    effective_cache_size_mb: int
    work_mem_kb: int
    maintenance_work_mem_mb: int
    max_connections: int
    max_worker_processes: int
    max_parallel_workers: int
    max_parallel_workers_per_gather: int
    max_parallel_maintenance_workers: int
    wal_buffers: str
    min_wal_size_mb: int
    max_wal_size_mb: int
    wal_keep_size_mb: int
    max_slot_wal_keep_size_mb: int

    def settings(self) -> dict[str, str]:
        return {
            "max_connections": str(self.max_connections),
            "superuser_reserved_connections": str(SUPERUSER_RESERVED),
            "shared_buffers": _mb(self.shared_buffers_mb),
            "effective_cache_size": _mb(self.effective_cache_size_mb),
            "work_mem": _kb(self.work_mem_kb),
            "maintenance_work_mem": _mb(self.maintenance_work_mem_mb),
            "wal_buffers": self.wal_buffers,
            "max_worker_processes": str(self.max_worker_processes),
            "max_parallel_workers": str(self.max_parallel_workers),
            "max_parallel_workers_per_gather": str(self.max_parallel_workers_per_gather),
            "max_parallel_maintenance_workers": str(self.max_parallel_maintenance_workers),
            "min_wal_size": _mb(self.min_wal_size_mb),
            "max_wal_size": _mb(self.max_wal_size_mb),
            "wal_keep_size": _mb(self.wal_keep_size_mb),
            "max_slot_wal_keep_size": _mb(self.max_slot_wal_keep_size_mb),
        }


def tune(cluster: ClusterConfig, node: NodeSettings) -> Tuning:
    mem = node.memory_mb
    shared = int(mem * cluster.postgres.memory_share)
    free = max(0, mem - others_mb(cluster, node) - shared)   # left for page cache and backends
    conns = max_connections(cluster)
    # pgtune's OLTP rule: a query may use work_mem ~3 times; all connections busy must still fit.
    work_kb = _clamp(free * 1024 // (conns * 3), 4 * 1024, 64 * 1024)
    # Cluster-wide so a standby is never below its primary (hot standby refuses to start otherwise).
    cpus = max(n.cpus for n in cluster.nodes)
    if mem >= 65536:
        min_wal, max_wal = 2048, 8192
    elif mem >= 16384:
        min_wal, max_wal = 1024, 4096
    else:
        min_wal, max_wal = 256, 1024
    return Tuning(
        shared_buffers_mb=shared,
        effective_cache_size_mb=shared + int(free * 0.75),
        work_mem_kb=work_kb,
        maintenance_work_mem_mb=_clamp(mem // 16, 64, 2048),
        max_connections=conns,
        max_worker_processes=max(8, cpus),
        max_parallel_workers=max(2, cpus),
        max_parallel_workers_per_gather=_clamp(cpus // 4, 1, 4),
        max_parallel_maintenance_workers=_clamp(cpus // 4, 1, 4),
        wal_buffers="16MB" if shared >= 512 else "-1",
        min_wal_size_mb=min_wal,
        max_wal_size_mb=max_wal,
        # A dead standby's slot may hold at most 4 checkpoints' worth of WAL, then it is invalidated
        # (it is rebuilt by pg_basebackup) instead of filling the disk.
        wal_keep_size_mb=max_wal // 4,
        max_slot_wal_keep_size_mb=max_wal * 4,
    )
