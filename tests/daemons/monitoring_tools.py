"""The Prometheus tools and exporters of each Debian release, for the monitoring tests: Debian 12's
are this host's, Debian 13's come from its node image (tests/release_root.py; the node package list
has them while monitoring.enabled). They are Go programs, run on this host as they are."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.release_root import HOST

#: the version each release ships (a parametrization is real: the binaries say so)
VERSIONS = {
    "bookworm": {"promtool": "2.42.", "amtool": "0.25.", "prometheus-node-exporter": "1.5.",
                 "prometheus-postgres-exporter": "0.11.", "prometheus-redis-exporter": "1.45.", "etcd": "3.4."},
    "trixie": {"promtool": "2.53.", "amtool": "0.28.", "prometheus-node-exporter": "1.9.",
               "prometheus-postgres-exporter": "0.17.", "prometheus-redis-exporter": "1.69.", "etcd": "3.5."},
}


def binary(request: pytest.FixtureRequest, release: str, name: str) -> str:
    """The release's `name`, checked to be the version VERSIONS says."""
    if release == HOST.codename:
        path = shutil.which(name) or f"/usr/bin/{name}"
    else:
        root = request.getfixturevalue("trixie_root")
        path = str(root.path(f"/usr/bin/{name}"))
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    said = out.stdout + out.stderr
    want = VERSIONS[release][name]
    assert re.search(rf"(version|Version:?|Exporter) v?{re.escape(want)}", said), (path, said[:300])
    return path
