"""Small pieces shared by the three processes: logging, listening sockets, rate-limited logs, and
the HTTP services' serving until a signal (receiver, admin)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
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


@contextlib.asynccontextmanager
async def http_sites(app, hosts: list[str], port: int, shutdown_timeout: float):
    """An aiohttp application served on port of each host (listening_socket) for the body of the
    ``async with``, then cleaned up (the requests in flight get shutdown_timeout)."""
    from aiohttp import web  # here: the replay imports this module and serves nothing
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    for host in hosts:
        await web.SockSite(runner, listening_socket(host, port), shutdown_timeout=shutdown_timeout).start()
    yield
    await runner.cleanup()


async def until_stopped() -> None:
    """Return at the first SIGTERM or SIGINT (systemd's stop, a Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
