"""Another Debian release's daemons on this host: the lab's node image of that release as a chroot.

The daemons tier checks and runs the daemons of *both* releases (Kamailio 5.6 and 6.0,
PostgreSQL 15 and 17, keepalived 2.2 and 2.3, etcd 3.4 and 3.5). The host is Debian 12;
the other release's binaries come from the very image the lab boots for it (lab/image.py:
the release's base plus the layer of ``ClusterConfig.node_packages()``, built on first use
and cached), mounted as a throwaway overlay so nothing a test does reaches the cache.

Inside, /tmp is the host's /tmp (so a test's files have the same path on both sides) and
the network is the host's (a daemon in the root listens on the host's loopback).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from components.config import build
from lab import image
from lab.host import remove_tree
from tests.mockrun import stack_config

#: the lab stack of each release: its node package list is the image's layer (and the test labs')
STACKS = {"bookworm": "lab", "trixie": "lab-trixie"}
CACHE = Path("/var/cache/hapbx")


def node_packages(codename: str) -> tuple[str, ...]:
    cluster, _ = build(stack_config(STACKS[codename]))
    return image.normalize(cluster.node_packages())


def image_missing(codename: str) -> list[Path]:
    """What the release's node image still lacks in the cache (base, layer); empty: built."""
    return image.missing(CACHE, codename, node_packages(codename))


def ensure_image(codename: str) -> list[Path]:
    """The release's node image (base, then layer), built if the cache lacks it; lowest first."""
    packages = node_packages(codename)
    if image.missing(CACHE, codename, ()):
        image.build_base(CACHE, codename)
    if image.missing(CACHE, codename, packages):
        image.build_layer(CACHE, codename, packages)
    return image.lower_dirs(CACHE, codename, packages)


class Host:
    """This host (Debian 12, the lab's release) behind the interface a ReleaseRoot has: code that
    runs a daemon of either release takes one of the two and never asks which."""
    codename = "bookworm"

    def path(self, inside: str) -> Path:
        return Path(inside)

    def argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        return ["runuser", "-u", user, "--", *argv] if user else list(argv)

    def run(self, argv: Sequence[str], user: str | None = None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.argv(argv, user), **kw)

    def popen(self, argv: Sequence[str], user: str | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv, user), **kw)

    def version(self, package: str) -> str:
        return self.run(["dpkg-query", "-W", "-f=${Version}", package], check=True).stdout


HOST = Host()


class ReleaseRoot(Host):
    """A writable scratch chroot over a release's node image; ``close()`` unmounts and removes it."""

    def __init__(self, codename: str):
        self.codename = codename
        lowers = ensure_image(codename)
        self.dir = Path(tempfile.mkdtemp(prefix=f"hapbx-root-{codename}-", dir="/var/tmp"))
        upper, work, self.root = self.dir / "upper", self.dir / "work", self.dir / "root"
        for d in (upper, work, self.root):
            d.mkdir()
        lower = ":".join(str(d) for d in reversed(lowers))  # overlay: highest first
        try:
            _mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", self.root)
            _mount("-t", "proc", "proc", self.root / "proc")
            _mount("--rbind", "/dev", self.root / "dev")
            _mount("--bind", "/tmp", self.root / "tmp")
            (self.root / "run/postgresql").mkdir(parents=True, exist_ok=True)
        except Exception:
            self.close()
            raise

    def path(self, inside: str) -> Path:
        """The host path of a path inside the root."""
        return self.root / inside.lstrip("/")

    def argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        return ["chroot", str(self.root), *super().argv(argv, user)]

    def close(self) -> None:
        if self.root.is_dir():
            # processes a test left inside would hold the mounts: none may outlive the root
            subprocess.run(["fuser", "-k", "-M", "-m", str(self.root)], capture_output=True)
        remove_tree(self.dir)  # unmounts first: never deletes through the bound /dev or /tmp


def _mount(*args) -> None:
    subprocess.run(["mount", *map(str, args)], check=True, capture_output=True, text=True)


def available() -> str | None:
    """Why a release root cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount, chroot)"
    for tool in ("debootstrap", "chroot", "fuser"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None
