"""Rejoin moves a data directory aside even where rename(2) cannot: a data directory that is a
mount point (or, on the lab's nodes, one in an overlayfs lower layer: EXDEV, found by the Debian
13 drill 5). The copy keeps owners, modes and contents; the mount point stays, empty, for
pg_basebackup."""
from __future__ import annotations

import os
import subprocess

import pytest

from hapbx_node.ha.jobs import move_dir, remove_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


def test_a_mount_point_data_directory_is_copied_aside_and_emptied(tmp_path):
    data, old = tmp_path / "main", tmp_path / "main.moved-20260101T000000"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "hapbx-test", str(data)], check=True)
    try:
        (data / "base").mkdir()
        (data / "base" / "1").write_text("rows")
        (data / "PG_VERSION").write_text("17\n")
        os.chmod(data / "base", 0o700)
        os.chown(data / "PG_VERSION", 106, 106)
        with pytest.raises(OSError):
            os.rename(data, old)                      # what a plain rename does here
        move_dir(str(data), str(old))
        assert (old / "base" / "1").read_text() == "rows" and (old / "PG_VERSION").read_text() == "17\n"
        assert os.stat(old / "PG_VERSION").st_uid == 106 and (os.stat(old / "base").st_mode & 0o777) == 0o700
        assert os.path.ismount(data) and os.listdir(data) == []
        # a partial pg_basebackup is removed; the mount point stays
        (data / "partial").write_text("x")
        remove_dir(str(data))
        assert os.path.ismount(data) and os.listdir(data) == []
    finally:
        subprocess.run(["umount", str(data)], check=False)


def test_a_plain_directory_is_renamed(tmp_path):
    data, old = tmp_path / "main", tmp_path / "main.moved"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    ino = os.stat(data).st_ino
    move_dir(str(data), str(old))
    assert not data.exists() and os.stat(old).st_ino == ino    # renamed, not copied
