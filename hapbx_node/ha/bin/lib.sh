#!/bin/bash
# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source it)
# hapbx HA library of the bash entry points (keepalived's notify and track
# scripts, vip-release, pg-guard, hapbx-ha). The decisions and the jobs are the
# Python HA core (hapbx_node/ha); these scripts only record what keepalived says,
# report health and guard PostgreSQL's start. Everything node-specific comes
# from the env file rendered per node (HAPBX_ENV, default /etc/hapbx/ha.env), so
# the same scripts run on the nodes and in the tests (local ports, temp dirs).
#
# Conventions: no `set -e` (every failure is handled and logged explicitly);
# every external call is bounded by `timeout`.

set -o nounset -o pipefail
export LC_ALL=C
umask 022

HAPBX_ENV=${HAPBX_ENV:-/etc/hapbx/ha.env}
if [[ ! -r $HAPBX_ENV ]]; then
	echo "hapbx-ha: cannot read $HAPBX_ENV" >&2
	exit 2
fi
set -a
# shellcheck source=/dev/null
. "$HAPBX_ENV"
if [[ -n ${HA_SECRETS_ENV:-} && -r ${HA_SECRETS_ENV:-} ]]; then
	# shellcheck source=/dev/null
	. "$HA_SECRETS_ENV"
fi
set +a

# under systemd stderr already goes to the journal
if [[ -n ${JOURNAL_STREAM:-} ]]; then HA_SYSLOG=0; fi
SCRIPT=${SCRIPT:-${0##*/}}
T0_US=${EPOCHREALTIME/[.,]/}
HA_RUN_DIR=${HA_RUN_DIR:-/run/hapbx/ha}
HA_LIB_DIR=${HA_LIB_DIR:-/var/lib/hapbx/ha}
WITNESS=${WITNESS:-0}
FENCED_MARK="$HA_LIB_DIR/pg-fenced"
VRRP_FILE="$HA_RUN_DIR/vrrp"
WAKE_FIFO="$HA_RUN_DIR/wake"

# ---------------------------------------------------------------- time + logs

# NOW_MS: wall clock in ms, without forking (durations, logs, epoch-second markers).
now_ms() { NOW_MS=$((${EPOCHREALTIME/[.,]/} / 1000)); }

# MONO_MS: the boot clock in ms (CLOCK_BOOTTIME, 10 ms steps), without forking. What the leader
# daemon decides by (hapbx_node/ha/clock.py): deadlines, VRRP and heartbeat times. A wall-clock
# step never moves it.
mono_ms() {
	local up
	read -r up _ </proc/uptime
	MONO_MS=$((10#${up/./} * 10))
}

# to_ms "0.25" -> REPLY=250 (decimal seconds to integer ms, no bc).
to_ms() {
	local s=$1 int frac=000
	int=${s%%.*}
	if [[ $s == *.* ]]; then
		frac=${s#*.}000
		frac=${frac:0:3}
	fi
	REPLY=$((10#${int:-0} * 1000 + 10#$frac))
}

# ms_to_s 1250 -> REPLY=1.250 (for timeout/read -t).
ms_to_s() {
	local ms=$1
	((ms < 1)) && ms=1
	printf -v REPLY '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

log() {
	local level=$1 now line prio=info
	shift
	now=${EPOCHREALTIME/[.,]/}
	printf -v line '%s %s[%d] %-5s +%dms %s' "${HAPBX_NODE:-?}" "$SCRIPT" "$$" "$level" \
		$(((now - T0_US) / 1000)) "$*"
	printf '%(%Y-%m-%dT%H:%M:%S)T.%s %s\n' $((now / 1000000)) "${now: -6:3}" "$line" >&2
	if [[ -n ${HA_LOG_FILE:-} ]]; then
		printf '%(%Y-%m-%dT%H:%M:%S)T.%s %s\n' $((now / 1000000)) "${now: -6:3}" "$line" \
			>>"$HA_LOG_FILE" 2>/dev/null || true
	fi
	if [[ ${HA_SYSLOG:-0} == 1 ]]; then
		case $level in ERROR | FENCE) prio=err ;; WARN) prio=warning ;; esac
		logger -t hapbx-ha -p "daemon.$prio" -- "$line" 2>/dev/null || true
	fi
}

die() {
	log ERROR "$*"
	exit 1
}

ensure_dirs() {
	mkdir -p "$HA_RUN_DIR" "$HA_LIB_DIR" 2>/dev/null || true
}

# take_lock NAME WAIT_SECONDS: serialise with every other script taking NAME.
take_lock() {
	ensure_dirs
	exec {LOCK_FD}>>"$HA_RUN_DIR/$1.lock" || die "cannot open lock $1"
	if ! flock -w "$2" "$LOCK_FD"; then
		log WARN "lock $1 still held by another run after $2 s"
		return 1
	fi
}

# write_file PATH VALUE: atomic, and only when the value changes.
write_file() {
	local cur=""
	if [[ -r $1 ]]; then read -r cur <"$1" || true; fi
	[[ $cur == "$2" ]] && return 0
	printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}

# planned NAME [SECONDS]: that daemon is being restarted on purpose (epoch seconds in the marker):
# by an apply's handler (components/remote.py PLANNED_DIR, the unit's name) or, for "postgres", by
# the leader daemon after a crash of the primary; honoured SECONDS (30) at most, so it cannot hide
# a real failure long
planned() {
	local t=""
	now_ms
	[[ -r $HA_RUN_DIR/planned-restart.$1 ]] && t=$(<"$HA_RUN_DIR/planned-restart.$1")
	[[ $t =~ ^[0-9]+$ ]] && ((NOW_MS / 1000 - t < ${2:-30}))
}

wake_daemon() {
	if [[ -p $WAKE_FIFO ]]; then
		# read-write open never blocks, with or without a reader
		printf 'w\n' 1<>"$WAKE_FIFO" 2>/dev/null || true
	fi
}

# ---------------------------------------------------------------- state files

# read_vrrp: VRRP_STATE (MASTER|BACKUP|FAULT|STOP|UNKNOWN), VRRP_SINCE_MS (boot clock).
read_vrrp() {
	VRRP_STATE=UNKNOWN
	VRRP_SINCE_MS=0
	if [[ -r $VRRP_FILE ]]; then
		read -r VRRP_STATE VRRP_SINCE_MS _ <"$VRRP_FILE" 2>/dev/null || true
	fi
	VRRP_STATE=${VRRP_STATE:-UNKNOWN}
	VRRP_SINCE_MS=${VRRP_SINCE_MS:-0}
}

vip_present() {
	[[ -n ${VIP:-} ]] || return 1
	ip -o -4 addr show dev "$VIP_IFACE" 2>/dev/null | grep -q " ${VIP}/"
}

# ---------------------------------------------------------------- PostgreSQL

pg_standby_configured() { [[ -e $PG_DATA/standby.signal ]]; }

# ---------------------------------------------------------------- Redis

# rcli args...: redis-cli as REDIS_USER (hapbx-ha: PING, ROLE, REPLICAOF, CLIENT PAUSE/UNPAUSE
# only; its password REDISCLI_AUTH from the secrets env file), over TLS checked against
# REDIS_TLS_CA (empty: plain TCP, a test rig's servers without TLS).
rcli() {
	local tls=()
	[[ -n ${REDIS_TLS_CA:-} ]] && tls=(--tls --cacert "$REDIS_TLS_CA")
	timeout "${REDIS_TIMEOUT:-3}" redis-cli --no-auth-warning --user "$REDIS_USER" "${tls[@]}" \
		-h "$REDIS_HOST" -p "$REDIS_PORT" "$@"
}

# ---------------------------------------------------------------- etcd

ETCD_KEY="${ETCD_PREFIX:-/hapbx}/leader"
ETCD_PRIMARY_KEY="${ETCD_PREFIX:-/hapbx}/primary"
ETCD_SYNC_KEY="${ETCD_PREFIX:-/hapbx}/sync"

# ectl LIMIT_MS args...: one etcdctl call, bounded as a whole by `timeout`
# (lease keep-alive --once ignores --command-timeout). Credentials come from
# ETCDCTL_USER/ETCDCTL_PASSWORD in the environment, never from argv.
ectl() {
	local limit=$1 dial
	shift
	((limit < 50)) && limit=50
	dial=$((limit * 3 / 4))
	ms_to_s "$limit"
	ETCDCTL_API=3 timeout "$REPLY" etcdctl --endpoints="$ETCD_ENDPOINTS" \
		--dial-timeout="${dial}ms" --command-timeout="${limit}ms" "$@"
}

# etcd_get KEY: linearizable read (never --consistency=s). REPLY=value ("" = absent).
etcd_get() {
	REPLY=$(ectl "${ETCD_TIMEOUT_MS:-1000}" get "$1" --print-value-only 2>/dev/null) || return 1
	REPLY=${REPLY%%$'\n'*}
}
