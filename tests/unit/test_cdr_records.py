"""FreeSWITCH JSON CDR -> cdr.calls row: the mapping and every refusal, without any daemon."""
import base64
import json
import urllib.parse
import uuid

import pytest

from bench.loadgen import fs_cdr
from hapbx_node.cdr import records
from hapbx_node.cdr.settings import ReceiverSettings, SettingsError, WorkerSettings
from lab.scratch_ca import ScratchCa

U = "0b7a3b8e-6a43-4d0f-9d1e-0123456789ab"


def test_mapping_of_a_freeswitch_record():
    rec = fs_cdr(U, 1_700_000_000.25, caller="1001", callee="2002", duration=30,
                 extra={"cc_queue": "support@default", "hapbx_direction": "Inbound", "bridge_uuid": str(uuid.UUID(int=5))})
    row = records.normalize(rec, "pbx2")
    assert row["call_uuid"] == U and row["bleg_uuid"] == str(uuid.UUID(int=5))
    assert row["start_time"] == "2023-11-14T22:13:20.250000+00:00"
    assert row["answer_time"] == "2023-11-14T22:13:22.250000+00:00"
    assert row["end_time"] == "2023-11-14T22:13:50.250000+00:00"
    assert (row["duration"], row["billsec"]) == (30, 28)
    assert row["caller_name"] == "Ext 1001", "percent-encoded values (encode-values) are decoded"
    assert (row["caller_number"], row["callee_number"], row["queue"]) == ("1001", "2002", "support")
    assert (row["direction"], row["node"], row["hangup_cause"], row["hangup_cause_q850"]) == \
        ("inbound", "pbx1", "NORMAL_CLEARING", 16)
    assert "callflow" not in row["raw"] and row["raw"]["variables"]["uuid"] == U


def test_unanswered_call_and_fallbacks():
    rec = fs_cdr(U, 1_700_000_000, answered=False, duration=5)
    for k in ("duration", "billsec", "destination_number", "sip_to_user", "start_uepoch", "end_uepoch", "answer_uepoch"):
        rec["variables"].pop(k)
    rec["switchname"] = rec["variables"]["switchname"] = "Not A Node!"
    row = records.normalize(rec, "pbx2")
    assert row["answer_time"] is None and row["billsec"] == 0 and row["duration"] == 5
    assert row["callee_number"] == "1002", "taken from the callflow's caller_profile"
    assert row["node"] == "pbx2", "an unusable switchname falls back to the receiving node"


@pytest.mark.parametrize("change, message", [
    ({"uuid": None, "call_uuid": None}, "call_uuid: missing"),
    ({"uuid": "123", "call_uuid": None}, "not a UUID"),
    ({"start_uepoch": None, "start_epoch": None}, "start_epoch: missing"),
    ({"end_uepoch": "1", "end_epoch": None}, "before start"),
    ({"answer_uepoch": "1", "answer_epoch": None}, "not between start and end"),
    ({"billsec": "31"}, "billsec"),
    ({"duration": "-1"}, "duration"),
    ({"hangup_cause": "normal clearing"}, "hangup_cause"),
    ({"hangup_cause_q850": "300"}, "q850"),
    ({"hapbx_direction": "sideways"}, "hapbx_direction"),
    ({"hapbx_recording_path": "x.wav"}, "not absolute"),
    ({"start_uepoch": "99999999999999999999999"}, "out of range"),
])
def test_refusals_name_the_field(change, message):
    rec = fs_cdr(U, 1_700_000_000, duration=30)
    for k, v in change.items():
        if v is None:
            rec["variables"].pop(k, None)
        else:
            rec["variables"][k] = v
    with pytest.raises(records.Invalid, match=message):
        records.normalize(rec, "pbx1")


def test_bodies_of_every_encode_setting():
    rec = fs_cdr(U)
    text = json.dumps(rec)
    assert records.decode_body(text.encode(), "application/json") == rec
    form = ("cdr=" + urllib.parse.quote_plus(text)).encode()
    assert records.decode_body(form, "application/x-www-form-urlencoded") == rec
    b64 = ("cdr=" + urllib.parse.quote_plus(base64.b64encode(text.encode()).decode())).encode()
    assert records.decode_body(b64, "application/x-www-form-urlencoded; charset=utf-8") == rec
    for body, ctype, message in [(b"nope", "application/json", "not JSON"), (b"[]", "", "not a JSON object"),
                                 (b"x=1", "application/x-www-form-urlencoded", "no 'cdr' field"),
                                 (b"cdr=!!!", "application/x-www-form-urlencoded", "neither JSON nor base64"),
                                 (b"\xff\xfe", "application/json", "not JSON")]:
        with pytest.raises(records.Invalid, match=message):
            records.decode_body(body, ctype)


def _fs_encoder():
    """make_requests.py's switch_url_encode (FreeSWITCH's, with an existing %XX left as it is)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "freeswitch", "make_requests.py")
    spec = importlib.util.spec_from_file_location("make_requests", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bodies_as_mod_json_cdr_sends_them():
    """Each (encode, disable-100-continue) of json_cdr.conf, as process_cdr and libcurl make it."""
    fs = _fs_encoder()
    rec = fs_cdr(U, extra={"sip_full_from": fs.switch_url_encode('"Ann, \\Bee" <sip:1001@pbx>;tag=x'),
                           "switch_r_sdp": fs.switch_url_encode("v=0\r\nm=audio 4000 RTP/AVP 8\r\n"),
                           "hapbx_json": fs.switch_url_encode('{"a":1,"b":"x"}'),
                           "sip_from_display": "Zo%C3%AB%2B"})
    rec["callflow"][0]["caller_profile"]["caller_id_name"] = 'Zoë "Z" O\'Neil ~>?'
    text = fs.cjson(rec)
    # encode=false with disable-100-continue: the raw JSON under libcurl's default form type
    assert records.decode_body(text.encode(), "application/x-www-form-urlencoded") == rec
    assert records.decode_body(b"\n " + text.encode(), "text/plain") == rec, "any other type: JSON if it looks so"
    # encode=true: url-escaped, the values' own %XX (a quote, CR LF) left as they are
    escaped = fs.switch_url_encode(text).encode()
    assert b"%2522" not in escaped and b"%22Ann,%20%5CBee%22" in escaped
    got = records.decode_body(b"cdr=" + escaped, "application/x-www-form-urlencoded")
    assert got["variables"]["uuid"] == U and got["callflow"] == rec["callflow"]
    assert urllib.parse.unquote(got["variables"]["sip_full_from"]) == '"Ann, \\Bee" <sip:1001@pbx>;tag=x'
    assert urllib.parse.unquote(got["variables"]["switch_r_sdp"]) == "v=0\r\nm=audio 4000 RTP/AVP 8\r\n"
    assert urllib.parse.unquote(got["variables"]["hapbx_json"]) == '{"a":1,"b":"x"}'
    # encode=base64: raw base64 (a '+' stays a '+'), under its own type or the form type
    b64 = base64.b64encode(text.encode())
    assert b"+" in b64 or b"/" in b64
    for ctype in ("application/x-www-form-base64-encoded", "application/x-www-form-urlencoded", ""):
        assert records.decode_body(b"cdr=" + b64, ctype) == rec, ctype
    assert records.decode_body(b"cdr=" + b64.replace(b"+", b" "), "application/x-www-form-urlencoded") == rec
    # the error directory's files as replay.py posts them (a final newline)
    assert records.decode_body(b"cdr=" + escaped + b"\n", "application/x-www-form-urlencoded")["variables"]["uuid"] == U
    assert records.decode_body(b"cdr=" + b64 + b"\n", "application/x-www-form-base64-encoded") == rec
    # garbage is still refused
    for body, ctype, message in [(b"hello", "application/x-www-form-urlencoded", "no 'cdr' field"),
                                 (b"hello", "application/x-www-form-base64-encoded", "no 'cdr' field"),
                                 (b"cdr=%7B%22a%22%3A", "application/x-www-form-urlencoded", "not JSON"),
                                 (b"cdr=" + base64.b64encode(b"[1]"), "application/x-www-form-base64-encoded",
                                  "not a JSON object"),
                                 (b"cdr=" + base64.b64encode(b"nope"), "", "not JSON"),
                                 (b"{" + text.encode()[:200], "application/x-www-form-urlencoded", "not JSON"),
                                 (b"", "application/json", "not JSON"),
                                 (b"x=1&cdr", "application/x-www-form-urlencoded", "no 'cdr' field")]:
        with pytest.raises(records.Invalid, match=message):
            records.decode_body(body, ctype)


def test_caller_from_the_callflow_when_variables_lack_it():
    rec = fs_cdr(U, caller="1001")
    for k in ("caller_id_name", "caller_id_number", "sip_from_user"):
        rec["variables"].pop(k)
    profile = rec["callflow"][0]["caller_profile"]
    profile.update(caller_id_name="Alice%20Example", caller_id_number="%2B4930123")
    row = records.normalize(rec, "pbx1")
    assert (row["caller_number"], row["caller_name"]) == ("+4930123", "Alice Example"), "url-unquoted"
    # the variables win where they have it; sip_from_user only after the profile
    rec["variables"]["sip_from_user"] = "9999"
    assert records.normalize(rec, "pbx1")["caller_number"] == "+4930123"
    rec["variables"]["caller_id_name"] = "Set%20By%20Dialplan"
    assert records.normalize(rec, "pbx1")["caller_name"] == "Set By Dialplan"
    # the first step that has it (the newest profile first); no callflow: the old fallbacks
    rec["variables"].pop("caller_id_name")
    rec["callflow"] = [{"caller_profile": {"caller_id_name": "", "destination_number": "2002"}},
                       {"caller_profile": {"caller_id_name": "Older", "caller_id_number": "1001"}}]
    row = records.normalize(rec, "pbx1")
    assert (row["caller_name"], row["caller_number"], row["callee_number"]) == ("Older", "1001", "1002")
    rec["callflow"] = "junk"
    row = records.normalize(rec, "pbx1")
    assert (row["caller_name"], row["caller_number"]) == ("", "9999")
    long = "N" * 400
    rec["callflow"] = {"caller_profile": {"caller_id_name": long}}
    assert records.normalize(rec, "pbx1")["caller_name"] == long[:records.TEXT_MAX]


def test_envelope_round_trip_and_poison():
    row = records.normalize(fs_cdr(U), "pbx1")
    back, queued = records.open_envelope(records.envelope(row, 123.5).encode())
    assert back == json.loads(json.dumps(row)) and queued == 123.5
    for item in (b"{", b"[]", json.dumps({"v": 2, "c": row}).encode(), json.dumps({"v": 1, "c": {}}).encode()):
        with pytest.raises(records.Invalid):
            records.open_envelope(item)


def test_settings_name_the_bad_variable(tmp_path):
    with pytest.raises(SettingsError, match="HAPBX_NODE is required"):
        ReceiverSettings.from_env({"HAPBX_REDIS_PASSWORD": "x"})
    with pytest.raises(SettingsError, match="HAPBX_CDR_PORT=0 is out of range"):
        ReceiverSettings.from_env({"HAPBX_NODE": "pbx1", "HAPBX_REDIS_PASSWORD": "x", "HAPBX_CDR_PORT": "0"})
    with pytest.raises(SettingsError, match="HAPBX_REDIS_ENDPOINTS"):
        WorkerSettings.from_env({"HAPBX_NODE": "pbx1", "HAPBX_REDIS_PASSWORD": "x", "HAPBX_PG_DSN": "d",
                                 "HAPBX_PG_PASSWORD": "p", "HAPBX_REDIS_ENDPOINTS": "nohostport"})
    beyond = {"HAPBX_NODE": "pbx1", "HAPBX_REDIS_PASSWORD": "x", "HAPBX_REDIS_ENDPOINTS": "127.0.0.1:6379, 10.0.0.2:6380",
              "HAPBX_CDR_LISTEN": "127.0.0.1,10.0.0.1",
              "HAPBX_CDR_SENDERS": "cdr-pbx1:0123456789abcdef,cdr-pbx2:fedcba9876543210"}
    with pytest.raises(SettingsError, match=r"HAPBX_HTTPS_CERT and HAPBX_HTTPS_KEY are required .*\(10.0.0.1 served over HTTPS only\)"):
        ReceiverSettings.from_env(beyond)
    pair = ScratchCa.make(tmp_path).issue("https")
    s = ReceiverSettings.from_env({**beyond, "HAPBX_HTTPS_CERT": str(pair.cert), "HAPBX_HTTPS_KEY": str(pair.key)})
    assert s.https is not None and s.https.cert == str(pair.cert)
    assert s.redis.endpoints == [("127.0.0.1", 6379), ("10.0.0.2", 6380)] and s.listen == ["127.0.0.1", "10.0.0.1"]
    assert s.senders == {"cdr-pbx1": "0123456789abcdef", "cdr-pbx2": "fedcba9876543210"}
    with pytest.raises(SettingsError, match="HAPBX_CDR_SENDERS is required"):
        ReceiverSettings.from_env({"HAPBX_NODE": "pbx1", "HAPBX_REDIS_PASSWORD": "x", "HAPBX_CDR_LISTEN": "10.0.0.1"})
    with pytest.raises(SettingsError, match="HAPBX_CDR_SENDERS: entry 1"):
        ReceiverSettings.from_env({"HAPBX_NODE": "pbx1", "HAPBX_REDIS_PASSWORD": "x", "HAPBX_CDR_SENDERS": "pbx1:short"})
    assert s.redis.keys.queue == "cdr:queue" and s.redis.keys.dead == "cdr:dead"


# --- no server error for any input (issue 21): what PostgreSQL cannot store is a 4xx at once ---

def _body(rec: dict, **variables) -> str:
    """The record as JSON with variables' values given as raw JSON text (NaN, 1e400, ...)."""
    text = json.dumps({**rec, "variables": {**rec["variables"], **{k: f"@{k}@" for k in variables}}})
    for k, raw in variables.items():
        text = text.replace(f'"@{k}@"', raw)
    return text


@pytest.mark.parametrize("raw, message", [
    ("NaN", "JSON has NaN"), ("Infinity", "JSON has Infinity"), ("-Infinity", "JSON has -Infinity"),
    ("1e400", "number 1e400: out of range"), ("-1e400", "number -1e400: out of range"),
])
def test_non_finite_json_numbers_are_a_bad_body(raw, message):
    text = _body(fs_cdr(U), billsec=raw)
    with pytest.raises(records.Invalid, match=message):
        records.decode_body(text.encode(), "application/json")
    # the same under every encode setting (the form, base64, and encode=true's escaped JSON)
    fs = _fs_encoder()
    for body, ctype in [(b"cdr=" + base64.b64encode(text.encode()), records.BASE64_FORM),
                        (b"cdr=" + fs.switch_url_encode(text).encode(), records.FORM)]:
        with pytest.raises(records.Invalid, match=message):
            records.decode_body(body, ctype)


@pytest.mark.parametrize("text, message", [
    ('{"variables": {"caller_id_name": "Ann\\u0000"}}', r"NUL character \(\\u0000\) in 'variables.caller_id_name'"),
    ('{"variables": {"caller_id_name": "Ann\x00"}}', r"NUL character \(\\u0000\) in 'variables.caller_id_name'"),
    ('{"callflow": [{"caller_profile": {"a\\u0000": 1}}]}',
     r"NUL character .* in 'callflow\[0\].caller_profile.a\\x00'"),
    ('{"app_log": ["x", "\\ud800"]}', r"lone surrogate \(\\ud800\) in 'app_log\[1\]'"),
])
def test_nul_and_lone_surrogates_anywhere_are_a_bad_body(text, message):
    with pytest.raises(records.Invalid, match=message):
        records.decode_body(text.encode(), "application/json")
    with pytest.raises(records.Invalid, match=message):
        records.decode_body(b"cdr=" + urllib.parse.quote_plus(text).encode(), records.FORM)


def _nested(depth: int) -> bytes:
    return ('{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)).encode()


def test_nesting_deeper_than_max_depth_is_a_bad_body():
    assert records.MAX_DEPTH == 32
    assert records.decode_body(_nested(records.MAX_DEPTH), "application/json")["a"]["a"] is not None
    with pytest.raises(records.Invalid, match="nests deeper than 32 levels"):
        records.decode_body(_nested(records.MAX_DEPTH + 1), "application/json")
    with pytest.raises(records.Invalid, match="nests deeper than 32 levels"):
        records.decode_body(b'{"x": ' + b"[" * (records.MAX_DEPTH + 5) + b"]" * (records.MAX_DEPTH + 5) + b"}", "")
    # far beyond the interpreter's recursion limit (json's scanner recurses): still an Invalid
    for body in (b'{"a":' * 100_000, _nested(100_000), b"[" * 100_000):
        with pytest.raises(records.Invalid, match="nests deeper than 32 levels"):
            records.decode_body(body, "application/json")
    with pytest.raises(records.Invalid, match="nests deeper than 32 levels"):
        records.decode_body(b"cdr=" + base64.b64encode(_nested(50_000)), records.BASE64_FORM)


@pytest.mark.parametrize("field, value", [
    ("duration", "inf"), ("duration", "nan"), ("billsec", "1e400"), ("billsec", "-inf"),
    ("hangup_cause_q850", "Infinity"), ("duration", "1" * 400),
])
def test_non_finite_numbers_in_fields_are_a_bad_record(field, value):
    rec = records.decode_body(_body(fs_cdr(U, duration=30), **{field: json.dumps(value)}).encode(), "application/json")
    with pytest.raises(records.Invalid, match=f"^{field}: .* is not a finite number"):
        records.normalize(rec, "pbx1")


def test_a_percent_encoded_nul_in_a_column_is_a_bad_record():
    rec = fs_cdr(U, extra={"caller_id_name": "Ann%00Bee"})
    with pytest.raises(records.Invalid, match=r"^caller_name: has a NUL character \(%00\)"):
        records.normalize(records.decode_body(json.dumps(rec).encode(), "application/json"), "pbx1")
    rec = fs_cdr(U, extra={"hapbx_recording_path": "/rec/a%00.wav"})
    with pytest.raises(records.Invalid, match="^recording_path: has a NUL"):
        records.normalize(rec, "pbx1")


def test_valid_records_still_normalize():
    """FreeSWITCH 1.10.12's captured request (floats, nesting 7 deep) and a record with what is
    storable however odd: an escaped emoji (a surrogate pair), big integers, control characters."""
    from tests import freeswitch_requests
    req = freeswitch_requests.load("json_cdr_request_captured_1.10.12.http")
    row = records.normalize(records.decode_body(req.body, req.header("Content-Type")), "pbx1")
    assert row["call_uuid"] == "97fac19e-8fa9-4659-a034-f93d4d1ef5cd" and row["raw"]["callStats"]["audio"]
    assert isinstance(row["raw"]["callStats"]["audio"]["inbound"]["mos"], float)
    rec = fs_cdr(U, duration=30, extra={"caller_id_name": "Zo\\ud83d\\ude00", "hapbx_big": 10 ** 300,
                                        "switch_r_sdp": "v=0\r\n\t", "hapbx_small": 1e-300})
    text = json.dumps(rec).replace("\\\\ud83d\\\\ude00", "\\ud83d\\ude00")
    row = records.normalize(records.decode_body(text.encode(), "application/json"), "pbx1")
    assert row["caller_name"] == "Zo\U0001F600" and row["raw"]["variables"]["hapbx_big"] == 10 ** 300
    assert (row["duration"], row["billsec"]) == (30, 28)
    assert records.decode_body(_body(fs_cdr(U), billsec="28.0").encode(), "")["variables"]["billsec"] == 28.0
