"""SSH as pulumi-command dials it: one connection per command, the provider's dial retries, counted per host."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import paramiko
import paramiko.common

# paramiko logs every refused banner (sshd's MaxStartups under parallel dials) with a
# traceback; the dial retries handle those, and real failures surface as ApplyError.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class NoRetry(Exception):
    """A dial error that retrying cannot fix: wrong host key, unusable credentials.

    The provider retries every dial error up to dialErrorLimit; failing at once
    on these gives the same error sooner.
    """


@dataclass(frozen=True)
class Conn:
    host: str
    port: int = 22
    user: str = "root"
    password: str | None = None
    private_key: str | None = None
    private_key_password: str | None = None
    host_key: str | None = None
    dial_error_limit: int = 10  # provider defaults (remote/connection.go)
    per_dial_timeout: int = 15

    @classmethod
    def from_input(cls, conn: dict) -> "Conn":
        if conn.get("proxy"):
            raise ValueError("connection.proxy is not supported by the live harness")
        if conn.get("agentSocketPath"):
            raise ValueError("connection.agentSocketPath is not supported by the live harness")

        def pick(key: str, default: Any) -> Any:
            value = conn.get(key)
            return default if value is None else value
        return cls(host=conn["host"], port=int(pick("port", 22)), user=pick("user", "root"),
                   password=conn.get("password"), private_key=conn.get("privateKey"),
                   private_key_password=conn.get("privateKeyPassword"), host_key=conn.get("hostKey"),
                   dial_error_limit=int(pick("dialErrorLimit", 10)),
                   per_dial_timeout=int(pick("perDialTimeout", 15)))


def _parse_private_key(text: str, password: str | None) -> paramiko.PKey:
    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text), password=password)
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{kind.__name__}: {exc}")
    raise NoRetry("cannot parse privateKey (" + "; ".join(errors) + ")")


def _pinned_key(host_key: str) -> tuple[list[str], bytes]:
    """Key algorithms to offer and the key blob to expect, from 'type base64 [comment]'."""
    parts = host_key.split()
    if len(parts) < 2:
        raise NoRetry(f"hostKey {host_key!r} is not 'type base64'")
    kind, blob = parts[0], base64.b64decode(parts[1])
    # Offer only the pinned type, as the provider does (HostKeyAlgorithms).
    algorithms = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind]
    return algorithms, blob


def _dial_once(conn: Conn) -> paramiko.Transport:
    timeout = conn.per_dial_timeout or None  # 0 means no limit
    sock = socket.create_connection((conn.host, conn.port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
        pinned = _pinned_key(conn.host_key) if conn.host_key else None
        if pinned:
            transport.get_security_options().key_types = pinned[0]
        try:
            transport.start_client(timeout=timeout)
        except paramiko.IncompatiblePeer as exc:
            raise NoRetry(f"server offers no {conn.host_key.split()[0]} host key: {exc}") from exc
        if pinned and transport.get_remote_server_key().asbytes() != pinned[1]:
            raise NoRetry(f"host key mismatch for {conn.host}:{conn.port}: the server's "
                           f"{transport.get_remote_server_key().get_name()} key is not the pinned one")
        _authenticate(transport, conn)
        return transport
    except BaseException:
        transport.close()
        raise


def _authenticate(transport: paramiko.Transport, conn: Conn) -> None:
    if conn.private_key:
        transport.auth_publickey(conn.user, _parse_private_key(conn.private_key, conn.private_key_password))
    elif conn.password:
        transport.auth_password(conn.user, conn.password)
    else:
        raise NoRetry("connection has neither privateKey nor password")


def dial(conn: Conn, refused: Callable[[], None] = lambda: None) -> paramiko.Transport:
    """Dial with the provider's retry rule: limit+1 attempts, 0.1 s backoff x1.5 up to 5 s;
    ``refused`` counts each failed attempt that is retried."""
    delay, attempt = 0.1, 0
    while True:
        attempt += 1
        try:
            return _dial_once(conn)
        except NoRetry:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if 0 <= conn.dial_error_limit < attempt:
                raise ConnectionError(f"dial {conn.host}:{conn.port} failed after {attempt} "
                                      f"attempts: {exc or type(exc).__name__}") from exc
            refused()
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)


@dataclass
class _HostDials:
    open: int = 0
    max_concurrent: int = 0
    dials: int = 0
    retried: int = 0


class Dialer:
    """One SSH connection per command, as pulumi-command dials (no reuse), counted per host."""

    def __init__(self) -> None:
        self._hosts: dict[str, _HostDials] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connect(self, conn: Conn) -> Iterator[paramiko.Transport]:
        stats = self._stats(conn.host)
        with self._lock:
            stats.open += 1
            stats.dials += 1
            stats.max_concurrent = max(stats.max_concurrent, stats.open)
        try:
            transport = dial(conn, lambda: self._count_retry(stats))
            try:
                yield transport
            finally:
                transport.close()
        finally:
            with self._lock:
                stats.open -= 1

    def _stats(self, host: str) -> _HostDials:
        with self._lock:
            return self._hosts.setdefault(host, _HostDials())

    def _count_retry(self, stats: _HostDials) -> None:
        with self._lock:
            stats.retried += 1

    def report(self) -> dict:
        with self._lock:
            return {host: {"max_concurrent": d.max_concurrent, "dials": d.dials, "retried": d.retried}
                    for host, d in self._hosts.items()}

    def close(self) -> None:
        return None  # nothing is kept open between commands


@dataclass
class Exec:
    status: int
    stdout: str
    stderr: str


def execute(channel: paramiko.Channel, command: str, stdin: str, env: dict[str, str]) -> Exec:
    for key, value in env.items():
        _setenv_strict(channel, key, value)
    channel.exec_command(command)
    # stdout, stderr and stdin share one channel window: move all three at once.
    errors: list[bytes] = []
    helpers = [threading.Thread(target=lambda: errors.append(channel.makefile_stderr("rb").read()),
                                daemon=True),
               threading.Thread(target=_feed_stdin, args=(channel, stdin), daemon=True)]
    for helper in helpers:
        helper.start()
    out = channel.makefile("rb").read()
    for helper in helpers:
        helper.join()
    return Exec(channel.recv_exit_status(), _decode(out), _decode(errors[0] if errors else b""))


def _env_request(channel: paramiko.Channel, key: str, value: str) -> None:
    """An `env` channel request with want_reply (paramiko's own setenv never asks); raises
    SSHException when sshd refuses it (paramiko then closes the channel)."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("env")
    message.add_boolean(True)
    message.add_string(key)
    message.add_string(value)
    channel._event_pending()
    channel.transport._send_user_message(message)
    channel._wait_for_event()


def _setenv_strict(channel: paramiko.Channel, key: str, value: str) -> None:
    # The provider fails the command when sshd refuses a variable of `environment` (no AcceptEnv).
    try:
        _env_request(channel, key, value)
    except paramiko.SSHException as exc:
        raise paramiko.SSHException(f"could not set environment variable {key!r}: the server "
                                    "refused it (AcceptEnv); pass it on stdin instead") from exc


def open_session(transport: paramiko.Transport, previous_env: dict[str, str],
                  warn: Callable[[str], None]) -> paramiko.Channel:
    """A session with the previous run's output in its environment where sshd accepts it.
    The provider only warns when sshd refuses (util.go logAndWrapSetenvErr) and runs the command
    anyway; paramiko closes a channel whose request was refused, so the command gets a new one."""
    channel = transport.open_session(timeout=30)
    for key, value in previous_env.items():
        try:
            _env_request(channel, key, value)
        except paramiko.SSHException:
            warn(f"Unable to set '{key}'. This only works if your SSH server is configured to accept these "
                 "variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote "
                 "host, you could prefix the command itself with the variables in the form 'VAR=value command'")
            channel = transport.open_session(timeout=30)
            break
    return channel


def go_quote(text: str) -> str:
    """Go's %q of a string, as pulumi-command quotes the script in its error."""
    return json.dumps(text, ensure_ascii=False)


def _feed_stdin(channel: paramiko.Channel, stdin: str) -> None:
    # Commands always see end-of-input, as with the provider's empty stdin.
    with contextlib.suppress(OSError, EOFError):
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def trim(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text  # strings.TrimSuffix(s, "\n")
