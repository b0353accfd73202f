"""A minimal asyncio Redis client (RESP2) for the receiver and the admin service.

Why not redis.asyncio: Debian bookworm's python3-redis 4.3.4 carries the asyncio cancellation
bug of CVE-2023-28858/28859 (a cancelled command leaves its reply on a pooled connection and
the next caller reads it). Here a connection that saw any error or timeout is closed, never
reused, and replies are always read in order. The worker is synchronous and uses redis-py.

Redis speaks TLS only (components/render/redis.py): every connection checks the server's
certificate against a CA file and the endpoint's address (the cluster CA names each node's
address and loopback), TLS 1.2 at least.
"""
from __future__ import annotations

import asyncio
import ssl


class RespError(Exception):
    """An error reply (-ERR ..., -READONLY ..., -OOM ..., -NOPERM ...)."""

    @property
    def kind(self) -> str:
        return str(self).split(" ", 1)[0]


class ConnectionLost(Exception):
    pass


def encode(*args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, (int, float)):
            a = str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class Endpoint(tuple):
    """A Redis server: ``(host, port)`` (it unpacks and compares as that pair) and ``ca``, the CA
    file its TLS certificate must chain to."""
    ca: str

    def __new__(cls, host: str, port: int, ca: str):
        self = super().__new__(cls, (host, port))
        self.ca = ca
        return self


def client_tls(ca: str) -> ssl.SSLContext:
    """Verify the server against ``ca`` and its address (no client certificate: Redis
    authenticates its users by password). Made per connection: a new CA file is picked up."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Connection:
    def __init__(self, host: str, port: int, user: str | None, password: str | None, timeout: float = 2.0, *,
                 ca: str):
        self.host, self.port, self.user, self.password, self.timeout = host, port, user, password, timeout
        self.ca = ca
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=client_tls(self.ca), server_hostname=self.host),
            self.timeout)
        if self.password is not None:
            args = ("AUTH", self.user, self.password) if self.user else ("AUTH", self.password)
            reply = (await self.pipeline([args]))[0]
            if isinstance(reply, RespError):
                self.close()
                raise reply

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def _read(self):
        line = await self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionLost(f"{self.label}: connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = await self.reader.readexactly(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._read() for _ in range(n)]
        raise ConnectionLost(f"{self.label}: protocol error ({line[:20]!r})")

    async def pipeline(self, commands: list[tuple]) -> list:
        """Send every command, read every reply (error replies are returned as RespError).
        Any timeout or I/O error closes the connection and raises ConnectionLost."""
        if not self.connected:
            raise ConnectionLost(f"{self.label}: not connected")
        try:
            self.writer.write(b"".join(encode(*c) for c in commands))
            return await asyncio.wait_for(self._drain_and_read(len(commands)), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            self.close()
            raise ConnectionLost(f"{self.label}: {type(err).__name__} {err}") from None
        except BaseException:
            # cancelled mid-reply: the stream is out of step, never reuse it
            self.close()
            raise

    async def _drain_and_read(self, n: int) -> list:
        await self.writer.drain()
        return [await self._read() for _ in range(n)]

    async def call(self, *args):
        reply = (await self.pipeline([args]))[0]
        if isinstance(reply, RespError):
            raise reply
        return reply


async def open_first(endpoints: list[Endpoint], user, password, timeout=2.0, exclude: str | None = None) -> Connection:
    """Connect to the first endpoint that answers (``exclude``: a label to try last); a server whose
    certificate does not verify counts as not answering (ssl.SSLError is an OSError)."""
    order = sorted(endpoints, key=lambda e: f"{e[0]}:{e[1]}" == exclude)
    last: Exception | None = None
    for e in order:
        conn = Connection(e[0], e[1], user, password, timeout, ca=e.ca)
        try:
            await conn.connect()
            return conn
        except (OSError, asyncio.TimeoutError, ConnectionLost, RespError) as err:
            last = err
            conn.close()
    raise ConnectionLost(f"no Redis endpoint answered ({last})")
