"""The stack's state: one JSON file (mode 0600), locked per apply, persisted as resources change."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from typing import Iterator

from harness.result import ApplyError

STATE_VERSION = 1


class StateFile:
    """The stack's resources in a 0600 JSON file, persisted after each change.

    A writer thread persists the newest snapshot whenever something changed, so
    hundreds of completions do not each serialise the whole file; close() writes
    the final one. A hard kill can lose only completions made during the last
    write, and those commands are idempotent.
    """

    def __init__(self, path: str, data: dict) -> None:
        self.path, self._data = path, data
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._dirty, self._closing = False, False
        self._write_error: OSError | None = None
        self._writer = threading.Thread(target=self._write_loop, name="harness-state", daemon=True)
        self._writer.start()

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str, project: str | None = None, stack: str | None = None):
        with _exclusive(path):
            data = load_state(path)
            for key, wanted in (("project", project), ("stack", stack)):
                if wanted is not None and data.setdefault(key, wanted) != wanted:
                    raise ApplyError(f"state {path} belongs to {key} {data[key]!r}, not {wanted!r}")
            state = cls(path, data)
            try:
                yield state
            finally:
                state._close()

    # reads
    def get(self, urn: str) -> dict | None:
        with self._lock:
            entry = self._data["resources"].get(urn)
            return dict(entry) if entry else None

    def pending(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._data["pending"]]

    def absent(self, seen: set[str]) -> list[dict]:
        with self._lock:
            return [dict(e) for urn, e in self._data["resources"].items() if urn not in seen]

    def known_secrets(self) -> list[str]:
        with self._lock:
            entries = list(self._data["resources"].values()) + self._data["pending"]
            return [s for e in entries for s in e.get("secrets", [])]

    # writes
    def put(self, entry: dict, *, pending_old: dict | None = None) -> None:
        with self._lock:
            self._data["seq"] += 1
            entry["seq"] = self._data["seq"]
            self._data["resources"][entry["urn"]] = entry
            if pending_old is not None:
                self._data["pending"].append(pending_old)
            self._touch()

    def keep(self, entry: dict) -> None:
        """Store an unchanged resource (its dependencies may have changed)."""
        with self._lock:
            self._data["resources"][entry["urn"]] = entry
            self._touch()

    def forget(self, entry: dict) -> None:
        with self._lock:
            pending = self._data["pending"]
            if entry in pending:
                pending.remove(entry)
            elif self._data["resources"].get(entry["urn"]) == entry:
                del self._data["resources"][entry["urn"]]
            self._touch()

    def _touch(self) -> None:
        self._dirty = True
        self._changed.notify()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._dirty and not self._closing:
                    self._changed.wait()
                if not self._dirty:
                    return
                text, self._dirty = json.dumps(self._data, indent=1, sort_keys=True), False
            try:
                _write_private(self.path, text)
            except OSError as exc:
                self._write_error = exc  # reported by _close; the loop goes on with newer data

    def _close(self) -> None:
        with self._lock:
            self._closing = True
            self._changed.notify()
        self._writer.join()
        if self._write_error is not None:
            raise ApplyError(f"could not save state {self.path}: {self._write_error}")


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """One apply or destroy per state file at a time, like Pulumi's stack lock."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplyError(f"state {path} is in use by another apply or destroy") from None
        yield


def load_state(path: str) -> dict:
    empty = {"version": STATE_VERSION, "seq": 0, "resources": {}, "pending": []}
    if not os.path.exists(path):
        return empty
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("version") != STATE_VERSION:
        raise ApplyError(f"state {path} has version {data.get('version')!r}, expected {STATE_VERSION}")
    return {**empty, **data}


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # an older tmp file may have had another mode
    os.replace(tmp, path)
