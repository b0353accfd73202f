"""Node images: one debootstrapped Debian base plus one package layer per package list.

Both live under the shared cache dir and are built in a scratch directory that is
renamed into place only when complete, so an interrupted build never leaves a
half cache. Builds take a lock on the cache so two labs never build at once.

Every image is of one Debian release (the suite, e.g. bookworm or trixie): the suite is
part of the base's identity, and so of every layer's over it.

Layout:
    <cache>/base/<base-id>/rootfs         the base tree of one suite (overlay lowest layer)
    <cache>/layers/<key>/fs               an overlay upper dir over the base
    <cache>/layers/<key>/packages.txt     what it holds (for humans)
Layers no longer referenced by any lab are left in place; delete <cache>/layers/<key>
by hand (or the whole cache) to reclaim the space.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from .host import command, remove_tree, unmount_under

BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "openssh-server",
                 "python3", "iputils-ping")
# Bump when finish_base() changes, so caches made by older code are not reused.
BASE_FORMAT = 2

SSHD_LAB_CONFIG = """\
# hapbx lab: root logs in with the lab key only; each node has its own ed25519 host key.
PermitRootLogin prohibit-password
PasswordAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
"""
POLICY_RC_D = "#!/bin/sh\n# hapbx lab image build: start no daemon in the build chroot.\nexit 101\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def base_id(suite: str) -> str:
    return _digest(json.dumps({"suite": suite, "variant": "minbase",
                               "include": BASE_PACKAGES, "format": BASE_FORMAT}))


def normalize(packages: Sequence[str]) -> tuple[str, ...]:
    """The identity of a package list: order and repeats do not matter."""
    return tuple(sorted(set(packages)))


def layer_key(suite: str, packages: Sequence[str]) -> str:
    return _digest(base_id(suite), *normalize(packages))


def base_root(cache: Path, suite: str) -> Path:
    return cache / "base" / base_id(suite) / "rootfs"


def layer_root(cache: Path, suite: str, packages: Sequence[str]) -> Path:
    return cache / "layers" / layer_key(suite, packages) / "fs"


def lower_dirs(cache: Path, suite: str, packages: Sequence[str]) -> list[Path]:
    """Overlay lower dirs for a node, lowest first; no packages means the base alone."""
    return [base_root(cache, suite)] + ([layer_root(cache, suite, packages)] if packages else [])


def missing(cache: Path, suite: str, packages: Sequence[str]) -> list[Path]:
    """Cache entries a node with these packages still needs, base first."""
    return [d for d in lower_dirs(cache, suite, packages) if not d.is_dir()]


# --- building ---------------------------------------------------------------

@contextlib.contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Holding the lock, any scratch dir left is from a build that died: drop it.
        for stale in cache.glob(".build-*"):
            remove_tree(stale)
        yield


def _build(cache: Path, final: Path, scratch_name: str, fill) -> None:
    """Run fill(scratch) and rename scratch to final's parent, unless someone already did.

    final is the tree inside the cache entry; its parent is the entry renamed into place.
    """
    with _build_lock(cache):
        if final.is_dir():  # another lab built it while we waited for the lock
            return
        scratch = cache / f".build-{scratch_name}"
        try:
            scratch.mkdir(parents=True)
            fill(scratch)
            final.parent.parent.mkdir(parents=True, exist_ok=True)
            os.rename(scratch, final.parent)
        finally:
            remove_tree(scratch)


def build_base(cache: Path, suite: str) -> None:
    def fill(scratch: Path) -> None:
        tree = scratch / "rootfs"
        # No mirror argument: debootstrap uses the distribution's default archive.
        command(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 suite, str(tree)], timeout=1800)
        _finish_base(tree)
        (scratch / "build.json").write_text(json.dumps(
            {"suite": suite, "include": BASE_PACKAGES, "format": BASE_FORMAT}) + "\n")
    _build(cache, base_root(cache, suite), f"base-{base_id(suite)}", fill)


def build_layer(cache: Path, suite: str, packages: Sequence[str]) -> None:
    wanted = normalize(packages)

    def fill(scratch: Path) -> None:
        _install_into_layer(base_root(cache, suite), scratch, wanted)
        (scratch / "packages.txt").write_text("\n".join(wanted) + "\n")
    _build(cache, layer_root(cache, suite, wanted), f"layer-{layer_key(suite, wanted)}", fill)


def _finish_base(tree: Path) -> None:
    """Make the tree safe to share between nodes and bootable under nspawn."""
    # An empty machine-id makes each node get its own (the node's upper dir sets one);
    # dbus keeps a second copy that must follow it.
    (tree / "etc/machine-id").write_text("")
    dbus_id = tree / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # debootstrap copies the host's hostname and resolver; nodes must have neither
    # (the name comes from nspawn, and there is no DNS inside the isolated lab).
    (tree / "etc/hostname").unlink(missing_ok=True)
    (tree / "etc/resolv.conf").write_text("")
    (tree / "etc/hosts").write_text(HOSTS)
    # Host keys made at package install would be shared by every node.
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (tree / "etc/ssh/sshd_config.d/10-hapbx-lab.conf").write_text(SSHD_LAB_CONFIG)
    chroot_systemctl = ["chroot", str(tree), "systemctl"]
    command(chroot_systemctl + ["enable", "systemd-networkd.service", "ssh.service"])
    # Nodes have no route to the archive: the daily apt runs would only fail, and
    # worse, hold the dpkg lock while the stack installs packages.
    command(chroot_systemctl + ["disable", "apt-daily.timer", "apt-daily-upgrade.timer"])


def _install_into_layer(base: Path, scratch: Path, packages: list[str]) -> None:
    """apt-get install in a chroot over the base; the overlay upper dir becomes the layer."""
    upper, work, merged = scratch / "fs", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    command(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base},upperdir={upper},workdir={work}", str(merged)])
    try:
        command(["mount", "-t", "proc", "proc", str(merged / "proc")])
        command(["mount", "-t", "sysfs", "-o", "ro", "sysfs", str(merged / "sys")])
        command(["mount", "--bind", "/dev", str(merged / "dev")])
        # The host's resolver, for apt only: bound, so nothing of it lands in the layer.
        command(["mount", "--bind", "-o", "ro", "/etc/resolv.conf",
                 str(merged / "etc/resolv.conf")])
        policy = merged / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        chroot = ["chroot", str(merged)]
        command(chroot + ["apt-get", "update"], timeout=600)
        command(chroot + ["apt-get", "install", "-y", *packages], timeout=1800)
        command(chroot + ["apt-get", "clean"])
        policy.unlink()
    finally:
        unmount_under(merged)
    remove_tree(work)
    merged.rmdir()
