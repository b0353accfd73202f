"""The CDR drill's arithmetic (bench/cdr_drill.py) without a lab: answers parsed, what counts as
acknowledged, missing and duplicated, the longest stretch without an acknowledgement, the report."""
from __future__ import annotations

import json

from bench import cdr_drill as cd
from bench.cdr_drill import Post


def answer(status: int, body: dict | None = None) -> bytes:
    text = json.dumps(body).encode() if body is not None else b""
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\n\r\n".encode() + text


def test_answers_are_read_as_the_receiver_writes_them():
    assert cd.parse_answer(answer(200, {"ok": True, "call_uuid": "u1", "stored": "queue"}), "u1") == (200, "", "queue")
    assert cd.parse_answer(answer(200, {"ok": True, "call_uuid": "u1", "stored": "postgres", "why": "x"}), "u1")[2] \
        == "postgres"
    assert cd.parse_answer(answer(503, {"error": "no master"}), "u1") == (503, "", "")
    assert cd.parse_answer(answer(200, {"ok": True, "call_uuid": "other"}), "u1")[1] == "200 for another record"
    assert cd.parse_answer(b"", "u1") == (0, "closed without an answer", "")


def test_missing_duplicates_and_the_longest_window_without_an_ack():
    t0 = 1000.0
    posts = [Post(0, "a", 997.0, 997.01, 200, "", "queue"),
             Post(1, "b", 998.0, 998.02, 200, "", "queue"),
             Post(2, "c", 999.0, 1004.0, 0, "timeout"),          # not acknowledged, stored anyway
             Post(3, "d", 1000.5, 1001.0, 503),
             Post(4, "e", 1002.0, 1004.5, 200, "", "postgres"),  # acknowledged, missing
             Post(5, "f", 1005.0, 1005.01, 200, "", "queue")]    # stored twice
    rows = {"a": 1, "b": 1, "c": 1, "f": 2, "zz": 1}
    r = cd.analyse("redis-kill", 1, "run", "pbx1", "pbx2", "pbx1", t0, t0 + 10, t0 + 12, posts, rows, {})
    assert (r["offered"], r["acked"], r["http_503"], r["timeouts"]) == (6, 4, 1, 1)
    assert (r["stored_queue"], r["stored_postgres"]) == (3, 1)
    assert (r["missing"], r["missing_ids"], r["duplicates"], r["extra_rows"]) == (1, ["e"], 1, 1)
    assert (r["unacked_stored"], r["unknown_rows"]) == (1, 1)
    # acknowledgements at 997.01, 998.02, 1004.5, 1005.01: the longest stretch from 998.02 (-1.98 s) to 1004.5
    assert r["longest_no_ack_s"] == 6.48 and r["longest_no_ack_from_s"] == -1.98
    assert r["p50_ms"] == 10.0 and r["p99_ms"] == 2500.0       # 10, 10, 20, 2500 ms: nearest rank
    assert not r["failed_over"]


def test_what_the_samplers_say_the_ha_layer_did():
    t0 = 100.0
    owner = [(99.9, 1, "primary", "master", "1"), (100.1, 1, "primary", "down", "1"), (100.2, 1, "primary", "down", "1"),
             (100.4, 1, "primary", "master", "1")]
    peer = [(99.9, 0, "streaming", "slave", "0"), (100.1, 0, "streaming", "slave", "0")]
    ev = cd.node_events({"pbx1": owner, "pbx2": peer}, "pbx1", "pbx2", t0)
    assert ev["owner_redis_down_s"] == 0.3 and ev["owner_redis_down_spans"] == 1 and ev["peer_vip_s"] is None
    off = [(99.9, 1, "primary", "master", "1"), (113.0, 0, "standby", "slave", "0")]
    took = [(99.9, 0, "streaming", "slave", "0"), (100.4, 1, "streaming", "slave", "0"),
            (103.6, 1, "primary", "master", "1")]
    ev = cd.node_events({"pbx1": off, "pbx2": took}, "pbx1", "pbx2", t0)
    assert (ev["peer_vip_s"], ev["peer_redis_master_s"], ev["peer_pg_primary_s"], ev["owner_silent_s"]) == \
        (0.4, 3.6, 3.6, 13.1)


def test_the_report_is_written_from_the_results_and_merges_by_drill():
    t0 = 1000.0
    posts = [Post(i, f"u{i}", t0 + i * 0.02, t0 + i * 0.02 + 0.01, 200, "", "queue") for i in range(50)]
    r = cd.analyse("poweroff", 1, "run", "pbx1", "pbx2", "pbx2", t0, t0 + 10, t0 + 20, posts,
                   {f"u{i}": 1 for i in range(50)}, {})
    r.update(appendfsync="always", hold=10.0, drained_s=0.5, rejoin_node="pbx1", rejoin_after_heal_s=6.0, conflicts=0,
             dead_letters=0, notes=["pbx1 booted in 4.0 s"], rate=50, timeout=5)
    meta = {"command": "./hapbx lab cdr-drill", "started": "2026-12-06 18:00 UTC", "seconds": 60.0, "lab": "hapbx-lab",
            "release": "bookworm", "rate": 50.0, "timeout": 5.0, "receiver_port": 8088, "host": {"cores": "2"},
            "appendfsync": {"pbx1": "always", "pbx2": "always"}, "versions": [], "load_start": "1", "load_end": "1",
            "stack": {"wait_replica_ms": 100, "redis_timeout_s": 3.0, "lease_ttl_s": 3, "renew_s": 0.5,
                      "advert_s": 0.1}}
    text = cd.render({"meta": meta, "results": [r]})
    assert "exactly once: yes" in text and "## poweroff" in text and "nproc 2" in text
    other = dict(r, scenario="redis-kill", missing=1, missing_ids=["u1"])
    both = cd.merged({"meta": meta, "results": [r]}, {"meta": dict(meta, command="again"), "results": [other]})
    assert [x["scenario"] for x in both["results"]] == ["poweroff", "redis-kill"]
    assert [m["command"] for m in both["meta"]["invocations"]] == ["./hapbx lab cdr-drill", "again"]
    assert "exactly once: **NO**" in cd.render(both)
