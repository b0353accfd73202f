"""The admin API and the CDR receiver serve HTTPS on every address beyond loopback, plain HTTP on
loopback only (hapbx_node/cdr/common.py http_sites), as deployed (HAPBX_*_LISTEN: the VIP, the node
address, 127.0.0.1).

The address beyond loopback is real: one end of a veth pair in this namespace (a /30 of
10.250.0.0/16), the other end in a throwaway network namespace; the clients (curl, as an operator
calls the admin API) run in that namespace, so each request comes from another address over a
link, as from the peer or an operator's machine. Deleting the namespace removes both ends.
The services are the real processes (bench/devstack.py: PostgreSQL, Redis, receiver, worker,
admin), their certificate from a scratch CA (lab/scratch_ca.py) for the address and 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bench import devstack
from bench.loadgen import fs_cdr
from hapbx_node.cdr import replay
from hapbx_node.cdr.settings import ReplaySettings
from tests.daemons.cdr_stack import started
from lab.scratch_ca import ScratchCa

pytestmark = [pytest.mark.skipif(not shutil.which("curl"), reason="needs curl"), pytest.mark.timeout(180)]

SENDER, SENDER_PASSWORD = "cdr-pbx2", "pbx2-sender-pw-0123456789"


class Link:
    """A veth pair: ``address`` on this namespace's end (where the services listen), ``client`` on the
    end in namespace ``ns`` (where the requests come from)."""

    def __init__(self):
        n = os.getpid() % 16000 + 1
        base = (10 << 24) | (250 << 16) | (n * 4)
        self.address, self.client = (".".join(str((base + i) >> s & 255) for s in (24, 16, 8, 0)) for i in (1, 2))
        self.ns, self.host_if, self.ns_if = f"hapbx-https-{os.getpid()}", f"hxh{n}", f"hxn{n}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        try:
            for cmd in ([], ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                              "netns", self.ns],
                        ["ip", "addr", "add", f"{self.address}/30", "dev", self.host_if],
                        ["ip", "link", "set", self.host_if, "up"],
                        self.inside("ip", "addr", "add", f"{self.client}/30", "dev", self.ns_if),
                        self.inside("ip", "link", "set", self.ns_if, "up"),
                        self.inside("ip", "link", "set", "lo", "up")):
                if cmd:
                    subprocess.run(cmd, check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def inside(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def curl(self, url: str, *args: str, config: str = "") -> tuple[int, str, str]:
        """curl from the namespace: (exit status, HTTP status ('000': no HTTP answer), body). ``config``:
        a curl config (-K, on stdin) for what must stay off the command line (a token, a password)."""
        out = subprocess.run(self.inside("curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}",
                                         *(["-K", "-"] if config else []), *args, url),
                             input=config, capture_output=True, text=True, timeout=20)
        body, _, code = out.stdout.rpartition("\n")
        return out.returncode, code, body

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)   # gone with the namespace


@pytest.fixture(scope="module")
def link():
    lnk = Link()
    try:
        yield lnk
    finally:
        lnk.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory, link):
    """The cluster CA, this node's HTTPS pair from it (the address and 127.0.0.1), another CA."""
    base = tmp_path_factory.mktemp("https-pki")
    ca = ScratchCa.make(base / "cluster")
    issued = ca.issue("https", ips=(link.address, "127.0.0.1"))
    other = ScratchCa.make(base / "other", "another CA")
    return ca, issued, other


def https_env(pki) -> dict:
    _, issued, _ = pki
    return {"HAPBX_HTTPS_CERT": str(issued.cert), "HAPBX_HTTPS_KEY": str(issued.key)}


@pytest.fixture(scope="module")
def stack(link, pki):
    """PostgreSQL, Redis and the receiver on loopback and the link's address with sender credentials;
    the admin API on both too."""
    receiver_env = {"HAPBX_CDR_LISTEN": f"{link.address},127.0.0.1", "HAPBX_CDR_SENDERS": f"{SENDER}:{SENDER_PASSWORD}",
                    **https_env(pki)}
    for st in started(receiver_env=receiver_env):
        st.admin = st.admin_service()
        st.admin.env.update({"HAPBX_ADMIN_LISTEN": f"{link.address},127.0.0.1", **https_env(pki)})
        st.admin.start()
        devstack._wait(lambda: devstack.http("GET", f"{st.admin_url}/health", timeout=1)[0] == 200, 15,
                       f"admin ({st.admin.output()[-400:]})")
        yield st


def token_config() -> str:
    return f'header = "Authorization: Bearer {devstack.ADMIN_TOKEN}"\n'


def test_admin_api_refuses_plain_http_beyond_loopback(stack, link, pki):
    """A plain HTTP request to the admin API on the address beyond loopback gets no HTTP answer at all
    (the TLS handshake fails), from another address or from this machine; the same server answers
    plain HTTP on loopback."""
    ca, _, _ = pki
    rc, code, _ = link.curl(f"http://{link.address}:{stack.admin_port}/health")
    assert rc != 0 and code == "000", (rc, code)
    rc, code, _ = link.curl(f"http://{link.address}:{stack.admin_port}/api/v1/extensions", config=token_config())
    assert rc != 0 and code == "000", (rc, code)
    # the raw bytes of a request: what comes back is a TLS alert or nothing, never "HTTP/"
    import socket
    with socket.create_connection((link.address, stack.admin_port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/"), answer[:80]
    assert devstack.http("GET", f"{stack.admin_url}/health")[0] == 200, "loopback stays plain HTTP"
    assert stack.admin.running
    assert f"https://{link.address}, http://127.0.0.1" in stack.admin.output(), "the start's log line says so"


def test_admin_api_over_https_verified_against_the_cluster_ca(stack, link, pki):
    """From another address: curl --cacert with the cluster CA gets the API (its certificate names the
    address); checked against another CA it refuses the server (exit 60), and nothing is sent."""
    ca, _, other = pki
    url = f"https://{link.address}:{stack.admin_port}"
    rc, code, body = link.curl(f"{url}/api/v1/extensions", "--cacert", str(ca.cert), config=token_config())
    assert (rc, code) == (0, "200"), body
    assert isinstance(json.loads(body), (list, dict))
    rc, code, body = link.curl(f"{url}/api/v1/extensions", "--cacert", str(ca.cert))
    assert (rc, code) == (0, "401"), "the token is still required over HTTPS"
    rc, code, _ = link.curl(f"{url}/health", "--cacert", str(other.cert))
    assert rc == 60 and code == "000", (rc, code)       # CURLE_PEER_FAILED_VERIFICATION
    rc, code, _ = link.curl(f"{url}/health", "--cacert", str(ca.cert), "--tls-max", "1.1")
    assert rc != 0 and code == "000", "TLS 1.2 or later only"


def post_config(record: dict, tmp_path: Path, credential: bool = True) -> tuple[str, str]:
    """(curl config, call UUID) of one FreeSWITCH-shaped post; the password only in the config."""
    body = tmp_path / f"{record['variables']['uuid']}.json"
    body.write_text(json.dumps(record))
    body.chmod(0o644)
    config = f'header = "Content-Type: application/json"\ndata-binary = "@{body}"\n'
    if credential:
        config += f'user = "{SENDER}:{SENDER_PASSWORD}"\n'
    return config, record["variables"]["uuid"]


def test_receiver_over_https_with_sender_auth_end_to_end(stack, link, pki, tmp_path):
    """A post from another address over HTTPS (the cluster CA checked) with the sender's credential is
    queued and stored by the worker; without the credential a 401; in plain HTTP no answer."""
    ca, _, _ = pki
    stack.pg.psql("TRUNCATE cdr.calls, cdr.call_uuids, cdr.conflicts")
    stack.redis.cli("DEL", "cdr:queue", "cdr:processing:pbx1", "cdr:dead")     # what another test queued
    url = f"https://{link.address}:{stack.receiver_port}/cdr"
    config, call = post_config(fs_cdr(str(uuid.uuid4()), node="pbx2"), tmp_path)
    rc, code, body = link.curl(url, "--cacert", str(ca.cert), config=config)
    assert (rc, code) == (0, "200"), body
    assert json.loads(body)["call_uuid"] == call and json.loads(body)["stored"] == "queue"
    anonymous, other = post_config(fs_cdr(str(uuid.uuid4()), node="pbx2"), tmp_path, credential=False)
    assert link.curl(url, "--cacert", str(ca.cert), config=anonymous)[:2] == (0, "401")
    rc, code, _ = link.curl(url.replace("https://", "http://"), config=config)
    assert rc != 0 and code == "000", "no HTTP answer in plain HTTP beyond loopback"
    stack.start_worker()
    try:
        assert stack.wait_stored(1) == 1
        assert stack.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{call}'") == "1"
        assert stack.pg.psql(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{other}'") == "0"
    finally:
        stack.worker.stop()
        stack.worker = None


def test_replay_posts_to_an_https_receiver_checking_the_ca(stack, link, pki, tmp_path):
    """The replay timer's post to the peer's receiver over HTTPS: taken with the cluster CA; with
    another CA the certificate does not verify and the file is kept for the next run."""
    import logging
    ca, _, other = pki
    url = f"https://{link.address}:{stack.receiver_port}/cdr"
    directory = tmp_path / "errors"
    directory.mkdir()
    call = str(uuid.uuid4())
    (directory / f"{call}.cdr.json").write_text(json.dumps(fs_cdr(call, node="pbx2")) + "\n")
    old = time.time() - 60
    os.utime(directory / f"{call}.cdr.json", (old, old))
    env = {"HAPBX_CDR_REPLAY_DIR": str(directory), "HAPBX_CDR_REPLAY_URLS": url, "HAPBX_CDR_REPLAY_MIN_AGE": "0",
           "HAPBX_CDR_POST_USER": SENDER, "HAPBX_CDR_POST_PASSWORD": SENDER_PASSWORD}
    log = logging.getLogger("test-replay")
    assert replay.run(ReplaySettings.from_env({**env, "HAPBX_CDR_REPLAY_CA": str(other.cert)}), log) == 1
    assert (directory / f"{call}.cdr.json").exists(), "kept: the receiver's certificate did not verify"
    assert replay.run(ReplaySettings.from_env({**env, "HAPBX_CDR_REPLAY_CA": str(ca.cert)}), log) == 0
    assert not (directory / f"{call}.cdr.json").exists()
    queued = [json.loads(x) for x in stack.redis.cli("LRANGE", "cdr:queue", "0", "-1").splitlines() if x.strip()]
    assert any(call in json.dumps(q) for q in queued)


@pytest.mark.parametrize("what, listen_var", [("admin", "HAPBX_ADMIN_LISTEN"), ("receiver", "HAPBX_CDR_LISTEN")])
def test_no_start_beyond_loopback_without_a_certificate(stack, link, pki, what, listen_var):
    """Listening beyond loopback without HAPBX_HTTPS_CERT/KEY, or with a key that is not the
    certificate's: the service does not start (exit 78, systemd does not loop), and says why."""
    ca, issued, other = pki
    svc = stack.admin_service() if what == "admin" else stack.receiver_service()
    base = {**{k: v for k, v in svc.env.items() if not k.startswith("HAPBX_HTTPS_")},
            listen_var: f"{link.address},127.0.0.1", "HAPBX_CDR_SENDERS": f"{SENDER}:{SENDER_PASSWORD}"}
    run_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": devstack.NODE_PATH, "PYTHONDONTWRITEBYTECODE": "1"}
    other_key = other.issue("other-https", ips=(link.address,)).key
    for extra, why in (({}, "HAPBX_HTTPS_CERT and HAPBX_HTTPS_KEY are required"),
                       ({"HAPBX_HTTPS_CERT": str(issued.cert), "HAPBX_HTTPS_KEY": str(other_key)}, "cannot load them"),
                       ({"HAPBX_HTTPS_CERT": str(issued.cert), "HAPBX_HTTPS_KEY": "/nonexistent/https.key"},
                        "No such file")):
        out = subprocess.run([devstack.SYSTEM_PYTHON, "-m", "hapbx_node.cdr", what], env={**run_env, **base, **extra},
                             cwd=devstack.NODE_PATH, capture_output=True, text=True, timeout=30)
        assert out.returncode == 78, (out.returncode, out.stderr[-400:])
        assert why in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "PRIVATE KEY" not in out.stderr
