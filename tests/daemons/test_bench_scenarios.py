"""The SIP bench's scenarios (bench/scenarios) do not fail on their own: real SIPp callers on
loopback against SIPp UASes that answer late, as a loaded proxy and its relays do. The same
scenario without its transactions (what bench/scenarios held before issue 24) fails on the very
same answers, with the failures classified as the scenario's (bench/sip_failures.py). Each run
takes about 2 s; every UAS is killed at the end of its test."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from bench import sip_failures
from lab import sipp

pytestmark = pytest.mark.timeout(60)
SCENARIOS = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
LOOPBACK = "127.0.0.1"

# a proxy that challenges the first INVITE, answers the second 100/180/200 at once, then, while
# the caller holds the call (its pause after the ACK), sends the 180 and the 200 again, byte for
# byte (the headers kept from the INVITE: after the ACK SIPp's [last_*] would be the ACK's)
PROXY_RETRANSMITTING = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="proxy answering late">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 407 Proxy Authentication Required
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag07[call_number]
[last_Call-ID:]
[last_CSeq:]
Proxy-Authenticate: Digest realm="bench.test", nonce="n[call_number]", algorithm=MD5
Content-Length: 0

]]></send>
  <recv request="ACK"/>
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="via"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="cseq"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 100 Trying
Via:[$via]
From:[$from]
To:[$to]
[last_Call-ID:]
CSeq:[$cseq]
Content-Length: 0

]]></send>
@RINGING@
@OK@
  <recv request="ACK"/>
  <pause milliseconds="150"/>
@RINGING@
  <pause milliseconds="150"/>
@OK@
  <recv request="ACK" optional="true"/>
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
_ANSWER = """  <send><![CDATA[
SIP/2.0 {status}
Via:[$via]
From:[$from]
To:[$to];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq:[$cseq]
Contact: <sip:media@[local_ip]:[local_port]>
Content-Length: 0

]]></send>"""
PROXY_RETRANSMITTING = (PROXY_RETRANSMITTING.replace("@RINGING@", _ANSWER.format(status="180 Ringing"))
                        .replace("@OK@", _ANSWER.format(status="200 OK")))

# a registrar that answers the REGISTER with credentials first with another 401 to the first
# REGISTER (its Via and CSeq kept: what Kamailio sends to a retransmission of it, a new nonce),
# then with the 200; SECOND_401: with a 401 to the REGISTER with credentials itself (a failure)
REGISTRAR_LATE_401 = """<?xml version="1.0" encoding="UTF-8" ?>
<scenario name="registrar answering late">
  <recv request="REGISTER">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="via"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="cseq"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag07[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="bench.test", nonce="first[call_number]", algorithm=MD5
Content-Length: 0

]]></send>
  <recv request="REGISTER"/>
  <send><![CDATA[
SIP/2.0 401 Unauthorized
Via:[$via]
[last_From:]
[last_To:];tag=[pid]SIPpTag07[call_number]
[last_Call-ID:]
CSeq:[$cseq]
WWW-Authenticate: Digest realm="bench.test", nonce="second[call_number]", algorithm=MD5
Content-Length: 0

]]></send>
  <pause milliseconds="100"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag07[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""
SECOND_401 = re.sub(r"<recv request=\"REGISTER\">.*?</recv>", '<recv request="REGISTER"/>',
                    REGISTRAR_LATE_401.replace("Via:[$via]", "[last_Via:]").replace("CSeq:[$cseq]", "[last_CSeq:]"),
                    count=1, flags=re.S)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def before_issue_24(text: str) -> str:
    """The scenario as bench/scenarios held it before issue 24: the same messages, no SIPp
    transactions, no recv for a late 401 to the first REGISTER."""
    out = re.sub(r' (start_txn|response_txn|ack_txn)="[^"]*"', "", text)
    out = out.replace('  <recv response="401" optional="true"/>\n', "")
    body = out.split("<scenario", 1)[1]
    assert "txn" not in body and body.count('response="401"') <= 1
    return out


@pytest.fixture
def uas():
    started: list[sipp.Uas] = []

    def start(text: str) -> sipp.Uas:
        u = sipp.Uas(LOOPBACK, free_udp_port(), text)
        started.append(u)
        return u
    yield start
    for u in started:
        u.stop()


@pytest.fixture
def users(tmp_path) -> str:
    path = tmp_path / "users.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"79000{i:02d};[authentication username=79000{i:02d} password=pw{i}];7989999\n"
                                              for i in range(10)))
    return str(path)


def sent(u: sipp.Uas, status: str, method: str) -> int:
    """How many responses `status` (e.g. '180 Ringing') to `method` requests the UAS sent."""
    blocks = re.split(r"^-{20,}.*$", u.messages(), flags=re.M)
    return sum(1 for b in blocks if re.search(rf"message sent[^\n]*\n\s*SIP/2\.0 {status}\s", b)
               and re.search(rf"^CSeq:\s*\d+ {method}\s*$", b, re.M))


def caller(text: str, u: sipp.Uas, users: str, calls: int, hold_ms: int = 0) -> sipp.Result:
    extra = ("-inf", users, "-key", "domain", "bench.test", "-key", "expires", "120")
    if hold_ms:
        extra += ("-d", str(hold_ms))
    return sipp.run(text, f"{u.ip}:{u.port}", LOOPBACK, service="7989999", calls=calls, rate=10, timeout=20,
                    extra=extra)


CALLS = 3


def test_call_survives_a_180_and_a_200_retransmitted_during_its_pause(uas, users):
    u = uas(PROXY_RETRANSMITTING)
    r = caller((SCENARIOS / "call.xml").read_text(), u, users, CALLS, hold_ms=1000)
    assert (r.successful, r.failed) == (CALLS, 0), (r.stdout[-1500:], r.errors)
    assert r.ok
    # the UAS did send each answer twice, the copies while the caller held the call
    assert sent(u, "180 Ringing", "INVITE") == 2 * CALLS and sent(u, "200 OK", "INVITE") == 2 * CALLS
    # the caller ACKed the retransmitted 200 again (SIPp's transaction handling), as a phone does
    assert len(re.findall(r"message received[^\n]*\n\s*ACK ", u.messages())) == 2 * CALLS + CALLS


def test_the_call_scenario_before_issue_24_failed_on_the_same_answers(uas, users):
    u = uas(PROXY_RETRANSMITTING)
    r = caller(before_issue_24((SCENARIOS / "call.xml").read_text()), u, users, CALLS, hold_ms=1000)
    assert r.failed == CALLS and r.successful == 0
    found = sip_failures.classify_log(r.errors)
    assert found.counts[sip_failures.SCENARIO] == CALLS, r.errors
    assert "SIP/2.0 180 Ringing (CSeq 2 INVITE) while pausing" in found.samples[sip_failures.SCENARIO]


def test_register_survives_a_late_401_to_its_first_request(uas, users):
    u = uas(REGISTRAR_LATE_401)
    text = (SCENARIOS / "register.xml").read_text()
    r = caller(text, u, users, CALLS)
    assert (r.successful, r.failed) == (CALLS, 0), (r.stdout[-1500:], r.errors)
    assert sent(u, "401 Unauthorized", "REGISTER") == 2 * CALLS
    old = caller(before_issue_24(text), uas(REGISTRAR_LATE_401), users, CALLS)
    assert old.failed == CALLS
    assert sip_failures.classify_log(old.errors).counts[sip_failures.SCENARIO] == CALLS, old.errors


def test_register_still_fails_on_a_401_to_its_request_with_credentials(uas, users):
    u = uas(SECOND_401)
    r = caller((SCENARIOS / "register.xml").read_text(), u, users, 1)
    assert r.failed == 1 and r.successful == 0
    found = sip_failures.classify_log(r.errors)
    # a SIPp UAS answered here (its To-tag): the stand-in's class; from Kamailio it is Kamailio's
    # (tests/fixtures/sipp_errors/kamailio_401_*.log)
    assert found.counts[sip_failures.STAND_IN] == 1 and "CSeq 2 REGISTER" in found.samples[sip_failures.STAND_IN]
