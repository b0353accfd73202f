"""The backup status files (the backup contract: pgbackrest.json from hapbx_node.backup,
recordings.json from hapbx_node.recordings; read by hapbx-exporter): where they live and how
they are read and written. A module every node package ships with (render.NODE_SHARED_MODULES)."""
from __future__ import annotations

import json
import os
import tempfile

STATUS_DIR = "/var/lib/hapbx/backup"
#: in STATUS_DIR: the backup runner's and the recordings retention's
PGBACKREST_STATUS = "pgbackrest.json"
RECORDINGS_STATUS = "recordings.json"


def read(path: str) -> dict:
    """The file's values, or {} when it is missing or unreadable (a first run)."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def write_atomic(path: str, values: dict) -> None:
    """tmp + rename in the same directory: a reader sees the old file or the new one, whole; 0644,
    so the exporter (a dynamic user) reads it."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(values, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
