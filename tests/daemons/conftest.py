"""Render-tier fixtures shared by files: the other Debian release's daemons (tests/release_root.py)."""
from __future__ import annotations

import time

import pytest

from tests import leftovers
from tests.release_root import ReleaseRoot, available


@pytest.fixture(scope="session")
def trixie_root():
    """Debian 13's node image as a scratch chroot: Kamailio 6.0, PostgreSQL 17, keepalived 2.3, etcd 3.5."""
    why = available()
    if why:
        pytest.fail(f"the Debian 13 checks {why} (CI runs as root)")
    root = ReleaseRoot("trixie")
    yield root
    # close() kills what runs inside (it would hold the mounts): a test's daemon left there is a leak
    # the session's end (tests/conftest.py) would no longer see
    deadline = time.monotonic() + 5
    while (left := [p for p in leftovers.inside(str(root.root)) if p.state != "Z"]) and time.monotonic() < deadline:
        time.sleep(0.25)
    root.close()
    if left:
        pytest.fail(f"still running in the release root at the end ({root.root}; now killed):\n"
                    + leftovers.report(left), pytrace=False)
