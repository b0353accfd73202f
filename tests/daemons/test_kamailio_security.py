"""The SIP edge of the rendered Kamailio, attacked on loopback (the stack of test_kamailio_loopback:
a real Kamailio from the lab config, PostgreSQL with every migration, SIPp media engines).

Each test sends what an attacker or a fraudulent extension would, by hand (lab/sip_wire.py), and
checks the refusal, that nothing reached where it was aimed, and the statistic counting it.
"""
from __future__ import annotations

import hashlib
import re
import socket
import ssl
import subprocess
import threading
import time

import psycopg
import pytest

from lab import sipp
from lab.sip_wire import Connection, Request, authenticated, authorization, hang_up, in_dialog
from tests.daemons.test_kamailio_loopback import (CALLEE, CALLER, NODE2, PASSWORDS, SECRETS, VIP, call, free_port,
                                                 register, stack)  # noqa: F401  (stack: the module's fixture)

ATTACKER, SINK = "127.0.0.41", "127.0.0.40"
#: extensions of this module: one per limit, so counts never mix
USERS = {"1003": "limit-calls-1003", "1004": "limit-rate-1004", "1005": "class-of-svc-1005"}
#: the stack's flood threshold (requests per 2 s from one address) for this module: its tests send
#: bursts from the phones' address, and two of them back to back (the order is random) got it banned
#: for a minute; flooding is test_kamailio_loopback's (30)
FLOOD_REQUESTS = 300
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.21\r\ns=-\r\nc=IN IP4 127.0.0.21\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


@pytest.fixture(scope="module")
def edge(stack):  # noqa: F811
    with psycopg.connect(stack.db.dsn(db="pbx"), autocommit=True) as conn:
        for number, password in USERS.items():
            conn.execute("INSERT INTO pbx.extensions (number, type, display_name) VALUES (%s, 'user', %s) "
                         "ON CONFLICT (number) DO NOTHING", (number, f"Edge {number}"))
            conn.execute("SELECT pbx.set_sip_password(%s, %s)", (number, password))
    return stack


@pytest.fixture(autouse=True)
def no_bans(edge):
    """Each test starts with no address banned and no failed authentication counted (both last
    60 s, longer than a test): what one test's attacker did is not held against the next."""
    for table in ("ipban", "authfail"):
        edge.kamailio.rpc("htable.flush", table)


def limits(stack, number: str, **values) -> None:
    sets = ", ".join(f"{k} = %s" for k in values)
    with psycopg.connect(stack.db.dsn(db="pbx"), autocommit=True) as conn:
        conn.execute(f"UPDATE pbx.calling_limits SET {sets} WHERE extension_id = "
                     "(SELECT id FROM pbx.extensions WHERE number = %s)", (*values.values(), number))


def stat(stack, name: str) -> int:
    m = re.search(rf"{name} = (\d+)", stack.kamailio.rpc("stats.get_statistics", "all"))
    assert m, f"no statistic {name}"
    return int(m.group(1))


class Sink:
    """Where a relay would go: records every datagram it gets."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SINK, 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                self.got.append(self.sock.recv(65535))
            except OSError:
                continue

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def invite(stack, user: str, number: str) -> Request:
    port = stack.cluster.kamailio.sip_port
    return Request("INVITE", f"sip:{number}@{VIP}:{port}", f"sip:{user}@{VIP}", f"sip:{number}@{VIP}",
                   contact=f"sip:{user}@{CALLER}:5999", body=SDP)


def place(stack, user: str, number: str, transport: str = "tcp"):
    """A call by ``user`` to ``number``: its final response; an answered call is hung up at once."""
    with Connection((VIP, stack.cluster.kamailio.sip_port), transport, CALLER) as conn:
        response, sent = authenticated(conn, invite(stack, user, number), user, USERS.get(user) or PASSWORDS[user])
        if response is not None and response.status == 200:
            bye = hang_up(conn, sent, response)
            assert bye is not None and bye.status == 200, bye and bye.line
        return response


# --- relaying -------------------------------------------------------------------------------------

def test_forged_in_dialog_requests_are_refused_and_never_reach_the_target(edge, sink):
    port = edge.cluster.kamailio.sip_port
    before = stat(edge, "hapbx_forged_dialog")
    for method in ("INVITE", "MESSAGE", "BYE"):
        for route in (f"<sip:{VIP}:{port};lr>", f"<sip:{VIP}:{port};lr;hs=0123456789abcdef01234567>"):
            req = Request(method, f"sip:victim@{SINK}:{sink.port}", f"sip:1001@{VIP}", f"sip:victim@{SINK}",
                          to_tag="forged42", extra=[f"Route: {route}"], body=SDP if method == "INVITE" else "")
            with Connection((VIP, port), "udp", ATTACKER) as conn:
                r = conn.ask(req)
            assert r is not None and r.line == "403 Not Our Dialog", (method, route, r and r.line)
    time.sleep(0.5)
    assert sink.got == []
    assert stat(edge, "hapbx_forged_dialog") == before + 6


def test_a_callers_own_signed_route_set_cannot_be_aimed_elsewhere(edge, sink):
    """The signature proves the route set is ours, not that its holder may aim it anywhere: an
    in-dialog request inside the attacker's own answered call, towards a foreign host, is refused;
    the same call's BYE to the real party goes through."""
    port = free_port()
    assert register(edge, CALLEE, "1002", PASSWORDS["1002"], port=port).ok
    phone = sipp.Uas(CALLEE, port, extra=("-d", "3000"))
    try:
        sip = edge.cluster.kamailio.sip_port
        with Connection((VIP, sip), "tcp", CALLER) as conn:
            answer, sent = authenticated(conn, invite(edge, "1005", "1002"), "1005", USERS["1005"])
            assert answer is not None and answer.status == 200, answer and answer.line
            conn.send(in_dialog(sent, answer, "ACK"))
            before = stat(edge, "hapbx_forged_dialog")
            for method in ("INVITE", "MESSAGE"):
                req = in_dialog(sent, answer, method)
                req.uri, req.cseq = f"sip:x@{SINK}:{sink.port}", sent.cseq + 5
                req.body = SDP if method == "INVITE" else "hi"
                req.content_type = None if method == "INVITE" else "text/plain"
                r = conn.ask(req)
                assert r is not None and r.line == "403 Not Our Dialog", (method, r and r.line)
            assert stat(edge, "hapbx_forged_dialog") == before + 2
            bye = conn.ask(in_dialog(sent, answer, "BYE"))
            assert bye is not None and bye.status == 200, bye and bye.line
            # the call is over: its route set, kept, is aimed at the sink again
            req = in_dialog(sent, answer, "MESSAGE")
            req.uri, req.cseq, req.body, req.content_type = f"sip:x@{SINK}:{sink.port}", sent.cseq + 9, "hi", "text/plain"
            r = conn.ask(req)
            assert r is not None and r.line == "403 Not Our Dialog", r and r.line
        time.sleep(0.3)
        assert sink.got == []
    finally:
        phone.stop()


def signed_route(stack, call_id: str) -> str:
    """Our Record-Route for a call (as route[DIALOG_SIG] signs it), as a peer node would have made it."""
    hs = hashlib.sha256(f"{SECRETS['kamailio_dialog_secret']}:{call_id}".encode()).hexdigest()[:24]
    return f"<sip:{VIP}:{stack.cluster.kamailio.sip_port};lr;hs={hs}>"


def test_a_dialog_this_node_does_not_know_reaches_registered_phones_and_engines_only(edge, sink):
    """After a failover the surviving node has the signature, not the parties: its in-dialog
    requests go to a media engine or a registered contact, never elsewhere."""
    port = free_port()
    assert register(edge, CALLEE, "1002", PASSWORDS["1002"], port=port).ok
    phone = sipp.Uas(CALLEE, port, text=BYE_ANSWERER)
    try:
        sip = edge.cluster.kamailio.sip_port
        # a user registers a Contact at the sink, from its own address: a contact it declares is
        # not where it registered from
        with Connection((VIP, sip), "tcp", CALLER) as conn:
            reg = Request("REGISTER", f"sip:{VIP}:{sip}", f"sip:1003@{VIP}", f"sip:1003@{VIP}",
                          contact=f"sip:1003@{SINK}:{sink.port}", extra=["Expires: 60"])
            r, _ = authenticated(conn, reg, "1003", USERS["1003"])
            assert r is not None and r.status == 200, r and r.line
        before = stat(edge, "hapbx_forged_dialog")
        for target, expect in ((f"sip:1002@{CALLEE}:{port}", 200), (f"sip:x@{SINK}:{sink.port}", 403),
                               (f"sip:1003@{SINK}:{sink.port}", 403)):
            req = Request("BYE", target, f"sip:1001@{VIP}", f"sip:1002@{VIP}", to_tag="peer-made",
                          call_id="failed-over-" + str(port))
            req.extra.append(f"Route: {signed_route(edge, req.call_id)}")
            with Connection((VIP, sip), "udp", CALLER) as conn:
                r = conn.ask(req)
            assert r is not None and r.status == expect, (target, r and r.line)
        assert stat(edge, "hapbx_forged_dialog") == before + 2
        time.sleep(0.3)
        assert sink.got == [] and "BYE sip:1002@" in phone.messages()
    finally:
        phone.stop()


#: a phone that answers a BYE (of a call set up before a failover)
BYE_ANSWERER = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="bye answerer">
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def test_a_forged_udp_source_cannot_get_a_cluster_address_banned(edge):
    """A scanner's packet forging a node's own address: the cluster's addresses are never banned
    (a node's health check is an OPTIONS from its own address), so the node is still answered."""
    port = edge.cluster.kamailio.sip_port
    scan = Request("OPTIONS", f"sip:{VIP}:{port}", f"sip:x@{NODE2}", f"sip:{VIP}", extra=["User-Agent: friendly-scanner"])
    with Connection((VIP, port), "udp", NODE2) as conn:
        conn.ask(scan, timeout=1)
        assert NODE2 not in edge.kamailio.rpc("htable.dump", "ipban")
        ok = conn.ask(Request("OPTIONS", f"sip:{VIP}:{port}", f"sip:x@{NODE2}", f"sip:{VIP}"))
        assert ok is not None and ok.status == 200


def test_out_of_dialog_relay_is_refused_and_counted(edge, sink):
    port = edge.cluster.kamailio.sip_port
    before = stat(edge, "hapbx_relay_refused")
    req = Request("MESSAGE", f"sip:victim@{SINK}:{sink.port}", f"sip:1001@{VIP}", f"sip:victim@{SINK}",
                  body="hello", content_type="text/plain")
    with Connection((VIP, port), "udp", ATTACKER) as conn:
        r = conn.ask(req)
    assert r is not None and r.line == "403 Relaying Forbidden"
    time.sleep(0.3)
    assert sink.got == [] and stat(edge, "hapbx_relay_refused") == before + 1


def test_a_real_call_is_signed_and_its_bye_goes_through(edge):
    """A call the proxy record-routed carries the signature: its ACK and BYE are relayed."""
    port = free_port()
    assert register(edge, CALLEE, "1002", PASSWORDS["1002"], port=port).ok
    phone = sipp.Uas(CALLEE, port)
    try:
        before = stat(edge, "hapbx_forged_dialog")
        r = call(edge, CALLER, "1001", "1002")
        assert r.ok, (r.stdout, r.errors, edge.kamailio.tail())
        messages = phone.messages()
        assert re.search(r"Record-Route: <sip:[0-9.:]+;lr;hs=[0-9a-f]{24}", messages), messages[-2000:]
        assert "BYE sip:" in messages
        assert stat(edge, "hapbx_forged_dialog") == before
    finally:
        phone.stop()


# --- trust by address -----------------------------------------------------------------------------

def test_a_media_address_is_trusted_over_tcp_only(edge):
    """A request from a media engine's address over UDP (a forged source costs one packet) is
    challenged like anyone's; over TCP (a handshake from that address) it is the engine's."""
    port = free_port()
    assert register(edge, CALLEE, "1002", PASSWORDS["1002"], port=port).ok
    phone = sipp.Uas(CALLEE, port)
    sip = edge.cluster.kamailio.sip_port
    try:
        before = stat(edge, "hapbx_untrusted_media")
        engine_call = lambda: Request("INVITE", f"sip:1002@{VIP}:{sip}", f"sip:8000@{VIP}",  # noqa: E731
                                      f"sip:1002@{VIP}", contact=f"sip:8000@{NODE2}:5999",
                                      extra=["X-Hapbx-Class: premium"], body=SDP)
        with Connection((VIP, sip), "udp", NODE2) as conn:
            r = conn.ask(engine_call())
        assert r is not None and r.status == 407, r and r.line
        assert phone.invites() == 0
        assert stat(edge, "hapbx_untrusted_media") == before + 1
        with Connection((VIP, sip), "tcp", NODE2) as conn:
            r = conn.ask(engine_call(), timeout=5)
        assert r is not None and r.status == 200, r and r.line
        # the engine's call reached the phone, without our headers
        assert phone.invites() == 1 and "X-Hapbx-" not in phone.messages()
    finally:
        phone.stop()


def test_dmq_is_tcp_only_and_kdmq_elsewhere_is_dropped(edge):
    k = edge.cluster.kamailio
    udp = {line.split()[3] for line in socket_lines("-lunH")}
    assert f"127.0.0.11:{k.dmq_port}" not in udp
    assert f"127.0.0.11:{k.dmq_port}" in {line.split()[3] for line in socket_lines("-ltnH")}
    before = stat(edge, "hapbx_dmq_refused")
    req = Request("KDMQ", f"sip:usrloc@{VIP}:{k.sip_port}", f"sip:usrloc@{ATTACKER}", f"sip:usrloc@{VIP}",
                  body="{}", content_type="application/json")
    with Connection((VIP, k.sip_port), "udp", ATTACKER) as conn:
        assert conn.ask(req, timeout=1) is None
    assert stat(edge, "hapbx_dmq_refused") == before + 1


def socket_lines(flags: str) -> list[str]:
    return subprocess.run(["ss", flags], capture_output=True, text=True).stdout.splitlines()


# --- toll fraud -----------------------------------------------------------------------------------

def test_a_call_to_a_forbidden_prefix_is_refused_until_the_class_allows_it(edge):
    media_before = sum(m.invites() for m in edge.media.values())
    before = stat(edge, "hapbx_class_refused")
    limits(edge, "1005", **{"class": "national"})
    for number in ("0900123456", "0049301234567"):           # premium, international
        r = place(edge, "1005", number)
        assert r is not None and r.line == "403 Call Class Not Allowed", (number, r and r.line)
    assert stat(edge, "hapbx_class_refused") == before + 2
    assert sum(m.invites() for m in edge.media.values()) == media_before
    r = place(edge, "1005", "0301234567")                     # national: to a media engine
    assert r is not None and r.status == 200, r and r.line
    limits(edge, "1005", **{"class": "international"})
    assert place(edge, "1005", "0049301234567").status == 200
    assert place(edge, "1005", "0900123456").line == "403 Call Class Not Allowed"
    limits(edge, "1005", **{"class": "premium"})
    assert place(edge, "1005", "0900123456").status == 200
    assert sum(m.invites() for m in edge.media.values()) == media_before + 3


def test_concurrent_calls_beyond_the_extension_limit_get_486(edge):
    limits(edge, "1003", max_calls=1, calls_per_minute=100)
    port = free_port()
    assert register(edge, CALLEE, "1002", PASSWORDS["1002"], port=port).ok
    phone = sipp.Uas(CALLEE, port)
    try:
        before = stat(edge, "hapbx_call_limit_refused")
        held = {}
        first = threading.Thread(target=lambda: held.setdefault("r", sipp.run(
            sipp.scenario("call.xml"), edge.target, CALLER, service="1002", keys={"user": "1003", "domain": VIP},
            auth=("1003", USERS["1003"]), extra=("-d", "4000"))))
        first.start()
        deadline = time.monotonic() + 5
        while "1003" not in edge.kamailio.rpc("dlg.list") and time.monotonic() < deadline:
            time.sleep(0.1)
        r = place(edge, "1003", "1002")
        assert r is not None and r.line == "486 Call Limit Reached", r and r.line
        first.join(timeout=20)
        assert held["r"].ok, held["r"].stdout
        assert stat(edge, "hapbx_call_limit_refused") == before + 1
        # the first call ended: its slot is free again
        assert call(edge, CALLER, "1001", "1002").ok
    finally:
        phone.stop()


def test_call_attempts_beyond_the_rate_get_403(edge):
    """calls_per_minute counts the last 60 s, not the clock minute: attempts at a minute's end
    still count a second later."""
    limits(edge, "1004", calls_per_minute=2, max_calls=10)
    before = stat(edge, "hapbx_call_rate_refused")
    time.sleep(58.5 - time.time() % 60 if time.time() % 60 < 58.5 else 60 - time.time() % 60 + 58.5)
    assert place(edge, "1004", "8000").status == 200
    assert place(edge, "1004", "8000").status == 200
    time.sleep(max(0.0, 61 - time.time() % 60) if time.time() % 60 > 30 else 0)   # into the next minute
    r = place(edge, "1004", "8000")
    assert r is not None and r.line == "403 Call Rate Exceeded", r and r.line
    assert stat(edge, "hapbx_call_rate_refused") == before + 1


# --- credentials and TLS --------------------------------------------------------------------------

def test_a_captured_register_cannot_be_replayed(edge):
    sip = edge.cluster.kamailio.sip_port
    phone = f"sip:1001@{CALLER}:5998"
    req = Request("REGISTER", f"sip:{VIP}:{sip}", f"sip:1001@{VIP}", f"sip:1001@{VIP}", contact=phone,
                  extra=["Expires: 60"])
    with Connection((VIP, sip), "tcp", CALLER) as conn:
        r, sent = authenticated(conn, req, "1001", PASSWORDS["1001"])
        assert r is not None and r.status == 200, r and r.line
        # the same credentials again (an eavesdropper's replay): challenged, not registered
        sent.cseq += 1
        sent.contact = f"sip:1001@{ATTACKER}:5060"
        r = conn.ask(sent)
        assert r is not None and r.status == 401, r.line
        # a client that does not count (no qop): its nonce is good once
        challenge = conn.ask(Request("REGISTER", req.uri, req.from_uri, req.to_uri, call_id=req.call_id,
                                     cseq=sent.cseq + 1, contact=phone))
        once = Request("REGISTER", req.uri, req.from_uri, req.to_uri, call_id=req.call_id, cseq=sent.cseq + 2,
                       contact=phone)
        once.extra.append(authorization(challenge, once, "1001", PASSWORDS["1001"], qop=False))
        assert conn.ask(once).status == 200
        once.cseq += 1
        once.contact = f"sip:1001@{ATTACKER}:5060"
        assert conn.ask(once).status == 401
    assert f"{ATTACKER}:5060" not in edge.kamailio.rpc("ul.dump")


def test_sip_over_tls_registers_and_is_answered(edge):
    k = edge.cluster.kamailio
    ctx = ssl.create_default_context(cadata=SECRETS["kamailio_tls_certificate"])
    ctx.check_hostname = False                 # the certificate names the VIP by address (SAN)
    req = Request("REGISTER", f"sip:{VIP}:{k.tls_port};transport=tls", f"sip:1002@{VIP}", f"sip:1002@{VIP}",
                  contact=f"sip:1002@{CALLER}:5997;transport=tls", extra=["Expires: 60"])
    with Connection((VIP, k.tls_port), "tls", CALLER, tls_context=ctx) as conn:
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        r, _ = authenticated(conn, req, "1002", PASSWORDS["1002"])
        assert r is not None and r.status == 200, r and r.line
    assert "tls:" in edge.kamailio.rpc("ul.dump").lower()


