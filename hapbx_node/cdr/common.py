"""Small pieces shared by the three processes: logging, listening sockets, rate-limited logs, and
the HTTP services' serving until a signal (receiver, admin): plain HTTP on loopback, HTTPS on any
other address."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def setup_logging(name: str) -> logging.Logger:
    level = os.environ.get("HAPBX_LOG_LEVEL", "INFO").upper()
    # journald adds the time; the priority prefix <N> sets the journal priority
    fmt = "<%(levelno_sd)s>%(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"

    class SdFilter(logging.Filter):
        MAP = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

        def filter(self, record):
            record.levelno_sd = self.MAP.get(record.levelno, 6)
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SdFilter())
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.INFO))
    return logging.getLogger(name)


class RateLimitedLog:
    """At most ``per_second`` messages a second per key; the rest are counted and summarised."""

    def __init__(self, log: logging.Logger, per_second: float = 5.0):
        self.log, self.per_second = log, per_second
        self.window = 0.0
        self.sent = 0
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.suppressed:
                self.log.log(level, "... %d similar message(s) suppressed", self.suppressed)
            self.window, self.sent, self.suppressed = now, 0, 0
        if self.sent < self.per_second:
            self.sent += 1
            self.log.log(level, msg, *args)
        else:
            self.suppressed += 1


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A TCP listening socket with IP_FREEBIND: binds an address the node does not hold (yet),
    like the VIP on the standby, and takes traffic the moment the address arrives."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only (127.0.0.0/8, ::1,
    localhost): served in plain HTTP. Any other address (the node's, the VIP, a wildcard, a name)
    is served over HTTPS only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    """The HTTPS listeners' context: TLS 1.2 or later, this node's certificate and key
    (OSError or ssl.SSLError when they cannot be loaded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def site_tls(hosts: list[str], tls: ssl.SSLContext | None) -> list[tuple[str, ssl.SSLContext | None]]:
    """(host, its TLS context or None for plain HTTP) of each listening address: TLS on every one
    that is not loopback, and no such address without a context (ValueError)."""
    out = []
    for host in hosts:
        if is_loopback(host):
            out.append((host, None))
        elif tls is None:
            raise ValueError(f"{host} is beyond loopback: it is served over HTTPS only, and no certificate is set")
        else:
            out.append((host, tls))
    return out


def listeners(hosts: list[str], tls: ssl.SSLContext | None) -> str:
    """'https://10.0.0.1, http://127.0.0.1': the listening addresses as served (the start's log line)."""
    return ", ".join(f"{'https' if context else 'http'}://{host}" for host, context in site_tls(hosts, tls))


@contextlib.asynccontextmanager
async def http_sites(app, hosts: list[str], port: int, shutdown_timeout: float, tls: ssl.SSLContext | None = None):
    """An aiohttp application served on port of each host (listening_socket) for the body of the
    ``async with``, then cleaned up (the requests in flight get shutdown_timeout). Loopback hosts
    in plain HTTP, every other one with ``tls`` (site_tls): a plain HTTP request there gets no
    HTTP answer (the TLS handshake fails)."""
    from aiohttp import web  # here: the replay imports this module and serves nothing
    sites = site_tls(hosts, tls)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for host, context in sites:
            await web.SockSite(runner, listening_socket(host, port), shutdown_timeout=shutdown_timeout,
                               ssl_context=context).start()
        yield
    finally:
        await runner.cleanup()


async def until_stopped() -> None:
    """Return at the first SIGTERM or SIGINT (systemd's stop, a Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
