#!/bin/bash
# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source it)
# hapbx HA library, sourced by every failover script. Everything node-specific
# (addresses, ports, data directory, service commands, timings) comes from the
# env file rendered per node (HAPBX_ENV, default /etc/hapbx/ha.env), so the
# same scripts run on the nodes and in the tests (local ports, temp dirs).
#
# Conventions: no `set -e` (every failure is handled and logged explicitly);
# every external call is bounded by `timeout`; role changes are serialised by
# flock on "$HA_RUN_DIR/role.lock"; the one exception is the clock fence of the
# leader daemon, which must never wait for anything.

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
AUTH_FILE="$HA_RUN_DIR/authority"
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

# timed LABEL cmd...: run and log the outcome with its duration; returns cmd's status.
timed() {
	local what=$1 t rc=0
	shift
	t=${EPOCHREALTIME/[.,]/}
	"$@" || rc=$?
	t=$(((${EPOCHREALTIME/[.,]/} - t) / 1000))
	if ((rc == 0)); then
		log INFO "$what: ok (${t}ms)"
	else
		log ERROR "$what: failed, exit $rc (${t}ms)"
	fi
	return "$rc"
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

# read_authority: AUTH_HOLDER (0|1), AUTH_DEADLINE_MS, AUTH_LEASE.
read_authority() {
	AUTH_HOLDER=0
	AUTH_DEADLINE_MS=0
	AUTH_LEASE=-
	if [[ -r $AUTH_FILE ]]; then
		read -r AUTH_HOLDER AUTH_DEADLINE_MS AUTH_LEASE _ <"$AUTH_FILE" 2>/dev/null || true
	fi
	AUTH_HOLDER=${AUTH_HOLDER:-0}
	AUTH_DEADLINE_MS=${AUTH_DEADLINE_MS:-0}
}

# authority_valid: this node holds the leader key and its fence deadline (boot clock) is ahead.
authority_valid() {
	read_authority
	mono_ms
	[[ $AUTH_HOLDER == 1 ]] && ((MONO_MS + ${1:-0} < AUTH_DEADLINE_MS))
}

vip_present() {
	[[ -n ${VIP:-} ]] || return 1
	ip -o -4 addr show dev "$VIP_IFACE" 2>/dev/null | grep -q " ${VIP}/"
}

# ---------------------------------------------------------------- PostgreSQL

as_pg() {
	if [[ $EUID -ne 0 ]]; then
		"$@"
	else
		runuser -u "$PG_OS_USER" -- "$@"
	fi
}

# pg_sql SQL: one value from the local server over its socket.
pg_sql() {
	timeout "${PG_QUERY_TIMEOUT:-5}" runuser -u "$PG_OS_USER" -- \
		"$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET" -p "$PG_PORT" -d postgres -c "$1"
}

peer_conninfo() {
	printf 'host=%s port=%s user=%s dbname=postgres connect_timeout=%s application_name=hapbx-ha' \
		"$PG_PEER_HOST" "$PG_PEER_PORT" "$PG_PEER_USER" "${PG_CONNECT_TIMEOUT:-2}"
}

# pg_peer_sql SQL: one value from the peer's server as PG_PEER_USER (the replication role,
# granted what pg_rewind needs; password from PG_PASSFILE).
pg_peer_sql() {
	PGPASSFILE=${PG_PASSFILE:-} timeout "${PG_QUERY_TIMEOUT:-5}" \
		"$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -d "$(peer_conninfo)" -c "$1"
}

# pg_pid: PG_PID of a running postmaster of PG_DATA.
pg_pid() {
	local f="$PG_DATA/postmaster.pid" pid=""
	PG_PID=""
	[[ -r $f ]] || return 1
	read -r pid <"$f" 2>/dev/null || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	alive "$pid" || return 1
	PG_PID=$pid
}

pg_standby_configured() { [[ -e $PG_DATA/standby.signal ]]; }

# pg_local_role: PG_ROLE = primary | standby | down | unresponsive.
pg_local_role() {
	local r
	if ! pg_pid; then
		PG_ROLE=down
		return
	fi
	if ! r=$(pg_sql 'select pg_is_in_recovery()' 2>/dev/null); then
		PG_ROLE=unresponsive
		return
	fi
	case $r in
	f) PG_ROLE=primary ;;
	t) PG_ROLE=standby ;;
	*) PG_ROLE=unresponsive ;;
	esac
}

# pg_peer_role: PEER_ROLE = primary | standby | down (refused: host up, server down)
#                           | unreachable | error.
pg_peer_role() {
	local out
	PEER_ERROR=""
	if out=$(pg_peer_sql 'select pg_is_in_recovery()' 2>&1); then
		case $out in
		f) PEER_ROLE=primary ;;
		t) PEER_ROLE=standby ;;
		*) PEER_ROLE=error ;;
		esac
		return
	fi
	case $out in
	*"Connection refused"* | *"No such file or directory"* | *"shutting down"*) PEER_ROLE=down ;;
	*"timeout expired"* | *"No route to host"* | *"Network is unreachable"* | *"Terminated"* | "") PEER_ROLE=unreachable ;;
	*) PEER_ROLE=error ;;
	esac
	PEER_ERROR=${out//$'\n'/ }
}

# alive PID: running (a zombie waiting for its parent to reap it has stopped).
alive() {
	local state=""
	[[ -r /proc/$1/stat ]] || return 1
	read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 1
	[[ $state != Z && $state != X ]]
}

# pg_wait_gone LIMIT_MS: wait for the postmaster PG_PID to exit.
pg_wait_gone() {
	local limit=$1 start
	now_ms
	start=$NOW_MS
	while alive "$PG_PID"; do
		now_ms
		((NOW_MS - start >= limit)) && return 1
		sleep 0.02
	done
	return 0
}

# pg_fence: the local server must not accept writes, now. A running server
# without standby.signal (a primary, or one that may come up as primary) gets
# SIGQUIT (immediate shutdown: no new commit is acknowledged), then SIGKILL.
# A standby is left running. Leaves the fenced marker so nothing restarts it
# as a primary (see pg-guard) until rejoin or promote clears it.
pg_fence() {
	local why=${1:-fence}
	pg_pid || return 0
	if pg_standby_configured; then
		return 0
	fi
	touch "$FENCED_MARK"
	kill -QUIT "$PG_PID" 2>/dev/null || true
	if ! pg_wait_gone "${PG_FENCE_WAIT_MS:-3000}"; then
		log WARN "postmaster $PG_PID ignored SIGQUIT; SIGKILL ($why)"
		pkill -KILL -P "$PG_PID" 2>/dev/null || true
		kill -KILL "$PG_PID" 2>/dev/null || true
		pg_wait_gone 2000 || return 1
	fi
	return 0
}

# pg_stop_fast LIMIT_MS: orderly stop of a primary (clients disconnected at
# once, shutdown checkpoint streamed to the standby), immediate after LIMIT_MS.
pg_stop_fast() {
	local limit=$1
	pg_pid || return 0
	if ! pg_standby_configured; then touch "$FENCED_MARK"; fi
	kill -INT "$PG_PID" 2>/dev/null || true
	if ! pg_wait_gone "$limit"; then
		log WARN "fast shutdown took over ${limit}ms: immediate"
		kill -QUIT "$PG_PID" 2>/dev/null || true
		pg_wait_gone 3000 || {
			kill -KILL "$PG_PID" 2>/dev/null || true
			pg_wait_gone 2000
		}
	fi
}

# pg_start: the server must not inherit the role lock (a postmaster holding it
# would block every later promote/demote/rejoin).
pg_start() {
	local out rc=0
	if [[ -n ${LOCK_FD:-} ]]; then
		out=$(timeout "${PG_START_TIMEOUT:-120}" bash -c "$PG_START_CMD" 2>&1 {LOCK_FD}>&-) || rc=$?
	else
		out=$(timeout "${PG_START_TIMEOUT:-120}" bash -c "$PG_START_CMD" 2>&1) || rc=$?
	fi
	((rc == 0)) && return 0
	log WARN "start command exit $rc: ${out//$'\n'/ | }"
	# the command may report failure for a server that did come up (a stale pid file)
	pg_pid && pg_wait_ready 5000 && {
		log INFO "postgres is running anyway"
		return 0
	}
	return "$rc"
}

# pg_wait_ready LIMIT_MS: the local server answers queries.
pg_wait_ready() {
	local limit=$1 start
	now_ms
	start=$NOW_MS
	until pg_sql 'select 1' >/dev/null 2>&1; do
		now_ms
		((NOW_MS - start >= limit)) && return 1
		sleep 0.1
	done
}

# pg_streaming: the local standby's WAL receiver streams from the peer.
pg_streaming() {
	local s
	s=$(pg_sql "select status from pg_stat_wal_receiver" 2>/dev/null) || return 1
	[[ $s == streaming ]]
}

# ---------------------------------------------------------------- Redis

rcli() {
	timeout "${REDIS_TIMEOUT:-3}" redis-cli --no-auth-warning -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"
}

rcli_peer() {
	timeout "${REDIS_TIMEOUT:-3}" redis-cli --no-auth-warning -h "$REDIS_PEER_HOST" -p "$REDIS_PEER_PORT" "$@"
}

# redis_role / redis_peer_role: REPLY = master | slave | down
redis_role() {
	local out
	out=$(rcli ROLE 2>/dev/null) || {
		REPLY=down
		return
	}
	REPLY=${out%%$'\n'*}
	[[ -n $REPLY ]] || REPLY=down
}

redis_peer_role() {
	local out
	out=$(rcli_peer ROLE 2>/dev/null) || {
		REPLY=down
		return
	}
	REPLY=${out%%$'\n'*}
	[[ -n $REPLY ]] || REPLY=down
}

# redis_fence: a local master stops acknowledging writes at once (clients
# block, nothing is lost), until redis_demote points it at the new master.
redis_fence() {
	redis_role
	[[ $REPLY == master ]] || return 0
	rcli CLIENT PAUSE "${REDIS_PAUSE_MS:-86400000}" WRITE >/dev/null
}

redis_persist_role() {
	[[ -n ${REDIS_ROLE_FILE:-} ]] || return 0
	printf '# Written by hapbx-ha on role changes; included by redis.conf.\n%s\n' "$1" >"$REDIS_ROLE_FILE.tmp.$$" &&
		mv -f "$REDIS_ROLE_FILE.tmp.$$" "$REDIS_ROLE_FILE"
}

# redis_demote: follow the peer when it is master; stay paused otherwise.
redis_demote() {
	local peer
	redis_role
	case $REPLY in
	down) return 0 ;;
	slave)
		rcli CLIENT UNPAUSE >/dev/null 2>&1 || true
		return 0
		;;
	esac
	rcli CLIENT PAUSE "${REDIS_PAUSE_MS:-86400000}" WRITE >/dev/null || return 1
	redis_peer_role
	peer=$REPLY
	if [[ $peer == master ]]; then
		rcli REPLICAOF "$REDIS_PEER_HOST" "$REDIS_PEER_PORT" >/dev/null || return 1
		redis_persist_role "replicaof $REDIS_PEER_HOST $REDIS_PEER_PORT"
		rcli CLIENT UNPAUSE >/dev/null || true
		log INFO "redis: replica of $REDIS_PEER_HOST:$REDIS_PEER_PORT"
	else
		log WARN "redis: peer is $peer, local master stays paused (no writes)"
	fi
}

redis_promote() {
	redis_role
	case $REPLY in
	down)
		log ERROR "redis: not running"
		return 1
		;;
	slave) rcli REPLICAOF NO ONE >/dev/null || return 1 ;;
	esac
	redis_persist_role "replicaof no one"
	rcli CLIENT UNPAUSE >/dev/null || return 1
}

# ---------------------------------------------------------------- services

owner_services() {
	local verb=$1 svc
	[[ -n ${OWNER_SERVICES:-} ]] || return 0
	for svc in $OWNER_SERVICES; do
		timeout "${SERVICE_TIMEOUT:-30}" bash -c "${SERVICE_CMD:-systemctl} $verb $svc" ||
			log WARN "$verb $svc failed"
	done
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

# etcd_put_if_leader KEY VALUE: write only while this node holds the leader key.
etcd_put_if_leader() {
	local out
	out=$(printf 'value("%s") = "%s"\n\nput %s %s\n\n\n' "$ETCD_KEY" "$HAPBX_NODE" "$1" "$2" |
		ectl "${ETCD_TIMEOUT_MS:-1000}" txn 2>/dev/null) || return 1
	[[ ${out%%$'\n'*} == SUCCESS ]]
}
