#!/bin/sh
# Build Kamailio 6.0 (production's version, not packaged by Debian) from the upstream tag into
# /var/cache/hapbx/kamailio-6.0, so the render tests also check the prod config with
# `kamailio -c` of 6.0. Needs gcc, make, bison, flex, libpq-dev (~3 min on 2 cores). Optional:
# without it, test_config_passes_kamailio_60_check is skipped and says so.
set -eu
tag=${1:-6.0.7}
prefix=${2:-/var/cache/hapbx/kamailio-6.0}
src=$(mktemp -d /var/tmp/hapbx-kamailio.XXXXXX)
trap 'rm -rf "$src"' EXIT
git clone -q --depth 1 --branch "$tag" https://github.com/kamailio/kamailio.git "$src"
cd "$src"
make PREFIX="$prefix" include_modules="db_postgres dmq dmq_usrloc tls" cfg >/dev/null
make -j"$(nproc)" all >/dev/null
make install >/dev/null
"$prefix/sbin/kamailio" -v | head -n 1
