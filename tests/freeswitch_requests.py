"""HTTP requests as FreeSWITCH sent them (tests/fixtures/freeswitch/*.http): read, and send raw.

A fixture is the request's bytes as they crossed the wire: the request line, the headers, an
empty line, the body. Any capture drops in as it is (``nc -l 8088 > x.http`` as the receiver,
Wireshark's "Follow TCP stream" of the client side saved raw, ngrep/tcpdump output cut to the
request): lines may end in CRLF or, after a text editor, in LF; bytes after Content-Length (an
editor's final newline, the next request on a kept-alive connection) are not the body; a chunked
body is de-chunked.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "freeswitch")


class BadCapture(ValueError):
    pass


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]          # in order, names as sent
    body: bytes
    name: str = ""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    @property
    def expects_continue(self) -> bool:
        return (self.header("Expect") or "").strip().lower() == "100-continue"

    def head(self) -> bytes:
        """Request line and headers as they go on the wire (CRLF), up to and with the empty line.
        A de-chunked body is sent with its Content-Length instead of Transfer-Encoding."""
        lines = [f"{self.method} {self.target} {self.version}"]
        chunked = False
        for k, v in self.headers:
            if k.lower() == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
                continue
            lines.append(f"{k}: {v}")
        if chunked:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def wire(self) -> bytes:
        return self.head() + self.body

    def with_header(self, name: str, value: str, after: str | None = None) -> "Request":
        """A copy with one more header (after ``after``, else at the end)."""
        headers = list(self.headers)
        at = len(headers)
        if after:
            at = next(i + 1 for i, (k, _) in enumerate(headers) if k.lower() == after.lower())
        headers.insert(at, (name, value))
        return Request(self.method, self.target, self.version, headers, self.body, self.name)


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise BadCapture("chunked body: a chunk size line is cut off")
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return out
        if len(data) < pos + size:
            raise BadCapture("chunked body: a chunk is cut off")
        out += data[pos:pos + size]
        pos += size + 2


def parse(data: bytes, name: str = "") -> Request:
    """A captured request's bytes -> Request (CRLF or LF lines; body cut to its length)."""
    m = re.search(rb"\r?\n\r?\n", data)
    if not m:
        raise BadCapture(f"{name}: no empty line after the headers")
    head, rest = data[:m.start()], data[m.end():]
    lines = re.split(rb"\r?\n", head)
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadCapture(f"{name}: {lines[0][:80]!r} is not a request line")
    headers = []
    for line in lines[1:]:
        key, sep, value = line.decode("latin-1").partition(":")
        if not sep or not key or key != key.strip():
            raise BadCapture(f"{name}: {line[:80]!r} is not a header line")
        headers.append((key, value.strip()))
    req = Request(parts[0], parts[1], parts[2], headers, b"", name)
    if "chunked" in (req.header("Transfer-Encoding") or "").lower():
        req.body = _dechunk(rest)
    elif req.header("Content-Length") is not None:
        length = int(req.header("Content-Length"))
        if len(rest) < length:
            raise BadCapture(f"{name}: the body has {len(rest)} of its {length} bytes")
        req.body = rest[:length]
    else:
        req.body = rest
    return req


def load(name: str) -> Request:
    """A fixture by file name (in tests/fixtures/freeswitch/) or path."""
    path = name if os.sep in name else os.path.join(FIXTURES, name)
    with open(path, "rb") as fh:
        return parse(fh.read(), os.path.basename(path))


def fixtures() -> list[str]:
    return sorted(f for f in os.listdir(FIXTURES) if f.startswith("json_cdr_request_") and f.endswith(".http"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int] = field(default_factory=list)   # 1xx answers before the final one


def _read_response(sock: socket.socket, buf: bytes) -> tuple[Response, bytes]:
    interim = []
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a response ({buf[:80]!r})")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if 100 <= status < 200:
            interim.append(status)
            continue
        length = int(headers.get("content-length", "0"))
        while len(buf) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return Response(status, headers, buf[:length], interim), buf[length:]


def send(port: int, req: Request, continue_timeout: float = 1.0, timeout: float = 10) -> Response:
    """Send ``req`` to 127.0.0.1:port the way libcurl does: with ``Expect: 100-continue`` the
    head first, then the body once ``100 Continue`` came (or after ``continue_timeout``, libcurl's
    CURLOPT_EXPECT_100_TIMEOUT_MS default of 1 s); otherwise all at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if req.expects_continue:
            sock.sendall(req.head())
            sock.settimeout(continue_timeout)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except socket.timeout:
                pass
            sock.settimeout(timeout)
            if buf and not buf.startswith(b"HTTP/1.1 100"):
                # a final answer before the body (413, 417...): libcurl stops there
                resp, _ = _read_response(sock, buf)
                return resp
            sock.sendall(req.body)
            resp, _ = _read_response(sock, buf)
            return resp
        sock.sendall(req.wire())
        resp, _ = _read_response(sock, b"")
        return resp
