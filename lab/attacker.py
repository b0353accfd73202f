"""An attacker and an outside SIP destination on a lab's bridge (issue 18, the SIP edge).

Two network namespaces, each plugged into the lab bridge with a veth pair:

- "attacker": one or more addresses of the lab subnet that no stack exempts (no flood exemption,
  not a node, not the host). From here: plain UDP SIP sockets (`Endpoint`: sends requests, waits
  for and parses responses, answers requests as a phone would if asked to) and a raw socket that
  sends a UDP SIP request with any IPv4 source address (IP_HDRINCL), e.g. a node's own.
- "sink": one address standing for a SIP destination outside the cluster. It listens on UDP and
  TCP 5060 and records every frame addressed to it (an AF_PACKET socket on its interface: every
  IPv4 packet to its address, whatever its destination MAC, and every ARP request for it), so a
  relay attempt is seen even if it is not SIP, never completes a TCP handshake, or goes to a stale
  MAC address.

Sockets are made inside a namespace by switching the calling thread into it (setns) for the
moment of their creation: everything else (sending, reading, the threads) runs in this process.
`AttackRange` is a context manager that always removes both veths and both namespaces, closing
every socket it made first (an open socket would keep a deleted namespace, and its veth, alive).

Nothing here sends anywhere but to addresses the caller gives, from inside those namespaces.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import queue
import random
import re
import select
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread in network namespace `netns` (sockets made there stay there)."""
    with _setns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(target, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns into {netns}: {os.strerror(e)}")
                try:
                    yield
                finally:
                    if _libc.setns(own, CLONE_NEWNET) != 0:   # never leave this thread elsewhere
                        e = ctypes.get_errno()
                        raise SystemExit(f"setns back from {netns} failed: {os.strerror(e)}")
            finally:
                os.close(target)
        finally:
            os.close(own)


# ----------------------------------------------------------------------------- SIP messages

COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "o": "event"}
CANONICAL = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
             "proxy-authenticate": "Proxy-Authenticate", "max-forwards": "Max-Forwards"}


def canonical(name: str) -> str:
    low = COMPACT.get(name.lower(), name.lower())
    return CANONICAL.get(low, "-".join(p.capitalize() for p in low.split("-")))


@dataclass
class Message:
    """One SIP request or response: start line, headers in order (names canonical), body."""
    first: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    source: tuple[str, int] | None = None   # where it came from (received messages)
    at: float = 0.0                         # time.monotonic() when received

    @property
    def is_response(self) -> bool:
        return self.first.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first.split()[1]) if self.is_response else 0

    @property
    def reason(self) -> str:
        return self.first.split(" ", 2)[2] if self.is_response and self.first.count(" ") >= 2 else ""

    @property
    def method(self) -> str:
        return self.first.split()[0] if not self.is_response else self.get("CSeq").split()[-1]

    @property
    def ruri(self) -> str:
        return self.first.split()[1]

    def get(self, name: str, default: str = "") -> str:
        name = canonical(name)
        return next((v for n, v in self.headers if n == name), default)

    def all(self, name: str) -> list[str]:
        name = canonical(name)
        out = []
        for n, v in self.headers:
            if n == name:
                out += [p.strip() for p in _split_commas(v)] if n in ("Via", "Record-Route", "Route") else [v]
        return out

    def set(self, name: str, value: str | None) -> "Message":
        """Replace every header `name` by one (or none when value is None), in place."""
        name = canonical(name)
        at = next((i for i, (n, _) in enumerate(self.headers) if n == name), len(self.headers))
        self.headers = [(n, v) for n, v in self.headers if n != name]
        if value is not None:
            self.headers.insert(min(at, len(self.headers)), (name, value))
        return self

    def render(self) -> bytes:
        lines = [self.first] + [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    def branch(self) -> str:
        m = re.search(r";\s*branch=([^;,\s]+)", self.get("Via"))
        return m.group(1) if m else ""

    def tag(self, header: str) -> str:
        m = re.search(r";\s*tag=([^;,\s>]+)", self.get(header))
        return m.group(1) if m else ""

    def cseq(self) -> int:
        return int(self.get("CSeq").split()[0])

    def __str__(self) -> str:
        return self.render().decode(errors="replace")


def _split_commas(value: str) -> list[str]:
    """Split a header value at commas outside <> and quotes."""
    parts, depth, quoted, cur = [], 0, False, ""
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def parse(data: bytes, source: tuple[str, int] | None = None) -> Message | None:
    """A SIP message from a datagram, or None if it is none."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode(errors="replace").replace("\r\n", "\n").split("\n")
    if not lines or not (lines[0].startswith("SIP/2.0 ") or lines[0].endswith(" SIP/2.0")):
        return None
    msg = Message(lines[0].strip(), source=source, at=time.monotonic())
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and msg.headers:   # folded continuation
            n, v = msg.headers[-1]
            msg.headers[-1] = (n, v + " " + line.strip())
        elif ":" in line:
            n, v = line.split(":", 1)
            msg.headers.append((canonical(n.strip()), v.strip()))
    length = msg.get("Content-Length")
    msg.body = body[:int(length)] if length.isdigit() else body
    return msg


def new_id(n: int = 10) -> str:
    return uuid.uuid4().hex[:n]


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def sdp(ip: str, port: int = 4000) -> bytes:
    sid = random.randint(1000, 9999)
    return (f"v=0\r\no=- {sid} {sid} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def request(method: str, ruri: str, *, via: tuple[str, int], from_uri: str, to_uri: str,
            call_id: str | None = None, cseq: int = 1, from_tag: str | None = None, to_tag: str | None = None,
            contact: str | None = None, headers: list[tuple[str, str]] = (), body: bytes = b"",
            content_type: str | None = None, user_agent: str | None = "hapbx-edge-test",
            branch: str | None = None, transport: str = "UDP") -> Message:
    """A SIP request as a UA sends it from `via` (host, port), rport asked for."""
    h = [("Via", f"SIP/2.0/{transport} {via[0]}:{via[1]};branch={branch or new_branch()};rport"),
         ("Max-Forwards", "70"),
         ("From", f"<{from_uri}>;tag={from_tag or new_id()}"),
         ("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
         ("Call-ID", call_id or f"{new_id(16)}@{via[0]}"),
         ("CSeq", f"{cseq} {method}")]
    if contact:
        h.append(("Contact", f"<{contact}>"))
    if user_agent:
        h.append(("User-Agent", user_agent))
    h += [(canonical(n), v) for n, v in headers]
    if body:
        h.append(("Content-Type", content_type or ("application/sdp" if method == "INVITE" else "text/plain")))
    return Message(f"{method} {ruri} SIP/2.0", h, body)


def response_to(req: Message, status: int, reason: str, *, to_tag: str | None = None,
                contact: str | None = None, body: bytes = b"") -> Message:
    """The response a UAS sends to `req` (Via, From, To with our tag, Call-ID, CSeq, Record-Route)."""
    h = [("Via", v) for v in req.all("Via")]
    to = req.get("To")
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    h += [("From", req.get("From")), ("To", to), ("Call-ID", req.get("Call-ID")), ("CSeq", req.get("CSeq"))]
    if 200 <= status < 300 and req.method in ("INVITE", "SUBSCRIBE"):
        h += [("Record-Route", rr) for rr in req.all("Record-Route")]
    if contact:
        h.append(("Contact", f"<{contact}>"))
    h.append(("User-Agent", "hapbx-edge-test-phone"))
    if body:
        h.append(("Content-Type", "application/sdp"))
    return Message(f"SIP/2.0 {status} {reason}", h, body)


def ack_for(invite: Message, final: Message) -> Message:
    """ACK of a non-2xx final response: same branch and R-URI, To with the response's tag."""
    h = [("Via", invite.all("Via")[0]), ("Max-Forwards", "70"), ("From", invite.get("From")),
         ("To", final.get("To")), ("Call-ID", invite.get("Call-ID")), ("CSeq", f"{invite.cseq()} ACK")]
    h += [("Route", r) for r in invite.all("Route")]
    return Message(f"ACK {invite.ruri} SIP/2.0", h)


# ----------------------------------------------------------------------------- digest

def _params(challenge: str) -> dict[str, str]:
    return {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', challenge)}


def digest(challenge: str, method: str, uri: str, user: str, password: str, nc: int = 1) -> str:
    """The Authorization/Proxy-Authorization value answering a Digest challenge (MD5, qop=auth if offered)."""
    p = _params(challenge)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()   # noqa: E731
    ha1 = md5(f"{user}:{p['realm']}:{password}")
    ha2 = md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", algorithm=MD5'
    qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce, ncs = new_id(16), f"{nc:08x}"
        resp = md5(f"{ha1}:{p['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
        out += f', qop=auth, nc={ncs}, cnonce="{cnonce}"'
    else:
        resp = md5(f"{ha1}:{p['nonce']}:{ha2}")
    out += f', response="{resp}"'
    if "opaque" in p:
        out += f', opaque="{p["opaque"]}"'
    return out


# ----------------------------------------------------------------------------- endpoints

Handler = Callable[["Endpoint", Message], None]


class Endpoint:
    """A UDP SIP socket (made in a namespace): requests it receives are recorded (and handled by
    `handler`, e.g. a phone answering), responses are queued for `transaction`."""

    def __init__(self, sock: socket.socket, handler: Handler | None = None):
        self.sock = sock
        self.ip, self.port = sock.getsockname()[:2]
        self.handler = handler
        self.requests: list[Message] = []
        self.responses: "queue.Queue[Message]" = queue.Queue()
        self.log: list[tuple[str, Message]] = []   # ("in"/"out", message), in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sip-{self.ip}:{self.port}", daemon=True)
        self._thread.start()

    @property
    def via(self) -> tuple[str, int]:
        return self.ip, self.port

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.1)
                if not ready:
                    continue
                data, addr = self.sock.recvfrom(65535)
            except (OSError, ValueError):
                return
            msg = parse(data, addr)
            if msg is None:
                continue
            self.log.append(("in", msg))
            if msg.is_response:
                self.responses.put(msg)
            else:
                self.requests.append(msg)
                if self.handler:
                    try:
                        self.handler(self, msg)
                    except Exception as e:  # a phone's bug must not kill the reader
                        self.log.append(("error", Message(f"handler error {e!r}")))

    def send(self, msg: Message, dst: tuple[str, int]) -> None:
        self.log.append(("out", msg))
        self.sock.sendto(msg.render(), dst)

    def drain(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(self.responses.get_nowait())
            except queue.Empty:
                return out

    def transaction(self, req: Message, dst: tuple[str, int], timeout: float = 6.0,
                    retransmit: bool = True, ack: bool = True) -> list[Message]:
        """Send `req` and return its responses (provisional ones too) until a final one or
        `timeout`; retransmitted as RFC 3261 timers A/E do while nothing came back. A non-2xx
        final answer to an INVITE is ACKed (same branch)."""
        branch, method = req.branch(), req.method
        self.drain()
        got: list[Message] = []
        start = time.monotonic()
        deadline, interval = start + timeout, 0.5
        self.send(req, dst)
        next_send = start + interval if retransmit else float("inf")
        while True:
            now = time.monotonic()
            if now >= deadline:
                return got
            if not got and now >= next_send:
                self.send(req, dst)
                interval = min(interval * 2, 4.0)
                next_send = now + interval
            until = deadline if got else min(deadline, next_send)
            try:
                msg = self.responses.get(timeout=max(0.01, until - now))
            except queue.Empty:
                continue
            if msg.branch() != branch or msg.method != method:
                continue
            got.append(msg)
            if msg.status >= 200:
                if method == "INVITE" and msg.status >= 300 and ack:
                    self.send(ack_for(req, msg), dst)
                return got

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._thread.join(timeout=2)


class TcpEndpoint:
    """A SIP connection over TCP from an attacker address (made in its namespace): sends requests and
    reads the responses on the same connection (framed by Content-Length)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.ip, self.port = sock.getsockname()[:2]
        self.buf = b""

    @property
    def via(self) -> tuple[str, int]:
        return self.ip, self.port

    def _messages(self) -> list[Message]:
        out = []
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            n = int(m.group(1)) if m else 0
            if len(rest) < n:
                break
            msg = parse(head + b"\r\n\r\n" + rest[:n], self.sock.getpeername())
            self.buf = rest[n:]
            if msg is not None:
                out.append(msg)
        return out

    def transaction(self, req: Message, timeout: float = 4.0) -> list[Message]:
        """Send `req`; its responses until a final one or `timeout` (TCP: no retransmissions)."""
        branch, method = req.branch(), req.method
        got: list[Message] = []
        try:
            self.sock.sendall(req.render())
        except OSError:
            return got
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], max(0.01, deadline - time.monotonic()))
            if not ready:
                continue
            try:
                data = self.sock.recv(65535)
            except OSError:
                return got
            if not data:
                return got
            self.buf += data
            for msg in self._messages():
                if msg.is_response and msg.branch() == branch and msg.method == method:
                    got.append(msg)
                    if msg.status >= 200:
                        return got
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def final(responses: list[Message]) -> Message | None:
    return next((r for r in responses if r.status >= 200), None)


def answer_line(responses: list[Message]) -> str:
    """What came back, for a report: every status line, or "no answer"."""
    return ", ".join(f"{r.status} {r.reason}" for r in responses) or "no answer"


class Phone:
    """What a registered phone does with requests Kamailio relays to it: answers INVITEs (or only
    rings if answer=False, or stays silent if silent=True), ACKs need nothing, BYE/CANCEL/OPTIONS
    get 200. Every request stays in endpoint.requests."""

    def __init__(self, user: str, answer: bool = True, silent: bool = False):
        self.user, self.answer, self.silent = user, answer, silent
        self.sent: dict[str, Message] = {}   # branch -> last final response (retransmissions)
        self.ringing: dict[str, Message] = {}   # branch -> INVITE not answered yet
        self.tag = new_id()

    def __call__(self, ep: Endpoint, req: Message) -> None:
        if self.silent or req.method == "ACK":
            return
        contact = f"sip:{self.user}@{ep.ip}:{ep.port}"
        if req.branch() in self.sent and req.method != "CANCEL":
            ep.send(self.sent[req.branch()], req.source)
            return
        if req.method == "CANCEL":   # ends a ringing INVITE (same branch): 200 to the CANCEL, 487 to it
            ep.send(response_to(req, 200, "OK", to_tag=self.tag), req.source)
            invite = self.ringing.pop(req.branch(), None)
            if invite is not None:
                self.sent[req.branch()] = response_to(invite, 487, "Request Terminated", to_tag=self.tag)
                ep.send(self.sent[req.branch()], req.source)
            return
        if req.method == "INVITE":
            ep.send(response_to(req, 100, "Trying"), req.source)
            if not self.answer:
                self.ringing[req.branch()] = req
                ep.send(response_to(req, 180, "Ringing", to_tag=self.tag, contact=contact), req.source)
                return
            ok = response_to(req, 200, "OK", to_tag=self.tag + req.branch()[-6:], contact=contact, body=sdp(ep.ip))
        else:
            ok = response_to(req, 200, "OK", to_tag=self.tag if not req.tag("To") else None)
        self.sent[req.branch()] = ok
        ep.send(ok, req.source)


@dataclass
class Call:
    """An INVITE's outcome and, once answered, its dialog (for ACK and BYE)."""
    invite: Message
    responses: list[Message]
    dst: tuple[str, int]
    challenge: list[Message] = field(default_factory=list)   # the 401/407 round, if any

    @property
    def final(self) -> Message | None:
        return final(self.responses)

    @property
    def answered(self) -> bool:
        return self.final is not None and 200 <= self.final.status < 300

    @property
    def route_set(self) -> list[str]:
        """The caller's route set: the answer's Record-Route, reversed."""
        return list(reversed(self.final.all("Record-Route")))

    def in_dialog(self, method: str, cseq: int, via: tuple[str, int], target: str | None = None,
                  body: bytes = b"") -> Message:
        """A request inside the answered call (to its remote target, or to `target`)."""
        ok = self.final
        target = target or re.sub(r"^.*<|>.*$", "", ok.get("Contact")) or self.invite.ruri
        h = [("Via", f"SIP/2.0/UDP {via[0]}:{via[1]};branch={new_branch()};rport"), ("Max-Forwards", "70"),
             ("From", self.invite.get("From")), ("To", ok.get("To")), ("Call-ID", self.invite.get("Call-ID")),
             ("CSeq", f"{cseq} {method}")]
        h += [("Route", r) for r in self.route_set]
        if method == "INVITE":
            h.append(("Contact", self.invite.get("Contact")))
        if body:
            h.append(("Content-Type", "application/sdp"))
        return Message(f"{method} {target} SIP/2.0", h, body)


class Uac:
    """A user of our SIP service on an endpoint: registers, calls (digest auth on challenge), hangs up."""

    def __init__(self, ep: Endpoint, user: str, password: str | None, domain: str, proxy: tuple[str, int]):
        self.ep, self.user, self.password, self.domain, self.proxy = ep, user, password, domain, proxy
        self.cseq = random.randint(1, 1000)

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def _next(self) -> int:
        self.cseq += 1
        return self.cseq

    def register(self, expires: int = 600, password: str | None = None, contact: str | None = None
                 ) -> tuple[list[Message], list[Message]]:
        """REGISTER, then again with credentials on a 401/407: (first round, authenticated round)."""
        call_id, tag = f"{new_id(16)}@{self.ep.ip}", new_id()
        contact = contact or f"sip:{self.user}@{self.ep.ip}:{self.ep.port}"

        def req(extra=()):
            return request("REGISTER", f"sip:{self.domain}", via=self.ep.via, from_uri=self.aor, to_uri=self.aor,
                           call_id=call_id, from_tag=tag, cseq=self._next(), contact=contact,
                           headers=[("Expires", str(expires)), *extra])
        first = self.ep.transaction(req(), self.proxy)
        f = final(first)
        if f is None or f.status not in (401, 407):
            return first, []
        name = "Authorization" if f.status == 401 else "Proxy-Authorization"
        chal = f.get("WWW-Authenticate" if f.status == 401 else "Proxy-Authenticate")
        cred = digest(chal, "REGISTER", f"sip:{self.domain}", self.user, password or self.password)
        return first, self.ep.transaction(req([(name, cred)]), self.proxy)

    def invite(self, number: str, timeout: float = 8.0, headers: list[tuple[str, str]] = (),
               contact: str | None = None) -> Call:
        """An INVITE to number@domain through the proxy, authenticated on a 407/401 challenge.
        A 2xx is ACKed (the call stays up until `bye`). `contact`: what the INVITE declares as its
        Contact (default: this endpoint)."""
        ruri, call_id, tag = f"sip:{number}@{self.domain}", f"{new_id(16)}@{self.ep.ip}", new_id()
        contact = contact or f"sip:{self.user}@{self.ep.ip}:{self.ep.port}"
        body = sdp(self.ep.ip)

        def req(extra=()):
            return request("INVITE", ruri, via=self.ep.via, from_uri=self.aor, to_uri=ruri, call_id=call_id,
                           from_tag=tag, cseq=self._next(), contact=contact, body=body,
                           headers=[*headers, *extra])
        first_req = req()
        first = self.ep.transaction(first_req, self.proxy, timeout=timeout)
        f = final(first)
        if f is not None and f.status in (401, 407) and self.password:
            name = "Authorization" if f.status == 401 else "Proxy-Authorization"
            chal = f.get("WWW-Authenticate" if f.status == 401 else "Proxy-Authenticate")
            second = req([(name, digest(chal, "INVITE", ruri, self.user, self.password))])
            call = Call(second, self.ep.transaction(second, self.proxy, timeout=timeout), self.proxy, first)
        else:
            call = Call(first_req, first, self.proxy)
        if call.answered:
            self.ep.send(call.in_dialog("ACK", call.invite.cseq(), self.ep.via), self.proxy)
        return call

    def bye(self, call: Call) -> list[Message]:
        return self.ep.transaction(call.in_dialog("BYE", self._next(), self.ep.via), self.proxy)


# ----------------------------------------------------------------------------- raw (forged source)

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 packet carrying a UDP datagram, with any source address (checksums computed)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, random.randint(1, 0xFFFF), 0x4000, 64,
                     socket.IPPROTO_UDP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + udp


# ----------------------------------------------------------------------------- the sink

@dataclass
class Seen:
    at: float            # time.time()
    kind: str            # "udp", "tcp", "icmp", "ip" (other protocol), "arp"
    src: str
    sport: int = 0
    dport: int = 0
    first_line: str = ""  # the SIP start line when the listeners got a message

    def __str__(self) -> str:
        what = f"{self.kind} {self.src}" + (f":{self.sport} -> :{self.dport}" if self.dport else "")
        return what + (f" \"{self.first_line}\"" if self.first_line else "")


class Sink:
    """An outside SIP destination: listens on UDP and TCP `port`, records every IPv4 packet sent
    to its address and every ARP request for it (an AF_PACKET socket on its interface)."""

    def __init__(self, netns: str, ifname: str, address: str, port: int = 5060):
        self.address, self.port = address, port
        with inside(netns):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((address, port))
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((address, port))
            self.tcp.listen(16)
            self.raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.raw.bind((ifname, ETH_P_ALL))
        self.packets: list[Seen] = []     # every frame to us (the evidence)
        self.messages: list[Seen] = []    # SIP the listeners read
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sink", daemon=True)
        self._thread.start()

    def _frame(self, frame: bytes, pkttype: int) -> None:
        if pkttype == PACKET_OUTGOING or len(frame) < 14:
            return
        etype = struct.unpack("!H", frame[12:14])[0]
        if etype == 0x0806 and len(frame) >= 42:
            op = struct.unpack("!H", frame[20:22])[0]
            if op == 1 and socket.inet_ntoa(frame[38:42]) == self.address:
                self.packets.append(Seen(time.time(), "arp", socket.inet_ntoa(frame[28:32])))
        elif etype == 0x0800 and len(frame) >= 34:
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if socket.inet_ntoa(ip[16:20]) != self.address:
                return
            proto = ip[9]
            kind = {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, f"ip proto {proto}")
            sport = dport = 0
            line = ""
            if proto in (6, 17) and len(ip) >= ihl + 4:
                sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
                # the payload's first line if it is SIP (whether or not the frame was for our MAC: a node
                # with a stale neighbour entry still sends it here, and it still counts)
                start = ihl + 8 if proto == 17 else ihl + ((ip[ihl + 12] >> 4) * 4 if len(ip) > ihl + 12 else 20)
                first = ip[start:start + 200].split(b"\r\n", 1)[0].decode(errors="replace")
                line = first if "SIP/2.0" in first else ""
            self.packets.append(Seen(time.time(), kind, socket.inet_ntoa(ip[12:16]), sport, dport, line))

    def _loop(self) -> None:
        while not self._stop.is_set():
            socks = [self.udp, self.tcp, self.raw, *self._conns]
            try:
                ready, _, _ = select.select(socks, [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in ready:
                try:
                    if s is self.raw:
                        frame, addr = s.recvfrom(65535)
                        with self._lock:
                            self._frame(frame, addr[2])
                    elif s is self.udp:
                        data, addr = s.recvfrom(65535)
                        with self._lock:
                            self.messages.append(Seen(time.time(), "udp", addr[0], addr[1], self.port,
                                                      data.split(b"\r\n", 1)[0].decode(errors="replace")))
                    elif s is self.tcp:
                        conn, _ = s.accept()
                        self._conns.append(conn)
                    else:
                        data = s.recv(65535)
                        if not data:
                            self._conns.remove(s)
                            s.close()
                            continue
                        peer = s.getpeername()
                        with self._lock:
                            self.messages.append(Seen(time.time(), "tcp", peer[0], peer[1], self.port,
                                                      data.split(b"\r\n", 1)[0].decode(errors="replace")))
                except OSError:
                    continue

    def seen(self) -> list[Seen]:
        """Everything that reached the sink so far: every frame to its address (with the SIP start
        line it carried), plus anything its listeners read that no frame accounts for."""
        with self._lock:
            out = [Seen(**vars(p)) for p in self.packets]
            framed = {(p.kind, p.src, p.sport, p.first_line) for p in out}
            out += [Seen(**vars(m)) for m in self.messages if (m.kind, m.src, m.sport, m.first_line) not in framed]
            return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for s in (self.udp, self.tcp, self.raw, *self._conns):
            with contextlib.suppress(OSError):
                s.close()


# ----------------------------------------------------------------------------- the range

ALIAS = "hapbx attack range"


@dataclass
class Namespace:
    name: str
    veth: str           # host end, a port of the bridge
    addresses: tuple[str, ...]
    prefixlen: int
    ifname: str = "eth0"

    def exists(self) -> bool:
        return os.path.exists(f"/run/netns/{self.name}")

    def ours(self) -> bool:
        """A namespace of this name is ours if its interface carries our alias (or it has no
        interface left but lo: what a run that died leaves once its veth went)."""
        out = _sh("ip", "-n", self.name, "-j", "-d", "link", "show", check=False)
        try:
            links = json.loads(out.stdout or "[]")
        except ValueError:
            return False
        others = [lk for lk in links if lk["ifname"] != "lo"]
        return all(lk.get("ifalias", "").startswith(ALIAS) for lk in others)

    def mac(self, alias: str) -> str:
        """A locally administered MAC address, the same each time for this lab and namespace: the nodes'
        neighbour entries for our addresses (ARP from the attacker only ever names its first address)
        stay right when the range is made again, so no reply goes to a veth that no longer exists."""
        h = hashlib.sha256(f"{alias}/{self.name}".encode()).digest()
        return "02:" + ":".join(f"{b:02x}" for b in h[:5])

    def create(self, bridge: str, alias: str) -> None:
        _sh("ip", "netns", "add", self.name)
        _sh("ip", "netns", "exec", self.name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.default.arp_announce=2", "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.default.arp_ignore=1")
        _sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.ifname, "netns", self.name)
        _sh("ip", "link", "set", self.veth, "alias", alias)
        _sh("ip", "-n", self.name, "link", "set", self.ifname, "alias", alias)
        _sh("ip", "-n", self.name, "link", "set", self.ifname, "address", self.mac(alias))
        # no IPv6 link-local on the bridge port: nothing but what the tests send leaves it
        _sh("ip", "link", "set", self.veth, "addrgenmode", "none")
        _sh("ip", "link", "set", self.veth, "master", bridge)
        _sh("ip", "link", "set", self.veth, "up")
        for a in self.addresses:
            _sh("ip", "-n", self.name, "addr", "add", f"{a}/{self.prefixlen}", "dev", self.ifname)
        _sh("ip", "-n", self.name, "link", "set", "lo", "up")
        _sh("ip", "-n", self.name, "link", "set", self.ifname, "up")

    def remove(self) -> None:
        if _sh("ip", "link", "show", self.veth, check=False).returncode == 0:
            link = json.loads(_sh("ip", "-j", "-d", "link", "show", self.veth).stdout)[0]
            if link.get("ifalias", "").startswith(ALIAS):   # never an interface we did not make
                _sh("ip", "link", "del", self.veth)
        if self.exists():
            _sh("ip", "netns", "del", self.name)


class AttackRange:
    """The attacker and sink namespaces on `bridge`, removed on exit whatever happened.

        with AttackRange("hapbx-tbr0", "10.78.0.0/24", ["10.78.0.66", ...], "10.78.0.77") as r:
            ep = r.endpoint("10.78.0.66", 5066)        # a UDP SIP socket in the attacker namespace
            r.spoof_udp("10.78.0.12", 5080, "10.78.0.10", 5060, payload)
            r.sink.seen()
    """

    def __init__(self, bridge: str, subnet: str, attacker: list[str], sink: str, *,
                 names: tuple[str, str] = ("attacker", "sink"), veths: tuple[str, str] = ("hapbx-atk0", "hapbx-snk0"),
                 label: str = ""):
        net = ipaddress.IPv4Network(subnet)
        for a in [*attacker, sink]:
            if ipaddress.IPv4Address(a) not in net:
                raise ValueError(f"{a} is not in {subnet}")
        self.bridge, self.subnet = bridge, subnet
        self.alias = f"{ALIAS} {label}".strip()
        self.attacker_ns = Namespace(names[0], veths[0], tuple(attacker), net.prefixlen)
        self.sink_ns = Namespace(names[1], veths[1], (sink,), net.prefixlen)
        self.attacker_addresses, self.sink_address = list(attacker), sink
        self.sink: Sink | None = None
        self._endpoints: list[Endpoint] = []
        self._tcp: list[TcpEndpoint] = []
        self._raw: socket.socket | None = None

    def __enter__(self) -> "AttackRange":
        for ns in (self.attacker_ns, self.sink_ns):
            if ns.exists() and not ns.ours():
                raise RuntimeError(f"network namespace {ns.name} exists and is not an attack range's: "
                                   "remove it yourself (`ip netns del`) or pick other names")
            ns.remove()   # what a run that died left
        try:
            for ns in (self.attacker_ns, self.sink_ns):
                ns.create(self.bridge, self.alias)
            self.sink = Sink(self.sink_ns.name, self.sink_ns.ifname, self.sink_address)
            with inside(self.attacker_ns.name):
                self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for ep in self._endpoints:
            ep.close()
        self._endpoints.clear()
        for t in self._tcp:
            t.close()
        self._tcp.clear()
        if self.sink:
            self.sink.close()
        if self._raw:
            self._raw.close()
            self._raw = None
        errors = []
        for ns in (self.attacker_ns, self.sink_ns):
            try:
                ns.remove()
            except Exception as e:   # try the other one too
                errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))

    def endpoint(self, address: str, port: int = 0, handler: Handler | None = None) -> Endpoint:
        """A UDP SIP socket on one of the attacker's addresses (in the attacker namespace)."""
        if address not in self.attacker_addresses:
            raise ValueError(f"{address} is not an attacker address")
        with inside(self.attacker_ns.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, port))
        ep = Endpoint(s, handler)
        self._endpoints.append(ep)
        return ep

    def tcp(self, address: str, dst: tuple[str, int], timeout: float = 3.0) -> TcpEndpoint:
        """A TCP connection from one of the attacker's addresses to dst (in the attacker namespace)."""
        if address not in self.attacker_addresses:
            raise ValueError(f"{address} is not an attacker address")
        if dst[0] == self.sink_address or ipaddress.IPv4Address(dst[0]) not in ipaddress.IPv4Network(self.subnet):
            raise ValueError(f"{dst[0]}: only the lab's own addresses are attacked")
        with inside(self.attacker_ns.name):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
        s.settimeout(timeout)
        s.connect(dst)
        s.settimeout(None)
        ep = TcpEndpoint(s)
        self._tcp.append(ep)
        return ep

    def release(self, ep: Endpoint) -> None:
        ep.close()
        with contextlib.suppress(ValueError):
            self._endpoints.remove(ep)

    def spoof_udp(self, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        """Send one UDP datagram from the attacker namespace with IPv4 source `src` (IP_HDRINCL)."""
        if dst == self.sink_address or not ipaddress.IPv4Address(dst) in ipaddress.IPv4Network(self.subnet):
            raise ValueError(f"{dst}: only the lab's own addresses are attacked")
        self._raw.sendto(udp_packet(src, sport, dst, dport, payload), (dst, 0))

    def leftovers(self) -> list[str]:
        """What of the range is still on the host (empty after close)."""
        out = [f"netns {ns.name}" for ns in (self.attacker_ns, self.sink_ns) if ns.exists()]
        out += [f"link {ns.veth}" for ns in (self.attacker_ns, self.sink_ns)
                if _sh("ip", "link", "show", ns.veth, check=False).returncode == 0]
        return out


# ----------------------------------------------------------------------------- Kamailio statistics

_STAT = re.compile(r"(?:^|[\s:.])(hapbx_[A-Za-z0-9_]+)\s*=\s*(-?\d+)", re.M)


def statistics(text: str) -> dict[str, int]:
    """hapbx_* statistics from `kamcmd stats.get_statistics all` (group prefix such as script: allowed)."""
    return {m.group(1): int(m.group(2)) for m in _STAT.finditer(text)}
