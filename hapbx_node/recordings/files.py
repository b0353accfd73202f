"""The recordings on disk: every finished file under a directory, with the call UUID its name
carries. Hidden files (recording-done's and rsync's .part and temporary files: still being
written) and anything not a regular file (a symlink never leads the deletion elsewhere) are not
recordings."""
from __future__ import annotations

import os
import re
import stat

from .plan import Recording

UUID_NAME = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.[A-Za-z0-9]+$")
#: an empty day directory is removed once it has not changed for this long (recording-done makes
#: it with mkdir -p just before copying into it: never one being used)
EMPTY_DIR_AGE = 2 * 86400


def uuid_of(name: str) -> str | None:
    m = UUID_NAME.match(name)
    return m.group(1).lower() if m else None


def walk(root: str) -> list[Recording]:
    """Every recording under root (absolute paths), sorted; a missing root has none."""
    out: list[Recording] = []
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith(".") or name.endswith(".part"):
                continue
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(Recording(path, uuid_of(name), st.st_size, st.st_mtime))
    return sorted(out, key=lambda r: r.path)


def inside(root: str, path: str) -> bool:
    """Whether path is strictly below root (never delete anything else)."""
    root = os.path.abspath(root)
    return os.path.abspath(path).startswith(root.rstrip("/") + "/")


def prune_empty_dirs(root: str, now: float, keep_levels: int = 1) -> list[str]:
    """Remove empty directories below root (not the first keep_levels levels: <node>/) unchanged
    for EMPTY_DIR_AGE; returns them. Deepest first, so an emptied month goes with its last day."""
    removed = []
    root = os.path.abspath(root)
    for top, dirs, names in os.walk(root, topdown=False):
        depth = 0 if top == root else len(os.path.relpath(top, root).split(os.sep))
        if depth <= keep_levels or names or any(os.path.isdir(os.path.join(top, d)) for d in dirs):
            continue
        try:
            if now - os.lstat(top).st_mtime > EMPTY_DIR_AGE:
                os.rmdir(top)
                removed.append(top)
        except OSError:
            continue  # not empty after all (a recording arrived), or not ours to remove
    return removed
