"""Small files read once per scrape: their text and age, or None when missing or unreadable."""
from __future__ import annotations

import os
import time

#: no source file is bigger; a larger one is not ours (read no further)
MAX_BYTES = 64 * 1024


def read(path: str) -> tuple[str, float] | None:
    """(text, age in seconds) of a file, or None. The age from its modification time, never
    negative (a clock step back)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read(MAX_BYTES)
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace"), max(0.0, time.time() - st.st_mtime)


def number(values: dict, key: str) -> float | None:
    """A finite number under key, or None (missing, empty, garbled)."""
    try:
        value = float(values.get(key, ""))
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None
