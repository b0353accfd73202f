"""Small files read once per scrape: their text and age, or None when missing or unreadable."""
from __future__ import annotations

import json
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


def read_json(path: str) -> tuple[bool, dict | None]:
    """(present, the JSON object) of a status file: (False, None) when there is none, (True, None)
    when it cannot be read (permissions) or is not one JSON object (garbled, cut short)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return False, None
    except OSError:
        return True, None
    try:
        doc = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_BYTES else None
    except ValueError:      # UnicodeDecodeError and JSONDecodeError both are
        return True, None
    return True, doc if isinstance(doc, dict) else None


def json_number(doc: dict, key: str) -> float | None:
    """A finite number (not a bool) under key of a JSON object, or None (missing, null, garbled)."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if value == value and abs(value) != float("inf") else None
