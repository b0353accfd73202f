"""SIP on the wire, by hand: build a request, send it over UDP, TCP or TLS, read the answers, answer
a digest challenge (qop=auth with a nonce count). For tests that must craft what no well-behaved
phone sends: forged in-dialog requests, replayed credentials, spoofed media traffic.

Only what those tests need; SIPp remains the phone for ordinary calls.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]]
    text: str

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def line(self) -> str:
        return f"{self.status} {self.reason}"


def parse_response(text: str) -> Response | None:
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    m = re.match(r"SIP/2\.0 (\d{3}) ?(.*)", lines[0])
    if not m:
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(m.group(1)), m.group(2), headers, text)


@dataclass
class Request:
    """One SIP request; ``text(transport, local)`` renders it with a fresh branch each time."""
    method: str
    uri: str
    from_uri: str
    to_uri: str
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to_tag: str | None = None
    cseq: int = 1
    contact: str | None = None
    extra: list[str] = field(default_factory=list)
    body: str = ""
    content_type: str | None = None

    def text(self, transport: str, local: tuple[str, int]) -> str:
        to = f"<{self.to_uri}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [f"{self.method} {self.uri} SIP/2.0",
                 f"Via: SIP/2.0/{transport.upper()} {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)};rport",
                 "Max-Forwards: 70",
                 f"From: <{self.from_uri}>;tag={self.from_tag}",
                 f"To: {to}",
                 f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} {self.method}"]
        if self.contact:
            lines.append(f"Contact: <{self.contact}>")
        lines += self.extra
        if self.body:
            lines.append(f"Content-Type: {self.content_type or 'application/sdp'}")
        lines.append(f"Content-Length: {len(self.body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + self.body


class Connection:
    """A socket to one SIP server: UDP (bound to ``local_ip``), TCP or TLS."""

    def __init__(self, server: tuple[str, int], transport: str = "udp", local_ip: str = "0.0.0.0",
                 tls_context: ssl.SSLContext | None = None):
        self.server, self.transport = server, transport.lower()
        if self.transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_ip, 0))
        else:
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.bind((local_ip, 0))
            raw.settimeout(5)
            raw.connect(server)
            if self.transport == "tls":
                ctx = tls_context or ssl.create_default_context()
                raw = ctx.wrap_socket(raw, server_hostname=None if not ctx.check_hostname else server[0])
            self.sock = raw
        self.local = self.sock.getsockname()
        self._buffer = b""

    def send(self, request: Request) -> str:
        data = request.text(self.transport, self.local)
        if self.transport == "udp":
            self.sock.sendto(data.encode(), self.server)
        else:
            self.sock.sendall(data.encode())
        return data

    def _next_message(self, deadline: float) -> str | None:
        while True:
            if self.transport != "udp":
                head, sep, rest = self._buffer.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"(?im)^(?:content-length|l):\s*(\d+)", head)
                    size = int(m.group(1)) if m else 0
                    if len(rest) >= size:
                        self._buffer = rest[size:]
                        return (head + sep + rest[:size]).decode(errors="replace")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65535)
            except (socket.timeout, TimeoutError):
                return None
            if self.transport == "udp":
                return data.decode(errors="replace")
            if not data:
                return None
            self._buffer += data

    def final(self, timeout: float = 3.0) -> Response | None:
        """The first final (>= 200) response within ``timeout``, or None (no answer)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self._next_message(deadline)
            if text is None:
                return None
            response = parse_response(text)
            if response and response.status >= 200:
                return response

    def ask(self, request: Request, timeout: float = 3.0) -> Response | None:
        self.send(request)
        return self.final(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def challenge_params(response: Response) -> dict[str, str]:
    header = response.header("WWW-Authenticate") or response.header("Proxy-Authenticate") or ""
    return dict(re.findall(r'(\w+)="?([^",]*)"?', header.removeprefix("Digest ")))


def authorization(response: Response, request: Request, user: str, password: str, nc: int = 1,
                  cnonce: str | None = None, qop: bool = True) -> str:
    """The Authorization (401) or Proxy-Authorization (407) header answering ``response``;
    ``qop`` False: answered as a client that does not count nonces would (RFC 2069 style)."""
    p = challenge_params(response)
    ha1 = _md5(f"{user}:{p['realm']}:{password}")
    ha2 = _md5(f"{request.method}:{request.uri}")
    fields = f'username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{request.uri}", algorithm=MD5'
    if qop and "qop" in p:
        cnonce = cnonce or secrets.token_hex(8)
        digest = _md5(f"{ha1}:{p['nonce']}:{nc:08x}:{cnonce}:auth:{ha2}")
        fields += f', qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
    else:
        digest = _md5(f"{ha1}:{p['nonce']}:{ha2}")
    name = "Authorization" if response.status == 401 else "Proxy-Authorization"
    return f'{name}: Digest {fields}, response="{digest}"'


def authenticated(conn: Connection, request: Request, user: str, password: str,
                  timeout: float = 3.0) -> tuple[Response | None, Request]:
    """Send ``request``; answer a 401/407 once. Returns the final response and the request that
    carried the credentials (the one a replay test sends again)."""
    first = conn.ask(request, timeout)
    if first is None or first.status not in (401, 407):
        return first, request
    request.cseq += 1
    request.extra = [h for h in request.extra if not h.startswith(("Authorization:", "Proxy-Authorization:"))]
    request.extra.append(authorization(first, request, user, password))
    return conn.ask(request, timeout), request


def in_dialog(invite: Request, answer: Response, method: str) -> Request:
    """ACK or BYE of the call ``invite`` set up (``answer``: its 2xx), along its route set."""
    to_tag = re.search(r";tag=([^;>\s]+)", answer.header("To") or "")
    contact = re.search(r"<([^>]+)>", answer.header("Contact") or "")
    record_routes = [r.strip() for h in answer.headers.get("record-route", []) for r in h.split(",")]
    return Request(method, contact.group(1) if contact else invite.uri, invite.from_uri, invite.to_uri,
                   call_id=invite.call_id, from_tag=invite.from_tag, to_tag=to_tag.group(1) if to_tag else None,
                   cseq=invite.cseq if method == "ACK" else invite.cseq + 1,
                   extra=[f"Route: {r}" for r in reversed(record_routes)])


def hang_up(conn: Connection, invite: Request, answer: Response, timeout: float = 3.0) -> Response | None:
    """Acknowledge a 2xx and end the call; the BYE's final response."""
    conn.send(in_dialog(invite, answer, "ACK"))
    return conn.ask(in_dialog(invite, answer, "BYE"), timeout)
