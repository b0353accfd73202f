"""The HTTP side: GET /metrics on the node address (IP_FREEBIND: the service starts before the
address is up, as the other hapbx services), every other path 404. Threads, one per scrape;
each request has a few seconds, so a stuck client holds nothing for long."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import addresses, backup, cdr, ha, media, recordings
from .exposition import CONTENT_TYPE, Gauge, render
from .settings import Settings, SettingsError

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
REQUEST_TIMEOUT = 10


def collect(s: Settings) -> str:
    gauges = ha.gauges(s.ha_status)
    vip = Gauge("hapbx_vip_owner", "1 when the VIP is on one of this node's interfaces.")
    owner = addresses.is_local(s.vip) if s.vip else None
    if owner is not None:
        vip.set(int(owner))
    gauges.insert(1, vip)
    gauges += cdr.gauges(s.cdr_stats)
    gauges += media.gauges(s)
    if s.backup_status_dir:
        gauges += backup.gauges(s.backup_status_dir) + recordings.gauges(s.backup_status_dir)
    return render(gauges)


class Handler(BaseHTTPRequestHandler):
    settings: Settings
    timeout = REQUEST_TIMEOUT
    server_version = "hapbx-exporter"
    sys_version = ""

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"not found: /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = collect(self.settings).encode("utf-8")
        except Exception as err:  # noqa: BLE001 - a bug in one collector: say so, keep serving
            print(f"hapbx-exporter: collecting failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            self._answer(500, b"collecting failed\n", "text/plain; charset=utf-8")
            return
        self._answer(200, body, CONTENT_TYPE)

    def do_HEAD(self):
        self.do_GET()

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - no access log (a scrape every few seconds)
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        if self.address_family == socket.AF_INET:
            self.socket.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        super().server_bind()


def serve(s: Settings) -> Server:
    handler = type("BoundHandler", (Handler,), {"settings": s})
    family = socket.AF_INET6 if ":" in s.listen else socket.AF_INET
    return type("BoundServer", (Server,), {"address_family": family})((s.listen, s.port), handler)


def main() -> int:
    try:
        s = Settings.from_env()
    except SettingsError as err:
        print(f"hapbx-exporter: bad setting: {err}", file=sys.stderr)
        return 78  # EX_CONFIG: RestartPreventExitStatus
    try:
        server = serve(s)
    except OSError as err:
        print(f"hapbx-exporter: cannot listen on {s.listen}:{s.port}: {err}", file=sys.stderr)
        return 1

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hapbx-exporter: serving http://{s.listen}:{s.port}/metrics (media engine {s.engine}, pid {os.getpid()})",
          file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0
