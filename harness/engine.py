"""Live harness: run the real Pulumi program, execute its remote commands for real.

No Pulumi CLI can be installed on the development machines, so tier 3 runs the
program under ``pulumi.runtime.set_mocks`` with a monitor whose ``new_resource``
does what the engine and the providers would do:

* ``command:remote:Command`` runs its ``create``/``update``/``delete`` over SSH
  (paramiko) with the connection the resource carries: pinned host key, bounded
  dial retries, ``stdin`` fed, stdout/stderr returned with one trailing newline
  trimmed (pulumi-command 1.2.1, ``remote/commandOutputs.go``).
* ``random:index/*`` resources are generated once and kept in the state file.
* ``tls:index/*`` (pulumi-tls 5.6.2, bridged terraform-provider-tls): private keys,
  certificate requests, self-signed and locally signed certificates generated with
  ``cryptography`` as the provider builds them with Go's crypto/x509, kept in state,
  replaced when a RequiresReplace input changes or the certificate is due for renewal.
* Everything else (components, providers, unknown types) is passed through.

The program does not know the harness exists. State lives in a JSON file (mode
0600: it holds random secrets and private keys) so a later apply behaves like
``pulumi up`` against an existing stack:

* unchanged inputs: nothing runs, outputs come from state;
* changed inputs: ``update`` if set, else ``create`` (no delete) — the
  pulumi-go-provider diff marks every changed input as an update, except
  ``triggers`` (``provider:"replaceOnChanges"`` in ``common/inputs.go``; the
  Python SDK also sends ``replace_on_changes=["triggers[*]"]``);
* replace (changed ``triggers``, ``replace_on_changes``, replacement trigger, or
  any change of a random resource): create-before-delete like the engine, the
  old ``delete`` running after the whole program; with
  ``delete_before_replace=True`` the old ``delete`` runs first;
* a resource no longer in the program: its ``delete`` runs, dependants first.

The first failure stops new work (in-flight commands finish), is raised as
ApplyError, and everything completed before it stays in state, so the next
apply continues. Old halves of replacements that a failed apply left behind are
deleted at the start of the next one, as Pulumi does.

Secrets as the engine and provider treat them: secret *config* values are
masked in every log line and error (the engine does that); a failed command's
error carries its whole script and all of its stdout and stderr, as
pulumi-command builds it (``remote/commandOutputs.go``: ``"%w: running %q:\n%s"``),
and generated secrets in it are NOT masked, as the engine does not mask them:
the program itself must never print one. Exported secrets show as ``[secret]``.

Connections as the provider makes them: one SSH connection per command
(golang.org/x/crypto/ssh dial, every dial error retried up to dialErrorLimit
with the provider's backoff), at most ``parallel`` operations at once (the
engine's default is 4 x CPUs, ``PULUMI_PARALLEL`` overrides it, as in
``pkg/cmd/pulumi/operations/up.go``). ``ApplyResult.dials`` reports per host the
most connections open at once and the dial attempts that were refused and retried.
``PULUMI_COMMAND_STDOUT/STDERR`` are asked for (unless ``addPreviousOutputInEnv``
is false) with a reply; a refusal is the provider's warning, and the command runs.

Where it differs from `pulumi up` with the real provider, knowingly:
* host-key mismatches and unparseable private keys fail at once instead of
  after dialErrorLimit retries;
* no connection.proxy, no SSH agent; no command timeout (as the provider);
* delete_before_replace does not cascade replacements to dependants;
  ignore_changes and replace_on_changes act on top-level input names;
* types other than remote.Command, random.* and tls.* are passed through (warned);
* tls.*: no refresh (a certificate's ``readyForRenewal`` turns true only by the next
  apply's renewal check, which replaces it, as ``pulumi up`` without --refresh does);
  write-only inputs (``privateKeyPemWo``) are not compared but are kept in state like
  every input; ``uris`` go into the certificate as written (Go re-serialises them).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import fcntl
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import runpy
import secrets as _csprng
import socket
import string
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import bcrypt
import paramiko
import paramiko.common
import pulumi
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID
from google.protobuf import json_format
from pulumi.runtime import config as _config
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as _settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

MASK = "[secret]"
# Shorter "secrets" would blank out ordinary words of every log line.
_MIN_MASKED_LEN = 4
# pulumi-command's env names for the previous run's output (util/util.go).
_PREVIOUS_STDOUT, _PREVIOUS_STDERR = "PULUMI_COMMAND_STDOUT", "PULUMI_COMMAND_STDERR"
# Connection fields the provider marks secret; host/user/port/hostKey are not
# secrets even though the SDK wraps the whole connection in Output.secret.
_SENSITIVE_CONNECTION_FIELDS = ("password", "privateKey", "privateKeyPassword")
STATE_VERSION = 1


# --------------------------------------------------------------------------- API

@dataclass
class ApplyResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)  # one entry per command run, completion order
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: per host: most SSH connections open at once, dials made, dial attempts refused and retried
    dials: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the provider would warn about


class ApplyError(Exception):
    """A failed apply; the message is already masked."""

    def __init__(self, message: str, *, resource: str | None = None, host: str | None = None,
                 step: str | None = None, exit_status: int | None = None, stderr: str | None = None):
        super().__init__(message)
        self.resource, self.host, self.step = resource, host, step
        self.exit_status, self.stderr = exit_status, stderr
        self.partial: ApplyResult | None = None  # what the failed run did before it stopped

# paramiko logs every refused banner (sshd's MaxStartups under parallel dials) with a
# traceback; the dial retries handle those, and real failures surface as ApplyError.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def engine_parallelism() -> int:
    """The engine's default ``--parallel``: PULUMI_PARALLEL if set, else 4 x CPUs."""
    try:
        wanted = int(os.environ.get("PULUMI_PARALLEL", "0"))
    except ValueError:
        wanted = 0
    return wanted if wanted > 0 else 4 * (os.cpu_count() or 1)


def apply(program_dir: str, project: str, stack: str, config: dict[str, object],
          secret_keys: list[str], state_path: str, *, force: bool = False, parallel: int | None = None,
          log: Callable[[str], None] = print, reveal: bool = False) -> ApplyResult:
    """Run the program like ``pulumi up`` would, executing remote commands for real.

    ``force=True`` runs the ``create`` of every command again on its current
    inputs, as if each were replaced without running its ``delete`` (random
    values are kept): the caller uses it to prove that re-running every command
    changes no file and restarts no service. Exported secrets stay ``[secret]``
    unless ``reveal``.
    """
    program_dir = os.path.realpath(program_dir)
    parallel = parallel or engine_parallelism()
    _refuse_state_inside(program_dir, state_path)
    masker = _Masker()
    masker.add_config(config, secret_keys)
    with _running("apply", state_path, log, masker, force, project, stack) as run:
        # Old halves of replacements left by a failed apply go first (pulumi/pulumi#9979).
        run.delete_entries(run.state.pending(), report=False)
        exports = _run_program(program_dir, project, stack, config, secret_keys, run, parallel)
        run.delete_entries(run.state.pending() + run.state.absent(run.seen))
        run.result.outputs = _present_outputs(exports, reveal)
    return run.result


def destroy(state_path: str, log: Callable[[str], None] = print) -> ApplyResult:
    """Run the ``delete`` of everything in state, dependants first."""
    with _running("destroy", state_path, log, _Masker()) as run:
        run.delete_entries(run.state.pending() + run.state.absent(set()))
    return run.result


@contextlib.contextmanager
def _running(what: str, state_path: str, log: Callable[[str], None], masker: _Masker,
             force: bool = False, project: str | None = None, stack: str | None = None):
    """One apply or destroy: state open, SSH pool closed after, summary logged.

    A failure carries what was done before it as ``ApplyError.partial``.
    """
    started = time.monotonic()
    with _StateFile.open(state_path, project, stack) as state:
        run = _Run(state, masker, log, force)
        try:
            yield run
        except ApplyError as exc:
            exc.partial = run.result
            raise
        finally:
            run.close()
            run.result.seconds = time.monotonic() - started
            run.result.dials = run.ssh.report()
            run.log(_summary(what, run.result))


def _summary(what: str, result: ApplyResult) -> str:
    counts = ", ".join(f"{len(getattr(result, k))} {k}" for k in
                       ("created", "updated", "replaced", "deleted", "unchanged"))
    dials = "; ".join(f"{host}: {d['max_concurrent']} at once, {d['dials']} dials, {d['retried']} refused and "
                      "retried" for host, d in sorted(result.dials.items()))
    return (f"harness: {what}: {counts}; {len(result.executed)} commands in {result.seconds:.2f} s"
            + (f"; ssh {dials}" if dials else ""))


def _refuse_state_inside(program_dir: str, state_path: str) -> None:
    state_dir = os.path.dirname(os.path.realpath(state_path))
    if os.path.commonpath([program_dir, state_dir]) == program_dir:
        raise ApplyError(f"state file {state_path} is inside the program directory; it holds "
                         "secrets, keep it outside the repository")


# ----------------------------------------------------------------------- secrets

def _unwrap(value: Any, on_secret: Callable[[Any], None] | None = None) -> Any:
    """Plain copy of value without secret markers; on_secret sees each secret subtree."""
    if rpc.is_rpc_secret(value):
        inner = _unwrap(rpc.unwrap_rpc_secret(value), on_secret)
        if on_secret:
            on_secret(inner)
        return inner
    if isinstance(value, dict):
        return {k: _unwrap(v, on_secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v, on_secret) for v in value]
    return value


def _string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _string_leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _string_leaves(v)


def _secret_inputs(raw_inputs: dict) -> list[str]:
    """Every secret string among a resource's inputs (connection: only its real secrets)."""
    found: list[Any] = []
    for key, value in raw_inputs.items():
        if key == "connection":
            found.extend(_connection_secrets(_unwrap(value)))
        else:
            _unwrap(value, found.append)
    return [leaf for item in found for leaf in _string_leaves(item)]


def _connection_secrets(conn: Any) -> list[str]:
    if not isinstance(conn, dict):
        return []
    own = [conn[k] for k in _SENSITIVE_CONNECTION_FIELDS if isinstance(conn.get(k), str)]
    return own + _connection_secrets(conn.get("proxy"))


class _Masker:
    """Replaces every known secret value in text, longest first."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def add_all(self, values: Iterable[str]) -> None:
        fresh = {v for v in values if isinstance(v, str) and len(v) >= _MIN_MASKED_LEN}
        with self._lock:
            if fresh - self._values:
                self._values |= fresh
                self._ordered = sorted(self._values, key=len, reverse=True)

    def add_config(self, config: dict[str, object], secret_keys: list[str]) -> None:
        for key in secret_keys:
            if key in config:
                value = config[key]
                self.add_all([_config_string(value), *_string_leaves(value)])

    def mask(self, text: str) -> str:
        for value in self._ordered:
            text = text.replace(value, MASK)
        return text


def _config_string(value: object) -> str:
    # Pulumi hands config to programs as strings; structured values as JSON.
    return value if isinstance(value, str) else json.dumps(value)


def _present_outputs(exports: dict, reveal: bool) -> dict:
    def show(value: Any) -> Any:
        if rpc.is_rpc_secret(value):
            return show(rpc.unwrap_rpc_secret(value)) if reveal else MASK
        if isinstance(value, dict):
            return {k: show(v) for k, v in value.items()}
        if isinstance(value, list):
            return [show(v) for v in value]
        return value
    return show(exports)


# ------------------------------------------------------------------------- state

class _StateFile:
    """The stack's resources in a 0600 JSON file, persisted after each change.

    A writer thread persists the newest snapshot whenever something changed, so
    hundreds of completions do not each serialise the whole file; close() writes
    the final one. A hard kill can lose only completions made during the last
    write, and those commands are idempotent.
    """

    def __init__(self, path: str, data: dict) -> None:
        self.path, self._data = path, data
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._dirty, self._closing = False, False
        self._write_error: OSError | None = None
        self._writer = threading.Thread(target=self._write_loop, name="harness-state", daemon=True)
        self._writer.start()

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str, project: str | None = None, stack: str | None = None):
        with _exclusive(path):
            data = _load_state(path)
            for key, wanted in (("project", project), ("stack", stack)):
                if wanted is not None and data.setdefault(key, wanted) != wanted:
                    raise ApplyError(f"state {path} belongs to {key} {data[key]!r}, not {wanted!r}")
            state = cls(path, data)
            try:
                yield state
            finally:
                state._close()

    # reads
    def get(self, urn: str) -> dict | None:
        with self._lock:
            entry = self._data["resources"].get(urn)
            return dict(entry) if entry else None

    def pending(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._data["pending"]]

    def absent(self, seen: set[str]) -> list[dict]:
        with self._lock:
            return [dict(e) for urn, e in self._data["resources"].items() if urn not in seen]

    def known_secrets(self) -> list[str]:
        with self._lock:
            entries = list(self._data["resources"].values()) + self._data["pending"]
            return [s for e in entries for s in e.get("secrets", [])]

    # writes
    def put(self, entry: dict, *, pending_old: dict | None = None) -> None:
        with self._lock:
            self._data["seq"] += 1
            entry["seq"] = self._data["seq"]
            self._data["resources"][entry["urn"]] = entry
            if pending_old is not None:
                self._data["pending"].append(pending_old)
            self._touch()

    def keep(self, entry: dict) -> None:
        """Store an unchanged resource (its dependencies may have changed)."""
        with self._lock:
            self._data["resources"][entry["urn"]] = entry
            self._touch()

    def forget(self, entry: dict) -> None:
        with self._lock:
            pending = self._data["pending"]
            if entry in pending:
                pending.remove(entry)
            elif self._data["resources"].get(entry["urn"]) == entry:
                del self._data["resources"][entry["urn"]]
            self._touch()

    def _touch(self) -> None:
        self._dirty = True
        self._changed.notify()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._dirty and not self._closing:
                    self._changed.wait()
                if not self._dirty:
                    return
                text, self._dirty = json.dumps(self._data, indent=1, sort_keys=True), False
            try:
                _write_private(self.path, text)
            except OSError as exc:
                self._write_error = exc  # reported by _close; the loop goes on with newer data

    def _close(self) -> None:
        with self._lock:
            self._closing = True
            self._changed.notify()
        self._writer.join()
        if self._write_error is not None:
            raise ApplyError(f"could not save state {self.path}: {self._write_error}")


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """One apply or destroy per state file at a time, like Pulumi's stack lock."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplyError(f"state {path} is in use by another apply or destroy") from None
        yield


def _load_state(path: str) -> dict:
    empty = {"version": STATE_VERSION, "seq": 0, "resources": {}, "pending": []}
    if not os.path.exists(path):
        return empty
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("version") != STATE_VERSION:
        raise ApplyError(f"state {path} has version {data.get('version')!r}, expected {STATE_VERSION}")
    return {**empty, **data}


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # an older tmp file may have had another mode
    os.replace(tmp, path)


# --------------------------------------------------------------------------- SSH

class _NoRetry(Exception):
    """A dial error that retrying cannot fix: wrong host key, unusable credentials.

    The provider retries every dial error up to dialErrorLimit; failing at once
    on these gives the same error sooner.
    """


@dataclass(frozen=True)
class _Conn:
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
    def from_input(cls, conn: dict) -> "_Conn":
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
    raise _NoRetry("cannot parse privateKey (" + "; ".join(errors) + ")")


def _pinned_key(host_key: str) -> tuple[list[str], bytes]:
    """Key algorithms to offer and the key blob to expect, from 'type base64 [comment]'."""
    parts = host_key.split()
    if len(parts) < 2:
        raise _NoRetry(f"hostKey {host_key!r} is not 'type base64'")
    kind, blob = parts[0], base64.b64decode(parts[1])
    # Offer only the pinned type, as the provider does (HostKeyAlgorithms).
    algorithms = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind]
    return algorithms, blob


def _dial_once(conn: _Conn) -> paramiko.Transport:
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
            raise _NoRetry(f"server offers no {conn.host_key.split()[0]} host key: {exc}") from exc
        if pinned and transport.get_remote_server_key().asbytes() != pinned[1]:
            raise _NoRetry(f"host key mismatch for {conn.host}:{conn.port}: the server's "
                           f"{transport.get_remote_server_key().get_name()} key is not the pinned one")
        _authenticate(transport, conn)
        return transport
    except BaseException:
        transport.close()
        raise


def _authenticate(transport: paramiko.Transport, conn: _Conn) -> None:
    if conn.private_key:
        transport.auth_publickey(conn.user, _parse_private_key(conn.private_key, conn.private_key_password))
    elif conn.password:
        transport.auth_password(conn.user, conn.password)
    else:
        raise _NoRetry("connection has neither privateKey nor password")


def _dial(conn: _Conn, refused: Callable[[], None] = lambda: None) -> paramiko.Transport:
    """Dial with the provider's retry rule: limit+1 attempts, 0.1 s backoff x1.5 up to 5 s;
    ``refused`` counts each failed attempt that is retried."""
    delay, attempt = 0.1, 0
    while True:
        attempt += 1
        try:
            return _dial_once(conn)
        except _NoRetry:
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


class _Dialer:
    """One SSH connection per command, as pulumi-command dials (no reuse), counted per host."""

    def __init__(self) -> None:
        self._hosts: dict[str, _HostDials] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connect(self, conn: _Conn) -> Iterator[paramiko.Transport]:
        stats = self._stats(conn.host)
        with self._lock:
            stats.open += 1
            stats.dials += 1
            stats.max_concurrent = max(stats.max_concurrent, stats.open)
        try:
            transport = _dial(conn, lambda: self._count_retry(stats))
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
class _Exec:
    status: int
    stdout: str
    stderr: str


def _execute(channel: paramiko.Channel, command: str, stdin: str, env: dict[str, str]) -> _Exec:
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
    return _Exec(channel.recv_exit_status(), _decode(out), _decode(errors[0] if errors else b""))


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


def _open_session(transport: paramiko.Transport, previous_env: dict[str, str],
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


def _trim(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text  # strings.TrimSuffix(s, "\n")


# --------------------------------------------------------------------- resources

class _Handler:
    """How one resource type is created, updated and deleted."""

    replace_on_any_change = False        # random: every input is ForceNew
    schema_replace_keys: frozenset = frozenset()
    secret_outputs: frozenset = frozenset()
    runs_commands = False

    def changed(self, old_inputs: dict, inputs: dict) -> set[str]:
        """The inputs whose planned value differs from the state's (the provider's diff)."""
        return {k for k in set(old_inputs) | set(inputs) if old_inputs.get(k) != inputs.get(k)}

    def provider_replaces(self, old: dict, inputs: dict, changed: set[str]) -> bool:
        """A replacement the provider's plan asks for beyond schema_replace_keys."""
        return False

    def create(self, run: "_Run", name: str, inputs: dict) -> dict:
        return {}

    def update(self, run: "_Run", name: str, old: dict, inputs: dict) -> dict:
        return self.create(run, name, inputs)

    def delete(self, run: "_Run", entry: dict) -> None:
        return None

    def new_id(self, name: str, outputs: dict) -> str:
        return name


class _RemoteCommand(_Handler):
    """command:remote:Command as pulumi-command 1.2.1's remote/commandController.go."""

    schema_replace_keys = frozenset({"triggers"})
    runs_commands = True

    def create(self, run, name, inputs):
        return self._run(run, name, "create", inputs, inputs.get("create"), previous=None)

    def update(self, run, name, old, inputs):
        command = inputs.get("update")
        if command is None:
            command = inputs.get("create")
        return self._run(run, name, "update", inputs, command, previous=old["outputs"])

    def delete(self, run, entry):
        inputs = entry["inputs"]  # the old connection, stdin and command, as stored
        self._run(run, entry["name"], "delete", inputs, inputs.get("delete"), previous=entry["outputs"])

    def new_id(self, name, outputs):
        return f"{name}-{_csprng.token_hex(4)}"

    def _run(self, run: "_Run", name: str, step: str, inputs: dict, command: str | None,
             previous: dict | None) -> dict:
        base = previous or {"stdout": "", "stderr": ""}
        if command is None:
            return dict(base)  # nothing to run: the provider keeps the previous outputs
        conn = _Conn.from_input(inputs["connection"])
        started = time.monotonic()
        try:
            with run.ssh.connect(conn) as transport:
                channel = _open_session(transport, _previous_env(inputs, base), run.warn)
                try:
                    done = _execute(channel, command, inputs.get("stdin") or "", inputs.get("environment") or {})
                finally:
                    channel.close()
        except (_NoRetry, ConnectionError, OSError, EOFError, paramiko.SSHException) as exc:
            raise run.error(f"{step} of {name} on {conn.host}: {exc or type(exc).__name__}",
                            resource=name, host=conn.host, step=step) from exc
        run.executed(name, conn.host, step, time.monotonic() - started)
        if done.status != 0:
            # pulumi-command's error: the quoted script, then all of stdout and stderr, whatever
            # `logging` says; the engine masks config secrets in it, nothing else
            raise run.error(f"{step} of {name} on {conn.host} failed: exit status {done.status}\n"
                            f"Process exited with status {done.status}: running {go_quote(command)}:\n"
                            f"{done.stdout}{done.stderr}", resource=name, host=conn.host, step=step,
                            exit_status=done.status, stderr=done.stderr)
        return {"stdout": _trim(done.stdout), "stderr": _trim(done.stderr)}


def _previous_env(inputs: dict, previous: dict) -> dict[str, str]:
    if inputs.get("addPreviousOutputInEnv") is False:
        return {}
    pairs = ((_PREVIOUS_STDOUT, previous.get("stdout")), (_PREVIOUS_STDERR, previous.get("stderr")))
    return {key: value for key, value in pairs if value}


class _Random(_Handler):
    """random:index/* resources: generated once, replaced on any input change."""

    replace_on_any_change = True

    def __init__(self, generate: Callable[[dict], dict], secret_outputs: Iterable[str],
                 id_key: str | None) -> None:
        self._generate, self._id_key = generate, id_key
        self.secret_outputs = frozenset(secret_outputs)

    def create(self, run, name, inputs):
        return self._generate(inputs)

    def new_id(self, name, outputs):
        return outputs[self._id_key] if self._id_key else "none"


_DEFAULT_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"  # pulumi-random / terraform-provider-random


def _random_text(inputs: dict) -> str:
    """RandomPassword/RandomString: min* counts honoured, the rest from every enabled class."""
    classes = [
        ("lower", "minLower", string.ascii_lowercase),
        ("upper", "minUpper", string.ascii_uppercase),
        ("numeric", "minNumeric", string.digits),
        ("special", "minSpecial", inputs.get("overrideSpecial") or _DEFAULT_SPECIAL),
    ]
    if inputs.get("number") is False:  # deprecated alias of numeric
        inputs = {**inputs, "numeric": False}
    rng = _csprng.SystemRandom()
    chosen, pool = [], ""
    for flag, minimum, alphabet in classes:
        if inputs.get(flag, True) is not False:
            pool += alphabet
            chosen += [rng.choice(alphabet) for _ in range(int(inputs.get(minimum) or 0))]
    length = int(inputs["length"])
    if not pool or len(chosen) > length:
        raise ApplyError(f"random: length {length} cannot hold the required characters")
    chosen += [rng.choice(pool) for _ in range(length - len(chosen))]
    rng.shuffle(chosen)
    return "".join(chosen)


def _random_password(inputs: dict) -> dict:
    result = _random_text(inputs)
    return {"result": result, "bcryptHash": bcrypt.hashpw(result.encode(), bcrypt.gensalt(10)).decode()}


def _random_bytes(inputs: dict) -> dict:
    data = _csprng.token_bytes(int(inputs["length"]))
    return {"base64": base64.b64encode(data).decode(), "hex": data.hex()}


def _random_id(inputs: dict) -> dict:
    data, prefix = _csprng.token_bytes(int(inputs["byteLength"])), inputs.get("prefix") or ""
    return {"b64Std": prefix + base64.b64encode(data).decode(),
            "b64Url": prefix + base64.urlsafe_b64encode(data).decode().rstrip("="),
            "hex": prefix + data.hex(), "dec": prefix + str(int.from_bytes(data, "big"))}


# -------------------------------------------------------------------- pulumi-tls
# pulumi-tls 5.6.2 bridges terraform-provider-tls (internal/provider/*.go): keys from
# crypto/rand, certificates from Go's x509.CreateCertificate. What follows builds the
# same DER with `cryptography`: subject encoding and order, extension order and
# criticality, key identifiers, serials, PEM/OpenSSH forms and the outputs' formats.

class TlsError(ValueError):
    """A pulumi-tls diagnostic: 'Summary: detail', as the provider reports it."""


_TLS_ALGORITHMS = ("RSA", "ECDSA", "ED25519")
_TLS_CURVES = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
# bit positions of crypto/x509's KeyUsage (KeyUsageDigitalSignature = 1 << 0, ...)
_TLS_KEY_USAGES = {"digital_signature": 0, "content_commitment": 1, "key_encipherment": 2,
                   "data_encipherment": 3, "key_agreement": 4, "cert_signing": 5, "crl_signing": 6,
                   "encipher_only": 7, "decipher_only": 8}
# crypto/x509's ExtKeyUsage OIDs, by the provider's names (common_cert.go)
_TLS_EXT_KEY_USAGES = {
    "any_extended": "2.5.29.37.0", "server_auth": "1.3.6.1.5.5.7.3.1", "client_auth": "1.3.6.1.5.5.7.3.2",
    "code_signing": "1.3.6.1.5.5.7.3.3", "email_protection": "1.3.6.1.5.5.7.3.4",
    "ipsec_end_system": "1.3.6.1.5.5.7.3.5", "ipsec_tunnel": "1.3.6.1.5.5.7.3.6",
    "ipsec_user": "1.3.6.1.5.5.7.3.7", "timestamping": "1.3.6.1.5.5.7.3.8", "ocsp_signing": "1.3.6.1.5.5.7.3.9",
    "microsoft_server_gated_crypto": "1.3.6.1.4.1.311.10.3.3",
    "netscape_server_gated_crypto": "2.16.840.1.113730.4.1",
    "microsoft_commercial_code_signing": "1.3.6.1.4.1.311.2.1.22",
    "microsoft_kernel_code_signing": "1.3.6.1.4.1.311.61.1.1",
}
# pkix.Name.ToRDNSequence: the subject's attributes in this order, each list one RDN
_TLS_NAME_FIELDS = (("country", NameOID.COUNTRY_NAME), ("province", NameOID.STATE_OR_PROVINCE_NAME),
                    ("locality", NameOID.LOCALITY_NAME), ("streetAddresses", NameOID.STREET_ADDRESS),
                    ("postalCode", NameOID.POSTAL_CODE), ("organization", NameOID.ORGANIZATION_NAME),
                    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
                    ("commonName", NameOID.COMMON_NAME), ("serialNumber", NameOID.SERIAL_NUMBER))
_TLS_SINGLE_FIELDS = ("commonName", "serialNumber")  # Go: strings, left out when empty
_TLS_PRINTABLE = frozenset(string.ascii_letters + string.digits + " '()+,-./:=?")
# requireReplaceIfStateContainsPEMString (common.go); Go's `.` stops at \n, `\s` does not
_TLS_PEM_STATE = re.compile(r"-----BEGIN [A-Za-z ]+-----\n(?:.|[\t\n\f\r ])+\n-----END [A-Za-z ]+-----\n?")
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))")
# unicode.IsSpace, UTF-8 encoded: strings.TrimSpace trims these from both ends
_GO_SPACES = tuple(c.encode() for c in "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                   "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_HOUR_NS = 3600 * 10**9


def _go_trim_space(data: bytes) -> bytes:
    trimmed = True
    while data and trimmed:
        trimmed = False
        for space in _GO_SPACES:
            if data.startswith(space):
                data, trimmed = data[len(space):], True
            if data.endswith(space):
                data, trimmed = data[:-len(space)], True
    return data


def _hash_for_state(data: bytes) -> str:
    """hashForState (common.go): hex SHA-1 of strings.TrimSpace(value); "" for ""."""
    return hashlib.sha1(_go_trim_space(data)).hexdigest() if data else ""


def _go_time_text(ns: int) -> str:
    """time.Time.MarshalText of time.Now(): RFC 3339, nanoseconds without trailing zeros,
    in the local zone of the machine running the provider ('Z' at offset zero)."""
    seconds, fraction = divmod(ns, 10**9)
    local = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).astimezone()
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction:09d}".rstrip("0") if fraction else "")
    minutes = int(local.utcoffset().total_seconds()) // 60
    if minutes == 0:
        return text + "Z"
    return f"{text}{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _parse_rfc3339_ns(text: str) -> int:
    match = _RFC3339.fullmatch(text or "")
    if not match:
        raise TlsError(f"Failed to parse data from string: {text}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, off_h, off_m = match.group(7), match.group(8), match.group(9), match.group(10)
    moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    offset = 0 if not sign else (1 if sign == "+" else -1) * (int(off_h) * 3600 + int(off_m) * 60)
    return (int(moment.timestamp()) - offset) * 10**9 + int((fraction or "0").ljust(9, "0"))


def _pem_encode(kind: str, der: bytes) -> str:
    """encoding/pem.EncodeToMemory: 64 characters a line, a final newline."""
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "".join(line + "\n" for line in lines) + f"-----END {kind}-----\n"


_PEM_BLOCK = re.compile(r"-----BEGIN ([^\n]*?)-----[ \t]*\r?\n(.*?)-----END \1-----", re.S)


def _pem_decode(text: str) -> tuple[str, bytes] | None:
    """The first PEM block (type, bytes) as pem.Decode finds it, or None."""
    for match in _PEM_BLOCK.finditer(text or ""):
        try:
            return match.group(1), base64.b64decode("".join(match.group(2).split()), validate=True)
        except ValueError:
            continue
    return None


def _decode_pem_of(text: str, kind: str) -> bytes:
    """decodePEM (resource_locally_signed_cert.go): the first block, of the expected type."""
    block = _pem_decode(text)
    if block is None:
        raise TlsError(f'failed to decode PEM of expected type "{kind}" from bytes')
    if block[0] != kind:
        raise TlsError(f'invalid PEM type - expected "{kind}", got "{block[0]}"')
    return block[1]


def _key_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    raise TlsError(f"unsupported private key type: {type(key).__name__}")


def _parse_private_key_pem(text: str) -> tuple[Any, str]:
    """parsePrivateKeyPEM (common_key.go): RSA (PKCS#1), EC (SEC 1) or PKCS#8 PEM."""
    block = _pem_decode(text)
    if block is None:
        raise TlsError(f"failed to decode PEM block: decoded bytes 0, undecoded {len((text or '').encode())}")
    kind, der = block
    wanted = {"RSA PRIVATE KEY": rsa.RSAPrivateKey, "EC PRIVATE KEY": ec.EllipticCurvePrivateKey,
              "PRIVATE KEY": object}
    if kind in ("PUBLIC KEY", "CERTIFICATE", "CERTIFICATE REQUEST"):
        raise TlsError(f"unable to determine parser for PEM preamble: {kind}")
    if kind not in wanted:
        raise TlsError(f"unsupported PEM preamble/type: {kind}")
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"failed to parse private key given PEM preamble '{kind}': {exc}") from None
    if not isinstance(key, wanted[kind]):
        raise TlsError(f"failed to parse private key given PEM preamble '{kind}': wrong key type")
    return key, _key_algorithm(key)


def _input_key(inputs: dict, key: str, summary: str) -> tuple[Any, str]:
    """The private key of `key` or of its write-only twin `key + 'Wo'`."""
    text = inputs.get(key) if inputs.get(key) is not None else inputs.get(key + "Wo")
    try:
        return _parse_private_key_pem(text or "")
    except TlsError as exc:
        raise TlsError(f"{summary}: {exc}") from None


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    """crypto/x509 signingParamsForKey: SHA-256 for RSA and P-224/P-256, SHA-384/512 for P-384/P-521."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


def _ssh_public(public_key: Any) -> tuple[str, str, str]:
    """ssh.MarshalAuthorizedKey, FingerprintLegacyMD5, FingerprintSHA256; '' for P-224 (x/crypto/ssh has none)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp224r1":
        return "", "", ""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(line.split()[1])
    md5 = hashlib.md5(blob).hexdigest()
    sha256 = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return line + "\n", ":".join(md5[i:i + 2] for i in range(0, len(md5), 2)), f"SHA256:{sha256}"


def _key_outputs(key: Any) -> dict:
    """The key's encodings as resource_private_key.go stores them."""
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        own = ("PRIVATE KEY", pkcs8)
    else:  # x509.MarshalPKCS1PrivateKey / MarshalECPrivateKey
        own = ("RSA PRIVATE KEY" if isinstance(key, rsa.RSAPrivateKey) else "EC PRIVATE KEY",
               key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption()))
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    openssh_key, md5, sha256 = _ssh_public(key.public_key())
    private_openssh = ""
    if openssh_key:  # ssh.MarshalPrivateKey(key, ""), pem-encoded
        private_openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                            serialization.NoEncryption()).decode()
        private_openssh = _pem_encode("OPENSSH PRIVATE KEY", _pem_decode(private_openssh)[1])
    return {"privateKeyPem": _pem_encode(*own), "privateKeyPemPkcs8": _pem_encode("PRIVATE KEY", pkcs8),
            "privateKeyOpenssh": private_openssh, "publicKeyPem": _pem_encode("PUBLIC KEY", public_der),
            "publicKeyOpenssh": openssh_key, "publicKeyFingerprintMd5": md5,
            "publicKeyFingerprintSha256": sha256}


def _one_of(name: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        shown = " ".join(f'"{a}"' for a in allowed)
        raise TlsError(f'Invalid Attribute Value Match: Attribute {name} value must be one of: [{shown}], '
                       f'got: "{value}"')


def _at_least(name: str, value: Any, minimum: int) -> None:
    if value is not None and int(value) < minimum:
        raise TlsError(f"Invalid Attribute Value: Attribute {name} value must be at least {minimum}, got: {value}")


def _tls_private_key(inputs: dict, warn: Callable[[str], None]) -> dict:
    algorithm = inputs.get("algorithm")
    rsa_bits = int(inputs.get("rsaBits") if inputs.get("rsaBits") is not None else 2048)
    curve = inputs.get("ecdsaCurve") or "P224"
    _one_of("algorithm", algorithm, _TLS_ALGORITHMS)
    _one_of("ecdsa_curve", curve, _TLS_CURVES)
    if algorithm == "RSA":
        if rsa_bits < 1024:  # crypto/rsa (Go 1.24+) refuses these
            raise TlsError(f"Unable to generate Key from configuration: crypto/rsa: {rsa_bits}-bit keys are "
                           "insecure (see https://go.dev/pkg/crypto/rsa#hdr-Minimum_key_size)")
        key: Any = rsa.generate_private_key(65537, rsa_bits)
    elif algorithm == "ECDSA":
        key = ec.generate_private_key(_TLS_CURVES[curve]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return {"algorithm": algorithm, "rsaBits": rsa_bits, "ecdsaCurve": curve, **_key_outputs(key)}


def _printable(value: str) -> bool:
    return all(c in _TLS_PRINTABLE for c in value)


def _go_name(fields: dict[str, list[str]], email: str | None = None) -> x509.Name:
    """pkix.Name.ToRDNSequence: fixed order, one RDN per field (several values: one multi-valued
    RDN), PrintableString where the value allows it else UTF8String, the e-mail last (IA5String)."""
    rdns = []
    for key, oid in _TLS_NAME_FIELDS:
        values = [v for v in fields.get(key, []) if v or key not in _TLS_SINGLE_FIELDS]
        if values:
            rdns.append(x509.RelativeDistinguishedName([
                x509.NameAttribute(oid, v, _ASN1Type.PrintableString if _printable(v) else _ASN1Type.UTF8String,
                                   _validate=False) for v in values]))
    if email is not None:
        rdns.append(x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email, _ASN1Type.IA5String, _validate=False)]))
    return x509.Name(rdns)


def _subject_fields(subject: dict | None) -> tuple[dict[str, list[str]], str | None, bool]:
    """createSubjectDistinguishedNames: (fields, e-mail, whether the result equals pkix.Name{},
    which only empty commonName/serialNumber strings leave it: any list given is non-nil)."""
    subject = subject or {}
    fields: dict[str, list[str]] = {}
    for key, _ in _TLS_NAME_FIELDS:
        value = subject.get(key)
        if value is not None:
            fields[key] = list(value) if key == "streetAddresses" else [str(value)]
    email = subject.get("emailAddress")
    zero = email is None and all(key in _TLS_SINGLE_FIELDS and values == [""] for key, values in fields.items())
    return fields, email, zero


def _fields_of(name: x509.Name) -> dict[str, list[str]]:
    """pkix.Name.FillFromRDNSequence: the 2.5.4.x attributes Go keeps (an e-mail is not kept)."""
    by_oid = {oid: key for key, oid in _TLS_NAME_FIELDS}
    fields: dict[str, list[str]] = {}
    for attribute in name:
        key = by_oid.get(attribute.oid)
        if key in _TLS_SINGLE_FIELDS:
            fields[key] = [str(attribute.value)]
        elif key:
            fields.setdefault(key, []).append(str(attribute.value))
    return fields


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """net.ParseIP, and To4() as marshalSANs does (a v4-mapped address is 4 bytes)."""
    try:
        if "%" in text:
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise TlsError(f'Invalid IP address: Failed to parse "{text}"') from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _sans(dns_names: list[str], ips: list, uris: list[str]) -> list[x509.GeneralName]:
    """marshalSANs order: DNS names, (e-mail addresses), IP addresses, URIs."""
    try:
        return ([x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ip) for ip in ips]
                + [x509.UniformResourceIdentifier(u) for u in uris])
    except ValueError as exc:
        raise TlsError(f"Failed to create certificate: {exc}") from None


def _subject_key_id(public_key: Any) -> bytes:
    """generateSubjectKeyID (common_cert.go): SHA-1 of asn1.Marshal(*rsa.PublicKey) (PKCS#1),
    of the uncompressed EC point, or of asn1.Marshal(ed25519.PublicKey) (an OCTET STRING)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        data = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        data = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        data = b"\x04\x20" + public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise TlsError(f"Failed to generate subject key identifier: unsupported public key type "
                       f"{type(public_key).__name__}")
    return hashlib.sha1(data).digest()


def _der_key_usage(bits: int) -> bytes:
    """marshalKeyUsage: KeyUsage bit 0 is the first bit of the first octet, a second octet only
    when one of its bits is set, the trailing zero bits declared unused (asn1BitLength)."""
    octets = bytes(int(f"{(bits >> shift) & 0xff:08b}"[::-1], 2) for shift in (0, 8))
    octets = octets if octets[1] else octets[:1]
    value = int.from_bytes(octets, "big")
    unused = (value & -value).bit_length() - 1  # never called with no bit set
    return bytes([0x03, len(octets) + 1, unused]) + octets


def _der_basic_constraints(is_ca: bool, path_len: int | None) -> bytes:
    """marshalBasicConstraints: cA only when true, pathLen only when set."""
    body = b"\x01\x01\xff" if is_ca else b""
    if path_len is not None:
        number = path_len.to_bytes(path_len.bit_length() // 8 + 1, "big")
        body += bytes([0x02, len(number)]) + number
    return bytes([0x30, len(body)]) + body


def _allowed_uses(uses: list[str]) -> tuple[int, list[x509.ObjectIdentifier]]:
    bits, extended = 0, []
    for use in uses:
        _one_of("allowed_uses", use, sorted({*_TLS_KEY_USAGES, *_TLS_EXT_KEY_USAGES}))
        if use in _TLS_KEY_USAGES:
            bits |= 1 << _TLS_KEY_USAGES[use]
        if use in _TLS_EXT_KEY_USAGES:
            extended.append(x509.ObjectIdentifier(_TLS_EXT_KEY_USAGES[use]))
    return bits, extended


def _name_der(name: x509.Name) -> bytes:
    return name.public_bytes()


def _ready_for_renewal(inputs: dict) -> bool:
    """The ReadyForRenewal plan modifier: true for a zero validity, or renewal hours >= validity."""
    validity = int(inputs["validityPeriodHours"])
    early = int(inputs.get("earlyRenewalHours") or 0)
    return validity == 0 or early >= validity


def _create_certificate(inputs: dict, *, subject: x509.Name, subject_is_zero: bool, sans: list,
                        public_key: Any, signer: Any, parent: x509.Certificate | None,
                        authority_key_id_allowed: bool) -> dict:
    """createCertificate (common_cert.go) and x509.CreateCertificate; parent None: self-signed."""
    hours = int(inputs["validityPeriodHours"])
    _at_least("validity_period_hours", hours, 0)
    _at_least("early_renewal_hours", inputs.get("earlyRenewalHours"), 0)
    _at_least("max_path_length", inputs.get("maxPathLength"), -1)
    not_before = time.time_ns()
    not_after = not_before + hours * _HOUR_NS
    serial = 0
    while serial == 0:  # rand.Int(rand.Reader, 2^128); cryptography refuses a zero serial
        serial = _csprng.randbelow(1 << 128)
    key_usage, ext_key_usage = _allowed_uses(list(inputs.get("allowedUses") or []))
    is_ca = bool(inputs.get("isCaCertificate"))
    subject_key_id = b""
    if is_ca:
        if subject_is_zero:
            raise TlsError("Invalid Certificate Subject: Must contain at least one Distinguished Name when "
                           "creating Certificate Authority (CA)")
        subject_key_id = _subject_key_id(public_key)
    max_path = inputs.get("maxPathLength")
    path_len = int(max_path) if max_path is not None and int(max_path) > 0 else None  # 0: MaxPathLenZero unset
    if path_len is not None and not is_ca:
        raise TlsError("Failed to create certificate: x509: only CAs are allowed to specify MaxPathLen")
    if inputs.get("setSubjectKeyId"):
        subject_key_id = _subject_key_id(public_key)
    template_authority_key_id = b""
    parent_key_id = subject_key_id if parent is None else _key_id_of(parent)
    if authority_key_id_allowed and inputs.get("setAuthorityKeyId"):
        if not parent_key_id:
            raise TlsError("Invalid Certificate Authority: Could not determine Authority Key Identifier")
        template_authority_key_id = parent_key_id
    issuer = subject if parent is None else parent.subject
    if parent is not None and not _same_public_key(parent.public_key(), signer.public_key()):
        raise TlsError("Failed to create certificate: x509: provided PrivateKey doesn't match parent's PublicKey")
    authority_key_id = template_authority_key_id
    if _name_der(issuer) != _name_der(subject) and parent_key_id:
        authority_key_id = parent_key_id
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(serial)
               .not_valid_before(datetime.datetime.fromtimestamp(not_before // 10**9, datetime.timezone.utc))
               .not_valid_after(datetime.datetime.fromtimestamp(not_after // 10**9, datetime.timezone.utc)))
    # buildCertExtensions order: key usage, extended key usage, basic constraints, SKI, AKI, SAN
    if key_usage:
        builder = builder.add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE,
                                                                   _der_key_usage(key_usage)), critical=True)
    if ext_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ext_key_usage), critical=False)
    builder = builder.add_extension(x509.UnrecognizedExtension(
        ExtensionOID.BASIC_CONSTRAINTS, _der_basic_constraints(is_ca, path_len)), critical=True)
    if subject_key_id:
        builder = builder.add_extension(x509.SubjectKeyIdentifier(subject_key_id), critical=False)
    if authority_key_id:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(authority_key_id, None, None), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=_subject_is_empty(subject))
    try:
        cert = builder.sign(signer, _hash_for(signer))
    except (ValueError, TypeError) as exc:
        raise TlsError(f"Failed to create certificate: {exc}") from None
    return {"certPem": _pem_encode("CERTIFICATE", cert.public_bytes(serialization.Encoding.DER)),
            "validityStartTime": _go_time_text(not_before), "validityEndTime": _go_time_text(not_after),
            "readyForRenewal": _ready_for_renewal(inputs),
            "earlyRenewalHours": int(inputs.get("earlyRenewalHours") or 0), "isCaCertificate": is_ca,
            "setSubjectKeyId": bool(inputs.get("setSubjectKeyId")),
            "maxPathLength": None if max_path is None else int(max_path)}


def _subject_is_empty(name: x509.Name) -> bool:
    return _name_der(name) == b"\x30\x00"


def _der_items(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, contents) of each DER element in data (one-byte tags: all a certificate uses)."""
    i = 0
    while i + 2 <= len(data):
        tag, length, j = data[i], data[i + 1], i + 2
        if length & 0x80:
            length, j = int.from_bytes(data[j:j + (length & 0x7f)], "big"), j + (length & 0x7f)
        yield tag, data[j:j + length]
        i = j + length


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """One extension's value read from the DER, as Go finds it: cryptography's
    ``extensions`` refuses a whole certificate for one extension it deems invalid
    (decipher_only without key_agreement), crypto/x509 does not."""
    wanted = oid.dotted_string
    tbs = next(_der_items(cert.tbs_certificate_bytes))[1]
    for tag, contents in _der_items(tbs):
        if tag != 0xA3:  # [3] extensions
            continue
        for _, extension in _der_items(next(_der_items(contents))[1]):
            items = list(_der_items(extension))
            if items and items[0][0] == 0x06 and _oid_text(items[0][1]) == wanted:
                return items[-1][1]  # extnValue's contents
    return None


def _oid_text(encoded: bytes) -> str:
    arcs, value = [], 0
    for byte in encoded:
        value = (value << 7) | (byte & 0x7f)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _key_id_of(cert: x509.Certificate) -> bytes:
    """The parent's SubjectKeyId (b"" without one)."""
    value = _extension_value(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    inner = next(_der_items(value), None) if value else None
    return inner[1] if inner and inner[0] == 0x04 else b""


def _is_ca(cert: x509.Certificate) -> bool:
    """crypto/x509's IsCA: a basicConstraints extension with cA true."""
    value = _extension_value(cert, ExtensionOID.BASIC_CONSTRAINTS)
    body = next(_der_items(value), (0, b""))[1] if value else b""
    first = next(_der_items(body), None)
    return bool(first and first[0] == 0x01 and first[1] not in (b"", b"\x00"))


def _same_public_key(a: Any, b: Any) -> bool:
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*der) == b.public_bytes(*der)


def _tls_self_signed_cert(inputs: dict, warn: Callable[[str], None]) -> dict:
    key, algorithm = _input_key(inputs, "privateKeyPem", "Failed to parse private key PEM")
    fields, email, zero = _subject_fields(inputs.get("subject"))
    sans = _sans(list(inputs.get("dnsNames") or []), [_ip_address(i) for i in inputs.get("ipAddresses") or []],
                 list(inputs.get("uris") or []))
    outputs = _create_certificate(inputs, subject=_go_name(fields, email), subject_is_zero=zero, sans=sans,
                                  public_key=key.public_key(), signer=key, parent=None,
                                  authority_key_id_allowed=True)
    return {**outputs, "keyAlgorithm": algorithm, "setAuthorityKeyId": bool(inputs.get("setAuthorityKeyId"))}


def _tls_cert_request(inputs: dict, warn: Callable[[str], None]) -> dict:
    key, algorithm = _input_key(inputs, "privateKeyPem", "Failed to parse private key PEM")
    fields, email, _ = _subject_fields(inputs.get("subject"))
    sans = _sans(list(inputs.get("dnsNames") or []), [_ip_address(i) for i in inputs.get("ipAddresses") or []],
                 list(inputs.get("uris") or []))
    builder = x509.CertificateSigningRequestBuilder().subject_name(_go_name(fields, email))
    if sans:  # buildCSRExtensions: a non-critical SAN
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    try:
        request = builder.sign(key, _hash_for(key))
    except (ValueError, TypeError) as exc:
        raise TlsError(f"Error creating certificate request: {exc}") from None
    return {"certRequestPem": _pem_encode("CERTIFICATE REQUEST", request.public_bytes(serialization.Encoding.DER)),
            "keyAlgorithm": algorithm}


def _tls_locally_signed_cert(inputs: dict, warn: Callable[[str], None]) -> dict:
    try:
        request = x509.load_der_x509_csr(_decode_pem_of(inputs.get("certRequestPem") or "", "CERTIFICATE REQUEST"))
    except (TlsError, ValueError) as exc:
        raise TlsError(f"Failed to parse certificate request PEM: {exc}") from None
    ca_key, algorithm = _input_key(inputs, "caPrivateKeyPem", "Failed to parse CA private key PEM")
    try:
        ca_cert = x509.load_der_x509_certificate(_decode_pem_of(inputs.get("caCertPem") or "", "CERTIFICATE"))
    except (TlsError, ValueError) as exc:
        raise TlsError(f"Failed to parse CA certificate PEM: {exc}") from None
    if not _is_ca(ca_cert):
        warn("Potentially Invalid Certificate Authority: Certificate provided as Authority does not appear to be "
             "a valid Certificate Authority. The resulting certificate might fail certificate validation.")
    try:
        requested: list[x509.GeneralName] = list(
            request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        requested = []
    except ValueError as exc:
        raise TlsError(f"Failed to parse certificate request PEM: {exc}") from None
    # the template takes the request's DNSNames, IPAddresses and URIs (not its e-mail addresses)
    sans = _sans([n.value for n in requested if isinstance(n, x509.DNSName)],
                 [_ip_address(str(n.value)) for n in requested if isinstance(n, x509.IPAddress)],
                 [n.value for n in requested if isinstance(n, x509.UniformResourceIdentifier)])
    # the template's Subject is the request's parsed pkix.Name, marshalled again
    outputs = _create_certificate(inputs, subject=_go_name(_fields_of(request.subject)),
                                  subject_is_zero=len(request.subject) == 0, sans=sans,
                                  public_key=request.public_key(), signer=ca_key, parent=ca_cert,
                                  authority_key_id_allowed=False)
    return {**outputs, "caKeyAlgorithm": algorithm}


def _pem_id(kind: str, key: str) -> Callable[[dict], str]:
    return lambda outputs: _hash_for_state(_decode_pem_of(outputs[key], kind))


def _serial_id(outputs: dict) -> str:
    return str(x509.load_pem_x509_certificate(outputs["certPem"].encode()).serial_number)


class _Tls(_Handler):
    """tls:index/* as terraform-provider-tls's resources: generated once and kept in state;
    replaced when a RequiresReplace input changes (a PEM input: when its old value is a PEM,
    as requireReplaceIfStateContainsPEMString), or, for a certificate, once the apply runs
    within early_renewal_hours of its end (ModifyPlan); an earlyRenewalHours change is an update."""

    def __init__(self, generate: Callable[[dict, Callable[[str], None]], dict], id_of: Callable[[dict], str], *,
                 force_new: Iterable[str], pem_inputs: Iterable[str] = (), defaults: dict | None = None,
                 write_only: Iterable[str] = (), secret_outputs: Iterable[str] = (), renews: bool = False) -> None:
        self._generate, self._id_of = generate, id_of
        self.schema_replace_keys = frozenset(force_new)
        self.pem_inputs, self.write_only = frozenset(pem_inputs), frozenset(write_only)
        self.defaults, self.renews = dict(defaults or {}), renews
        self.secret_outputs = frozenset(secret_outputs)

    def planned(self, inputs: dict) -> dict:
        """The inputs as the provider plans them: defaults filled, write-only values left out."""
        return {**self.defaults, **{k: v for k, v in inputs.items() if k not in self.write_only and v is not None}}

    def changed(self, old_inputs, inputs):
        return super().changed(self.planned(old_inputs), self.planned(inputs))

    def provider_replaces(self, old, inputs, changed):
        if any(k in self.pem_inputs and _TLS_PEM_STATE.fullmatch(str(old["inputs"].get(k) or ""))
               for k in changed):
            return True
        return self.renews and self.due_for_renewal(old, inputs)

    def due_for_renewal(self, old: dict, inputs: dict, now_ns: int | None = None) -> bool:
        """modifyPlanIfCertificateReadyForRenewal: validity end minus early_renewal_hours has passed."""
        end = old.get("outputs", {}).get("validityEndTime")
        if not end:
            return False
        early = int(self.planned(inputs).get("earlyRenewalHours") or 0)
        return _parse_rfc3339_ns(end) - early * _HOUR_NS - (now_ns or time.time_ns()) <= 0

    def create(self, run, name, inputs):
        try:
            return self._generate(inputs, lambda message: run.warn(f"{name}: {message}", provider="pulumi-tls"))
        except TlsError as exc:
            raise run.error(f"{name}: {exc}", resource=name) from None

    def update(self, run, name, old, inputs):
        # updatedUsingPlan: the planned values become the state; nothing is generated again
        outputs = dict(old["outputs"])
        if self.renews:
            planned = self.planned(inputs)
            outputs.update(earlyRenewalHours=int(planned.get("earlyRenewalHours") or 0),
                           readyForRenewal=_ready_for_renewal(planned))
        return outputs

    def new_id(self, name, outputs):
        return self._id_of(outputs)


_TLS_CERT_DEFAULTS = {"earlyRenewalHours": 0, "isCaCertificate": False, "setSubjectKeyId": False}
_TLS_CERT_FORCE_NEW = ("validityPeriodHours", "allowedUses", "isCaCertificate", "maxPathLength", "setSubjectKeyId")
_TLS_NAMES_FORCE_NEW = ("dnsNames", "ipAddresses", "uris", "subject")
TLS_TYPES = {
    "tls:index/privateKey:PrivateKey": _Tls(
        _tls_private_key, _pem_id("PUBLIC KEY", "publicKeyPem"), force_new=("algorithm", "rsaBits", "ecdsaCurve"),
        defaults={"rsaBits": 2048, "ecdsaCurve": "P224"},
        secret_outputs=("privateKeyPem", "privateKeyOpenssh", "privateKeyPemPkcs8")),
    "tls:index/certRequest:CertRequest": _Tls(
        _tls_cert_request, _pem_id("CERTIFICATE REQUEST", "certRequestPem"),
        force_new=(*_TLS_NAMES_FORCE_NEW, "privateKeyPemWoVersion"), pem_inputs=("privateKeyPem",),
        write_only=("privateKeyPemWo",), secret_outputs=("privateKeyPem", "privateKeyPemWo")),
    "tls:index/selfSignedCert:SelfSignedCert": _Tls(
        _tls_self_signed_cert, _serial_id,
        force_new=(*_TLS_CERT_FORCE_NEW, *_TLS_NAMES_FORCE_NEW, "setAuthorityKeyId", "privateKeyPemWoVersion"),
        pem_inputs=("privateKeyPem",), defaults={**_TLS_CERT_DEFAULTS, "setAuthorityKeyId": False},
        write_only=("privateKeyPemWo",), secret_outputs=("privateKeyPem", "privateKeyPemWo"), renews=True),
    "tls:index/locallySignedCert:LocallySignedCert": _Tls(
        _tls_locally_signed_cert, _serial_id, force_new=(*_TLS_CERT_FORCE_NEW, "caPrivateKeyPemWoVersion"),
        pem_inputs=("certRequestPem", "caCertPem", "caPrivateKeyPem"), defaults=_TLS_CERT_DEFAULTS,
        write_only=("caPrivateKeyPemWo",), secret_outputs=("caPrivateKeyPem", "caPrivateKeyPemWo"), renews=True),
}


def tls_generate(typ: str, inputs: dict, warn: Callable[[str], None] = lambda _: None) -> tuple[str, dict]:
    """(id, outputs) of a new tls:index/* resource from plain inputs, as the provider's Create
    (tests/mockrun.py uses it for realistic mock outputs)."""
    handler = TLS_TYPES[typ]
    outputs = handler._generate(inputs, warn)
    return handler.new_id(typ, outputs), outputs


_HANDLERS: dict[str, _Handler] = {
    "command:remote:Command": _RemoteCommand(),
    "random:index/randomPassword:RandomPassword": _Random(_random_password, ("result", "bcryptHash"), None),
    "random:index/randomString:RandomString": _Random(lambda i: {"result": _random_text(i)}, (), "result"),
    "random:index/randomBytes:RandomBytes": _Random(_random_bytes, ("base64", "hex"), None),
    "random:index/randomId:RandomId": _Random(_random_id, (), "b64Url"),
    **TLS_TYPES,
}
_PASSIVE = _Handler()  # not emulated: outputs are the inputs


# -------------------------------------------------------------------------- plan

@dataclass
class _Registration:
    """What the engine knows of a registration beyond MockResourceArgs."""
    urn: str
    dependencies: list[str]
    delete_before_replace: bool
    ignore_changes: list[str]
    replace_on_changes: list[str]
    additional_secret_outputs: list[str]
    replacement_trigger: Any


def _canonical(value: Any) -> Any:
    """JSON-shaped copy for diffing and storing (assets and references by description)."""
    def opaque(obj: Any) -> str:
        detail = next((getattr(obj, a) for a in ("path", "uri", "text") if getattr(obj, a, None)), "")
        return f"<{type(obj).__name__} {detail}>".strip()
    plain = json.loads(json.dumps(value, sort_keys=True, default=opaque))
    return {k: v for k, v in plain.items() if v is not None} if isinstance(plain, dict) else plain


def _plan(old: dict | None, inputs: dict, reg: _Registration, handler: _Handler, force: bool) -> str:
    """One of create / same / update / replace / force, as the engine would decide.

    The provider's diff (pulumi-go-provider infer, Diff) compares old and new
    inputs: any change is an update, except schema replaceOnChanges fields; the
    engine adds the resource's replace_on_changes and replacement trigger. A
    handler may compare inputs its own way (defaults, write-only inputs) and ask
    for a replacement of its own (pulumi-tls: a PEM input, a certificate due for
    renewal).
    """
    if old is None:
        return "create"
    if force and handler.runs_commands:
        return "force"
    changed = handler.changed(old["inputs"], inputs)
    if reg.replacement_trigger != old.get("replacementTrigger"):
        return "replace"
    if handler.provider_replaces(old, inputs, changed):
        return "replace"
    if not changed:
        return "same"
    if handler.replace_on_any_change or any(_forces_replace(k, reg, handler) for k in changed):
        return "replace"
    return "update"


def _ignore_changes(old: dict | None, inputs: dict, reg: _Registration) -> None:
    """ignoreChanges: the engine keeps the old value (top-level names only here)."""
    for key in reg.ignore_changes if old else ():
        if key in old["inputs"]:
            inputs[key] = old["inputs"][key]


def _forces_replace(key: str, reg: _Registration, handler: _Handler) -> bool:
    if key in handler.schema_replace_keys:
        return True
    return any(p == "*" or p == key or p.startswith((key + "[", key + ".")) for p in reg.replace_on_changes)


# --------------------------------------------------------------------------- run

class _Skipped(Exception):
    """A registration after the first failure: the engine schedules nothing new."""


class _Run:
    """One apply or destroy: state, masking, SSH connections and the result."""

    def __init__(self, state: _StateFile, masker: _Masker, log: Callable[[str], None], force: bool):
        self.state, self.masker, self._log, self.force = state, masker, log, force
        self.ssh = _Dialer()
        self.result = ApplyResult()
        self.seen: set[str] = set()
        self.first_error: ApplyError | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.ssh.close()

    def log(self, line: str) -> None:
        self._log(self.masker.mask(line))

    def error(self, message: str, **details: Any) -> ApplyError:
        if details.get("stderr") is not None:
            details["stderr"] = self.masker.mask(details["stderr"])
        return ApplyError(self.masker.mask(message), **details)

    def warn(self, message: str, provider: str = "pulumi-command") -> None:
        with self._lock:
            self.result.warnings.append(message)
        self.log(f"harness: warning (as {provider}): {message}")

    def executed(self, name: str, host: str, step: str, seconds: float) -> None:
        with self._lock:
            self.result.executed.append(name)
        self.log(f"harness: {step:<6} {name} @ {host} ({seconds:.2f} s)")

    def _record(self, category: str, name: str) -> None:
        with self._lock:
            getattr(self.result, category).append(name)

    def _fail(self, exc: ApplyError) -> None:
        with self._lock:
            if self.first_error is None:
                self.first_error = exc

    # registration (executor threads)
    def register(self, args: _mocks.MockResourceArgs, reg: _Registration) -> tuple[str, dict]:
        if self.first_error is not None:
            raise _Skipped(f"{args.name}: not run after an earlier failure")
        handler = _HANDLERS.get(args.typ, _PASSIVE)
        if handler is _PASSIVE and not args.typ.startswith("pulumi:providers:"):
            self.log(f"harness: warning: {args.typ} {args.name} is not emulated (outputs = inputs)")
        with self._lock:
            self.seen.add(reg.urn)
        try:
            entry = self._converge(args, reg, handler)
        except ApplyError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # a harness or input problem still names the resource
            error = self.error(f"{args.name}: {type(exc).__name__}: {exc}", resource=args.name)
            self._fail(error)
            raise error from exc
        return entry["id"], _outputs(args.inputs, entry["outputs"], reg, handler)

    def _converge(self, args: _mocks.MockResourceArgs, reg: _Registration, handler: _Handler) -> dict:
        inputs = _canonical(_unwrap(args.inputs))
        old = self.state.get(reg.urn)
        _ignore_changes(old, inputs, reg)
        action = _plan(old, inputs, reg, handler, self.force)
        entry = {"urn": reg.urn, "name": args.name, "type": args.typ, "inputs": inputs,
                 "deps": reg.dependencies, "replacementTrigger": reg.replacement_trigger}
        if action == "same":
            self.state.keep({**old, **entry})
            self._record("unchanged", args.name)
            return {**old, **entry}
        if action == "replace" and reg.delete_before_replace:
            handler.delete(self, old)
            self.state.forget(old)
        if action == "update":
            outputs = handler.update(self, args.name, old, inputs)
        else:
            outputs = handler.create(self, args.name, inputs)
        kept_id = action in ("update", "force")
        entry.update(outputs=outputs, id=old["id"] if kept_id else handler.new_id(args.name, outputs),
                     secrets=self._entry_secrets(args.inputs, outputs, handler))
        cbd_old = old if action == "replace" and not reg.delete_before_replace else None
        self.state.put(entry, pending_old=cbd_old)
        self._record({"create": "created", "update": "updated"}.get(action, "replaced"), args.name)
        return entry

    @staticmethod
    def _entry_secrets(raw_inputs: dict, outputs: dict, handler: _Handler) -> list[str]:
        secret_outputs = [v for k, v in outputs.items() if k in handler.secret_outputs]
        found = set(_secret_inputs(raw_inputs)) | set(_string_leaves(secret_outputs))
        return sorted(s for s in found if s)  # an empty output (a P-224 key's OpenSSH form) hides nothing

    # deletes (main thread, after the program or from destroy)
    def delete_entries(self, entries: list[dict], *, report: bool = True) -> None:
        """Run deletes; a resource absent from this run's program is reported as deleted."""
        for entry in _delete_order(entries):
            handler = _HANDLERS.get(entry["type"], _PASSIVE)
            try:
                handler.delete(self, entry)
            except ApplyError as exc:
                self._fail(exc)
                raise
            self.state.forget(entry)
            if report and entry["urn"] not in self.seen:
                self._record("deleted", entry["name"])


def _outputs(raw_inputs: dict, outputs: dict, reg: _Registration, handler: _Handler) -> dict:
    """Inputs echoed (secret markers kept) plus the resource's outputs, secrets marked."""
    secret = set(reg.additional_secret_outputs) | handler.secret_outputs
    merged = {**raw_inputs, **outputs}
    return {key: rpc.wrap_rpc_secret(value) if key in secret and not rpc.is_rpc_secret(value) else value
            for key, value in merged.items()}


def _delete_order(entries: list[dict]) -> list[dict]:
    """Dependants before what they depend on; among the rest, the newest first."""
    remaining = sorted(entries, key=lambda e: e.get("seq", 0), reverse=True)
    ordered = []
    while remaining:
        depended_on = {dep for e in remaining for dep in e.get("deps", [])}
        ready = next((e for e in remaining if e["urn"] not in depended_on), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


# ----------------------------------------------------------------- the mocks side

_current = threading.local()


class _LiveMonitor(_mocks.MockMonitor):
    """MockMonitor that hands the engine-only parts of a registration to new_resource."""

    def RegisterResource(self, request):
        trigger = (json_format.MessageToDict(request.replacement_trigger)
                   if request.HasField("replacement_trigger") else None)
        _current.registration = _Registration(
            urn=self.make_urn(request.parent, request.type, request.name),
            dependencies=sorted(set(request.dependencies)),
            delete_before_replace=request.deleteBeforeReplace,
            ignore_changes=list(request.ignoreChanges),
            replace_on_changes=list(request.replaceOnChanges),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            replacement_trigger=_canonical(trigger))
        try:
            return super().RegisterResource(request)
        finally:
            _current.registration = None


class _LiveMocks(_mocks.Mocks):
    def __init__(self, run: _Run) -> None:
        self._run = run

    def new_resource(self, args: _mocks.MockResourceArgs) -> tuple[Optional[str], dict]:
        registration = getattr(_current, "registration", None)
        if not args.custom or registration is None:  # components, reads
            return args.name, args.inputs
        return self._run.register(args, registration)

    def call(self, args: _mocks.MockCallArgs) -> tuple[dict, None]:
        return {}, None


def _run_program(program_dir: str, project: str, stack: str, config: dict[str, object],
                 secret_keys: list[str], run: Any, parallel: int, preview: bool = False) -> dict:
    """Run __main__.py under the live mocks; returns the stack exports (secret markers kept).
    ``preview``: as under `pulumi preview` (``pulumi.runtime.is_dry_run()`` is True); ``run``
    registers each resource (an apply's ``_Run``, or lab/plan.py's read-only one)."""
    with _program_context(program_dir), _event_loop(parallel):
        _config.set_all_config({k: _config_string(v) for k, v in config.items()}, list(secret_keys))
        _settings.ROOT.set(None)
        mocks = _LiveMocks(run)
        pulumi.runtime.set_mocks(mocks, project, stack, preview=preview, monitor=_LiveMonitor(mocks))
        try:
            _sync_await(run_pulumi_func(lambda: runpy.run_path(program_dir, run_name="__main__")))
        except BaseException as exc:
            raise _as_apply_error(exc, run) from exc
        if run.first_error is not None:
            raise run.first_error
        return _stack_exports()


def _as_apply_error(exc: BaseException, run: _Run) -> BaseException:
    if run.first_error is not None:
        return run.first_error
    if isinstance(exc, (ApplyError, KeyboardInterrupt, SystemExit)):
        return exc
    return run.error(f"program failed: {type(exc).__name__}: {exc}")


def _stack_exports() -> dict:
    root = _settings.get_root_resource()
    if root is None or not root.outputs:
        return {}
    serialized = _sync_await(rpc.serialize_properties(dict(root.outputs), {}))
    return rpc.deserialize_properties(serialized)


@contextlib.contextmanager
def _program_context(program_dir: str) -> Iterator[None]:
    """What `pulumi up` gives a program: its directory as cwd and import root; reset after."""
    cwd, loaded = os.getcwd(), set(sys.modules)
    sys.path.insert(0, program_dir)
    os.chdir(program_dir)
    try:
        yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(program_dir)
        _forget_modules(program_dir, keep=loaded)  # the next apply may run a changed program
        _config.set_all_config({}, [])  # no secret config left in the process
        _settings.ROOT.set(None)
        _settings.configure(_settings.Settings(project=None, stack=None))


def _forget_modules(program_dir: str, keep: set[str]) -> None:
    # Only what this run imported: the caller's own imports from the same tree
    # (this harness, when the program is the repository) stay as they are.
    prefix = program_dir + os.sep
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        real = os.path.realpath(path)
        # A virtualenv inside the program directory holds libraries, not the program: SDK
        # packages register themselves globally once and must stay loaded.
        if name not in keep and real.startswith(prefix) and f"{os.sep}site-packages{os.sep}" not in real:
            del sys.modules[name]


@contextlib.contextmanager
def _event_loop(parallel: int) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop whose default executor (where new_resource runs) has `parallel` threads."""
    worker_loops: list[asyncio.AbstractEventLoop] = []

    def give_thread_a_loop() -> None:  # the SDK's monitor code needs one per thread
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        worker_loops.append(loop)

    executor = ThreadPoolExecutor(parallel, thread_name_prefix="harness", initializer=give_thread_a_loop)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    loop.set_exception_handler(_quiet_about_reported_errors)
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        executor.shutdown(wait=True)
        _cancel_leftovers(loop)
        for worker_loop in worker_loops:
            worker_loop.close()
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    # After a failure the SDK leaves registrations waiting (on the failed
    # resource, or on executor results it never collected); end them here
    # rather than have asyncio report "Task was destroyed but it is pending".
    leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


def _quiet_about_reported_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # The SDK leaves the failed resource's output futures unread; apply() has
    # already raised that error, so asyncio's "never retrieved" report is noise.
    if isinstance(context.get("exception"), (ApplyError, _Skipped)):
        return
    loop.default_exception_handler(context)
