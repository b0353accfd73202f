"""A webhook receiver on the lab host for Alertmanager's notifications (the lab stack's
monitoring.webhookUrls): every POST kept with the host's arrival time.

    with AlertInbox("10.77.0.1", 9899) as inbox:
        ...
        inbox.firing("NodeDown", since=t0)      # [(arrival, alert)] of notifications that carried it

It listens on the lab host's own bridge address only (the nodes post to it; nothing else can).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Notification:
    arrived: float          # host clock (time.time())
    path: str
    body: dict = field(default_factory=dict)

    @property
    def alerts(self) -> list[dict]:
        return list(self.body.get("alerts", []))


class AlertInbox:
    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, url: str) -> "AlertInbox":
        parts = urlsplit(url)
        return cls(parts.hostname or "", parts.port or 80)

    def __enter__(self) -> "AlertInbox":
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):   # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                with inbox._lock:
                    inbox.notifications.append(Notification(time.time(), self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):   # quiet: the drill prints what matters
                pass

        self._server = ThreadingHTTPServer((self.address, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-inbox", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(5)
            self._thread = None

    def received(self, since: float = 0.0) -> list[Notification]:
        with self._lock:
            return [n for n in self.notifications if n.arrived >= since]

    def carrying(self, alertname: str, status: str, since: float = 0.0) -> list[tuple[float, dict]]:
        """(arrival, alert) for each notification since `since` that carried `alertname` with this
        status ("firing" or "resolved")."""
        return [(n.arrived, a) for n in self.received(since) for a in n.alerts
                if a.get("labels", {}).get("alertname") == alertname and a.get("status") == status]

    def firing(self, alertname: str, since: float = 0.0) -> list[tuple[float, dict]]:
        return self.carrying(alertname, "firing", since)

    def resolved(self, alertname: str, since: float = 0.0) -> list[tuple[float, dict]]:
        return self.carrying(alertname, "resolved", since)

    def wait(self, alertname: str, status: str, since: float, timeout: float,
             fingerprints: set[str] | None = None) -> tuple[float, set[str]] | None:
        """(arrival, fingerprints) of the first notification carrying the alert in that status (one
        of `fingerprints`, if given: the same alert instance), or None. A group's notification also
        lists its other alerts, older ones resolving among them: the fingerprint tells them apart."""
        deadline = time.time() + timeout
        while True:
            got = [(t, a) for t, a in self.carrying(alertname, status, since)
                   if fingerprints is None or a.get("fingerprint") in fingerprints]
            if got:
                first = got[0][0]
                return first, {a.get("fingerprint", "") for t, a in got if t == first}
            if time.time() > deadline:
                return None
            time.sleep(0.2)
