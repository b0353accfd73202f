"""FreeSWITCH JSON CDR -> one row of cdr.calls. Pure standard library (importable anywhere).

What the receiver accepts: every body mod_json_cdr (FreeSWITCH 1.10, process_cdr) sends:
  * ``encode`` false: ``Content-Type: application/json``, the record itself;
  * ``encode`` false with ``disable-100-continue``: the module's header list is replaced by
    ``Expect:`` alone, so libcurl sends its default ``application/x-www-form-urlencoded`` with the
    record itself (no ``cdr=``): a body that starts with ``{`` is JSON whatever its type says;
  * ``encode`` true: ``application/x-www-form-urlencoded``, ``cdr=<url-escaped JSON>``;
  * ``encode`` base64: ``application/x-www-form-base64-encoded``, ``cdr=<base64 JSON>`` (raw
    base64: a ``+`` is a ``+``), and the same under the form type (disable-100-continue);
  * the files of mod_json_cdr's err-log-dir as replay.py posts them (the same shapes).
Variable values may be percent-encoded (``encode-values``, FreeSWITCH's default): decoded here.
``encode`` true escapes the JSON with switch_url_encode, which leaves an existing ``%XX`` as it is,
so an escaped value's ``%22`` (``"``) or ``%0D%0A`` comes out of the form decoding raw inside a
JSON string: _fs_escaped_json() reads such a body back (see there).

Columns are taken from ``variables`` (first present wins):
  call_uuid        uuid, call_uuid                      (required, a UUID)
  bleg_uuid        bridge_uuid, signal_bond, other_leg_unique_id (ignored unless a UUID)
  direction        hapbx_direction (inbound|outbound|internal), else internal
  caller_number    caller_id_number, callflow caller_profile, sip_from_user, ani
  caller_name      caller_id_name, callflow caller_profile (FreeSWITCH has no caller_id_* variables:
                   a real CDR has the caller's id in callflow[].caller_profile only)
  callee_number    destination_number, sip_to_user, callee_id_number, callflow caller_profile
  queue            hapbx_queue, cc_queue (the part before '@')
  trunk            hapbx_trunk, sip_gateway_name
  start/answer/end start_uepoch|start_epoch, answer_uepoch|answer_epoch (0: not answered),
                   end_uepoch|end_epoch                 (start and end required)
  duration         duration, else end - start (s);  billsec: billsec, else end - answer
  hangup_cause     hangup_cause (A-Z 0-9 _; missing: NONE)
  hangup_cause_q850, sip_hangup_disposition
  recording_path   hapbx_recording_path, record_path, recording_file (absolute path)
  node             hapbx_node, else switchname, else the receiving node
The dialplan (media layer) sets the ``hapbx_*`` variables where it knows better.
``raw`` keeps the posted record without its bulky ``callflow``.

Everything cdr.calls' constraints would refuse is refused here, with the reason, so a
malformed record gets a 4xx at once instead of a dead letter later: loads() refuses the JSON
PostgreSQL cannot store (NaN, Infinity, a number beyond a float such as 1e400, a NUL or a lone
surrogate in any string or key, nesting deeper than MAX_DEPTH) as a bad body (400), normalize()
a column it could not fill (an infinite number, a ``%00`` that decodes to NUL) as a bad record (422).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CAUSE_RE = re.compile(r"^[A-Z0-9_]{1,64}$")
NODE_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
DIRECTIONS = ("inbound", "outbound", "internal")
TEXT_MAX = 256
#: seconds a call may last at most (a week): anything longer is a broken clock, not a call
MAX_DURATION = 7 * 24 * 3600
ENVELOPE_VERSION = 1
#: JSON nesting accepted (FreeSWITCH's CDR goes 7 deep: callflow's originatee profiles); deeper is
#: an attack on the parsers' recursion, here and in PostgreSQL
MAX_DEPTH = 32
#: characters PostgreSQL's text and jsonb refuse: NUL, and lone surrogates (no UTF-8 for them)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Invalid(ValueError):
    """A record cdr.calls would refuse; the message says why (shown to the poster)."""


FORM = "application/x-www-form-urlencoded"
BASE64_FORM = "application/x-www-form-base64-encoded"
BASE64_RE = re.compile(rb"^[A-Za-z0-9+/ ]+={0,2}$")
VALUE_START = '"{[-0123456789tfn'
#: quotes _fs_escaped_json may take back (each one more pass over the body), and the characters
#: all passes may read together
REQUOTE_TRIES = 64
REQUOTE_BUDGET = 1_000_000
QUOTE_OR_BACKSLASH = re.compile(r'["\\]')


def decode_body(body: bytes, content_type: str) -> dict:
    """The posted bytes -> the JSON object, whatever mod_json_cdr's ``encode`` and
    ``disable-100-continue`` settings (see the module docstring); Invalid otherwise."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if body.lstrip()[:1] == b"{":
        # the record itself: encode=false, under whatever type (disable-100-continue: the form type)
        return _json_object(body)
    if body[:4] == b"cdr=" or ctype in (FORM, BASE64_FORM):
        value = _cdr_field(body)
        if value.lstrip()[:1] == b"{":
            return _json_object(value)
        if value[:3].upper() == b"%7B":
            return _fs_escaped_json(value)
        # raw base64 as the module sends it (a '+' is a '+'), or url-escaped by another poster
        b64 = unquote_to_bytes(value) if b"%" in value else value
        try:
            decoded = base64.b64decode(b64.replace(b" ", b"+"), validate=True) if BASE64_RE.match(b64) else None
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is None:
            raise Invalid("'cdr' field is neither JSON nor base64")
        return _json_object(decoded)
    return _json_object(body)


def _cdr_field(body: bytes) -> bytes:
    """The raw (still escaped) value of the form's ``cdr`` field."""
    for part in body.split(b"&"):
        name, sep, value = part.partition(b"=")
        if sep and unquote_to_bytes(name.replace(b"+", b" ")) == b"cdr":
            return value.strip()
    raise Invalid("form body has no 'cdr' field")


def loads(text: bytes | str, strict: bool = True) -> Any:
    """json.loads of what PostgreSQL can store: Invalid (say why) for NaN, Infinity, a number
    beyond a float, a NUL or lone surrogate in a string or key, nesting deeper than MAX_DEPTH.
    Text that is no JSON raises json's own ValueError."""
    try:
        value = json.loads(text, strict=strict, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        # json's C scanner recurses per level: this deep is far beyond MAX_DEPTH
        raise Invalid(f"JSON nests deeper than {MAX_DEPTH} levels") from None
    _check_storable(value)
    return value


def _no_constant(name: str) -> float:
    raise Invalid(f"JSON has {name}: not a number PostgreSQL can store")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(f"JSON has the number {text[:40]}: out of range (beyond a float)")
    return value


def _check_storable(value: Any) -> None:
    """Invalid for a container deeper than MAX_DEPTH or an UNSTORABLE character in a string or
    key, naming where; a walk with its own stack (no recursion, whatever the depth)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise Invalid(f"JSON nests deeper than {MAX_DEPTH} levels (at {path[:80]!r})")
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else key
                _check_text(key, where)
                stack.append((child, depth + 1, where))
        else:
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    bad = UNSTORABLE.search(text)
    if bad:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else "a lone surrogate"
        raise Invalid(f"JSON has {what} (\\u{ord(char):04x}) in {where[:80] or '(top level)'!r}: "
                      "PostgreSQL cannot store it")


def _json_object(text: bytes | str) -> dict:
    try:
        # strict=False: control characters inside strings (an unescaped value's CR LF) are data
        record = loads(text, strict=False)
    except Invalid:
        raise
    except ValueError as err:   # json's JSONDecodeError, UnicodeDecodeError
        raise Invalid(f"body is not JSON ({str(err)[:80]})") from None
    if not isinstance(record, dict):
        raise Invalid("body is not a JSON object")
    return record


def _fs_escaped_json(value: bytes) -> dict:
    """``cdr=`` of ``encode=true``: switch_url_encode(JSON), which leaves an ``%XX`` that is
    already there as it is. With ``encode-values`` (the default) every variable value is
    percent-encoded already, so its ``%22`` (``"``) and ``%5C`` (``\\``) come out of one decoding
    raw inside a JSON string, where they would end it or escape. Plain decoding first; if that is
    no JSON, _requote() writes such characters back as data, and where a guess was wrong (the
    parser stops after it) takes the last one back, a bounded number of times."""
    try:
        # switch_url_encode writes a blank as %20 and '+' as %2B: a raw '+' is a form's blank
        text = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("'cdr' field is not UTF-8") from None
    try:
        return _json_object(text)
    except Invalid as err:
        first = err
    data: set[int] = set()
    # bounded work: at most REQUOTE_TRIES passes, fewer on a large body (the event loop waits)
    for _ in range(max(1, min(REQUOTE_TRIES, REQUOTE_BUDGET // max(len(text), 1)))):
        out, closes = _requote(text, data)
        try:
            # loads' own Invalid (NaN, NUL, depth) is the answer: it is not caught here
            record = loads(out, strict=False)
        except json.JSONDecodeError as err:
            before = [t for t, o in closes if o < err.pos and t not in data]
            if not before:
                break
            data.add(before[-1])
            continue
        if isinstance(record, dict):
            return record
        break
    raise first


def _requote(text: str, data: set[int]) -> tuple[str, list[tuple[int, int]]]:
    """``text`` with the quotes and backslashes inside strings that cannot be JSON's written as
    data: a ``"`` in a string closes it only if the JSON can go on after it (``:`` or ``,`` then a
    value, or ``}`` ``]``) and it is not in ``data``; a backslash that starts no JSON escape is
    data. Returns the text and where each closing quote was (in ``text``, in the output).
    Only quotes and backslashes are looked at (one regex pass), the rest is copied in spans."""
    out: list[str] = []
    size = 0
    closes: list[tuple[int, int]] = []
    in_string = False
    pos = 0          # text before pos is in out
    skip = -1        # a backslash's escaped character, already copied
    for m in QUOTE_OR_BACKSLASH.finditer(text):
        i = m.start()
        if i <= skip:
            continue
        ch = text[i]
        if not in_string:
            in_string = ch == '"'
            continue
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt and nxt in '"\\/bfnrt' or (nxt == "u" and re.match(r"[0-9A-Fa-f]{4}", text[i + 2:i + 6])):
                skip = i + 1
                continue
            piece = "\\\\"
        else:
            after = text[i + 1:i + 3]
            if i not in data and (after[:1] in ("", "}", "]") or (
                    after[:1] in (":", ",") and after[1:2] != "" and after[1] in VALUE_START)):
                in_string = False
                out.append(text[pos:i])
                size += i - pos
                closes.append((i, size))
                pos = i
                continue
            piece = '\\"'
        out.append(text[pos:i])
        out.append(piece)
        size += i - pos + len(piece)
        pos = i + 1
    out.append(text[pos:])
    return "".join(out), closes


def _var(variables: dict, *names: str) -> str | None:
    for name in names:
        value = variables.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return unquote(value) if "%" in value else value
    return None


def _uuid(value: str | None, field: str, required: bool) -> str | None:
    if value is None:
        if required:
            raise Invalid(f"{field}: missing (variables.uuid)")
        return None
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        if required:
            raise Invalid(f"{field}: {value[:40]!r} is not a UUID") from None
        return None


def _time(variables: dict, stem: str, required: bool) -> datetime | None:
    """``<stem>_uepoch`` (microseconds) or ``<stem>_epoch`` (seconds); 0 means never."""
    for suffix, scale in (("_uepoch", 1), ("_epoch", 1_000_000)):
        raw = _var(variables, stem + suffix)
        if raw is None:
            continue
        try:
            micros = int(raw) * scale
        except ValueError:
            raise Invalid(f"{stem}{suffix}: {raw[:40]!r} is not an integer") from None
        if micros == 0:
            break
        if micros < 0 or micros > 32503680000 * 1_000_000:  # year 3000
            raise Invalid(f"{stem}{suffix}: {raw[:40]!r} is out of range")
        return EPOCH + timedelta(microseconds=micros)
    if required:
        raise Invalid(f"{stem}_epoch: missing")
    return None


def _int(variables: dict, name: str) -> int | None:
    raw = _var(variables, name)
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        raise Invalid(f"{name}: {raw[:40]!r} is not a number") from None
    if not math.isfinite(number):
        # "inf", "nan", "1e400": int() of them would raise (OverflowError: a 500)
        raise Invalid(f"{name}: {raw[:40]!r} is not a finite number")
    return int(number)


def _text(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_MAX]


def _from_callflow(record: dict, field: str) -> str | None:
    """``field`` of the first callflow step's caller_profile that has it (FreeSWITCH lists the
    newest profile first; the caller's id and the number dialled live there, not in variables)."""
    flow = record.get("callflow")
    steps = flow if isinstance(flow, list) else [flow] if isinstance(flow, dict) else []
    for step in steps:
        profile = step.get("caller_profile") if isinstance(step, dict) else None
        value = profile.get(field) if isinstance(profile, dict) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
            return unquote(str(value))
    return None


def _callee_from_callflow(record: dict) -> str | None:
    return _from_callflow(record, "destination_number")


def normalize(record: dict, receiving_node: str) -> dict[str, Any]:
    """The cdr.calls row (column -> JSON value) of one FreeSWITCH JSON CDR, or Invalid."""
    variables = record.get("variables")
    if not isinstance(variables, dict):
        raise Invalid("variables: missing or not an object")
    call_uuid = _uuid(_var(variables, "uuid", "call_uuid"), "call_uuid", True)
    bleg = _uuid(_var(variables, "bridge_uuid", "signal_bond", "other_leg_unique_id"), "bleg_uuid", False)
    start = _time(variables, "start", True)
    answer = _time(variables, "answer", False)
    end = _time(variables, "end", True)
    if end < start:
        raise Invalid(f"end_epoch: before start ({end.isoformat()} < {start.isoformat()})")
    if answer is not None and not start <= answer <= end:
        raise Invalid("answer_epoch: not between start and end")
    duration = _int(variables, "duration")
    if duration is None:
        duration = int((end - start).total_seconds())
    billsec = _int(variables, "billsec")
    if billsec is None:
        billsec = int((end - answer).total_seconds()) if answer else 0
    if not 0 <= duration <= MAX_DURATION:
        raise Invalid(f"duration: {duration} is out of range 0..{MAX_DURATION}")
    if not 0 <= billsec <= duration:
        raise Invalid(f"billsec: {billsec} is not within 0..duration ({duration})")
    if billsec and answer is None:
        raise Invalid(f"billsec: {billsec} on a call that was never answered")
    cause = _var(variables, "hangup_cause") or "NONE"
    if not CAUSE_RE.match(cause):
        raise Invalid(f"hangup_cause: {cause[:70]!r} is not a cause name (A-Z, 0-9, _)")
    q850 = _int(variables, "hangup_cause_q850")
    if q850 is not None and not 0 <= q850 <= 127:
        raise Invalid(f"hangup_cause_q850: {q850} is out of range 0..127")
    direction = (_var(variables, "hapbx_direction") or "internal").lower()
    if direction not in DIRECTIONS:
        raise Invalid(f"hapbx_direction: {direction[:20]!r} is not one of {', '.join(DIRECTIONS)}")
    recording = _var(variables, "hapbx_recording_path", "record_path", "recording_file")
    if recording is not None and not recording.startswith("/"):
        raise Invalid(f"recording path: {recording[:80]!r} is not absolute")
    node = _var(variables, "hapbx_node") or str(record.get("switchname") or "").lower()
    if not NODE_RE.match(node):
        node = receiving_node
    queue = _var(variables, "hapbx_queue", "cc_queue")
    if queue and "@" in queue:
        queue = queue.split("@", 1)[0]
    raw = {k: v for k, v in record.items() if k != "callflow"}
    row = {
        "call_uuid": call_uuid,
        "bleg_uuid": bleg,
        "direction": direction,
        "caller_number": _text(_var(variables, "caller_id_number") or _from_callflow(record, "caller_id_number")
                               or _var(variables, "sip_from_user", "ani")) or "",
        "caller_name": _text(_var(variables, "caller_id_name") or _from_callflow(record, "caller_id_name")) or "",
        "callee_number": _text(_var(variables, "destination_number", "sip_to_user", "callee_id_number")
                               or _callee_from_callflow(record)) or "",
        "queue": _text(queue),
        "trunk": _text(_var(variables, "hapbx_trunk", "sip_gateway_name")),
        "start_time": start.isoformat(),
        "answer_time": answer.isoformat() if answer else None,
        "end_time": end.isoformat(),
        "duration": duration,
        "billsec": billsec,
        "hangup_cause": cause,
        "hangup_cause_q850": q850,
        "sip_hangup_disposition": _text(_var(variables, "sip_hangup_disposition")),
        "recording_path": recording,
        "node": node,
        "raw": raw,
    }
    _check_columns(row)
    return row


def _check_columns(row: dict[str, Any]) -> None:
    """Invalid for a NUL in a text column: loads() let the JSON through, but a percent-encoded
    value's ``%00`` decodes to one, which PostgreSQL would refuse (a dead letter after a 200)."""
    for column, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            raise Invalid(f"{column}: has a NUL character (%00): PostgreSQL cannot store it")


def envelope(row: dict, received_at: float) -> str:
    """What the receiver pushes to Redis: the row plus when it was accepted (for lag metrics)."""
    return json.dumps({"v": ENVELOPE_VERSION, "q": round(received_at, 6), "c": row},
                      separators=(",", ":"))


def open_envelope(item: bytes | str) -> tuple[dict, float]:
    """(row, accepted-at) of a queue item, or Invalid (a poison item: dead letter)."""
    try:
        data = json.loads(item)
    except (ValueError, UnicodeDecodeError) as err:
        raise Invalid(f"queue item is not JSON ({str(err)[:60]})") from None
    if not isinstance(data, dict) or data.get("v") != ENVELOPE_VERSION or not isinstance(data.get("c"), dict):
        raise Invalid("queue item is not a version-1 envelope")
    row = data["c"]
    if not isinstance(row.get("call_uuid"), str):
        raise Invalid("queue item has no call_uuid")
    q = data.get("q")
    return row, float(q) if isinstance(q, (int, float)) else 0.0
