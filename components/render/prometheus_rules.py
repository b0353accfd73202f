"""The Prometheus alert rules of the cluster (README, Monitoring and alerting): ``rules(cluster)`` is the
YAML text of RULES_PATH, the same on both PBX nodes.

Both Prometheus servers evaluate these rules and send to the two clustered Alertmanagers, which
deduplicate by labels: an alert's labels come from the series only (no per-Prometheus label, the
`cluster` label is an external label set alike on both). An alert about one node carries `node`,
so NodeDown{node=X} can inhibit the rest about X.

Metric names are the exporters' own, checked against the Debian 12 and 13 packages
(tests/daemons/test_prometheus_rules.py scrapes each): node exporter 1.5/1.9, postgres exporter
0.11/0.17, redis exporter 1.45/1.69, etcd 3.4/3.5; Kamailio's from xhttp_prom
(tests/daemons/test_kamailio_metrics.py); hapbx_* from hapbx_node/metrics. The backup alerts
(backup.enabled) read the backup runner's status through hapbx-exporter and PostgreSQL's
pg_stat_archiver (the same names in postgres exporter 0.11 and 0.17).
"""
from __future__ import annotations

import yaml

RULES_PATH = "/etc/prometheus/rules/hapbx.yml"

#: pseudo filesystems that never fill (tmpfs is watched: recordings and /run live there)
PSEUDO_FS = ("autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|"
             "nsfs|overlay|proc|procfs|pstore|ramfs|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs")
#: systemd mounts that are full or private by design (credentials: read-only and exactly full)
PSEUDO_MOUNTS = "/run/credentials/.*|/run/user/.*"
#: the units whose state the node exporter's systemd collector reports (render/monitoring.py gives it
#: this as --collector.systemd.unit-include) and ServiceDown watches: services only (a timer's state
#: is not a service's health)
WATCHED_UNITS = r"(keepalived|kamailio|postgresql@.+|redis-server|etcd|hapbx-.+|freeswitch|prometheus.*)[.]service"
#: runs on the CDR writer (the VIP owner) only: stopped elsewhere by design (render/cdr.py)
CDR_WORKER_UNIT = "hapbx-cdr-worker.service"
#: window of the Failover notice and of "changed recently" checks
RECENT = "5m"

#: Debian 12's postgres exporter (0.11) has no standby lag metric of its own; from 0.13 the
#: replication collector exports pg_replication_lag_seconds with this query. An exporter older
#: than 0.13 gets it as an extra query (--extend.query-path), so the same rule works on both.
POSTGRES_LAG_QUERY_YAML = """\
pg_replication:
  query: >-
    SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END AS lag_seconds
  master: true
  metrics:
    - lag_seconds:
        usage: GAUGE
        description: Standby replay lag behind the primary in seconds (0 when caught up)
"""


def _alert(name: str, expr: str, severity: str, summary: str, action: str, for_: str = "0s",
           description: str = "") -> dict:
    notes = {"summary": summary, "description": description, "action": action} if description else \
        {"summary": summary, "action": action}
    return {"alert": name, "expr": " ".join(expr.split()), "for": for_,
            "labels": {"severity": severity}, "annotations": notes}


def _s(seconds: float) -> str:
    return f"{int(seconds)}s"


NODE_DOWN_KEPT = "1m"
#: scrape intervals NodeDown looks back: long enough that a node off for 10 s stays "all targets
#: down" through NodeDown's one pending interval (two looked back: 5 s, drill 2 then went unreported)
NODE_DOWN_WINDOW = 3


def node_down(m) -> str:
    """Every target of a node failed a scrape within the last NODE_DOWN_WINDOW intervals. The targets
    are scraped at different moments of an interval and a rebooted node's come back one by one: a
    node off for 10 s (failover drill 2 on the lab) never had its 8 targets down in one evaluation."""
    return f"max by (node) (min_over_time(up[{NODE_DOWN_WINDOW * m.scrape_interval_seconds}s])) == 0"


def sees_quorum(m, cluster) -> str:
    """This Prometheus has reached a majority of the cluster's members (itself included) for the whole
    NodeDown window: a member counts when one of its targets answered every scrape in it. A node cut
    off from the others sees every other one down, and for a window after the cut heals still sees
    their failed scrapes: its NodeDown for them would be false (alert drill 5, with an instant count,
    it was sent). Without a witness two nodes cannot tell."""
    if not cluster.witness:
        return "vector(1)"
    members = len(cluster.nodes) + 1
    # media nodes (mediaNodes) are scraped too but hold no vote: only the members count
    only = (f'{{node=~"{"|".join(n.name for n in [*cluster.nodes, cluster.witness])}"}}'
            if cluster.media_nodes else "")
    return (f"count(max by (node) (min_over_time(up{only}[{NODE_DOWN_WINDOW * m.scrape_interval_seconds}s])) == 1) "
            f">= {members // 2 + 1}")


def _nodes(m, cluster) -> list[dict]:
    down = _s(m.node_down_seconds)
    return [
        # `for` one interval: a node cut off sees the witness (one target) down before the peer's
        # eight, and for that moment still counts the peer (alert drill 5: the isolated node sent
        # NodeDown for the witness); one evaluation later it sees no majority. Kept firing a minute
        # after (Prometheus 2.42+): a node back within seconds (drill 2: off for 10 s) otherwise
        # resolves before Alertmanager's group_wait, and Alertmanager then tells nobody
        {**_alert("NodeDown", f"({node_down(m)}) and on () ({sees_quorum(m, cluster)})", "critical",
                  "{{ $labels.node }}: no exporter on it answers (down or unreachable)",
                  "Check the machine (console, power, network); on a PBX node, confirm the peer took over "
                  "(Failover).", _s(m.scrape_interval_seconds)), "keep_firing_for": NODE_DOWN_KEPT},
        _alert("TargetDown", f'up{{job!~"kamailio|etcd"}} == 0 unless on (node) ({node_down(m)})',
               "warning", "{{ $labels.node }}: {{ $labels.job }} at {{ $labels.instance }} does not answer scrapes",
               "systemctl status of that exporter or service on the node, then its journal.", down),
        _alert("ServiceDown",
               f'node_systemd_unit_state{{state="active",type!="oneshot",name=~"{WATCHED_UNITS}",'
               f'name!="{CDR_WORKER_UNIT}"}} == 0 '
               f'or (node_systemd_unit_state{{state="active",name="{CDR_WORKER_UNIT}"}} == 0 '
               f'and on (node) hapbx_vip_owner == 1)',
               "critical", "{{ $labels.node }}: {{ $labels.name }} is not active",
               "journalctl -u <unit> -n 100 on the node; start it if it stopped, fix what made it fail.", down),
    ]


def _ha(m, cluster) -> list[dict]:
    scrape = m.scrape_interval_seconds
    ttl = cluster.etcd.lease_ttl_seconds
    return [
        _alert("VipNoOwner", "(sum(hapbx_vip_owner) or vector(0)) < 1", "critical",
               "No node holds the virtual IP: phones and trunks reach no PBX",
               "hapbx-ha status on both nodes; keepalived's journal (FAULT state, failed checks).", "20s"),
        _alert("VipTwoOwners", "sum(hapbx_vip_owner) > 1", "critical",
               "Both nodes hold the virtual IP (split brain on the LAN)",
               "Check the link between the nodes (VRRP adverts); stop keepalived on the node that is not the "
               "lease holder.", _s(2 * scrape)),
        _alert("Failover",
               f"max by (node) ((hapbx_lease_holder == 1 and on (node) changes(hapbx_lease_holder[{RECENT}]) > 0) "
               f"or (hapbx_postgres_primary == 1 and on (node) changes(hapbx_postgres_primary[{RECENT}]) > 0))",
               "info", "{{ $labels.node }} took over the lease or the PostgreSQL primary in the last " + RECENT,
               "Read the reason (hapbx_ha_role_info, hapbx-ha status); check the old primary rejoined as standby.",
               "0s"),
        _alert("HaCoreStale", f"hapbx_ha_status_age_seconds > {max(2 * ttl, 2 * scrape)}", "critical",
               "{{ $labels.node }}: the HA core's status is {{ $value | humanize }}s old (stopped or hung)",
               "systemctl status hapbx-leader on the node and its journal; restart it if hung.", _s(scrape)),
        _alert("LeaseRenewalSlow",
               f"hapbx_ha_renew_max_gap_seconds > {ttl / 2:g} "
               f"and on (node, instance, job) changes(hapbx_ha_renew_max_gap_seconds[{RECENT}]) > 0",
               "warning", "{{ $labels.node }}: a lease renewal took {{ $value | humanize }}s "
               f"(lease TTL {ttl}s)",
               "Look for load or etcd latency on the node (etcd_disk_wal_fsync, CPU steal); a lease "
               "renewed late is a failover near miss."),
    ]


def _postgres(m) -> list[dict]:
    return [
        _alert("PostgresDown", "pg_up == 0", "critical",
               "{{ $labels.node }}: PostgreSQL does not accept the exporter's connection",
               "systemctl status postgresql@* and its log on the node; hapbx-ha status.", "30s"),
        _alert("PostgresNotReplicating",
               'max by (node) (hapbx_postgres_primary == 1) '
               'unless on (node) pg_stat_replication_pg_wal_lsn_diff{state="streaming"}',
               "critical", "{{ $labels.node }} is the primary and no standby streams from it",
               "Check PostgreSQL on the peer (standby log, primary_conninfo, slot); rejoin it (README, failover).",
               "1m"),
        _alert("PostgresReplicationLagBytes",
               f"max by (node) (pg_stat_replication_pg_wal_lsn_diff) > {m.replication_lag_bytes}", "warning",
               "The standby replays {{ $value | humanize1024 }}B behind the primary {{ $labels.node }}",
               "Check the standby's disk and CPU and the link between the nodes.", "1m"),
        _alert("PostgresReplicationLagSeconds",
               f"max by (node) (pg_replication_lag_seconds) > {m.replication_lag_seconds}", "warning",
               "{{ $labels.node }}: the standby replays {{ $value | humanize }}s behind the primary",
               "Check the standby's disk and CPU and the link between the nodes.", "1m"),
        _alert("PostgresSlotRetainingWal",
               f"max by (node, slot_name) (pg_replication_slots_pg_wal_lsn_diff) > {m.slot_retained_bytes}",
               "warning", "{{ $labels.node }}: slot {{ $labels.slot_name }} holds {{ $value | humanize1024 }}B of WAL",
               "Bring the standby back or rejoin it; drop the slot only if the standby is gone for good "
               "(the disk fills otherwise).", "5m"),
    ]


def _redis(m) -> list[dict]:
    return [
        _alert("RedisDown", "redis_up == 0", "critical",
               "{{ $labels.node }}: Redis does not answer the exporter (CDR queue)",
               "systemctl status redis-server on the node and its log.", "30s"),
        _alert("RedisReplicaLinkDown",
               'max by (node) (redis_master_link_up == 0) or max by (node) (redis_connected_slaves == 0 '
               'and on (node, instance) redis_instance_info{role="master"})',
               "warning", "{{ $labels.node }}: the Redis replication link is down",
               "redis-cli INFO replication on both nodes; check the replica's log and the ACL user.", "1m"),
    ]


def _cdr(m) -> list[dict]:
    return [
        _alert("CdrQueueGrowing", f"hapbx_cdr_queue_depth > {m.cdr_queue_max}", "warning",
               "{{ $labels.node }}: {{ $value }} CDRs wait in the Redis queue",
               "journalctl -u hapbx-cdr-worker on the writer; check PostgreSQL is writable.", "2m"),
        _alert("CdrDeadLetters", "hapbx_cdr_dead_letters > 0", "warning",
               "{{ $labels.node }}: {{ $value }} CDRs in the dead-letter list",
               "hapbx cdr deadletters: read why they failed, fix, replay them."),
        _alert("CdrIngestStalled",
               f"max by (node) (hapbx_cdr_oldest_queued_age_seconds > {m.cdr_lag_seconds} "
               f"or hapbx_cdr_stats_age_seconds > {m.cdr_lag_seconds}) "
               "or absent(hapbx_cdr_stats_age_seconds)",
               "critical", "CDR ingestion stalled {{ with $labels.node }}on {{ . }}{{ else }}(no CDR worker "
               "reports){{ end }}",
               "Is hapbx-cdr-worker running on the VIP owner? Its journal; PostgreSQL and Redis reachable?",
               _s(m.cdr_lag_seconds)),
    ]


def _kamailio(m) -> list[dict]:
    regs = "kamailio_usrloc_registered_users"
    return [
        _alert("KamailioDown", 'up{job="kamailio"} == 0', "critical",
               "{{ $labels.node }}: Kamailio does not answer (SIP proxy and registrar)",
               "systemctl status kamailio on the node and its journal; kamailio -c for a broken config.",
               _s(m.node_down_seconds)),
        _alert("DispatcherNoMediaDestination", "kamailio_hapbx_media_destinations_active < 1", "critical",
               "{{ $labels.node }}: Kamailio has no active media destination: calls fail",
               "Check the media engine on both nodes (MediaDown) and kamcmd dispatcher.list.", "15s"),
        # DMQ replicates the contacts: both nodes count every registration, so the cluster's count is the
        # max of the two (one Kamailio restarting drops nothing)
        _alert("RegistrationsDropped",
               f"(max(max_over_time({regs}[10m])) - max({regs})) / max(max_over_time({regs}[10m])) * 100 "
               f"> {m.registrations_drop_percent}",
               "warning", "Registered users fell by {{ $value | humanize }}% in 10 minutes",
               "Check the network path from the phones (firewall, VIP), Kamailio's log, and a provider outage.",
               "1m"),
        _alert("SipAuthFailureBurst",
               f"rate(kamailio_script_hapbx_auth_failed[1m]) * 60 > {m.auth_failures_per_minute}", "warning",
               "{{ $labels.node }}: {{ $value | humanize }} SIP authentication failures per minute",
               "Find the sources in Kamailio's log (password guessing?); check the bans work, block at the edge."),
        _alert("SipBanBurst",
               "(rate(kamailio_script_hapbx_auth_banned[1m]) + rate(kamailio_script_hapbx_flood_banned[1m])) * 60 "
               f"> {m.bans_per_minute}", "warning",
               "{{ $labels.node }}: {{ $value | humanize }} source addresses banned per minute",
               "An attack is on: check the banned sources in Kamailio's log; block the networks at the edge."),
        _alert("SipRelayRefusalBurst",
               f"rate(kamailio_script_hapbx_relay_refused[1m]) * 60 > {m.relay_refusals_per_minute}", "warning",
               "{{ $labels.node }}: {{ $value | humanize }} relay attempts refused per minute",
               "Someone probes for an open relay: find the sources in Kamailio's log; block them at the edge."),
        _alert("PremiumCallRefused", f"increase(kamailio_script_hapbx_class_refused[{RECENT}]) > 0", "warning",
               "{{ $labels.node }}: calls to premium or international numbers refused by class of service",
               "Find the account in Kamailio's log: a compromised phone or a user without the right? "
               "Change its password if in doubt."),
    ]


def _disks(m) -> list[dict]:
    fs = f'fstype!~"{PSEUDO_FS}",mountpoint!~"{PSEUDO_MOUNTS}"'
    return [
        _alert("DiskAlmostFull",
               f"(1 - node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}}) * 100 "
               f"> {m.disk_used_percent}", "warning",
               "{{ $labels.node }}: {{ $labels.mountpoint }} is {{ $value | humanize }}% full",
               "du -xsh on the mount point: old recordings, logs, WAL held by a slot (PostgresSlotRetainingWal).",
               "5m"),
        _alert("DiskFillingUp",
               f"predict_linear(node_filesystem_avail_bytes{{{fs}}}[1h], {m.disk_full_hours * 3600}) < 0 "
               f"and node_filesystem_readonly{{{fs}}} == 0",
               "warning", "{{ $labels.node }}: {{ $labels.mountpoint }} will be full within "
               f"{m.disk_full_hours} hours at the rate of the last hour",
               "Find what grows (du -xsh, journal, recordings, WAL) before it is full.", "15m"),
    ]


def _etcd(m, cluster) -> list[dict]:
    if cluster.witness is None:
        return []   # no witness, no etcd (render/etcd.py)
    members = len(cluster.nodes) + 1
    return [
        _alert("EtcdMemberDown", 'up{job="etcd"} == 0', "warning",
               "{{ $labels.node }}: etcd member does not answer",
               "systemctl status etcd on the node and its journal; the lease quorum has one member less.",
               _s(m.node_down_seconds)),
        _alert("EtcdNoLeader", "etcd_server_has_leader == 0", "critical",
               "{{ $labels.node }}: etcd member sees no leader",
               "Check the network between the members (etcd peer port) and etcdctl endpoint status.", "15s"),
        _alert("EtcdQuorumAtRisk", f'(count(up{{job="etcd"}} == 1) or vector(0)) < {members}', "critical",
               f"Only {{{{ $value }}}} of {members} etcd members answer: one more loss stops automatic failover",
               "Bring the missing member back first (EtcdMemberDown, NodeDown); plan no maintenance until then.",
               _s(m.node_down_seconds)),
    ]


def _media(m) -> list[dict]:
    return [
        _alert("MediaDown", "hapbx_media_up == 0", "critical",
               "{{ $labels.node }}: the media engine is down",
               "systemctl status freeswitch (prod) on the node and its log; calls use the other node meanwhile.",
               "15s"),
    ]


#: WAL archived later than archive_timeout plus this, while the primary writes: WalArchiveFailing
WAL_ARCHIVE_LATE_SECONDS = 15 * 60
#: no successful recordings retention run for this long (it runs daily): RecordingsRetentionFailed
RECORDINGS_MAX_AGE_SECONDS = 2 * 24 * 3600


def never_succeeded(metric: str, seconds: int) -> str:
    """No node reports `metric` (a last-success time) although the hapbx exporters were already
    scraped `seconds` ago: a cluster this old should have one. A younger cluster (or a Prometheus
    whose retention is shorter than `seconds`) stays silent."""
    return f'(absent({metric}) and on () count(up{{job="hapbx"}} offset {seconds}s) > 0)'


def _backup(cluster) -> list[dict]:
    """Backups (pgBackRest) and recordings retention (backup.enabled). Backups run on whichever node is
    the standby, so their age is the newest success of either node."""
    if not cluster.backup.enabled:
        return []
    hours = cluster.backup.max_age_hours
    age = hours * 3600
    last = "hapbx_backup_last_success_timestamp_seconds"
    rec = "hapbx_recordings_retention_last_success_timestamp_seconds"
    writes = " + ".join(f"increase(pg_stat_database_tup_{k}[15m])" for k in ("inserted", "updated", "deleted"))
    return [
        _alert("BackupTooOld", f"(time() - max({last}) > {age}) or {never_succeeded(last, age)}", "critical",
               f"No successful database backup on any node for over {hours}h",
               "On the standby: the timers active (systemctl list-timers 'hapbx-backup-*'), the reason in "
               "/var/lib/hapbx/backup/pgbackrest.json, the repository reachable (pgbackrest check); then run a "
               "backup by hand.", "10m",
               f"The newest successful pgBackRest backup of either node is older than backup.maxAgeHours ({hours} "
               "h), or none was ever reported in that time. A restore would lose more than that."),
        _alert("BackupFailed",
               'max by (node) (hapbx_backup_last_outcome{outcome="failed"}) == 1 '
               "or max by (node) (hapbx_backup_status_error) == 1",
               "warning", "{{ $labels.node }}: the last scheduled database backup failed (or its status is unreadable)",
               "Read the reason in /var/lib/hapbx/backup/pgbackrest.json and journalctl -u 'hapbx-backup@*' on the "
               "node; pgbackrest check for the repository.", "0s",
               "The last pgBackRest backup attempt on this node (the standby) ended in failure, or its status file "
               "cannot be read. The next scheduled run retries; until one succeeds the backups age."),
        _alert("WalArchiveFailing",
               "max by (node) ("
               "(increase(pg_stat_archiver_failed_count[10m]) > 0 "
               "unless increase(pg_stat_archiver_archived_count[10m]) > 0) "
               f"or (pg_stat_archiver_last_archive_age > on (node) (pg_settings_archive_timeout_seconds + "
               f"{WAL_ARCHIVE_LATE_SECONDS}) and on (node) pg_settings_archive_timeout_seconds > 0 "
               f"and on (node) sum by (node) ({writes}) > 0)"
               ") and on (node) hapbx_postgres_primary == 1",
               "critical", "{{ $labels.node }}: the primary does not archive its WAL to the backup repository",
               "pgbackrest check on the primary and PostgreSQL's log (archive_command errors): repository "
               "reachable, disk, credentials?", "5m",
               "PostgreSQL's archiver on the primary failed and archived nothing for 10 minutes, or the primary "
               f"writes and its last archived WAL is older than archive_timeout + {WAL_ARCHIVE_LATE_SECONDS // 60} "
               "minutes. Point-in-time recovery stops at the last archived WAL and the primary's pg_wal grows."),
        _alert("RecordingsRetentionFailed",
               'max by (node) (hapbx_recordings_retention_last_outcome{outcome="failed"}) == 1 '
               "or max by (node) (hapbx_recordings_status_error) == 1 "
               f"or (time() - max({rec}) > {RECORDINGS_MAX_AGE_SECONDS}) "
               f"or {never_succeeded(rec, RECORDINGS_MAX_AGE_SECONDS)}",
               "warning", "Recordings retention failed {{ with $labels.node }}on {{ . }}{{ else }}or did not succeed "
               "for 2 days{{ end }}",
               "Read the reason in /var/lib/hapbx/backup/recordings.json and journalctl -u "
               "hapbx-recordings-retention on the node; check the recordings disk and the repository.", "10m",
               "The last recordings retention run failed (old recordings are not deleted nor copied to the "
               "repository; the disk fills), its status is unreadable, or no node ran it successfully for 2 days."),
    ]


def groups(cluster) -> list[dict]:
    m = cluster.monitoring
    every = _s(m.scrape_interval_seconds)
    return [
        {"name": "hapbx-nodes", "interval": every, "rules": _nodes(m, cluster) + _disks(m)},
        {"name": "hapbx-ha", "interval": every, "rules": _ha(m, cluster) + _etcd(m, cluster)},
        {"name": "hapbx-data", "interval": every, "rules": _postgres(m) + _redis(m) + _cdr(m)},
        {"name": "hapbx-sip", "interval": every, "rules": _kamailio(m) + _media(m)},
    ] + ([{"name": "hapbx-backup", "interval": every, "rules": _backup(cluster)}] if cluster.backup.enabled else [])


def rules(cluster) -> str:
    """The rules file's text (promtool check rules validates it)."""
    from . import header
    body = yaml.safe_dump({"groups": groups(cluster)}, sort_keys=False, width=1000, allow_unicode=True)
    return f"{header()}\n{body}"
