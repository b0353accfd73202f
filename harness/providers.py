"""The providers the harness emulates: pulumi-command's remote Command, pulumi-random and pulumi-tls."""
from __future__ import annotations

import base64
import secrets as _csprng
import string
import time
from typing import TYPE_CHECKING, Callable, Iterable

import bcrypt
import paramiko

from harness.result import ApplyError
from harness.ssh_pool import Conn, NoRetry, execute, go_quote, open_session, trim
from harness.tls import (HOUR_NS, TLS_PEM_STATE, TlsError, parse_rfc3339_ns, pem_id, ready_for_renewal, serial_id,
                         tls_cert_request, tls_locally_signed_cert, tls_private_key, tls_self_signed_cert)

if TYPE_CHECKING:
    from harness.engine import Run

# pulumi-command's env names for the previous run's output (util/util.go).
_PREVIOUS_STDOUT, _PREVIOUS_STDERR = "PULUMI_COMMAND_STDOUT", "PULUMI_COMMAND_STDERR"


class Handler:
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

    def create(self, run: "Run", name: str, inputs: dict) -> dict:
        return {}

    def update(self, run: "Run", name: str, old: dict, inputs: dict) -> dict:
        return self.create(run, name, inputs)

    def delete(self, run: "Run", entry: dict) -> None:
        return None

    def new_id(self, name: str, outputs: dict) -> str:
        return name


class _RemoteCommand(Handler):
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

    def _run(self, run: "Run", name: str, step: str, inputs: dict, command: str | None,
             previous: dict | None) -> dict:
        base = previous or {"stdout": "", "stderr": ""}
        if command is None:
            return dict(base)  # nothing to run: the provider keeps the previous outputs
        conn = Conn.from_input(inputs["connection"])
        started = time.monotonic()
        try:
            with run.ssh.connect(conn) as transport:
                channel = open_session(transport, _previous_env(inputs, base), run.warn)
                try:
                    done = execute(channel, command, inputs.get("stdin") or "", inputs.get("environment") or {})
                finally:
                    channel.close()
        except (NoRetry, ConnectionError, OSError, EOFError, paramiko.SSHException) as exc:
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
        return {"stdout": trim(done.stdout), "stderr": trim(done.stderr)}


def _previous_env(inputs: dict, previous: dict) -> dict[str, str]:
    if inputs.get("addPreviousOutputInEnv") is False:
        return {}
    pairs = ((_PREVIOUS_STDOUT, previous.get("stdout")), (_PREVIOUS_STDERR, previous.get("stderr")))
    return {key: value for key, value in pairs if value}


class _Random(Handler):
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


# pulumi-tls 5.6.2: when a resource is replaced or updated; what it generates is harness/tls.py

class _Tls(Handler):
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
        if any(k in self.pem_inputs and TLS_PEM_STATE.fullmatch(str(old["inputs"].get(k) or ""))
               for k in changed):
            return True
        return self.renews and self.due_for_renewal(old, inputs)

    def due_for_renewal(self, old: dict, inputs: dict, now_ns: int | None = None) -> bool:
        """modifyPlanIfCertificateReadyForRenewal: validity end minus early_renewal_hours has passed."""
        end = old.get("outputs", {}).get("validityEndTime")
        if not end:
            return False
        early = int(self.planned(inputs).get("earlyRenewalHours") or 0)
        return parse_rfc3339_ns(end) - early * HOUR_NS - (now_ns or time.time_ns()) <= 0

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
                           readyForRenewal=ready_for_renewal(planned))
        return outputs

    def new_id(self, name, outputs):
        return self._id_of(outputs)


_TLS_CERT_DEFAULTS = {"earlyRenewalHours": 0, "isCaCertificate": False, "setSubjectKeyId": False}
_TLS_CERT_FORCE_NEW = ("validityPeriodHours", "allowedUses", "isCaCertificate", "maxPathLength", "setSubjectKeyId")
_TLS_NAMES_FORCE_NEW = ("dnsNames", "ipAddresses", "uris", "subject")
TLS_TYPES = {
    "tls:index/privateKey:PrivateKey": _Tls(
        tls_private_key, pem_id("PUBLIC KEY", "publicKeyPem"), force_new=("algorithm", "rsaBits", "ecdsaCurve"),
        defaults={"rsaBits": 2048, "ecdsaCurve": "P224"},
        secret_outputs=("privateKeyPem", "privateKeyOpenssh", "privateKeyPemPkcs8")),
    "tls:index/certRequest:CertRequest": _Tls(
        tls_cert_request, pem_id("CERTIFICATE REQUEST", "certRequestPem"),
        force_new=(*_TLS_NAMES_FORCE_NEW, "privateKeyPemWoVersion"), pem_inputs=("privateKeyPem",),
        write_only=("privateKeyPemWo",), secret_outputs=("privateKeyPem", "privateKeyPemWo")),
    "tls:index/selfSignedCert:SelfSignedCert": _Tls(
        tls_self_signed_cert, serial_id,
        force_new=(*_TLS_CERT_FORCE_NEW, *_TLS_NAMES_FORCE_NEW, "setAuthorityKeyId", "privateKeyPemWoVersion"),
        pem_inputs=("privateKeyPem",), defaults={**_TLS_CERT_DEFAULTS, "setAuthorityKeyId": False},
        write_only=("privateKeyPemWo",), secret_outputs=("privateKeyPem", "privateKeyPemWo"), renews=True),
    "tls:index/locallySignedCert:LocallySignedCert": _Tls(
        tls_locally_signed_cert, serial_id, force_new=(*_TLS_CERT_FORCE_NEW, "caPrivateKeyPemWoVersion"),
        pem_inputs=("certRequestPem", "caCertPem", "caPrivateKeyPem"), defaults=_TLS_CERT_DEFAULTS,
        write_only=("caPrivateKeyPemWo",), secret_outputs=("caPrivateKeyPem", "caPrivateKeyPemWo"), renews=True),
}


def tls_generate(typ: str, inputs: dict, warn: Callable[[str], None] = lambda _: None) -> tuple[str, dict]:
    """(id, outputs) of a new tls:index/* resource from plain inputs, as the provider's Create
    (harness/mocks.py's recording mocks use it for realistic outputs)."""
    handler = TLS_TYPES[typ]
    outputs = handler._generate(inputs, warn)
    return handler.new_id(typ, outputs), outputs


HANDLERS: dict[str, Handler] = {
    "command:remote:Command": _RemoteCommand(),
    "random:index/randomPassword:RandomPassword": _Random(_random_password, ("result", "bcryptHash"), None),
    "random:index/randomString:RandomString": _Random(lambda i: {"result": _random_text(i)}, (), "result"),
    "random:index/randomBytes:RandomBytes": _Random(_random_bytes, ("base64", "hex"), None),
    "random:index/randomId:RandomId": _Random(_random_id, (), "b64Url"),
    **TLS_TYPES,
}
PASSIVE = Handler()  # not emulated: outputs are the inputs
