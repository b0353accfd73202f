"""A real sshd on 127.0.0.1 and a throwaway Pulumi program for the live harness tests.

CI needs /usr/sbin/sshd (Debian: openssh-server) and root; the fixture installs
openssh-server with apt-get when it is missing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
PROJECT = "harness-test"


@dataclass
class Sshd:
    port: int
    host_key: str      # "ssh-ed25519 AAAA..." as a stack pins it
    other_key: str     # a valid host key of some other server
    client_key: str    # private key text (a secret in config)


def _ensure_sshd() -> None:
    if os.path.exists(SSHD):
        return
    if os.geteuid() != 0:
        pytest.skip("needs /usr/sbin/sshd (openssh-server) or root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("sshd did not listen in time")


def _sshd(d: Path, settings: str):
    """A real sshd on 127.0.0.1 with its own keys under d; yields Sshd, stops it after."""
    _ensure_sshd()
    host_pub = _keygen(d / "host_key")
    other_pub = _keygen(d / "other_key")
    _keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {d}/host_key
        AuthorizedKeysFile {d}/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        PidFile none
        LogLevel ERROR
        SetEnv HOME={d}/home
        """) + textwrap.dedent(settings))
    # Debian's bash sources ~/.bashrc for ssh commands; a developer's root
    # .bashrc (pyenv init) costs ~90 ms a command, a lab node's stock one nothing.
    (d / "home").mkdir()
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    with open(d / "sshd.log", "wb") as errors:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=errors)
    try:
        _wait_listening(port, proc, d / "sshd.log")
        yield Sshd(port, host_pub, other_pub, (d / "client_key").read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    """Accepts the provider's variables and a large connection burst."""
    yield from _sshd(tmp_path_factory.mktemp("sshd"), """\
        AcceptEnv PULUMI_COMMAND_* HARNESS_OK
        MaxStartups 64
        """)


@pytest.fixture(scope="session")
def strict_sshd(tmp_path_factory) -> Sshd:
    """As a Debian node's stock sshd: AcceptEnv LANG LC_* only; and at most 2 connections
    being authenticated at once (stock: 10), so a burst of dials is refused in part."""
    yield from _sshd(tmp_path_factory.mktemp("strict-sshd"), """\
        AcceptEnv LANG LC_*
        MaxStartups 2
        """)


PROGRAM = '''
"""Throwaway program for the harness tests: every command logs to $dir/events."""
import pulumi
import pulumi_random as random
from pulumi_command import remote

cfg = pulumi.Config()
d = cfg.require("dir")
conn = remote.ConnectionArgs(
    host="127.0.0.1", port=cfg.require_int("port"), user="root",
    private_key=cfg.require_secret("key"), host_key=cfg.require("hostKey"),
    dial_error_limit=1, per_dial_timeout=5)


def event(text):
    return f'echo "{text} $(date +%s.%N)" >> {d}/events'


def cmd(name, create, **kw):
    return remote.Command(name, connection=conn, create=create, **kw)


pw = random.RandomPassword("pw", length=24, special=True, override_special="_-", min_numeric=2)
secret_file = cmd("secret-file", f"umask 077; cat > {d}/pw; " + event("create secret-file"),
                  stdin=pw.result, logging="none")

def await_event(text):  # up to 5 s: proves a and b run at the same time
    return f'for i in $(seq 100); do grep -q "^{text} " {d}/events && break; sleep 0.05; done'


a = cmd("a", f"{event('start a')}; {await_event('start b')}; {event('end a')}; echo out-a")
b = cmd("b", f"{event('start b')}; {await_event('start a')}; {event('end b')}")
c = cmd("c", f"{event('start c')}; echo got $(cat)", stdin=a.stdout,
        opts=pulumi.ResourceOptions(depends_on=[a]))

trig = cfg.get("trig") or "1"
cmd("trig-cbd", event(f"create trig-cbd {trig}"), triggers=[trig], delete=event(f"delete trig-cbd {trig}"))
cmd("trig-dbr", event(f"create trig-dbr {trig}"), triggers=[trig], delete=event(f"delete trig-dbr {trig}"),
    opts=pulumi.ResourceOptions(delete_before_replace=True))

ver = cfg.get("ver") or "1"
cmd("with-update", event(f"create with-update {ver}"), update=event(f"update with-update {ver}")
    + f'; echo "previous=$PULUMI_COMMAND_STDOUT"; echo v{ver}',
    delete=event("delete with-update"))
cmd("no-update", event(f"create no-update {ver}"), delete=event("delete no-update"))

if cfg.get_bool("optional"):
    cmd("optional", event("create optional"), delete=event("delete optional"))

if cfg.get("env"):  # the test sshd accepts HARNESS_OK only
    cmd("env", 'echo "$HARNESS_OK"', environment={cfg.get("env"): "yes"})

if cfg.get_bool("fail"):
    failing = cmd("failing", "cat >&2; echo to-stderr >&2; exit 3", stdin=pw.result,
                  opts=pulumi.ResourceOptions(depends_on=[c]))
    cmd("after-failing", event("create after-failing"), opts=pulumi.ResourceOptions(depends_on=[failing]))

pulumi.export("password", pw.result)
pulumi.export("a", a.stdout)
pulumi.export("c", c.stdout)
'''


@pytest.fixture
def program(tmp_path) -> Path:
    prog = tmp_path / "program"
    prog.mkdir()
    (prog / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
    (prog / "__main__.py").write_text(PROGRAM)
    return prog
