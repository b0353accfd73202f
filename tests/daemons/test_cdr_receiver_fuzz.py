"""The CDR receiver fuzzed with malformed CDRs (issue 21: no server error for any input).

The receiver runs as on a node (bench/devstack.py: Redis with the deployment's ACL, PostgreSQL
with the project's migrations, Debian's python3) on loopback with sender credentials, and gets
hypothesis-made bodies posted with a valid credential: random JSON, FreeSWITCH records with a
variable replaced by a wrong type, a huge number, NaN or Infinity, a NUL, a lone surrogate or
deep nesting, truncated JSON, random bytes, the form encodings mod_json_cdr sends (``cdr=``
url-escaped or base64) around all of these, under any content type. Every answer is a 200 that
says where the record is safe, or a 4xx with the reason: never a 5xx (Redis and PostgreSQL are up,
so not even a 503). And a 200 is a promise: the worker then stores every acknowledged record,
none goes to the dead-letter list. Deterministic (derandomize) and bounded (examples, a deadline
per post).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import urllib.parse
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from bench import devstack
from bench.devstack import Stack
from bench.loadgen import fs_cdr

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(150),
]
SENDER, PASSWORD = "cdr-pbx1", "pbx1-sender-pw-fuzz-0123456789"
AUTH = "Basic " + base64.b64encode(f"{SENDER}:{PASSWORD}".encode()).decode()
#: a post that takes longer is a failure (the receiver answers in milliseconds)
POST_TIMEOUT = 10
FUZZ = settings(max_examples=1500, deadline=timedelta(seconds=POST_TIMEOUT), derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
#: a fixed call start: the same bodies on every run
START = 1_750_000_000


@pytest.fixture(scope="module")
def st():
    need = devstack.missing_packages()
    if need:
        from lab import hostdeps
        hostdeps.ensure(need, "the CDR receiver fuzz tests")
    stack = Stack(receiver_env={"HAPBX_CDR_SENDERS": f"{SENDER}:{PASSWORD}"})
    try:
        stack.start_data()
        stack.start_receiver()
        yield stack
    finally:
        stack.close()


def post(st: Stack, body: bytes, content_type: str | None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one post, on its own connection as mod_json_cdr's."""
    conn = http.client.HTTPConnection("127.0.0.1", st.receiver_port, timeout=POST_TIMEOUT)
    try:
        headers = {"Authorization": AUTH, "Content-Length": str(len(body))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        conn.request("POST", "/cdr", body, headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def check_answer(status: int, ctype: str, raw: bytes, sent: bytes) -> dict:
    """The receiver's answer to anything: 200 with where the record is, or 4xx with the reason."""
    assert status == 200 or 400 <= status < 500, (status, raw[:300], sent[:300])
    assert ctype.startswith("application/json"), (status, ctype, raw[:200])
    answer = json.loads(raw)
    if status == 200:
        assert answer["ok"] is True and answer["stored"] in ("queue", "postgres"), answer
        assert str(uuid.UUID(answer["call_uuid"])) == answer["call_uuid"], answer
    else:
        assert isinstance(answer.get("error"), str) and answer["error"].strip(), (status, answer)
    return answer


# --- what is posted -------------------------------------------------------------------------------------

#: JSON values, including what JSON allows and PostgreSQL does not store: NaN, Infinity, numbers
#: beyond a float, a NUL, lone surrogates (json.dumps writes them as \ud800 escapes)
SCALARS = hst.one_of(
    hst.none(), hst.booleans(), hst.integers(), hst.integers(min_value=10**300).map(lambda n: n * 10**100),
    hst.floats(allow_nan=True, allow_infinity=True),
    hst.text(max_size=30), hst.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfff", "inf", "-inf", "nan", "NaN",
                                              "1e400", "-1e400", "Infinity", "%00", "%zz", "%", "", " ", "0x10",
                                              "99999999999999999999999999", "-1", "0", "1.5"]),
)
JSON_VALUES = hst.recursive(SCALARS, lambda kids: hst.one_of(hst.lists(kids, max_size=4),
                                                             hst.dictionaries(hst.text(max_size=8), kids, max_size=4)),
                            max_leaves=12)
#: the variables a row is made of (records.normalize), and a few it does not read
VARIABLES = ["uuid", "call_uuid", "bridge_uuid", "start_epoch", "start_uepoch", "answer_epoch", "answer_uepoch",
             "end_epoch", "end_uepoch", "duration", "billsec", "hangup_cause", "hangup_cause_q850",
             "hapbx_direction", "hapbx_recording_path", "hapbx_node", "hapbx_queue", "cc_queue", "caller_id_number",
             "caller_id_name", "destination_number", "sip_from_user", "sip_to_user", "sip_hangup_disposition",
             "sip_gateway_name", "read_codec"]


def nested(depth: int, inner: str = "{}") -> str:
    return '{"a":' * depth + inner + "}" * depth


def dumps(value) -> str:
    # allow_nan: NaN and Infinity literals, as a poster other than FreeSWITCH might send them
    return json.dumps(value, allow_nan=True)


@hst.composite
def records(draw) -> str:
    """A FreeSWITCH record as JSON text with something wrong in it (or nothing)."""
    call_uuid = str(draw(hst.uuids()))
    rec = fs_cdr(call_uuid, START)
    variables = rec["variables"]
    for _ in range(draw(hst.integers(0, 3))):
        name = draw(hst.sampled_from(VARIABLES))
        how = draw(hst.sampled_from(["value", "drop"]))
        if how == "drop":
            variables.pop(name, None)
        else:
            variables[name] = draw(JSON_VALUES)
    top = draw(hst.sampled_from(["as is", "variables", "callflow", "switchname", "extra"]))
    if top == "variables":
        rec["variables"] = draw(JSON_VALUES)
    elif top in ("callflow", "switchname", "extra"):
        rec[top] = draw(JSON_VALUES)
    text = dumps(rec)
    depth = draw(hst.sampled_from([0] * 8 + [31, 33, 200, 5000]))
    if depth:
        # deep nesting inside a variable's value, or the whole record under it
        text = text.replace('"read_codec": "PCMA"', f'"read_codec": {nested(depth)}') if depth % 2 else \
            nested(depth, text)
    return text


JSON_TEXTS = hst.one_of(
    records(), records(), records(), records(),
    JSON_VALUES.map(dumps),
    # truncated: a record cut anywhere
    hst.tuples(records(), hst.floats(0, 1)).map(lambda t: t[0][:int(len(t[0]) * t[1])]),
    hst.integers(1, 40000).map(lambda n: "[" * n + "]" * n),
)


@hst.composite
def bodies(draw) -> bytes:
    """What a poster could send: JSON, a form's cdr= url-escaped or base64, random bytes."""
    shape = draw(hst.sampled_from(["json"] * 4 + ["form"] * 2 + ["form-base64", "form-fields", "bytes", "text-bytes"]))
    if shape == "bytes":
        return draw(hst.binary(max_size=300))
    text = draw(JSON_TEXTS)
    raw = text.encode("utf-8", "surrogatepass")
    if shape == "json":
        return raw
    if shape == "text-bytes":
        # JSON text with its UTF-8 broken somewhere
        cut = draw(hst.integers(0, len(raw)))
        return raw[:cut] + draw(hst.binary(min_size=1, max_size=4)) + raw[cut:]
    if shape == "form":
        return b"cdr=" + urllib.parse.quote_from_bytes(raw).encode()
    if shape == "form-base64":
        return b"cdr=" + base64.b64encode(raw)
    # other fields around it, a cdr field that is not the first, or none
    fields = draw(hst.lists(hst.tuples(hst.sampled_from(["cdr", "uuid", "x", "cdr%00", ""]), hst.binary(max_size=20)),
                            max_size=3))
    parts = [urllib.parse.quote_from_bytes(k.encode()).encode() + b"=" + urllib.parse.quote_from_bytes(v).encode()
             for k, v in fields]
    parts.insert(draw(hst.integers(0, len(parts))), b"cdr=" + urllib.parse.quote_from_bytes(raw).encode())
    return b"&".join(parts)


CONTENT_TYPES = hst.one_of(
    hst.sampled_from([None, "application/json", "application/x-www-form-urlencoded",
                      "application/x-www-form-base64-encoded", "text/plain", "multipart/form-data; boundary=x",
                      "application/json; charset=latin-1", "", "application/json;;;", "*/*"]),
    hst.text(alphabet=hst.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30),
)


# --- the tests -------------------------------------------------------------------------------------------

def test_no_body_gets_a_server_error_and_a_200_is_stored(st):
    statuses: Counter = Counter()
    accepted: set[str] = set()
    reasons: Counter = Counter()

    @FUZZ
    @given(body=bodies(), content_type=CONTENT_TYPES)
    def run(body, content_type):
        status, ctype, raw = post(st, body, content_type)
        answer = check_answer(status, ctype, raw, body)
        statuses[status] += 1
        if status == 200:
            accepted.add(answer["call_uuid"])
        else:
            reasons[answer["error"].split(":")[0][:40]] += 1
    run()
    print(f"{sum(statuses.values())} posts: {dict(sorted(statuses.items()))}; "
          f"{len(accepted)} records accepted; refusals: {reasons.most_common(12)}")
    # the bodies reached every stage: refused as a body (400), as a record (422), taken (200)
    assert {200, 400, 422} <= set(statuses), statuses
    health = devstack.http("GET", f"http://127.0.0.1:{st.receiver_port}/health")[1]
    assert health["unauthorized"] == 0 and health["unavailable"] == 0, health
    # a 200 is a promise: the worker stores every acknowledged record (none dead-lettered, which
    # is what NaN, 1e400 and NUL did when the receiver took them)
    st.start_worker()
    try:
        devstack._wait(lambda: st.queue_lengths()["queue"] == 0 and st.queue_lengths()["processing"] == 0, 60,
                       "the queue drained")
        assert st.queue_lengths()["dead"] == 0, st.redis.cli("LRANGE", "cdr:dead", "0", "2")[:2000]
        stored = set(st.pg.psql("SELECT call_uuid FROM cdr.calls UNION SELECT call_uuid FROM cdr.conflicts")
                     .split())
        assert accepted <= stored, sorted(accepted - stored)[:5]
    finally:
        st.worker.stop()
        st.worker = None


# Found by hand (issue 21): each was a 500 or a 200 that became a dead letter
HAND_FOUND = [
    ("deep nesting", nested(40, dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000001", START))), 400,
     "nests deeper than 32 levels"),
    ("far deeper than the parser's recursion", '{"variables": ' + "[" * 10000 + "]" * 10000 + "}", 400,
     "nests deeper than 32 levels"),
    ('"duration": "inf"', dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000002", START, extra={"duration": "inf"})),
     422, "is not a finite number"),
    ("billsec 1e400 as a string", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000003", START,
                                               extra={"billsec": "1e400"})), 422, "is not a finite number"),
    ("a NaN literal", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000004", START, extra={"x": float("nan")})), 400,
     "NaN"),
    ("1e400", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000005", START)).replace('"session_id": "12"',
                                                                                  '"session_id": 1e400'), 400,
     "out of range"),
    ("a NUL", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000006", START, extra={"x": "a\x00b"})), 400,
     "NUL character"),
    ("%00 in a percent-encoded value", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000007", START,
                                                    extra={"caller_id_name": "Ann%00"})), 422, "NUL character"),
    ("a lone surrogate", dumps(fs_cdr("6f0c1b2e-0000-4000-8000-000000000008", START, extra={"x": "\ud800"})), 400,
     "lone surrogate"),
]


@pytest.mark.parametrize("what, body, status, reason", HAND_FOUND, ids=[c[0] for c in HAND_FOUND])
def test_the_inputs_found_by_hand_get_a_4xx_with_the_reason(st, what, body, status, reason):
    for sent, ctype in ((body.encode("utf-8", "surrogatepass"), "application/json"),
                        (b"cdr=" + urllib.parse.quote_from_bytes(body.encode("utf-8", "surrogatepass")).encode(),
                         "application/x-www-form-urlencoded")):
        got, answer_type, raw = post(st, sent, ctype)
        answer = check_answer(got, answer_type, raw, sent)
        assert got == status and reason in answer["error"], (what, ctype, got, answer)
