"""Live harness: run the real Pulumi program, execute its remote commands for real.

No Pulumi CLI can be installed on the development machines, so tier 3 runs the
program under ``pulumi.runtime.set_mocks`` with a monitor whose ``new_resource``
does what the engine and the providers would do:

* ``command:remote:Command`` runs its ``create``/``update``/``delete`` over SSH
  (paramiko) with the connection the resource carries: pinned host key, bounded
  dial retries, ``stdin`` fed, stdout/stderr returned with one trailing newline
  trimmed (pulumi-command 1.2.1, ``remote/commandOutputs.go``).
* ``random:index/*`` resources are generated once and kept in the state file.
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
* types other than remote.Command and random.* are passed through (warned).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import io
import json
import logging
import os
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


_HANDLERS: dict[str, _Handler] = {
    "command:remote:Command": _RemoteCommand(),
    "random:index/randomPassword:RandomPassword": _Random(_random_password, ("result", "bcryptHash"), None),
    "random:index/randomString:RandomString": _Random(lambda i: {"result": _random_text(i)}, (), "result"),
    "random:index/randomBytes:RandomBytes": _Random(_random_bytes, ("base64", "hex"), None),
    "random:index/randomId:RandomId": _Random(_random_id, (), "b64Url"),
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
    engine adds the resource's replace_on_changes and replacement trigger.
    """
    if old is None:
        return "create"
    if force and handler.runs_commands:
        return "force"
    changed = {k for k in set(old["inputs"]) | set(inputs) if old["inputs"].get(k) != inputs.get(k)}
    if reg.replacement_trigger != old.get("replacementTrigger"):
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

    def warn(self, message: str) -> None:
        with self._lock:
            self.result.warnings.append(message)
        self.log(f"harness: warning (as pulumi-command): {message}")

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
        return sorted(set(_secret_inputs(raw_inputs)) | set(_string_leaves(secret_outputs)))

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
