"""Render-tier fixtures shared by files: the other Debian release's daemons (tests/release_root.py)."""
from __future__ import annotations

import pytest

from tests.release_root import ReleaseRoot, available


@pytest.fixture(scope="session")
def trixie_root():
    """Debian 13's node image as a scratch chroot: Kamailio 6.0, PostgreSQL 17, keepalived 2.3, etcd 3.5."""
    why = available()
    if why:
        pytest.fail(f"the Debian 13 checks {why} (CI runs as root)")
    root = ReleaseRoot("trixie")
    yield root
    root.close()
