#!/bin/bash
# Managed by high-cc-pbx (Pulumi). Local edits are overwritten on the next apply.
# Checks a Redis configuration (and ACL file) the only way Redis offers: a throwaway
# redis-server loads it, on a private unix socket (no TCP port), as a master (never syncs from
# anyone), in a temporary directory, and must answer. Prints Redis' own error otherwise.
# usage: check-config CONF [ACLFILE]   (ACLFILE defaults to the installed one, or an empty one)
set -euo pipefail
conf=${1:?usage: check-config CONF [ACLFILE]}
acl=${2:-/etc/redis/users.acl}
dir=$(mktemp -d /tmp/hapbx-redis-check.XXXXXX)
pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$dir"; }
trap cleanup EXIT
if [ ! -f "$acl" ]; then : > "$dir/empty.acl"; acl="$dir/empty.acl"; fi
redis-server "$conf" --port 0 --bind 127.0.0.1 --unixsocket "$dir/s" --unixsocketperm 700 \
  --dir "$dir" --logfile "$dir/log" --pidfile "$dir/pid" --daemonize no --supervised no \
  --aclfile "$acl" --replicaof no one --appendonly no --save "" >"$dir/out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if [ -S "$dir/s" ]; then
    reply=$(redis-cli -s "$dir/s" ping 2>&1 || true)
    case "$reply" in PONG|NOAUTH*) exit 0 ;; esac
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
echo "redis-server rejected $conf (ACL file $acl):" >&2
cat "$dir/out" "$dir/log" 2>/dev/null | grep -v '^ *$' | tail -n 8 >&2 || true
exit 1
