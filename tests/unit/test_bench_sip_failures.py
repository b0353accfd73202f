"""bench/sip_failures.py on real SIPp error logs (tests/fixtures/sipp_errors, captured on loopback
with SIPp 3.6.1: the bench's call.xml/register.xml, before and after issue 24, against SIPp UASes
and against a Kamailio 5.6 answering with sl_send_reply / auth_challenge, server_signature no
(ours) and yes (stock))."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import sip as b
from bench import sip_failures as f

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sipp_errors"


def log(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize("name,cls", [
    ("kamailio_404_ours.log", f.KAMAILIO),        # sl's To-tag, no Server header (server_signature=no)
    ("kamailio_401_ours.log", f.KAMAILIO),        # a 401 to the REGISTER with credentials: a real failure
    ("kamailio_404_stock.log", f.KAMAILIO),       # Server: kamailio (5.6.3 ...)
    ("kamailio_401_stock.log", f.KAMAILIO),
    ("standin_404.log", f.STAND_IN),              # a SIPp UAS's To-tag, relayed
    ("timeout_receive.log", f.TIMEOUT),
    ("timeout_retransmission.log", f.TIMEOUT),
    ("timeout_then_dead_call.log", f.TIMEOUT),    # the Dead call line after it is no second failure
    ("scenario_180_while_pausing.log", f.SCENARIO),   # the old call.xml on a late 180
    ("scenario_late_401_register.log", f.SCENARIO),   # the old register.xml on a late 401 to CSeq 1
])
def test_each_real_sample_gets_its_class(name, cls):
    found = f.classify_log(log(name))
    assert found.total == 1
    assert found.counts[cls] == 1, found
    assert list(found.samples) == [cls]


def test_what_is_said_of_a_failure():
    found = f.classify_log(log("kamailio_404_ours.log"))
    assert found.samples[f.KAMAILIO] == "SIP/2.0 404 Not here (CSeq 1 INVITE) while expecting '100' (index 1)"
    assert "while pausing (index 10)" in f.classify_log(log("scenario_180_while_pausing.log")).samples[f.SCENARIO]


def test_a_log_of_many_entries_counts_each_call_once():
    text = "".join(log(n) for n in sorted(p.name for p in FIXTURES.iterdir()))
    found = f.classify_log(text)
    assert found.counts == {f.KAMAILIO: 4, f.STAND_IN: 1, f.TIMEOUT: 3, f.SCENARIO: 2}
    # the same call's later entries (SIPp's abort BYE answered 404 Not here: a Dead call) add nothing
    dead = ("2026-11-25\t12:07:11.418322\t1795608431.418322: Dead call 1978-2293@10.79.0.1 (aborted at index 10), "
            "received 'SIP/2.0 404 Not here\r\nTo: <sip:7989999@x>;tag=fb0792f1f840ab65f2763018d1c5fac6.3c02c41a\r\n'")
    assert f.classify_log(text + dead).counts == found.counts
    assert f.classify_log("") .total == 0


def test_origin_of_a_response():
    def resp(first, *headers):
        return "\r\n".join([first, "Via: SIP/2.0/UDP 10.79.0.1:5060;branch=z9hG4bK-1", *headers, "Content-Length: 0", ""])
    kam_tag = "To: <sip:7989999@pbx>;tag=fb0792f1f840ab65f2763018d1c5fac6-3c02"     # tm's form ('-')
    assert f.origin(resp("SIP/2.0 503 No Media Server Available", kam_tag, "CSeq: 2 INVITE")) == f.KAMAILIO
    assert f.origin(resp("SIP/2.0 486 Busy Here", "To: <sip:x@y>;tag=1234SIPpTag015", "CSeq: 2 INVITE")) == f.STAND_IN
    assert f.origin(resp("SIP/2.0 500 Oops", "To: <sip:x@y>;tag=a8Xr2", "CSeq: 2 INVITE")) == f.KAMAILIO  # unknown
    assert f.origin(resp("SIP/2.0 200 OK", "To: <sip:x@y>;tag=1SIPpTag011", "CSeq: 2 INVITE")) == f.SCENARIO
    assert f.origin(resp("SIP/2.0 407 Proxy Authentication Required", kam_tag, "CSeq: 1 INVITE")) == f.SCENARIO
    assert f.origin(resp("SIP/2.0 407 Proxy Authentication Required", kam_tag, "CSeq: 2 INVITE")) == f.KAMAILIO
    assert f.origin("BYE sip:7900001@10.79.0.1 SIP/2.0\r\nCSeq: 3 BYE\r\n") == f.SCENARIO


def test_failures_the_log_does_not_explain_count_as_no_answer():
    found = f.classify_log(log("standin_404.log"))
    assert f.attribute(4, found) == {f.KAMAILIO: 0, f.STAND_IN: 1, f.TIMEOUT: 3, f.SCENARIO: 0}
    assert f.attribute(0, found)[f.TIMEOUT] == 0


def step(**kw) -> b.Step:
    base = dict(scenario="calls", target="ours", rate=100, seconds=10, attempted=1000, ok=1000, failed=0,
                p95=10.0, elapsed=10.0)
    base.update(kw)
    return b.Step(**base)


def test_the_verdict_counts_only_kamailio_caused_failures():
    s = step(ok=990, failed=10)
    b.classify_failures(s, log("scenario_180_while_pausing.log") + log("standin_404.log"))
    # 1 scenario, 1 stand-in, 8 unexplained (no answer)
    assert (s.kamailio_failed, s.timeout_failed, s.standin_failed, s.scenario_failed) == (0, 8, 1, 1)
    assert s.server_failed == 8 and "Kamailio-caused failures 0.80 %" in b.stop_reason(s)
    s = step(ok=998, failed=2)
    b.classify_failures(s, log("scenario_180_while_pausing.log") + log("standin_404.log"))
    assert s.fail_ratio > b.MAX_FAIL_RATIO and s.server_failed == 0
    assert b.stop_reason(s) is None                                     # 0.2 % failed, none of it Kamailio's
    s = step(ok=998, failed=2)
    b.classify_failures(s, log("kamailio_404_ours.log") + log("kamailio_401_stock.log"))
    assert s.kamailio_failed == 2 and "Kamailio-caused failures 0.20 %" in b.stop_reason(s)
    old = step(ok=998, failed=2)                                        # a result from before the classes
    assert not old.classified and old.server_failed == 2 and b.stop_reason(old)
