"""hapbx-exporter: the HA core's, the CDR pipeline's and the media engine's state as Prometheus
metrics (hapbx_*), served on the node address (job hapbx). Standard library only.

Every scrape reads the sources afresh, each cheaply: the HA core's status file, the CDR worker's
stats file (on the writer only: no file, no hapbx_cdr_* series), the kernel's local addresses
(the VIP), the media engine (the lab's SIPp statistics file, or FreeSWITCH's event socket) and,
with backups on, the backup runner's and the recordings retention's status files (JSON).
A missing or garbled source leaves out what it would have given; what says so stays: the
status age (+Inf when there is no status), hapbx_cdr_stats_age_seconds, hapbx_media_up 0,
hapbx_backup_status_present/_error and hapbx_recordings_status_present/_error.
"""
