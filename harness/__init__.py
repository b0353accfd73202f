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

One module per job:

* ``engine``: one apply or destroy (``apply``, ``destroy``), bringing the others together;
* ``runner``: runs the program as `pulumi up` does (directory, config, parallelism);
* ``mocks``: the Pulumi SDK's mock runtime, for the engine and for the tests' recording mocks;
* ``planner``: create / same / update / replace per registration, the order of deletes;
* ``providers``: pulumi-command, pulumi-random and pulumi-tls as the harness emulates them;
* ``tls``: pulumi-tls's keys and certificates, built as terraform-provider-tls builds them;
* ``ssh_pool``: SSH connections as pulumi-command dials them;
* ``state``: the stack's state file;
* ``secrets``: which values are secret, and masking them;
* ``result``: ApplyResult and ApplyError;
* ``preview``: `pulumi preview` from the state, nothing run.

``harness.apply``, ``harness.destroy`` and the names below are the API; they load the
engine (paramiko, cryptography) only when first used, so ``harness.mocks`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_API = {
    "apply": "engine", "destroy": "engine", "engine_parallelism": "engine",
    "ApplyResult": "result", "ApplyError": "result",
    "MASK": "secrets", "STATE_VERSION": "state",
    "TLS_TYPES": "providers", "tls_generate": "providers", "TlsError": "tls",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.{_API[name]}"), name)
