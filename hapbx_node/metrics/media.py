"""The media engine: up, and its calls in progress.

sipp-uas (the lab's stand-in): SIPp's statistics file (-trace_stat -stf FILE -fd N): a header
line of ';'-separated names, then one line of values every N seconds; CurrentCall is the calls
in progress. Up while the file is younger than max_age (SIPp gone or hung: it ages). The file
grows a line per dump (~0.4 kB); only its head and tail are read.

freeswitch: the event socket on loopback (mod_event_socket), ``api show calls count``. The
password comes from a file (fs_cli.conf's ``password => ...``, which systemd hands the unit as a
credential), sent over the socket only: never in argv (fs_cli -p would show it in ps) or a log.
"""
from __future__ import annotations

import os
import re
import socket

from .exposition import Gauge
from .settings import Settings

#: bytes of a statistics file's head (the header line) and tail (the last dump) read
HEAD_BYTES, TAIL_BYTES = 8192, 16384
CALLS_RE = re.compile(rb"(\d+) total")


def sipp_current_calls(path: str, max_age: float) -> int | None:
    """CurrentCall of the last complete dump, or None (no file, too old, garbled)."""
    import time
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if time.time() - st.st_mtime > max_age:
                return None
            head = fh.read(HEAD_BYTES)
            fh.seek(max(0, st.st_size - TAIL_BYTES))
            tail = fh.read(TAIL_BYTES)
    except OSError:
        return None
    if b"\n" not in head:
        return None
    names = head.split(b"\n", 1)[0].decode("ascii", errors="replace").split(";")
    lines = [x for x in tail.split(b"\n")[:-1] if x.strip()]    # complete lines only
    if "CurrentCall" not in names or not lines or lines[-1] == head.split(b"\n", 1)[0]:
        return None
    values = lines[-1].decode("ascii", errors="replace").split(";")
    try:
        return int(values[names.index("CurrentCall")])
    except (IndexError, ValueError):
        return None


def esl_password(conf: str) -> str | None:
    """The ``password => ...`` of an fs_cli.conf, or None."""
    try:
        with open(conf, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition("=>")
                if sep and key.strip() == "password":
                    return value.strip()
    except OSError:
        return None
    return None


class Esl:
    """Just enough of the event socket's inbound protocol: auth, one api command."""

    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("event socket closed")
        self.buf += data

    def message(self) -> tuple[dict, bytes]:
        """One message: its headers and (Content-Length) body."""
        while b"\n\n" not in self.buf:
            if len(self.buf) > 65536:
                raise ConnectionError("event socket: headers too long")
            self._more()
        raw, self.buf = self.buf.split(b"\n\n", 1)
        headers = {}
        for line in raw.decode("utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            headers[key.strip()] = value.strip()
        length = int(headers.get("Content-Length", "0") or 0)
        if length > 1 << 20:
            raise ConnectionError("event socket: body too long")
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return headers, body

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode("utf-8") + b"\n\n")


def freeswitch_calls(port: int, password: str | None, timeout: float) -> int | None:
    """``show calls count`` over the event socket, or None (no password, no answer, refused)."""
    if not password or "\n" in password:
        return None
    try:
        esl = Esl(port, timeout)
    except OSError:
        return None
    try:
        headers, _ = esl.message()
        if headers.get("Content-Type") != "auth/request":
            return None
        esl.send(f"auth {password}")
        headers, _ = esl.message()
        if not headers.get("Reply-Text", "").startswith("+OK"):
            return None
        esl.send("api show calls count")
        while True:
            headers, body = esl.message()
            if headers.get("Content-Type") == "api/response":
                break
        found = CALLS_RE.search(body)
        try:
            esl.send("exit")
        except OSError:
            pass
        return int(found.group(1)) if found else None
    except (OSError, ValueError):
        return None
    finally:
        esl.close()


def gauges(s: Settings) -> list[Gauge]:
    up = Gauge("hapbx_media_up", f"1 when the media engine ({s.engine}) answers its statistics query.")
    calls = Gauge("hapbx_media_active_calls", f"Calls in progress on the media engine ({s.engine}).")
    if s.engine == "none":
        return []
    if s.engine == "sipp-uas":
        count = sipp_current_calls(s.sipp_stats, s.sipp_max_age)
    else:
        count = freeswitch_calls(s.esl_port, esl_password(s.esl_conf), s.esl_timeout)
    up.set(int(count is not None))
    if count is not None:
        calls.set(count)
    return [up, calls]
