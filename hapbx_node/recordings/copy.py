"""The copy of the recordings to the backup repository, and its expiry.

The repository holds <repository>/recordings/<node>/YYYY/MM/DD/<uuid>.wav, the recordings
directory's own layout (<node> is the node that recorded the call). Each node copies what it
keeps, its own recordings and the peer's copies: on a shared repository the second copy of a file
finds it there already (same size and time: nothing sent); a node lost with recordings the peer
has still gets them copied by the peer.

The copy never mirrors deletions (no rsync --delete, no rclone sync): a recording that vanished
from a node by accident stays in the repository. The repository is expired by the same plan as
the nodes (plan.py, the file's call by its UUID), so it keeps nothing past its retention either.

posix: rsync to a mounted path. s3, sftp: rclone with the rendered configuration (credentials in
it, a systemd credential: never argv); for sftp the server's host key is checked against the
pinned SHA-1 fingerprint (backup.repository.sftpHostKey) before rclone connects.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tempfile
from datetime import datetime
from typing import Iterable

from . import files
from .plan import Recording

#: rsync exit codes that still mean "copied": 24 = a source file vanished meanwhile
RSYNC_OK = (0, 24)


class CopyError(RuntimeError):
    """The copy or the expiry failed; the message says why (recordings.json's reason)."""


def _list_file(rel_paths: Iterable[str], end: bytes = b"\0") -> str:
    """A temporary file listing the paths (rsync --from0: NUL-ended; rclone: one a line)."""
    fd, path = tempfile.mkstemp(prefix="hapbx-recordings-")
    with os.fdopen(fd, "wb") as fh:
        for rel in rel_paths:
            fh.write(rel.encode() + end)
    return path


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CopyError(f"{os.path.basename(argv[0])} took longer than {timeout:.0f} s") from None
    except FileNotFoundError:
        raise CopyError(f"{argv[0]} is not installed") from None


class PosixRepository:
    """A mounted path: rsync (times kept: a copy's mtime is the recording's)."""

    def __init__(self, dest: str, timeout: float = 4 * 3600):
        self.dest, self.timeout = dest.rstrip("/"), timeout

    def __str__(self) -> str:
        return self.dest

    def copy(self, root: str, rel_paths: list[str]) -> tuple[int, int]:
        """Copy these files (relative to root) to the repository; (files sent, bytes sent)."""
        if not rel_paths:
            return 0, 0
        os.makedirs(self.dest, exist_ok=True)
        listing = _list_file(rel_paths)
        try:
            out = _run(["rsync", "-t", "--from0", f"--files-from={listing}", "--chmod=D2750,F0640",
                        "--out-format=%i %l %n", f"{root.rstrip('/')}/", f"{self.dest}/"], self.timeout)
        finally:
            os.unlink(listing)
        if out.returncode not in RSYNC_OK:
            raise CopyError(f"rsync to {self.dest} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        copied = sent = 0
        for line in out.stdout.splitlines():
            flags, _, rest = line.partition(" ")
            size, _, _name = rest.partition(" ")
            if flags.startswith(">f") and size.isdigit():
                copied, sent = copied + 1, sent + int(size)
        return copied, sent

    def listing(self) -> list[Recording]:
        return files.walk(self.dest)

    def delete(self, paths: list[str], now: float) -> list[str]:
        """Remove these copies; returns the errors (one line each)."""
        errors = []
        for path in paths:
            if not files.inside(self.dest, path):
                errors.append(f"{path}: not inside {self.dest}")
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # the peer expired it first (a shared repository)
            except OSError as err:
                errors.append(f"{path}: {err.strerror}")
        files.prune_empty_dirs(self.dest, now)
        return errors


def sha1_fingerprint(key_b64: str) -> str:
    """A public key's SHA-1 fingerprint as pgBackRest's repo-sftp-host-fingerprint writes it."""
    return hashlib.sha1(base64.b64decode(key_b64)).hexdigest()


def _normal(fingerprint: str) -> str:
    return fingerprint.replace(":", "").strip().lower()


def pinned_known_hosts(keyscan: str, host: str, port: int, fingerprint: str) -> str:
    """The known_hosts line of the key ssh-keyscan found whose fingerprint is the pinned one;
    CopyError when none is (a server that is not ours, or a changed key)."""
    want = _normal(fingerprint)
    for line in keyscan.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            got = sha1_fingerprint(parts[2])
        except (ValueError, base64.binascii.Error):
            continue
        if got == want:
            name = host if port == 22 else f"[{host}]:{port}"
            return f"{name} {parts[1]} {parts[2]}\n"
    raise CopyError(f"the SFTP server {host}:{port} shows no host key with the pinned fingerprint")


def _rclone_time(text: str) -> float:
    # RFC 3339 with up to nanoseconds; fromisoformat takes microseconds at most
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


class RcloneRepository:
    """s3 or sftp through rclone: ``remote`` is "<name>:<path>/recordings" of the rendered config."""

    def __init__(self, remote: str, config: str, timeout: float = 4 * 3600, sftp_pin: tuple[str, int, str] | None = None):
        self.remote, self.config, self.timeout, self.sftp_pin = remote.rstrip("/"), config, timeout, sftp_pin

    def __str__(self) -> str:
        return self.remote

    def _argv(self, *args: str, known_hosts: str | None = None) -> list[str]:
        extra = ["--sftp-known-hosts-file", known_hosts] if known_hosts else []
        return ["rclone", "--config", self.config, "--use-json-log", "--stats", "0", *extra, *args]

    def _with_pin(self, *args: str) -> subprocess.CompletedProcess:
        if self.sftp_pin is None:
            return _run(self._argv(*args), self.timeout)
        host, port, fingerprint = self.sftp_pin
        scan = _run(["ssh-keyscan", "-T", "10", "-p", str(port), host], 30)
        fd, known = tempfile.mkstemp(prefix="hapbx-recordings-known-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(pinned_known_hosts(scan.stdout, host, port, fingerprint))
            return _run(self._argv(*args, known_hosts=known), self.timeout)
        finally:
            os.unlink(known)

    def copy(self, root: str, rel_paths: list[str]) -> tuple[int, int]:
        if not rel_paths:
            return 0, 0
        sizes = {}
        for rel in rel_paths:
            try:
                sizes[rel] = os.lstat(os.path.join(root, rel)).st_size
            except OSError:
                sizes[rel] = 0
        listing = _list_file(rel_paths, b"\n")   # rclone's --files-from-raw: one path a line, as it is
        try:
            out = self._with_pin("copy", "-v", "--no-traverse", "--files-from-raw", listing, root, self.remote)
        finally:
            os.unlink(listing)
        if out.returncode != 0:
            raise CopyError(f"rclone copy to {self.remote} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        copied = sent = 0
        for line in out.stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and str(entry.get("msg", "")).startswith("Copied"):
                copied += 1
                sent += sizes.get(entry.get("object", ""), 0)
        return copied, sent

    def listing(self) -> list[Recording]:
        out = self._with_pin("lsjson", "-R", "--files-only", self.remote)
        if out.returncode != 0:
            raise CopyError(f"rclone lsjson {self.remote} failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        recs = []
        for entry in json.loads(out.stdout or "[]"):
            rel = entry["Path"]
            if os.path.basename(rel).startswith("."):
                continue
            recs.append(Recording(f"{self.remote}/{rel}", files.uuid_of(os.path.basename(rel)), int(entry["Size"]),
                                  _rclone_time(entry["ModTime"])))
        return sorted(recs, key=lambda r: r.path)

    def delete(self, paths: list[str], now: float) -> list[str]:
        rels = [p[len(self.remote) + 1:] for p in paths if p.startswith(self.remote + "/")]
        if not rels:
            return []
        listing = _list_file(rels, b"\n")
        try:
            out = self._with_pin("delete", "--files-from-raw", listing, self.remote)
        finally:
            os.unlink(listing)
        return [] if out.returncode == 0 else [f"rclone delete failed ({out.returncode}): {out.stderr.strip()[-300:]}"]
