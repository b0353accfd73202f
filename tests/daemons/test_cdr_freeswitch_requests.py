"""The receiver against the HTTP requests FreeSWITCH's mod_json_cdr really sends.

tests/fixtures/freeswitch/json_cdr_request_*.http are those requests byte for byte (made by
libcurl 7.88.1, Debian 12's, with process_cdr's own curl calls: make_requests.py there; a
capture from a real FreeSWITCH drops in as it is). Each goes over a raw TCP socket to the
receiver as it runs on a node (Debian's python3 and aiohttp, bench/devstack.py) with Redis
and PostgreSQL on loopback; the record must be in the Redis queue and then in cdr.calls, with
the caller's name and number (which a real CDR has only in callflow[].caller_profile).

The disable-100-continue request (what our json_cdr.conf made FreeSWITCH send) is the raw
JSON under ``Content-Type: application/x-www-form-urlencoded``: the receiver used to answer it
400 "form body has no 'cdr' field", and FreeSWITCH kept every CDR in its error directory.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
from urllib.parse import parse_qs

import pytest

from hapbx_node.cdr import records
from tests import freeswitch_requests as fsr
from bench.devstack import Stack
from tests.daemons.cdr_stack import clean, stack  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]

FIXTURES = fsr.fixtures()
#: what the shipped fixtures hold (a replaced capture is checked against its own body only)
KNOWN = {
    "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e01": dict(caller_number="1001", caller_name="Alice Example",
                                                callee_number="1002", direction="internal", duration="46",
                                                billsec="42", hangup_cause="NORMAL_CLEARING", trunk="", queue="",
                                                recording_path="/var/lib/hapbx/recordings/pbx1/2025/03/14/"
                                                               "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e01.wav"),
    "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e02": dict(caller_number="+493012345678", caller_name="ACME Berlin",
                                                callee_number="5000", direction="inbound", duration="180",
                                                billsec="178", hangup_cause="NORMAL_CLEARING", trunk="carrier-a",
                                                queue="5000", recording_path=""),
    "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e03": dict(caller_number="1003", caller_name="Jürgen Müller",
                                                callee_number="004930555123", direction="outbound", duration="19",
                                                billsec="11", hangup_cause="NORMAL_CLEARING", trunk="carrier-a",
                                                queue="", recording_path=""),
    "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e04": dict(caller_number="1004", caller_name="Zoë O'Neil",
                                                callee_number="1002", direction="internal", duration="17",
                                                billsec="0", hangup_cause="ORIGINATOR_CANCEL", trunk="", queue="",
                                                recording_path=""),
    # captured from a real FreeSWITCH 1.10.12 running the rendered prod configuration (issue 17): an
    # inbound call from the IP trunk carrier-a to DID 4930123456 (the callee), routed to and answered by 1001
    "97fac19e-8fa9-4659-a034-f93d4d1ef5cd": dict(caller_number="4917012345", caller_name="Carrier Caller",
                                                callee_number="4930123456", direction="inbound", trunk="carrier-a"),
}


def record_of(req: fsr.Request) -> dict:
    """The CDR in a request, decoded here without the receiver's code where plain decoding
    works (encode=true with percent-encoded values holding a quote needs the receiver's)."""
    ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
    if req.body.lstrip().startswith(b"{"):
        return json.loads(req.body)
    value = req.body[4:] if req.body.startswith(b"cdr=") else req.body
    if ctype == "application/x-www-form-base64-encoded":
        return json.loads(base64.b64decode(value))
    try:
        return json.loads(parse_qs(req.body.decode("ascii"))["cdr"][0], strict=False)
    except ValueError:
        return records.decode_body(req.body, ctype)


def expected(req: fsr.Request) -> dict:
    rec = record_of(req)
    profile = rec["callflow"][0]["caller_profile"]
    v = rec["variables"]
    out = {"call_uuid": v["uuid"], "caller_number": profile["caller_id_number"],
           "caller_name": profile["caller_id_name"], "callee_number": profile["destination_number"],
           "duration": v["duration"], "billsec": v["billsec"], "hangup_cause": v["hangup_cause"]}
    return {**out, **KNOWN.get(v["uuid"], {})}


def queued(st: Stack) -> list[dict]:
    items = st.redis.cli("LRANGE", "cdr:queue", "0", "-1").splitlines()
    return [json.loads(x)["c"] for x in items if x.strip()]


def stored_row(st: Stack, call_uuid: str) -> dict:
    cols = ["caller_number", "caller_name", "callee_number", "direction", "duration", "billsec", "hangup_cause",
            "trunk", "queue", "recording_path", "node"]
    sql = ", ".join(f"coalesce({c}::text, '')" for c in cols)
    out = st.pg.psql(f"SELECT {sql} FROM cdr.calls WHERE call_uuid = '{call_uuid}'")
    assert out, f"{call_uuid} is not in cdr.calls"
    return dict(zip(cols, out.split("|")))


def test_the_fixtures_are_mod_json_cdr_requests():
    """What every fixture must be for the tests below to mean anything; the shipped ones are
    exactly what libcurl 7.88.1 sends for each json_cdr.conf setting."""
    assert {"json_cdr_request_json.http", "json_cdr_request_disable100.http",
            "json_cdr_request_form.http"} <= set(FIXTURES)
    for name in FIXTURES:
        req = fsr.load(name)
        assert req.method == "POST" and req.version == "HTTP/1.1", name
        assert req.header("User-Agent") == "freeswitch-json/1.0", name
        assert req.header("Accept") == "*/*", name
        assert int(req.header("Content-Length")) == len(req.body) > 1024, name
        rec = record_of(req)
        assert req.query["uuid"] == rec["variables"]["uuid"], "mod_json_cdr posts to <url>?uuid=<uuid>"
        assert {"core-uuid", "switchname", "channel_data", "variables", "callflow"} <= set(rec)
        profile = rec["callflow"][0]["caller_profile"]
        assert profile["caller_id_number"] and profile["caller_id_name"] and profile["destination_number"]
        if req.query["uuid"] in KNOWN:
            # as FreeSWITCH writes them: the caller's id only in the caller_profile
            assert "caller_id_name" not in rec["variables"] and "caller_id_number" not in rec["variables"]
    shipped = {n: fsr.load(n) for n in FIXTURES if fsr.load(n).query["uuid"] in KNOWN}
    if "json_cdr_request_json.http" in shipped:
        req = shipped["json_cdr_request_json.http"]
        assert req.header_names == ["Host", "User-Agent", "Accept", "Content-Type", "Content-Length"]
        assert req.header("Content-Type") == "application/json"
        # libcurl 7.88 asks for 100-continue only above 1 MiB (EXPECT_100_THRESHOLD): never for a CDR
        assert req.header("Expect") is None
    if "json_cdr_request_disable100.http" in shipped:
        req = shipped["json_cdr_request_disable100.http"]
        # the module's header list was replaced by "Expect:": libcurl's default form type, after the length
        assert req.header_names == ["Host", "User-Agent", "Accept", "Content-Length", "Content-Type"]
        assert req.header("Content-Type") == "application/x-www-form-urlencoded" and req.body.startswith(b"{")
    if "json_cdr_request_form.http" in shipped:
        req = shipped["json_cdr_request_form.http"]
        assert req.header("Content-Type") == "application/x-www-form-urlencoded" and req.body.startswith(b"cdr=%7B")
    if "json_cdr_request_base64.http" in shipped:
        req = shipped["json_cdr_request_base64.http"]
        assert req.header("Content-Type") == "application/x-www-form-base64-encoded"
        assert req.body.startswith(b"cdr=eyJ") and b"%" not in req.body, "raw base64, not url-escaped"


def test_the_loader_takes_captures_as_they_come():
    req = fsr.load("json_cdr_request_json.http")
    raw = req.wire()
    assert fsr.parse(raw).wire() == raw
    head, body = raw.split(b"\r\n\r\n", 1)
    lf = fsr.parse(head.replace(b"\r\n", b"\n") + b"\n\n" + body + b"\n")
    assert lf.body == req.body and lf.headers == req.headers, "LF lines and an editor's final newline"
    kept_alive = fsr.parse(raw + b"POST /cdr HTTP/1.1\r\n")
    assert kept_alive.body == req.body, "bytes after Content-Length are not the body"
    head = head.replace(b"Content-Length: %d" % len(req.body), b"Transfer-Encoding: chunked")
    chunked = fsr.parse(head + b"\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in
                                                         (req.body[:1000], req.body[1000:])) + b"0\r\n\r\n")
    assert chunked.body == req.body and chunked.header("Content-Length") is None
    assert fsr.parse(chunked.wire()).body == req.body
    with pytest.raises(fsr.BadCapture):
        fsr.parse(raw[:-10])


@pytest.mark.parametrize("name", FIXTURES)
def test_each_freeswitch_request_reaches_redis_and_postgresql(clean, name):
    st = clean
    req = fsr.load(name)
    want = expected(req)
    resp = fsr.send(st.receiver_port, req)
    assert resp.status == 200, (name, resp.status, resp.body[:200])
    assert json.loads(resp.body) == {"ok": True, "call_uuid": want["call_uuid"], "stored": "queue"}
    # in the Redis queue, as the worker will read it
    items = queued(st)
    assert len(items) == 1 and items[0]["call_uuid"] == want["call_uuid"]
    assert (items[0]["caller_number"], items[0]["caller_name"]) == (want["caller_number"], want["caller_name"])
    # and in cdr.calls once the worker moved it
    st.start_worker()
    st.wait_stored(1)
    row = stored_row(st, want["call_uuid"])
    for col in ("caller_number", "caller_name", "callee_number", "duration", "billsec", "hangup_cause",
                "direction", "trunk", "queue", "recording_path"):
        if col in want:
            assert row[col] == want[col], (name, col, row[col], want[col])
    assert row["node"] == record_of(req)["variables"].get("hapbx_node", "pbx1")  # its node, else the receiver's
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and st.queue_lengths() != {"queue": 0, "processing": 0, "dead": 0}:
        time.sleep(0.1)
    assert st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 0}


def test_expect_100_continue_is_answered(clean):
    """A FreeSWITCH on a libcurl that asks for 100-continue (older libcurl did above 1 KiB; 7.88
    does above 1 MiB only): the receiver answers 100 Continue at once (no 1 s stall), then 200."""
    st = clean
    req = fsr.load("json_cdr_request_json.http").with_header("Expect", "100-continue", after="Content-Length")
    assert req.expects_continue
    started = time.monotonic()
    resp = fsr.send(st.receiver_port, req, continue_timeout=5)
    assert resp.interim == [100] and resp.status == 200, (resp.interim, resp.status, resp.body[:200])
    assert time.monotonic() - started < 2
    assert [x["call_uuid"] for x in queued(st)] == [expected(req)["call_uuid"]]


def test_all_fixtures_together_are_stored_once_each(clean):
    """Every shape in one go, each posted twice (FreeSWITCH retries after a lost answer)."""
    st = clean
    st.start_worker()
    ids = []
    for name in FIXTURES * 2:
        req = fsr.load(name)
        assert fsr.send(st.receiver_port, req).status == 200, name
        ids.append(expected(req)["call_uuid"])
    st.wait_stored(len(set(ids)))
    time.sleep(0.5)
    stored = st.pg.psql("SELECT call_uuid FROM cdr.calls").split()
    assert sorted(stored) == sorted(set(ids))
