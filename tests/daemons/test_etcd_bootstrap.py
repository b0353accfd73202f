"""The rendered etcd authentication bootstrap (templates/etcd/bootstrap-auth.sh.j2), run for
real against a single etcd member of each release: 3.4 (Debian 12, this host's /usr/bin/etcd)
and 3.5 (Debian 13, from the trixie node image; etcd is a static binary, run from the root's
path on this host). The member is started from the rendered /etc/default/etcd (its own data
directory, free loopback ports, and a scratch CA's files where the node has the cluster CA's:
TLS only, client certificates required on both ports), the script is wrapped and fed its
passwords on stdin as the Witness component does (components/remote.script; nothing secret in
any argv).

etcd's gRPC gateway reports errors differently by release (3.4 {"error":…,"code":…}, 3.5
{"code":…,"message":…}); every answer that is not a success must fail the step, never print
`changed`, and authentication must be really on afterwards.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.remote import script as remote_script
from components.render import RenderContext, masked_secrets
from components.render import etcd as etcd_render
from components.releases import RELEASES
from components.render.etcd import ETCD_NODE_USER
from tests.helpers import free_port
from tests.mockrun import ROOT
from tests.release_root import HOST
from lab.scratch_ca import Issued, ScratchCa, localize

ETCD_ROOT_PASSWORD = "bootEtcdRoot3"
ETCD_NODE_PASSWORD = "bootEtcdNode5"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the Debian 13 etcd comes from a chroot image: needs root")

#: etcd's major.minor on each release ({"bookworm": "3.4", "trixie": "3.5"}), from the releases table
ETCD = {codename: r.versions["etcd"].rsplit(".", 1)[0] for codename, r in RELEASES.items()}
VERSIONS = tuple(ETCD.values())
NODE_KEY = etcd_render.KEY_PREFIX + "bootstrap-test"


def local(text: str, ca: Path, issued: Issued) -> str:
    return localize(text, ca, issued, etcd_render.TLS_SERVICE)


def client_context(ca: Path, issued: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if issued:
        ctx.load_cert_chain(str(issued.cert), str(issued.key))
    return ctx


@dataclasses.dataclass
class Member:
    """One etcd member on loopback, started from the rendered defaults; ended by its pid."""
    version: str
    etcd: str
    etcdctl: str
    data: str
    ca: ScratchCa
    tls: Issued
    client: int = dataclasses.field(default_factory=free_port)
    peer: int = dataclasses.field(default_factory=free_port)
    metrics: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client}"

    def start(self, **extra: str) -> "Member":
        cluster = stack()
        text = etcd_render.default_file(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
        env = {"PATH": os.environ["PATH"]}
        for line in local(text, self.ca.cert, self.tls).splitlines():
            if line.startswith("ETCD_"):
                k, _, v = line.partition("=")
                env[k] = v.strip('"')
        peer = f"https://127.0.0.1:{self.peer}"
        env.update(ETCD_NAME="m1", ETCD_DATA_DIR=self.data, ETCD_LISTEN_PEER_URLS=peer,
                   ETCD_INITIAL_ADVERTISE_PEER_URLS=peer, ETCD_INITIAL_CLUSTER=f"m1={peer}",
                   ETCD_INITIAL_CLUSTER_TOKEN=f"bootstrap-{self.client}",
                   ETCD_LISTEN_CLIENT_URLS=self.url, ETCD_ADVERTISE_CLIENT_URLS=self.url, ETCD_LOG_LEVEL="error")
        assert env["ETCD_LISTEN_METRICS_URLS"].startswith("http://")   # rendered (monitoring): here on loopback
        env["ETCD_LISTEN_METRICS_URLS"] = f"http://127.0.0.1:{self.metrics}"
        env.update(extra)
        with open(f"{self.data}.log", "ab") as log:
            self.proc = subprocess.Popen([self.etcd], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + 30
        tls = client_context(self.ca.cert, self.tls)
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=tls) as r:
                    if b'"health":"true"' in r.read():
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, open(f"{self.data}.log").read()
            assert time.time() < deadline, f"etcd {self.version} not healthy: " + open(f"{self.data}.log").read()
            time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ctl(self, *args, user: str | None = None, password: str | None = None,
            tls: bool = True) -> subprocess.CompletedProcess:
        """etcdctl of the same release with the node's TLS environment (etcd_render.CLIENT_TLS_ENV,
        or none: tls=False); credentials in the environment, never in argv."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        if tls:
            env.update({k: local(v, self.ca.cert, self.tls) for k, v in etcd_render.CLIENT_TLS_ENV.items()})
        if user:
            env.update(ETCDCTL_USER=user, ETCDCTL_PASSWORD=password or "")
        return subprocess.run([self.etcdctl, f"--endpoints={self.url}", "--command-timeout=5s", *args],
                              capture_output=True, text=True, env=env, timeout=30)


_STACK = []


def stack():
    if not _STACK:
        _STACK.append(load_stack_file(f"{ROOT}/Pulumi.lab.yaml", assume_secrets=True)[0])
    return _STACK[0]


def bootstrap(m: Member, root_pw: str = ETCD_ROOT_PASSWORD, node_pw: str = ETCD_NODE_PASSWORD,
              path: str | None = None, client_port: int | None = None) -> subprocess.CompletedProcess:
    """The rendered step as the Witness component runs it (remote.script, passwords on stdin)."""
    c = stack()
    c = dataclasses.replace(c, etcd=dataclasses.replace(c.etcd, client_port=client_port or m.client))
    body = remote_script(c.nodes[0].name, "etcd authentication",
                         etcd_render.bootstrap_auth_script(RenderContext(c, c.nodes[0], masked_secrets())))
    body = local(body, m.ca.cert, m.tls)
    env = {**os.environ, **({"PATH": path} if path else {})}
    return subprocess.run(["bash", "-c", body], input=f"{root_pw}\n{node_pw}\n",
                          capture_output=True, text=True, timeout=120, env=env)


def test_no_password_or_token_in_any_curl_argv(member, tmp_path):
    """Every curl the step runs, recorded (a shim first in PATH): neither password, nor the root
    token (an Authorization header) is ever on a command line, where ps shows it to every user."""
    m = member()
    log = tmp_path / "argv"
    shim = tmp_path / "bin" / "curl"
    shim.parent.mkdir()
    real = shutil.which("curl")
    shim.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" >> {log}; printf "\\n" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    for _ in range(2):      # enabling, then with root's token (authenticated calls)
        out = bootstrap(m, path=f"{shim.parent}:{os.environ['PATH']}")
        assert out.returncode == 0, out.stderr
    argv = log.read_text()
    assert argv.count("\n") >= 8, argv                       # the calls were recorded
    for secret in (ETCD_ROOT_PASSWORD, ETCD_NODE_PASSWORD, "Authorization"):
        assert secret not in argv, secret
    assert "-H\0@" in argv                                    # the token went through a header file


def gateway(member: Member, path: str, body: dict, token: str = "") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    req = urllib.request.Request(f"{member.url}/v3/{path}", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=client_context(member.ca.cert, member.tls)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(params=VERSIONS)
def binaries(request) -> tuple[str, str, str]:
    """(version, etcd, etcdctl): the host's 3.4, or the Debian 13 root's 3.5."""
    root = HOST if request.param == ETCD[HOST.codename] else request.getfixturevalue("trixie_root")
    etcd, etcdctl = str(root.path("/usr/bin/etcd")), str(root.path("/usr/bin/etcdctl"))
    out = subprocess.run([etcd, "--version"], capture_output=True, text=True, check=True).stdout
    assert f"etcd Version: {request.param}." in out, out        # the parametrization is real
    out = subprocess.run([etcdctl, "version"], capture_output=True, text=True, check=True).stdout
    assert f"etcdctl version: {request.param}." in out, out
    return request.param, etcd, etcdctl


@pytest.fixture
def member(binaries, tmp_path):
    version, etcd, etcdctl = binaries
    made: list[Member] = []
    ca = ScratchCa.make(tmp_path / "tls")
    issued = ca.issue("etcd-m1")

    def make(**extra) -> Member:
        m = Member(version, etcd, etcdctl, str(tmp_path / f"data{len(made)}"), ca, issued)
        made.append(m)
        return m.start(**extra)
    yield make
    for m in made:
        m.stop()


def assert_auth_on(m: Member):
    # the host's certificate alone (no user): refused (a certificate without a common name is no user)
    anonymous = m.ctl("get", NODE_KEY)
    assert anonymous.returncode != 0 and ("user name is empty" in anonymous.stderr
                                          or "permission denied" in anonymous.stderr), (anonymous.stdout, anonymous.stderr)
    status, body = gateway(m, "auth/authenticate", {"name": "root", "password": ETCD_ROOT_PASSWORD})
    assert status == 200 and body.get("token"), body      # root logs in only once authentication is on
    if m.version != "3.4":                              # AuthStatus exists from 3.5 on
        status, body = gateway(m, "auth/status", {}, token=body["token"])
        assert status == 200 and body.get("enabled") is True, body
        out = m.ctl("auth", "status", user="root", password=ETCD_ROOT_PASSWORD)
        assert out.returncode == 0 and "Authentication Status: true" in out.stdout, (out.stdout, out.stderr)


def test_enables_auth_idempotently(member):
    m = member()
    first = bootstrap(m)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "changed", (first.stdout, first.stderr)
    assert_auth_on(m)
    # the node user: read-write on its prefix, nothing outside it
    put = m.ctl("put", NODE_KEY, "v1", user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert put.returncode == 0, put.stderr
    get = m.ctl("get", NODE_KEY, "--print-value-only", user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert get.returncode == 0 and get.stdout.strip() == "v1", (get.stdout, get.stderr)
    outside = m.ctl("put", "/elsewhere", "x", user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert outside.returncode != 0 and "permission denied" in outside.stderr, (outside.stdout, outside.stderr)
    wrong = m.ctl("get", NODE_KEY, user=ETCD_NODE_USER, password="not-the-password")
    assert wrong.returncode != 0 and "authentication failed" in wrong.stderr, (wrong.stdout, wrong.stderr)
    # root's password works (administration)
    users = m.ctl("user", "list", user="root", password=ETCD_ROOT_PASSWORD)
    assert users.returncode == 0 and set(users.stdout.split()) == {"root", ETCD_NODE_USER}, (users.stdout, users.stderr)

    again = bootstrap(m)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "unchanged", (again.stdout, again.stderr)
    assert_auth_on(m)

    # a new node password (rotated secret): set with root's token, the old one refused
    rotated = bootstrap(m, node_pw="rotatedNode9")
    assert rotated.returncode == 0 and rotated.stdout.strip() == "changed", (rotated.stdout, rotated.stderr)
    get = m.ctl("get", NODE_KEY, "--print-value-only", user=ETCD_NODE_USER, password="rotatedNode9")
    assert get.returncode == 0 and get.stdout.strip() == "v1", (get.stdout, get.stderr)
    old = m.ctl("get", NODE_KEY, user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert old.returncode != 0, old.stdout
    assert_auth_on(m)


def test_other_root_password_fails(member):
    """A member whose authentication is already on with another root password: etcd answers
    an error to the login, the step fails naming it and changes nothing."""
    m = member()
    assert bootstrap(m).returncode == 0
    other = bootstrap(m, root_pw="someOtherRoot1", node_pw="someOtherNode2")
    assert other.returncode != 0, (other.stdout, other.stderr)
    assert "changed" not in other.stdout, other.stdout
    assert "root password does not match" in other.stderr and "authentication failed" in other.stderr, other.stderr
    assert_auth_on(m)
    get = m.ctl("get", NODE_KEY, user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert get.returncode == 0, get.stderr                 # the node user's password untouched


def test_gateway_off_fails(member):
    """A member without the gRPC gateway (ETCD_ENABLE_GRPC_GATEWAY=false): every /v3 call answers
    an HTTP 404 page, not an etcd error. The step must fail, naming the call and the answer,
    not report `changed` over a member whose authentication is still off."""
    m = member(ETCD_ENABLE_GRPC_GATEWAY="false")
    out = bootstrap(m)
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "changed" not in out.stdout, out.stdout
    assert "auth/authenticate" in out.stderr and "404 page not found" in out.stderr, out.stderr
    assert "root password" not in out.stderr, out.stderr     # not a wrong password: say what it was
    anonymous = m.ctl("put", NODE_KEY, "x")                  # authentication is off, as the step reported
    assert anonymous.returncode == 0, anonymous.stderr


def test_no_member_fails(tmp_path):
    """Nothing listens on the client port: the step fails saying etcd did not answer."""
    ca = ScratchCa.make(tmp_path)
    nobody = Member("-", "etcd", "etcdctl", str(tmp_path / "none"), ca, ca.issue("etcd-m1"))
    out = bootstrap(nobody, client_port=free_port())
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "changed" not in out.stdout, out.stdout
    assert "no answer from https://127.0.0.1:" in out.stderr, out.stderr
    assert "root password" not in out.stderr, out.stderr


# --- TLS: a client or peer without a certificate from the cluster CA gets no connection ---------

def fetch(port: int, ca: Path, issued: Issued | None, path: str) -> bytes:
    """An HTTPS GET on ``port`` with ``issued`` as the client certificate (None: no certificate):
    the body, read to its Content-Length (not to the server's close, which a loaded 2-core runner
    once took longer than 5 s to send: CI on ae11064); b"" when the server ends the connection
    (TLS 1.3 reports a refused client certificate after the handshake, at the first read)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=client_context(ca, issued))
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    except (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected):
        return b""
    finally:
        conn.close()


def test_client_needs_a_certificate_from_the_cluster_ca(member, tmp_path):
    m = member()
    assert bootstrap(m).returncode == 0
    ok = m.ctl("get", NODE_KEY, user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD)
    assert ok.returncode == 0, ok.stderr
    # the right password, the server verified, but no client certificate
    env_ca_only = {"ETCDCTL_CACERT": str(m.ca.cert)}
    bare = subprocess.run([m.etcdctl, f"--endpoints={m.url}", "--command-timeout=3s", "--dial-timeout=2s", "get",
                           NODE_KEY], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "ETCDCTL_API": "3", **env_ca_only,
                               "ETCDCTL_USER": ETCD_NODE_USER, "ETCDCTL_PASSWORD": ETCD_NODE_PASSWORD})
    assert bare.returncode != 0, bare.stdout
    other = ScratchCa.make(tmp_path / "other", "other CA").issue("intruder")
    assert b'"health":"true"' in fetch(m.client, m.ca.cert, m.tls, "/health")
    assert fetch(m.client, m.ca.cert, None, "/health") == b""
    assert fetch(m.client, m.ca.cert, other, "/health") == b""
    # plain HTTP on the client port: no etcd answer
    with socket.create_connection(("127.0.0.1", m.client), timeout=5) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw.settimeout(5)
        try:
            answer = raw.recv(65536)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b'"health"' not in answer, answer


def test_metrics_listener_serves_metrics_and_no_key(member):
    """The rendered plain-HTTP metrics listener (Prometheus scrapes it): /metrics and /health, and
    nothing of the key space, even after authentication is on."""
    m = member()
    assert bootstrap(m).returncode == 0
    assert m.ctl("put", NODE_KEY, "secret-ish", user=ETCD_NODE_USER, password=ETCD_NODE_PASSWORD).returncode == 0
    base = f"http://127.0.0.1:{m.metrics}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        assert b"etcd_server_has_leader 1" in r.read()
    for path, body in (("/v3/kv/range", {"key": "L2hhcGJ4"}), ("/v3/auth/authenticate", {"name": "root"})):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        assert status == 404 and b"secret-ish" not in text, (path, status, text[:200])


def test_peer_port_needs_a_certificate_from_the_cluster_ca(member, tmp_path):
    """The raft port: a member with the cluster CA's certificate is served (its /version), a
    connection with no certificate or one from another CA is not."""
    m = member()
    other = ScratchCa.make(tmp_path / "other", "other CA").issue("intruder")
    assert b"etcdserver" in fetch(m.peer, m.ca.cert, m.tls, "/version")
    assert fetch(m.peer, m.ca.cert, None, "/version") == b""
    assert fetch(m.peer, m.ca.cert, other, "/version") == b""
