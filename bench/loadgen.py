"""Load generator for the CDR receiver (bench and tests): FreeSWITCH-shaped JSON CDRs over
keep-alive HTTP/1.1 connections, closed loop (as fast as answers come) or open loop (a fixed
rate, each record stamped with its *scheduled* send time, so a stall shows up as latency
instead of silently lowering the rate). Bounded by a duration and a count; prints one JSON
summary line. Runs as its own process so it does not share a core's event loop with the
measurement. Not shipped to the nodes. Standard library only (Debian's python3 runs it).

    python3 bench/loadgen.py --url http://127.0.0.1:8088/cdr --seconds 10 [--rate 2000] [--connections 16]

fs_cdr, the record it posts, is also the tests' FreeSWITCH record.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from urllib.parse import urlsplit

#: the SIP domain of the records (the loopback stack's, bench/devstack.py's SIP_DOMAIN)
SIP_DOMAIN = "pbx.test"
TEMPLATE_CACHE: dict = {}


def fs_cdr(call_uuid: str, start: float | None = None, *, caller: str = "1001", callee: str = "1002",
           answered: bool = True, duration: int = 30, node: str = "pbx1", extra: dict | None = None,
           pad: int = 0, domain: str = SIP_DOMAIN) -> dict:
    """A FreeSWITCH mod_json_cdr record (the shape and the percent-encoded values it posts)."""
    start = time.time() - duration - 1 if start is None else start
    s_us = int(start * 1_000_000)
    e_us = s_us + duration * 1_000_000
    a_us = s_us + 2_000_000 if answered and duration >= 2 else 0
    variables = {
        "direction": "inbound", "uuid": call_uuid, "call_uuid": call_uuid, "session_id": "12",
        "sip_from_user": caller, "sip_from_host": domain, "sip_to_user": callee,
        "sip_call_id": f"{call_uuid[:8]}%40{domain}", "caller_id_name": f"Ext%20{caller}",
        "caller_id_number": caller, "destination_number": callee, "switchname": node,
        "start_epoch": str(s_us // 1_000_000), "answer_epoch": str(a_us // 1_000_000),
        "end_epoch": str(e_us // 1_000_000), "start_uepoch": str(s_us), "answer_uepoch": str(a_us),
        "end_uepoch": str(e_us), "duration": str(duration),
        "billsec": str((e_us - a_us) // 1_000_000 if a_us else 0),
        "hangup_cause": "NORMAL_CLEARING", "hangup_cause_q850": "16", "sip_hangup_disposition": "send_bye",
        "read_codec": "PCMA", "write_codec": "PCMA", "remote_media_ip": "10.0.0.50",
    }
    if pad:
        variables["hapbx_padding"] = "x" * pad
    variables.update(extra or {})
    return {
        "core-uuid": "3c1d7f9a-0000-4000-8000-000000000001", "switchname": node,
        "channel_data": {"state": "CS_REPORTING", "direction": "inbound", "state_number": "11"},
        "variables": variables,
        "app_log": {"applications": [{"app_name": "answer", "app_data": ""}, {"app_name": "bridge",
                                                                               "app_data": f"user/{callee}"}]},
        "callflow": [{"dialplan": "XML", "profile_index": "1",
                      "caller_profile": {"username": caller, "caller_id_number": caller, "destination_number": callee,
                                         "uuid": call_uuid}}],
    }



TAG = ""


def body_for(call_uuid: str, sent_us: int, pad: int) -> bytes:
    # fs_cdr is the realistic shape; the send time rides in a variable for the latency query
    extra = {"hapbx_bench_sent_us": str(sent_us)}
    if TAG:
        extra["hapbx_bench_phase"] = TAG
    rec = fs_cdr(call_uuid, start=sent_us / 1e6 - 31, extra=extra, pad=pad)
    return json.dumps(rec, separators=(",", ":")).encode()


async def connection(host: str, port: int, path: str, next_job, stats: dict, pad: int) -> None:
    reader = writer = None
    while True:
        job = await next_job()
        if job is None:
            break
        scheduled_us = job
        call_uuid = str(uuid.uuid4())
        body = body_for(call_uuid, scheduled_us, pad)
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        for attempt in range(50):   # a 503 or a lost connection: retry, as mod_json_cdr does
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(head + body)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionError("closed")
                status = int(status_line.split()[1])
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                stats["errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                stats["ok"] += 1
                stats["accepted"].append(call_uuid) if stats.get("keep_ids") else None
                break
            stats[f"http_{status}"] = stats.get(f"http_{status}", 0) + 1
            if status < 500:
                break
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def run(url: str, seconds: float, rate: float | None, connections: int, count: int | None,
              pad: int, keep_ids: bool) -> dict:
    u = urlsplit(url)
    stats = {"ok": 0, "errors": 0, "accepted": [], "keep_ids": keep_ids}
    start = time.time()
    end = start + seconds
    issued = 0

    async def next_job():
        nonlocal issued
        if count is not None and issued >= count:
            return None
        now = time.time()
        if rate:
            due = start + issued / rate
            if due >= end:
                return None
            issued += 1
            if due > now:
                await asyncio.sleep(due - now)
            return int(due * 1_000_000)
        if now >= end:
            return None
        issued += 1
        return int(now * 1_000_000)

    await asyncio.gather(*[connection(u.hostname, u.port or 80, u.path or "/", next_job, stats, pad)
                           for _ in range(connections)])
    elapsed = time.time() - start
    out = {k: v for k, v in stats.items() if k not in ("accepted", "keep_ids")}
    out.update(issued=issued, seconds=round(elapsed, 3), started=start, per_second=round(stats["ok"] / elapsed, 1))
    if keep_ids:
        out["ids"] = stats["accepted"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=None, help="records/s (open loop); unset: closed loop")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--pad", type=int, default=0, help="extra bytes per record")
    ap.add_argument("--keep-ids", action="store_true")
    ap.add_argument("--tag", default="", help="value of the hapbx_bench_phase variable of every record")
    args = ap.parse_args()
    global TAG
    TAG = args.tag
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.url, min(args.seconds, 600), args.rate, args.connections, args.count, args.pad,
                             args.keep_ids))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
