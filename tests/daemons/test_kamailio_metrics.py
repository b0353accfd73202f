"""Kamailio's statistics for Prometheus (xhttp_prom), from the rendered config on a real Kamailio.

The stack of test_kamailio_loopback (its ``stack`` fixture: the lab config on the host's Kamailio
5.6, the prod config on Debian 13's 6.0; PostgreSQL with every migration, SIPp media engines on both
node addresses). Prometheus scrapes http://<node address>:<monitoring.kamailioPort>/metrics; this
checks the names it gets, that counters follow events, that the media gauge follows the engines,
and that the metrics socket and the SIP sockets keep to their own protocol.
"""
from __future__ import annotations

import dataclasses
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from components.render import kamailio as kam
from lab.sip_wire import Connection, Request
from tests.daemons.test_kamailio_loopback import (BAD, CALLER, NODE1, NODE2, PASSWORDS, VIP, register,
                                                 stack)  # noqa: F401  (stack: the module's fixture)
from tests.daemons.test_kamailio_render import cluster, files, validator  # noqa: F401  (validator: fixture)
from tests.daemons.test_kamailio_security import Sink

#: what alert rules and dashboards use: exposition names
REGISTERED_USERS = "kamailio_usrloc_registered_users"
ACTIVE_TRANSACTIONS = "kamailio_tmx_active_transactions"
MEDIA_ACTIVE = f"kamailio_{kam.MEDIA_GAUGE}"
SCRIPT_COUNTERS = [f"kamailio_script_{name}" for name in kam.STATISTICS]


def url(stack, path: str = kam.METRICS_PATH, address: str = NODE1) -> str:
    return f"http://{address}:{stack.cluster.monitoring.kamailio_port}{path}"


def scrape(stack) -> dict[str, float]:
    """name -> value of every sample (xhttp_prom: `name value timestamp_ms`, no labels)."""
    with urllib.request.urlopen(url(stack), timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value, *_ = line.split()
            samples[name] = float(value)
    return samples


def wait_for(stack, name: str, value: float, timeout: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(stack)
        if samples.get(name) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def http_get(address: str, port: int, path: str = kam.METRICS_PATH, tls: bool = False) -> bytes:
    """Everything a server sends back to a GET before it closes the connection (or 3 s pass)."""
    raw = socket.create_connection((address, port), timeout=3)
    sock = ssl._create_unverified_context().wrap_socket(raw) if tls else raw
    got = b""
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        try:
            while data := sock.recv(65535):
                got += data
        except (TimeoutError, socket.timeout, ConnectionResetError):
            pass
    return got


# --- what Prometheus gets -------------------------------------------------------------------------

def test_metrics_carry_registrations_transactions_counters_and_media(stack):
    samples = scrape(stack)
    for name in (REGISTERED_USERS, ACTIVE_TRANSACTIONS, MEDIA_ACTIVE, *SCRIPT_COUNTERS):
        assert name in samples, (name, sorted(samples))
    assert not [n for n in samples if n.endswith("_total")]
    assert samples[MEDIA_ACTIVE] == 2  # both SIPp engines answer the probes


def test_a_wrong_password_raises_the_auth_failure_counter(stack):
    name = "kamailio_script_hapbx_auth_failed"
    before = scrape(stack)[name]
    r = register(stack, BAD, "1002", "not-the-password", expect="403")
    assert r.ok, (r.stdout, r.errors)
    assert scrape(stack)[name] == before + 1
    stack.kamailio.rpc("htable.flush", "authfail")


def test_a_registration_raises_registered_users(stack):
    stack.kamailio.rpc("ul.rm", "location", "s:1001")
    before = scrape(stack)[REGISTERED_USERS]
    r = register(stack, CALLER, "1001", PASSWORDS["1001"])
    assert r.ok, (r.stdout, r.errors)
    assert scrape(stack)[REGISTERED_USERS] == before + 1


def test_a_relay_attempt_raises_its_counter(stack):
    name = "kamailio_script_hapbx_relay_refused"
    before = scrape(stack)[name]
    req = Request("MESSAGE", "sip:victim@example.org", f"sip:1001@{VIP}", "sip:victim@example.org")
    with Connection((VIP, stack.cluster.kamailio.sip_port), "udp", CALLER) as conn:
        r = conn.ask(req)
    assert r is not None and r.status == 403, r and r.line
    assert scrape(stack)[name] == before + 1


def test_media_gauge_follows_the_engines_probes(stack):
    try:
        stack.media[NODE2].stop()
        assert wait_for(stack, MEDIA_ACTIVE, 1)[MEDIA_ACTIVE] == 1
        stack.media[NODE1].stop()
        assert wait_for(stack, MEDIA_ACTIVE, 0)[MEDIA_ACTIVE] == 0
    finally:
        for node in (NODE1, NODE2):
            stack.media_uas(node)
    assert wait_for(stack, MEDIA_ACTIVE, 2)[MEDIA_ACTIVE] == 2


# --- one protocol per socket ----------------------------------------------------------------------

def test_only_the_metrics_path_is_served(stack):
    for path in ("/", "/metricsx", "/metrics/x", "/RPC", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url(stack, path), timeout=5)
        assert e.value.code == 404, path
    with urllib.request.urlopen(url(stack, "/metrics?name=x"), timeout=5) as r:
        assert r.status == 200 and REGISTERED_USERS in r.read().decode()


def test_metrics_are_on_the_node_address_only(stack):
    port = stack.cluster.monitoring.kamailio_port
    for address in (VIP, "127.0.0.1"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=3).close()


def test_sip_on_the_metrics_port_gets_no_answer(stack):
    """The keepalive OPTIONS a SIP port answers with 200, sent to the metrics port: read, not answered."""
    sip_port, port = stack.cluster.kamailio.sip_port, stack.cluster.monitoring.kamailio_port
    req = Request("OPTIONS", f"sip:{NODE1}:{sip_port}", f"sip:probe@{CALLER}", f"sip:{NODE1}:{sip_port}")
    before = scrape(stack)["kamailio_core_rcv_requests_options"]
    with Connection((NODE1, port), "tcp", CALLER) as conn:
        assert conn.ask(req, timeout=2) is None
    assert scrape(stack)["kamailio_core_rcv_requests_options"] == before + 1  # it arrived as SIP
    with Connection((NODE1, sip_port), "tcp", CALLER) as conn:
        r = conn.ask(req)
    assert r is not None and r.line == "200 Keepalive", r and r.line


def test_a_sip_reply_on_the_metrics_port_is_not_forwarded(stack):
    """A reply matching no transaction is forwarded to its next Via by the core: not from this socket."""
    sink = Sink()
    try:
        port = stack.cluster.monitoring.kamailio_port
        reply = (f"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/TCP {NODE1}:{port};branch=z9hG4bKmetrics1\r\n"
                 f"Via: SIP/2.0/UDP {sink.sock.getsockname()[0]}:{sink.port};branch=z9hG4bKmetrics2\r\n"
                 f"From: <sip:a@{VIP}>;tag=1\r\nTo: <sip:b@{VIP}>;tag=2\r\nCall-ID: metrics-reply\r\n"
                 "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        before = scrape(stack)["kamailio_core_rcv_replies_486"]  # (probe answers are 200s)
        with socket.create_connection((NODE1, port), timeout=3) as conn:
            conn.sendall(reply.encode())
            time.sleep(1)
        assert scrape(stack)["kamailio_core_rcv_replies_486"] == before + 1  # it arrived as SIP
        assert sink.got == []
    finally:
        sink.close()


def test_http_on_the_sip_sockets_is_not_served(stack):
    k = stack.cluster.kamailio
    for address, port, tls in [(NODE1, k.sip_port, False), (VIP, k.sip_port, False), (NODE1, k.dmq_port, False),
                               (NODE1, k.tls_port, True), (VIP, k.tls_port, True)]:
        assert http_get(address, port, tls=tls) == b"", (address, port)
    with urllib.request.urlopen(url(stack), timeout=5) as r:  # the same GET on the metrics socket
        assert r.status == 200


# --- rendering ------------------------------------------------------------------------------------

def test_without_monitoring_there_is_no_http_at_all(validator):
    c = cluster("lab")
    c = dataclasses.replace(c, monitoring=dataclasses.replace(c.monitoring, enabled=False))
    cfg = files(c)[kam.CFG]
    assert "xhttp" not in cfg.content and f":{c.monitoring.kamailio_port}\n" not in cfg.content
    out = validator(cfg)
    assert out.returncode == 0 and "config file ok" in out.stdout + out.stderr, out.stderr[-3000:]


def test_the_metrics_socket_is_the_last_listen_on_the_node_address():
    """SIP over TCP leaves from the first TCP socket: never the metrics one."""
    c = cluster("prod")
    text = files(c)[kam.CFG].content
    listens = [line for line in text.splitlines() if line.startswith("listen=")]
    assert listens[-1] == f"listen=tcp:{c.nodes[0].address}:{c.monitoring.kamailio_port}", listens
