"""hapbx_node.cdr.replay against the real receiver, Redis and PostgreSQL on loopback.

The error directory is filled as mod_json_cdr's backup_cdr fills it (one file per call,
``<uuid>.cdr.json`` or ``a_<uuid>.cdr.json``: the JSON, or with encode true/base64 the escaped
text it would have posted after ``cdr=``, then a newline), from the request fixtures of
tests/fixtures/freeswitch. Replay runs as the timer runs it: ``python3 -m hapbx_node.cdr.replay``
under Debian's python3, settings from the environment.
"""
from __future__ import annotations

import json
import base64
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import devstack
from bench.devstack import NODE_PATH, SYSTEM_PYTHON, Stack, free_port
from tests import freeswitch_requests as fsr
from tests.daemons.cdr_stack import clean, stack  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]

#: what the caller names of the fixtures must never be seen in: the replay's output
PRIVATE = ("Alice Example", "ACME Berlin", "Zo", "Jürgen", "J%C3%BCrgen", "sip_from_user", "caller_profile",
           "+493012345678", "10.77.0.10")


def error_file(req: fsr.Request) -> bytes:
    """What backup_cdr writes for the record of a request: what followed ``cdr=`` (or the raw
    JSON), and a newline."""
    body = req.body[4:] if req.body.startswith(b"cdr=") else req.body
    return body + b"\n"


def fill(directory, prefix_a: bool = False) -> dict[str, str]:
    """One error file per request fixture; {file name: call uuid}."""
    out = {}
    for i, name in enumerate(fsr.fixtures()):
        req = fsr.load(name)
        uuid = req.query["uuid"]
        fname = f"{'a_' if prefix_a and i % 2 else ''}{uuid}.cdr.json"
        path = os.path.join(directory, fname)
        with open(path, "wb") as fh:
            fh.write(error_file(req))
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
        out[fname] = uuid
    return out


def replay(directory, *urls: str, **env) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1",
               "HAPBX_CDR_REPLAY_DIR": str(directory), "HAPBX_CDR_REPLAY_URLS": ",".join(urls),
               "HAPBX_CDR_REPLAY_MIN_AGE": "0", "HAPBX_CDR_REPLAY_TIMEOUT": "5",
               **{k: str(v) for k, v in env.items()}}
    return subprocess.run([SYSTEM_PYTHON, "-m", "hapbx_node.cdr.replay"], env=environ, cwd="/", capture_output=True,
                          text=True, timeout=60)


def assert_private(out: subprocess.CompletedProcess) -> None:
    text = out.stdout + out.stderr
    for secret in PRIVATE:
        assert secret not in text, f"the replay printed CDR content ({secret!r})"


def stored(st: Stack) -> dict[str, tuple[str, str]]:
    rows = st.pg.psql("SELECT call_uuid, caller_number, caller_name FROM cdr.calls").splitlines()
    return {r.split("|")[0]: tuple(r.split("|")[1:]) for r in rows if r}


class Stub:
    """An HTTP server on loopback answering every POST with ``status``; keeps what it got."""

    def __init__(self, status: int):
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stub.requests.append({"line": self.requestline, "headers": list(self.headers.items()), "body": body})
                answer = b'{"ok": true}' if status < 300 else b'{"error": "stub"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cdr"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_replay_posts_with_its_nodes_sender_credential(tmp_path):
    """HTTP basic from HAPBX_CDR_POST_USER/PASSWORD (the unit's EnvironmentFile), as mod_json_cdr's
    cred sends it; the password in no output."""
    files = fill(tmp_path)
    stub = Stub(200)
    try:
        out = replay(tmp_path, stub.url, HAPBX_CDR_POST_USER="cdr-pbx1", HAPBX_CDR_POST_PASSWORD="pbx1-sender-pw-0123456789")
    finally:
        stub.close()
    assert out.returncode == 0, out.stderr
    want = "Basic " + base64.b64encode(b"cdr-pbx1:pbx1-sender-pw-0123456789").decode()
    assert len(stub.requests) == len(files)
    assert all(dict(r["headers"]).get("Authorization") == want for r in stub.requests)
    assert "pbx1-sender-pw" not in out.stdout + out.stderr


def test_error_files_are_replayed_and_deleted(clean, tmp_path):
    st = clean
    files = fill(tmp_path, prefix_a=True)
    (tmp_path / "notes.txt").write_text("not a CDR\n")
    (tmp_path / "2025-03-14-09-26-53").mkdir()       # a rotate=true directory: not ours to touch
    out = replay(tmp_path, st.receiver_url)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    for fname in files:
        assert sum(f"replayed {fname} (200 from {st.receiver_url})" in line for line in lines) == 1, lines
    assert f"{len(files)} file(s): {len(files)} replayed, 0 rejected, 0 kept for the next run" in lines[-1]
    assert len(lines) == len(files) + 1, "one line per file and the summary"
    assert_private(out)
    assert sorted(os.listdir(tmp_path)) == ["2025-03-14-09-26-53", "notes.txt"]
    st.start_worker()
    st.wait_stored(len(files))
    rows = stored(st)
    assert set(rows) == set(files.values())
    names = {fsr.load(n).query["uuid"]: n for n in fsr.fixtures()}
    for uuid, (number, name) in rows.items():
        assert number and name, (names[uuid], number, name)
    if "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e03" in rows:       # the shipped encode=true fixture
        assert rows["5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e03"] == ("1003", "Jürgen Müller")


def test_replay_posts_as_mod_json_cdr_does(tmp_path):
    stub = Stub(200)
    try:
        files = fill(tmp_path)
        out = replay(tmp_path, stub.url)
        assert out.returncode == 0, out.stderr
    finally:
        stub.close()
    assert len(stub.requests) == len(files)
    by_uuid = {fsr.load(n).query["uuid"]: fsr.load(n) for n in fsr.fixtures()}
    for got in stub.requests:
        uuid = got["line"].split("uuid=")[1].split(" ")[0]
        assert got["line"] == f"POST /cdr?uuid={uuid} HTTP/1.1"
        names = [k for k, _ in got["headers"]]
        assert names == ["Host", "User-Agent", "Accept", "Content-Type", "Content-Length"], names
        headers = dict(got["headers"])
        assert headers["User-Agent"] == "freeswitch-json/1.0" and headers["Accept"] == "*/*"
        sent = by_uuid[uuid]
        # the body and type the module posts for that encoding (the disable-100-continue fixture:
        # its raw JSON goes as application/json, which the module sends without that option)
        assert got["body"] == sent.body
        want = sent.header("Content-Type") if sent.body.startswith(b"cdr=") else "application/json"
        assert headers["Content-Type"] == want


def test_refused_files_move_to_rejected_and_are_never_posted_again(clean, tmp_path):
    st = clean
    good = fsr.load("json_cdr_request_json.http")
    rec = json.loads(good.body)
    rec["variables"]["end_uepoch"] = "1000"
    rec["variables"]["end_epoch"] = "0"
    bad_uuid = "0b7a3b8e-6a43-4d0f-9d1e-00000000bad1"
    rec["variables"]["uuid"] = bad_uuid
    (tmp_path / f"{bad_uuid}.cdr.json").write_text(json.dumps(rec) + "\n")                 # 422
    (tmp_path / "a_0b7a3b8e-6a43-4d0f-9d1e-00000000bad2.cdr.json").write_bytes(b"\x00garbage\n")   # 400
    (tmp_path / f"{good.query['uuid']}.cdr.json").write_bytes(error_file(good))
    out = replay(tmp_path, st.receiver_url)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert_private(out)
    assert "1 replayed, 2 rejected, 0 kept" in out.stderr
    assert f"rejected {bad_uuid}.cdr.json (422, {st.receiver_url}: end_epoch): moved to rejected/" in out.stderr
    rejected = tmp_path / "rejected"
    assert sorted(os.listdir(tmp_path)) == ["rejected"]
    assert sorted(os.listdir(rejected)) == sorted([
        f"{bad_uuid}.cdr.json", f"{bad_uuid}.cdr.json.reason",
        "a_0b7a3b8e-6a43-4d0f-9d1e-00000000bad2.cdr.json", "a_0b7a3b8e-6a43-4d0f-9d1e-00000000bad2.cdr.json.reason"])
    reason = json.loads((rejected / f"{bad_uuid}.cdr.json.reason").read_text())
    assert reason["status"] == 422 and "end_epoch" in reason["answer"]
    garbage = rejected / "a_0b7a3b8e-6a43-4d0f-9d1e-00000000bad2.cdr.json.reason"
    assert json.loads(garbage.read_text())["status"] == 400
    assert (rejected / f"{bad_uuid}.cdr.json").read_text() == json.dumps(rec) + "\n", "moved as it was"
    # the next run never posts them again
    before = devstack.http("GET", f"http://127.0.0.1:{st.receiver_port}/health")[1]
    again = replay(tmp_path, st.receiver_url)
    assert again.returncode == 0 and "0 file(s): 0 replayed, 0 rejected, 0 kept" in again.stderr, again.stderr
    after = devstack.http("GET", f"http://127.0.0.1:{st.receiver_port}/health")[1]
    assert after["rejected"] == before["rejected"] and after["accepted"] == before["accepted"]
    assert len(os.listdir(rejected)) == 4
    st.start_worker()
    st.wait_stored(1)
    assert set(stored(st)) == {good.query["uuid"]}


def test_receivers_down_keep_every_file_and_fail_the_run(clean, tmp_path):
    st = clean
    files = fill(tmp_path)
    contents = {f: (tmp_path / f).read_bytes() for f in files}
    dead = f"http://127.0.0.1:{free_port()}/cdr"
    out = replay(tmp_path, dead)
    assert out.returncode == 1, out.stderr
    assert f"{len(files)} file(s): 0 replayed, 0 rejected, {len(files)} kept for the next run" in out.stderr
    assert "ConnectionRefusedError" in out.stderr
    assert_private(out)
    # after HAPBX_CDR_REPLAY_GIVE_UP_AFTER files in a row the run stops: the rest is not even tried
    out = replay(tmp_path, dead, HAPBX_CDR_REPLAY_GIVE_UP_AFTER=2)
    assert out.returncode == 1
    assert out.stderr.count(" for the next run (") == 2 and f"{len(files) - 2} more left for the next run" in out.stderr
    # a receiver that answers 503 (its Redis is away): kept as well
    stub = Stub(503)
    try:
        out = replay(tmp_path, stub.url)
    finally:
        stub.close()
    assert out.returncode == 1 and "HTTP 503" in out.stderr and len(stub.requests) == min(len(files), 3)
    assert {f: (tmp_path / f).read_bytes() for f in files} == contents, "every file kept as it was"
    assert not (tmp_path / "rejected").exists()
    assert st.queue_lengths()["queue"] == 0
    # this node's receiver down, the peer's up: delivered through the second URL
    out = replay(tmp_path, dead, st.receiver_url)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count(f"(200 from {st.receiver_url})") == len(files)
    assert os.listdir(tmp_path) == []
    st.start_worker()
    st.wait_stored(len(files))
    assert set(stored(st)) == set(files.values())


def test_redelivery_of_a_call_already_stored_is_stored_once(clean, tmp_path):
    """FreeSWITCH gave up on a slow answer that did store the record, then wrote the file:
    the replay's post is a duplicate, taken (200) and stored once; so is a second replay."""
    st = clean
    st.start_worker()
    req = fsr.load("json_cdr_request_json.http")
    uuid = req.query["uuid"]
    assert fsr.send(st.receiver_port, req).status == 200
    st.wait_stored(1)
    for _ in range(2):
        (tmp_path / f"{uuid}.cdr.json").write_bytes(error_file(req))
        out = replay(tmp_path, st.receiver_url)
        assert out.returncode == 0 and f"replayed {uuid}.cdr.json" in out.stderr, out.stderr
        assert os.listdir(tmp_path) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and st.queue_lengths() != {"queue": 0, "processing": 0, "dead": 0}:
        time.sleep(0.1)
    assert st.queue_lengths() == {"queue": 0, "processing": 0, "dead": 0}
    assert st.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{uuid}'") == "1"
    assert st.pg.psql("SELECT count(*) FROM cdr.calls") == "1"


def test_young_files_missing_directory_and_bad_settings(tmp_path):
    stub = Stub(200)
    try:
        (tmp_path / "5d0c6f52-8a7e-4c1b-9b3f-0e2d4a6c8e01.cdr.json").write_bytes(
            error_file(fsr.load("json_cdr_request_json.http")))
        out = replay(tmp_path, stub.url, HAPBX_CDR_REPLAY_MIN_AGE=60)
        assert out.returncode == 0 and "1 younger than 60s left for later" in out.stderr, out.stderr
        assert not stub.requests and len(os.listdir(tmp_path)) == 1, "FreeSWITCH may still be writing it"
        out = replay(tmp_path / "absent", stub.url)
        assert out.returncode == 0 and "nothing to replay" in out.stderr
        for env in ({"HAPBX_CDR_REPLAY_URLS": "ftp://x/cdr"}, {"HAPBX_CDR_REPLAY_MIN_AGE": "-1"},
                    {"HAPBX_CDR_REPLAY_DIR": "relative/dir"}):
            out = replay(tmp_path, stub.url, **env)
            assert out.returncode == 78 and "bad setting" in out.stderr, (env, out.stderr)
        assert not stub.requests
    finally:
        stub.close()
