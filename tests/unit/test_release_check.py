"""A node of another Debian release is refused before anything is written to it."""
from __future__ import annotations

import subprocess

from components.node import release_check_script
from components.releases import RELEASES


def host_codename() -> str:
    return subprocess.run(["bash", "-c", ". /etc/os-release && echo $VERSION_CODENAME"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_configured_release_passes_and_another_is_refused_with_what_to_do():
    running = host_codename()
    ok = subprocess.run(["bash", "-c", release_check_script(running)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == f"Debian {running}"
    other = next(c for c in RELEASES if c != running)
    bad = subprocess.run(["bash", "-c", release_check_script(other)], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert f"this host runs Debian {running} but os.release is {other}: set os.release to {running}" in bad.stderr
