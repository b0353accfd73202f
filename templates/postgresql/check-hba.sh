#!/bin/bash
# Managed by high-cc-pbx (Pulumi). Local edits are overwritten on the next apply.
# Checks a pg_hba.conf before it is installed: PostgreSQL has no offline checker (after the
# reload the deployment also reads pg_hba_file_rules, PostgreSQL's own parser, and fails on
# any error). Also enforces the policy: no trust/password/md5, addresses in CIDR form.
set -euo pipefail
f=${1:?usage: check-hba FILE}
awk '
function bad(msg) { printf "%s line %d: %s: %s\n", FILENAME, FNR, msg, $0; errors++ }
/^[[:space:]]*(#|$)/ { next }
{
  sub(/[[:space:]]+#.*$/, "")
  type = $1
  if (type == "local") {
    if (NF < 4) { bad("local needs database, user, method"); next }
    method = $4
  } else if (type ~ /^host(ssl|nossl|gssenc|nogssenc)?$/) {
    if (NF < 5) { bad(type " needs database, user, address, method"); next }
    if ($4 !~ /^([0-9]{1,3}\.){3}[0-9]{1,3}\/[0-9]{1,2}$/ && $4 !~ /^[0-9a-fA-F:]+\/[0-9]{1,3}$/) {
      bad("address is not in CIDR form"); next
    }
    method = $5
  } else { bad("unknown connection type " type); next }
  if (method ~ /^(trust|password|md5)$/) { bad("method " method " is not allowed (scram-sha-256)"); next }
  if (method !~ /^(scram-sha-256|peer|reject|cert)$/) { bad("unknown or unexpected method " method); next }
}
END { exit errors ? 1 : 0 }
' "$f"
