"""The CDR pipeline against the real things, on loopback: a PostgreSQL 15 with the project's
migrations (applied by the deployment's own runner), a Redis with the deployment's ACL for the
``cdr`` user, and the receiver and worker running under Debian's /usr/bin/python3 with Debian's
packages, exactly as on a node (bench/devstack.py).

Counted, never sampled: every record a poster got a 200 for is in cdr.calls exactly once,
through a worker killed mid-batch (before and after its commit), a Redis restart under load,
and PostgreSQL stopped for a while. Malformed and oversized bodies are refused with 4xx and
never queued; poison items land in the dead-letter list with their reason.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from contextlib import contextmanager

import pytest

from bench import loadgen
from bench.loadgen import fs_cdr
from bench import devstack
from bench.devstack import SYSTEM_PYTHON, Stack, http
from tests.daemons import cdr_stack
from tests.daemons.cdr_stack import clean  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]
LOADGEN = loadgen.__file__


@pytest.fixture(scope="module")
def stack():
    yield from cdr_stack.started(worker_env={"HAPBX_CDR_BATCH": "200"})


def post(st: Stack, record, content_type: str = "application/json") -> tuple[int, dict | str]:
    body = record if isinstance(record, bytes) else json.dumps(record).encode()
    return http("POST", st.receiver_url, body, {"Content-Type": content_type})


def load(st: Stack, **kw) -> subprocess.Popen:
    args = [SYSTEM_PYTHON, LOADGEN, "--url", st.receiver_url, "--keep-ids"]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return json.loads(out)


def stored_ids(st: Stack) -> list[str]:
    return st.pg.psql("SELECT call_uuid FROM cdr.calls").split()


def assert_exactly_once(st: Stack, accepted: list[str], timeout: float = 30) -> None:
    """Every accepted record stored once; nothing else stored; queues empty."""
    st.wait_stored(len(accepted), timeout)
    ids = stored_ids(st)
    assert len(ids) == len(set(ids)) == len(accepted), (len(ids), len(set(ids)), len(accepted))
    assert set(ids) == set(accepted)
    assert int(st.pg.psql("SELECT count(*) FROM cdr.call_uuids")) == len(accepted)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and st.queue_lengths() != {"queue": 0, "processing": 0, "dead": 0}:
        time.sleep(0.1)
    assert st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 0}


@contextmanager
def another_receiver(st: Stack, **env: str):
    """A second receiver on the stack's Redis and PostgreSQL with these settings; (service, URL)."""
    rec = st.receiver_service()
    rec.env.update(HAPBX_CDR_PORT=str(devstack.free_port()), **env)
    rec.start()
    url = f"http://127.0.0.1:{rec.env['HAPBX_CDR_PORT']}"
    try:
        devstack._wait(lambda: http("GET", f"{url}/health", timeout=1)[0] == 200, 10, "the second receiver")
        yield rec, url
    finally:
        rec.stop()


def test_posted_records_land_in_the_cdr_table(clean):
    st = clean
    st.start_worker()
    result = finish(load(st, count=300, connections=8, seconds=30))
    assert result["ok"] == 300 and result["errors"] == 0
    assert_exactly_once(st, result["ids"])
    one = str(uuid.uuid4())
    start = time.time() - 100
    status, body = post(st, fs_cdr(one, start, caller="1001", callee="2002", duration=40,
                                   extra={"hapbx_direction": "outbound", "sip_gateway_name": "carrier-a",
                                          "hapbx_recording_path": "/var/lib/hapbx/recordings/x.wav"}))
    assert status == 200 and body == {"ok": True, "call_uuid": one, "stored": "queue"}
    st.wait_stored(301)
    row = st.pg.psql("SELECT direction, caller_number, caller_name, callee_number, trunk, duration, billsec, "
                     "hangup_cause, hangup_cause_q850, recording_path, node, answer_time - start_time, "
                     f"raw ? 'callflow', raw->'variables'->>'uuid' FROM cdr.calls WHERE call_uuid = '{one}'")
    assert row.split("|") == ["outbound", "1001", "Ext 1001", "2002", "carrier-a", "40", "38", "NORMAL_CLEARING",
                              "16", "/var/lib/hapbx/recordings/x.wav", "pbx1", "00:00:02", "f", one]


def test_a_different_record_under_a_stored_call_uuid_is_kept_for_review(clean):
    """A forged 1-second CDR posted first under a call's UUID does not make the real one a
    silent re-delivery: the real one is kept in cdr.conflicts (once) and counted by the worker;
    the same record posted again is an ordinary duplicate."""
    st = clean
    st.start_worker()
    u = str(uuid.uuid4())
    start = time.time() - 700
    forged, real = fs_cdr(u, start, duration=1, answered=False), fs_cdr(u, start, duration=600)
    assert post(st, forged)[0] == 200
    st.wait_stored(1)
    assert post(st, forged)[0] == 200 and post(st, real)[0] == 200 and post(st, real)[0] == 200
    devstack._wait(lambda: st.queue_lengths()["queue"] == 0 and st.queue_lengths()["processing"] == 0, 10,
                   "queue drained")
    # both posts of the real record may come in one batch: "1" or "2 CDR(s) conflict", one row kept
    devstack._wait(lambda: "CDR(s) conflict with the record stored first" in st.worker.output(), 15,
                   "the worker counted the conflict")
    assert st.pg.psql(f"SELECT duration FROM cdr.calls WHERE call_uuid = '{u}'") == "1"
    assert st.pg.psql(f"SELECT record->>'duration' FROM cdr.conflicts WHERE call_uuid = '{u}'") == "600"
    assert st.queue_lengths()["dead"] == 0


def test_every_mod_json_cdr_encoding_is_accepted(clean):
    st = clean
    st.start_worker()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    as_json = json.dumps(fs_cdr(ids[0])).encode()
    form = b"cdr=" + urllib.parse.quote_plus(json.dumps(fs_cdr(ids[1]))).encode()
    b64 = b"cdr=" + urllib.parse.quote_plus(base64.b64encode(json.dumps(fs_cdr(ids[2])).encode())).encode()
    assert post(st, as_json)[0] == 200
    assert post(st, form, "application/x-www-form-urlencoded")[0] == 200
    assert post(st, b64, "application/x-www-form-urlencoded")[0] == 200
    assert_exactly_once(st, ids)


def test_a_record_posted_twice_is_stored_once(clean):
    st = clean
    st.start_worker()
    one = str(uuid.uuid4())
    rec = fs_cdr(one)
    assert post(st, rec)[0] == 200 and post(st, rec)[0] == 200
    later = fs_cdr(one, time.time() - 3600)   # a re-send with another start time (another partition)
    assert post(st, later)[0] == 200
    marker = str(uuid.uuid4())
    assert post(st, fs_cdr(marker))[0] == 200
    assert_exactly_once(st, [one, marker])


def raw_request(port: int, data: bytes, timeout: float = 3) -> bytes:
    """Send raw bytes, return what came back until the server closed or went quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                s.settimeout(0.3)
    return b"".join(chunks)


def test_malformed_and_oversized_bodies_are_refused_and_never_queued(clean):
    st = clean
    before = http("GET", f"http://127.0.0.1:{st.receiver_port}/health")[1]
    good = fs_cdr(str(uuid.uuid4()))
    cases = []

    def variant(**changes):
        rec = json.loads(json.dumps(good))
        rec["variables"]["uuid"] = rec["variables"]["call_uuid"] = str(uuid.uuid4())
        for k, v in changes.items():
            if v is None:
                rec["variables"].pop(k, None)
                if k == "uuid":
                    rec["variables"].pop("call_uuid", None)
            else:
                rec["variables"][k] = v
        return rec

    cases += [
        (b"this is not json", 400, "not JSON"),
        (b"[1, 2, 3]", 400, "not a JSON object"),
        (b"cdr=%7Bbroken", 400, "not JSON"),
        (json.dumps({"variables": "nope"}).encode(), 422, "variables"),
        (json.dumps(variant(uuid=None)).encode(), 422, "call_uuid: missing"),
        (json.dumps(variant(uuid="not-a-uuid", call_uuid="not-a-uuid")).encode(), 422, "not a UUID"),
        (json.dumps(variant(end_uepoch="1000", end_epoch="1")).encode(), 422, "before start"),
        (json.dumps(variant(hangup_cause="drop table")).encode(), 422, "hangup_cause"),
        (json.dumps(variant(billsec="99999")).encode(), 422, "billsec"),
        (json.dumps(variant(start_uepoch="soon", start_epoch=None)).encode(), 422, "not an integer"),
        (json.dumps(variant(hapbx_recording_path="relative/x.wav")).encode(), 422, "not absolute"),
    ]
    for body, status, reason in cases:
        got, answer = post(st, body)
        assert got == status, (body[:60], got, answer)
        assert reason in answer["error"], (reason, answer)
    # too large, announced (Content-Length) and not announced (chunked)
    big = variant(hapbx_padding="x" * 70000)
    got, answer = post(st, big)
    assert got == 413 and "larger than" in answer["error"]
    chunk = json.dumps(big).encode()
    chunked = (b"POST /cdr HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    assert raw_request(st.receiver_port, chunked).startswith(b"HTTP/1.1 413")
    # protocol garbage does not take it down
    raw_request(st.receiver_port, b"\x00\xff garbage \r\n\r\n" * 100)
    raw_request(st.receiver_port, b"POST /cdr HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")
    assert st.queue_lengths()["queue"] == 0, "a refused record was queued"
    health = http("GET", f"http://127.0.0.1:{st.receiver_port}/health")[1]
    assert health["rejected"] - before["rejected"] == len(cases)
    assert health["too_large"] - before["too_large"] >= 2 and health["accepted"] == before["accepted"]
    assert st.receiver.running
    # and it still takes good records
    assert post(st, good)[0] == 200
    assert st.queue_lengths()["queue"] == 1
    assert "refused" in st.receiver.output()


def test_worker_killed_mid_batch_loses_and_duplicates_nothing(clean):
    """Killed (SIGKILL) with a batch inside an open transaction, and again after its commit but
    before the batch left the processing list; then killed at random while draining."""
    st = clean
    accepted = finish(load(st, count=2000, connections=8, seconds=60))["ids"]
    assert len(accepted) == 2000
    # 1. kill while the insert waits on a lock: the batch is in the processing list, uncommitted
    locker = subprocess.Popen(["psql", "-X", "-q", "-d", st.pg.dsn()], stdin=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PGAPPNAME": "hapbx-test-locker"})
    locker.stdin.write("BEGIN; LOCK TABLE cdr.call_uuids IN EXCLUSIVE MODE; SELECT pg_sleep(60);\n")
    locker.stdin.flush()
    time.sleep(0.5)
    st.start_worker()
    devstack._wait(lambda: st.queue_lengths()["processing"] > 0, 10, "a batch in the processing list")
    time.sleep(0.3)
    st.worker.stop(signal.SIGKILL)
    assert st.stored() == 0 and st.queue_lengths()["processing"] == 200
    # 2. kill after the commit, before the batch is released: Redis writes paused, then the lock goes
    st.start_worker()
    time.sleep(0.5)    # the new worker re-takes the same 200 and waits on the lock again
    st.redis.cli("CLIENT", "PAUSE", "2500", "WRITE")
    st.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hapbx-test-locker'")
    locker.kill()
    locker.wait()
    devstack._wait(lambda: st.stored() == 200, 10, "the first batch committed")
    time.sleep(0.3)
    st.worker.stop(signal.SIGKILL)
    time.sleep(2.5)
    assert st.queue_lengths()["processing"] == 200, "the committed batch should still be in processing"
    # 3. random kills while draining
    for delay in (0.15, 0.3, 0.05, 0.4, 0.2):
        st.start_worker()
        time.sleep(delay)
        st.worker.stop(signal.SIGKILL)
    st.start_worker()
    assert_exactly_once(st, accepted)


def test_redis_restart_under_load_loses_and_duplicates_nothing(clean):
    st = clean
    st.start_worker()
    gen = load(st, rate=400, seconds=6, connections=8)
    time.sleep(2)
    st.redis.restart()
    time.sleep(1)
    st.redis.restart()
    result = finish(gen)
    assert result["ok"] == result["issued"], result   # every record eventually accepted (posters retry 503s)
    assert_exactly_once(st, result["ids"])


def test_postgres_stopped_for_a_while_loses_nothing(clean):
    st = clean
    st.start_worker()
    first = finish(load(st, count=200, connections=4, seconds=30))["ids"]
    st.wait_stored(200)
    st.pg.stop("fast")
    try:
        during = finish(load(st, count=500, connections=4, seconds=30))["ids"]
        time.sleep(3)   # the worker retries with backoff; the records wait in Redis
        lengths = st.queue_lengths()
        assert lengths["queue"] + lengths["processing"] == 500 and lengths["dead"] == 0
    finally:
        st.pg.start()
    assert_exactly_once(st, first + during)


def test_poison_items_go_to_the_dead_letter_list_with_a_reason(clean):
    st = clean
    good = [str(uuid.uuid4()) for _ in range(3)]
    from hapbx_node.cdr import records
    rows = [records.normalize(fs_cdr(u), "pbx1") for u in good]
    bad_row = dict(records.normalize(fs_cdr(str(uuid.uuid4())), "pbx1"), duration=-5)   # the table refuses it
    items = [records.envelope(rows[0], time.time()), "{not json", records.envelope(bad_row, time.time()),
             records.envelope(rows[1], time.time()), json.dumps({"v": 9}), records.envelope(rows[2], time.time())]
    st.redis.cli("LPUSH", "cdr:queue", *items)
    st.start_worker()
    st.wait_stored(3)
    time.sleep(0.5)
    assert sorted(stored_ids(st)) == sorted(good)
    lengths = st.queue_lengths()
    assert lengths == {"queue": 0, "processing": 0, "dead": 3}, lengths
    dead = [json.loads(x) for x in st.redis.cli("LRANGE", "cdr:dead", "0", "-1").splitlines()]
    reasons = sorted(d["reason"] for d in dead)
    assert any("not JSON" in r for r in reasons)
    assert any("version-1 envelope" in r for r in reasons)
    assert any("23514" in r and "violates check constraint" in r for r in reasons), reasons
    assert all(d["node"] == "pbx1" and d["item"] for d in dead)


def test_processing_list_of_the_other_node_is_recovered(clean):
    """After a failover the new owner's worker finds what the old one had in flight (replicated)."""
    st = clean
    from hapbx_node.cdr import records
    ids = [str(uuid.uuid4()) for _ in range(5)]
    st.redis.cli("LPUSH", "cdr:processing:pbx2",
                 *[records.envelope(records.normalize(fs_cdr(u), "pbx2"), time.time()) for u in ids])
    st.start_worker()
    assert_exactly_once(st, ids)
    assert st.redis.cli("LLEN", "cdr:processing:pbx2") == "0"


def test_receiver_writes_to_the_master_when_the_first_endpoint_is_a_replica(stack, clean):
    st = clean
    replica = devstack.Redis(os.path.join(st.base, "replica"))
    replica.start()
    try:
        replica.cli("CONFIG", "SET", "masteruser", "default")
        replica.cli("CONFIG", "SET", "masterauth", devstack.REDIS_DEFAULT_PASSWORD)
        st.redis.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")   # as the deployment sets it
        replica.cli("REPLICAOF", "127.0.0.1", str(st.redis.port))
        devstack._wait(lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 10, "replication")
        with another_receiver(st, HAPBX_REDIS_ENDPOINTS=f"127.0.0.1:{replica.port},127.0.0.1:{st.redis.port}",
                              HAPBX_CDR_WAIT_REPLICA_MS="200") as (rec, url):
            ids = [str(uuid.uuid4()) for _ in range(20)]
            for u in ids:
                assert http("POST", f"{url}/cdr", json.dumps(fs_cdr(u)).encode(),
                            {"Content-Type": "application/json"})[0] == 200
            health = http("GET", f"{url}/health")[1]
            assert health["redis"] == f"127.0.0.1:{st.redis.port}"
            assert health["replica_acks"] > 0, "WAIT for the replica was not acknowledged"
            assert "READONLY" in rec.output()
            st.start_worker()
            assert_exactly_once(st, ids)
    finally:
        replica.stop()


def test_a_record_the_replica_did_not_confirm_is_in_postgres_before_it_is_acknowledged(stack, clean):
    """WAIT on, no Redis replica: every 200 says "postgres" and the row is there at the answer (no
    worker runs); the worker later finds the queued copies already stored (duplicates, nothing
    twice). PostgreSQL down as well: 503, never a 200 for a record on the master alone."""
    st = clean
    with another_receiver(st, HAPBX_CDR_WAIT_REPLICA_MS="50", HAPBX_PG_DSN=st.pg.dsn("cdr_writer"),
                          HAPBX_PG_PASSWORD=devstack.PASSWORDS["cdr_writer"]) as (rec, url):
        ids = [str(uuid.uuid4()) for _ in range(10)]
        for u in ids:
            status, body = http("POST", f"{url}/cdr", json.dumps(fs_cdr(u)).encode(), {"Content-Type": "application/json"})
            assert status == 200 and body["stored"] == "postgres" and "replica" in body["why"], body
            assert st.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{u}'") == "1"
        health = http("GET", f"{url}/health")[1]
        assert health["direct_to_postgres"] == 10 and health["replica_acks"] == 0, health
        assert st.queue_lengths()["queue"] == 10                       # the queued copies are there too
        st.start_worker()
        assert_exactly_once(st, ids)
        st.pg.stop()
        try:
            status, body = http("POST", f"{url}/cdr", json.dumps(fs_cdr(str(uuid.uuid4()))).encode(),
                                {"Content-Type": "application/json"})
            assert status == 503 and "PostgreSQL" in body["error"], (status, body)
        finally:
            st.pg.start()


SENDERS = {"cdr-pbx1": "pbx1-sender-pw-0123456789", "cdr-pbx2": "pbx2-sender-pw-0123456789"}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_receiver_takes_posts_from_the_nodes_senders_only(stack, clean):
    """With sender credentials set: no, a wrong or a garbled Authorization gets 401 (with the
    challenge mod_json_cdr's libcurl answers), each node's own credential 200; counted in /health.
    Listening beyond loopback without credentials: the receiver does not start."""
    st = clean
    with another_receiver(st, HAPBX_CDR_SENDERS=",".join(f"{u}:{p}" for u, p in SENDERS.items())) as (rec, url):
        body = json.dumps(fs_cdr(str(uuid.uuid4()))).encode()
        ctype = {"Content-Type": "application/json"}
        refused = [
            {},
            basic("cdr-pbx1", "wrong-password-0123456789"),
            basic("cdr-pbx2", SENDERS["cdr-pbx1"]),                 # a node's password is its own
            basic("cdr-pbx3", SENDERS["cdr-pbx1"]),
            {"Authorization": "Basic ***not-base64***"},
            {"Authorization": "Bearer " + SENDERS["cdr-pbx1"]},
        ]
        for headers in refused:
            status, answer = http("POST", f"{url}/cdr", body, {**ctype, **headers})
            assert status == 401 and "credentials" in answer["error"], (headers, status, answer)
        ok = [str(uuid.uuid4()), str(uuid.uuid4())]
        for u, (user, password) in zip(ok, SENDERS.items()):
            status, answer = http("POST", f"{url}/cdr", json.dumps(fs_cdr(u)).encode(), {**ctype, **basic(user, password)})
            assert status == 200, answer
        health = http("GET", f"{url}/health")[1]
        assert health["unauthorized"] == len(refused) and health["accepted"] == 2, health
        st.start_worker()
        assert_exactly_once(st, ok)
    lone = st.receiver_service()
    # 127.0.0.0/8 is all loopback (common.is_loopback); a documentation address is beyond it (never
    # reached: the receiver refuses before it binds)
    lone.env.update(HAPBX_CDR_PORT=str(devstack.free_port()), HAPBX_CDR_LISTEN="127.0.0.1,198.51.100.7")
    lone.start()
    try:
        devstack._wait(lambda: not lone.running, 10, "the receiver refusing to start")
        assert "HAPBX_CDR_SENDERS is required" in lone.output()
    finally:
        lone.stop()


def test_queue_full_gives_503_not_a_silent_drop(clean):
    st = clean
    st.redis.cli("CONFIG", "SET", "maxmemory", "1")
    try:
        status, body = post(st, fs_cdr(str(uuid.uuid4())))
        assert status == 503 and "OOM" in body["error"]
    finally:
        st.redis.cli("CONFIG", "SET", "maxmemory", "512mb")
    assert post(st, fs_cdr(str(uuid.uuid4())))[0] == 200
