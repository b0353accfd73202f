"""FreeSWITCH JSON CDR -> one row of cdr.calls. Pure standard library (importable anywhere).

What the receiver accepts (mod_json_cdr, any ``encode`` setting):
  * ``Content-Type: application/json``: the record itself (``encode`` false);
  * ``application/x-www-form-urlencoded``: ``cdr=<url-encoded JSON>`` (``encode`` true) or
    ``cdr=<base64 JSON>`` (``encode`` base64).
Variable values may be percent-encoded (``encode-values``, FreeSWITCH's default): decoded here.

Columns are taken from ``variables`` (first present wins):
  call_uuid        uuid, call_uuid                      (required, a UUID)
  bleg_uuid        bridge_uuid, signal_bond, other_leg_unique_id (ignored unless a UUID)
  direction        hapbx_direction (inbound|outbound|internal), else internal
  caller_number    caller_id_number, sip_from_user, ani
  caller_name      caller_id_name
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
malformed record gets a 4xx at once instead of a dead letter later.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, unquote

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CAUSE_RE = re.compile(r"^[A-Z0-9_]{1,64}$")
NODE_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
DIRECTIONS = ("inbound", "outbound", "internal")
TEXT_MAX = 256
#: seconds a call may last at most (a week): anything longer is a broken clock, not a call
MAX_DURATION = 7 * 24 * 3600
ENVELOPE_VERSION = 1


class Invalid(ValueError):
    """A record cdr.calls would refuse; the message says why (shown to the poster)."""


def decode_body(body: bytes, content_type: str) -> dict:
    """The posted bytes -> the JSON object, whatever mod_json_cdr's ``encode`` setting."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    text: str | bytes = body
    if ctype == "application/x-www-form-urlencoded" or (ctype != "application/json" and body[:4] == b"cdr="):
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Invalid("form body is not ASCII") from None
        values = form.get("cdr")
        if not values:
            raise Invalid("form body has no 'cdr' field")
        text = values[0]
        if not text.lstrip().startswith("{"):
            try:
                text = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise Invalid("'cdr' field is neither JSON nor base64") from None
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise Invalid(f"body is not JSON ({str(err)[:80]})") from None
    if not isinstance(record, dict):
        raise Invalid("body is not a JSON object")
    return record


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
        return int(float(raw))
    except ValueError:
        raise Invalid(f"{name}: {raw[:40]!r} is not a number") from None


def _text(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_MAX]


def _callee_from_callflow(record: dict) -> str | None:
    flow = record.get("callflow")
    steps = flow if isinstance(flow, list) else [flow] if isinstance(flow, dict) else []
    for step in steps:
        profile = step.get("caller_profile") if isinstance(step, dict) else None
        if isinstance(profile, dict) and profile.get("destination_number"):
            return unquote(str(profile["destination_number"]))
    return None


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
    return {
        "call_uuid": call_uuid,
        "bleg_uuid": bleg,
        "direction": direction,
        "caller_number": _text(_var(variables, "caller_id_number", "sip_from_user", "ani")) or "",
        "caller_name": _text(_var(variables, "caller_id_name")) or "",
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
