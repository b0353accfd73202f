"""The real `pulumi preview` / `pulumi up` path, short of a Pulumi engine.

1. The CLI's config rules, as ported in components/pulumi_config_rules.py from pulumi/pulumi at
   1b5949891b3cefcb9974752b24a5ecef0acc86c8 (pkg/workspace/config.go: ``mergeConfig``,
   ``validateStackConfigValue``, ``formatMissingKeys``; sdk/go/common/workspace/project.go:
   ``Project.Validate``, ``ValidateConfigValue``): every shipped stack passes them, the port refuses
   what the CLI refuses with the CLI's own messages, and the defaults Pulumi.yaml declares (which
   the CLI hands to the program for a key a stack leaves out) read as unset.
2. A preview needs nothing local (no key file, no known_hosts, empty HOME); an update does, unless
   the key is secret config and the host keys are pinned.
3. Host keys: ed25519, then ECDSA, from known_hosts (hashed entries too); ssh-rsa never.
4. No command asks sshd to set PULUMI_COMMAND_* (addPreviousOutputInEnv false).
5. Previews stay readable: no command text is secret, only the stdin of secret-bearing steps.
6. A secret-bearing file whose validator fails: run the real install script with bash and check the
   text pulumi-command's error would carry holds no secret value.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import glob
import hashlib
import hmac
import json
import os
import secrets as pysecrets
import shutil
import subprocess

import pytest
import yaml
from pulumi.runtime import rpc

from components import pulumi_config_rules as rules
from components import ssh
from components.config import (ClusterConfig, ConfigError, RSA_PIN_REFUSED, build, load_stack_file,
                               unset_default)
from components.remote import install_script, script, secret_stdin, secret_values
from components.render import RenderedFile, masked_secrets, render_cluster
from tests.conftest import FAKE_TOKEN
from tests.mockrun import ROOT, run_ok, run_program, stack_config

PROJECT_FILE = os.path.join(ROOT, "Pulumi.yaml")
STACK_FILES = sorted(glob.glob(os.path.join(ROOT, "Pulumi.*.yaml")))
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"


def project() -> dict:
    return rules.load_yaml(PROJECT_FILE)


def lab_doc() -> dict:
    return rules.load_yaml(os.path.join(ROOT, "Pulumi.lab.yaml"))


def without(doc: dict, *keys: str) -> dict:
    doc = copy.deepcopy(doc)
    for k in keys:
        del doc["config"][f"high-cc-pbx:{k}"]
    return doc


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.metadata["key"]: f for f in dataclasses.fields(ClusterConfig)}


# --- 1. the CLI's config rules -------------------------------------------------------------------

def test_stack_files_found():
    names = {os.path.basename(p) for p in STACK_FILES}
    assert {"Pulumi.lab.yaml", "Pulumi.prod.yaml"} <= names


@pytest.mark.parametrize("stack_file", STACK_FILES, ids=os.path.basename)
def test_every_stack_file_passes_the_cli_rules(stack_file):
    assert rules.check_stack_file(PROJECT_FILE, stack_file) == []


def test_project_declarations_pass_the_cli_rules():
    doc = project()
    assert doc["name"] == "high-cc-pbx"
    assert rules.project_problems(doc) == []


def test_missing_required_key_is_refused_as_the_cli_says():
    assert rules.stack_problems(project(), "x", without(lab_doc(), "nodes")) == [
        "Stack 'x' is missing configuration value 'nodes'"]
    assert rules.stack_problems(project(), "x", without(lab_doc(), "vip", "nodes")) == [
        "Stack 'x' is missing configuration values 'nodes' and 'vip'"]
    assert rules.stack_problems(project(), "x", without(lab_doc(), "vip", "nodes", "environment")) == [
        "Stack 'x' is missing configuration values 'environment', 'nodes' and 'vip'"]
    # a key with a default may be left out: the CLI injects the default
    assert rules.stack_problems(project(), "x", without(lab_doc(), "lab", "etcd", "witness")) == []


def test_typed_values_are_checked_as_the_cli_does():
    doc = lab_doc()
    doc["config"]["high-cc-pbx:vip"] = "10.77.0.10"
    assert rules.stack_problems(project(), "x", doc) == [
        "Stack 'x' with configuration key 'vip' must be of type 'object'"]
    doc = lab_doc()
    doc["config"]["high-cc-pbx:nodes"] = ["pbx1", "pbx2"]
    assert rules.stack_problems(project(), "x", doc) == [
        "Stack 'x' with configuration key 'nodes' must be of type 'array<object>'"]
    doc = lab_doc()
    doc["config"]["high-cc-pbx:environment"] = {"kind": "lab"}
    assert rules.stack_problems(project(), "x", doc) == [
        "Stack 'x' with configuration key 'environment' must be of type 'string'"]


@pytest.mark.parametrize("value,ok", [("abc", False), ("42", True), (42, True), ("4 2", False), (True, False),
                                      ("-7", True), ("1.5", False)])
def test_integer_key(value, ok):
    proj = project()
    proj["config"]["replicas"] = {"type": "integer"}
    doc = lab_doc()
    doc["config"]["high-cc-pbx:replicas"] = value
    expected = [] if ok else ["Stack 'x' with configuration key 'replicas' must be of type 'integer'"]
    assert rules.stack_problems(proj, "x", doc) == expected


def test_typed_secret_key_demands_an_encrypted_value():
    proj = project()
    proj["config"]["apiToken"] = {"type": "string", "secret": True}
    doc = lab_doc()
    doc["config"]["high-cc-pbx:apiToken"] = "plain"
    assert rules.stack_problems(proj, "x", doc) == [
        "Stack 'x' with configuration key 'apiToken' must be encrypted as it's secret"]
    doc["config"]["high-cc-pbx:apiToken"] = {"secure": "v1:AAAA"}
    assert rules.stack_problems(proj, "x", doc) == []


def test_a_typed_secret_key_with_a_default_fails_every_stack_leaving_it_out():
    """Why Pulumi.yaml leaves the two secrets untyped: the injected default is plaintext."""
    proj = project()
    assert "type" not in proj["config"]["sshPrivateKey"] and proj["config"]["sshPrivateKey"]["secret"] is True
    proj["config"]["sshPrivateKey"]["type"] = "string"
    assert rules.stack_problems(proj, "lab", lab_doc()) == [
        "Stack 'lab' with configuration key 'sshPrivateKey' must be encrypted as it's secret"]


def test_bad_declarations_are_refused_as_the_cli_says():
    proj = project()
    del proj["config"]["nodes"]["items"]
    assert rules.project_problems(proj) == [
        "The configuration key 'nodes' declares an array but does not specify the underlying type via the "
        "'items' attribute"]
    proj = project()
    proj["config"]["lab"]["default"] = ""
    proj["config"]["noWitnessPolicy"]["default"] = {}
    assert rules.project_problems(proj) == [
        "The default value specified for configuration key 'lab' is not of the expected type 'object'",
        "The default value specified for configuration key 'noWitnessPolicy' is not of the expected type 'string'"]
    proj = project()
    proj["config"]["vip"]["value"] = {"address": "10.0.0.1"}
    proj["config"]["vip"]["default"] = {"address": "10.0.0.1"}
    assert rules.project_problems(proj) == [
        "project config 'vip' cannot have both a 'default' and 'value' attribute"]
    assert rules.project_problems({"config": {}}) == ["project is missing a 'name' attribute"]


def test_optional_keys_have_defaults_and_required_keys_are_set_by_every_stack():
    declared = project()["config"]
    fields = config_fields()
    assert set(declared) == set(fields)
    stacks = {p: set(rules.load_yaml(p)["config"]) for p in STACK_FILES}
    required = []
    for key, f in fields.items():
        default = unset_default(f)
        if default is dataclasses.MISSING:
            assert "default" not in declared[key], key
            required.append(key)
            for path, keys in stacks.items():
                assert f"high-cc-pbx:{key}" in keys, (os.path.basename(path), key)
        else:
            assert "default" in declared[key], key
            assert declared[key]["default"] == default, key
    assert sorted(required) == ["environment", "network", "nodes", "vip"]


def _cli_view(raw: dict, left_out_defaults: dict) -> dict:
    """What the program receives from the CLI: the stack's keys, then each left-out key's
    default (a string as itself, an object as JSON text)."""
    out = dict(raw)
    for key, default in left_out_defaults.items():
        out[key] = default if isinstance(default, str) else json.dumps(default)
    return out


def _bare_prod() -> dict:
    raw = stack_config("prod")
    bare = {k: raw[k] for k in ("environment", "nodes", "network", "vip")}
    bare["nodes"] = [{**n, "hostKey": f"{ED25519}{i}pinned"} for i, n in enumerate(bare["nodes"])]
    bare["noWitnessPolicy"] = "manual-promotion"
    return bare


@pytest.mark.parametrize("case", ["lab", "prod", "bare"])
def test_injected_defaults_read_as_unset(case, lab_config, prod_config):
    raw, secret_keys = {"lab": (lab_config, []), "prod": (prod_config, ["vendorRepoToken"]),
                        "bare": (_bare_prod(), [])}[case]
    declared = project()["config"]
    left_out = {k: d["default"] for k, d in declared.items() if k not in raw}
    assert left_out, "the stack sets every key: nothing to inject"
    if case == "bare":
        assert {"ssh", "witness", "packages", "sshPrivateKey", "vendorRepoToken"} <= set(left_out)
    absent, _ = run_ok(raw, secret_keys)
    injected, _ = run_ok(_cli_view(raw, left_out), secret_keys)
    assert list(injected.resources) == list(absent.resources)
    for name, rec in absent.resources.items():
        other = injected.resources[name]
        assert (other.type, other.parent, other.depends_on) == (rec.type, rec.parent, rec.depends_on), name
        assert other.inputs == rec.inputs, name
    assert len(absent.commands()) > 50


def test_required_keys_alone_fail_alike_with_and_without_injected_defaults():
    bare = {k: v for k, v in _bare_prod().items() if k != "noWitnessPolicy"}
    left_out = {k: d["default"] for k, d in project()["config"].items() if k not in bare}
    absent, _ = run_program(bare)
    injected, _ = run_program(_cli_view(bare, left_out))
    assert absent.error is not None and "noWitnessPolicy" in str(absent.error)
    assert str(injected.error) == str(absent.error)
    assert not absent.resources and not injected.resources


# --- 2. preview without host access; an update with secret config only -----------------------------

def _missing_files_config(stack: str, tmp_path) -> tuple[dict, list[str]]:
    raw = stack_config(stack)
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": str(tmp_path / "absent" / "id_ed25519"),
                  "knownHostsFile": str(tmp_path / "absent" / "known_hosts")}
    if stack == "prod":
        raw["vendorRepoToken"] = FAKE_TOKEN
        return raw, ["vendorRepoToken"]
    return raw, []


@pytest.mark.parametrize("stack", ["lab", "prod"])
def test_preview_needs_nothing_local(stack, tmp_path, monkeypatch, ssh_files, caplog):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    raw, secret_keys = _missing_files_config(stack, tmp_path)
    with caplog.at_level("WARNING"):
        preview, _ = run_program(raw, secret_keys, preview=True)
    assert preview.error is None, repr(preview.error)
    logged = caplog.text
    assert "ssh.knownHostsFile" in logged and "ssh.privateKeyFile" in logged
    normal_raw = {**raw, "ssh": {**raw["ssh"], **ssh_files}}
    normal, _ = run_ok(normal_raw, secret_keys)
    assert set(preview.resources) == set(normal.resources)
    assert len(preview.commands()) == len(normal.commands()) > 50
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("stack", ["lab", "prod"])
def test_update_with_missing_files_fails_before_any_resource(stack, tmp_path, monkeypatch, ssh_files):
    monkeypatch.setenv("HOME", str(tmp_path))
    raw, secret_keys = _missing_files_config(stack, tmp_path)
    graph, _ = run_program(raw, secret_keys)
    assert graph.error is not None
    assert "ssh.knownHostsFile" in str(graph.error) and raw["ssh"]["knownHostsFile"] in str(graph.error)
    assert "ssh.privateKeyFile" in str(graph.error)  # every problem at once, not one per run
    assert not graph.commands() and not graph.resources
    # known_hosts present, key file still absent
    raw["ssh"] = {**raw["ssh"], "knownHostsFile": ssh_files["knownHostsFile"]}
    graph, _ = run_program(raw, secret_keys)
    assert graph.error is not None
    assert "ssh.privateKeyFile" in str(graph.error) and "sshPrivateKey" in str(graph.error)
    assert not graph.commands() and not graph.resources


def _pinned_secret_key_config(stack: str) -> tuple[dict, list[str], str]:
    raw = stack_config(stack)
    raw["ssh"] = {k: v for k, v in raw["ssh"].items() if k not in ("privateKeyFile", "knownHostsFile")}
    raw["nodes"] = [{**n, "hostKey": f"{ED25519}{i}pinned"} for i, n in enumerate(raw["nodes"])]
    raw["witness"] = {**raw["witness"], "hostKey": f"{ED25519}Wpinned"}
    key = f"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn{pysecrets.token_hex(12)}\n-----END OPENSSH PRIVATE KEY-----\n"
    raw["sshPrivateKey"] = key
    keys = ["sshPrivateKey"]
    if stack == "prod":
        raw["vendorRepoToken"] = FAKE_TOKEN
        keys.append("vendorRepoToken")
    return raw, keys, key


@pytest.mark.parametrize("stack,newline", [("lab", True), ("prod", True), ("prod", False)])
def test_update_with_secret_key_and_pinned_hosts_needs_no_file(stack, newline, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    raw, secret_keys, key = _pinned_secret_key_config(stack)
    if not newline:  # `pulumi config set --secret KEY < FILE` drops the final newline; ssh needs it back
        raw["sshPrivateKey"] = key.rstrip("\n")
    graph, _ = run_ok(raw, secret_keys)
    pins = {n["address"]: n["hostKey"] for n in raw["nodes"]} | {raw["witness"]["address"]: raw["witness"]["hostKey"]}
    commands = graph.commands()
    assert len(commands) > 50
    for c in commands:
        assert rpc.is_rpc_secret(c.inputs["connection"]), c.name
        conn = rpc.unwrap_rpc_secret(c.inputs["connection"])
        assert conn["privateKey"] == key, c.name
        assert conn["hostKey"] == pins[conn["host"]], c.name
        for field in ("create", "delete", "stdin"):
            assert key not in str(rpc.unwrap_rpc_secret(c.inputs.get(field, ""))), (c.name, field)


def test_secret_key_and_key_file_together_are_refused(ssh_files):
    raw, secret_keys, _ = _pinned_secret_key_config("lab")
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": ssh_files["privateKeyFile"]}
    graph, _ = run_program(raw, secret_keys)
    assert graph.error is not None and "sshPrivateKey" in str(graph.error)
    assert not graph.resources


# --- 3. host keys --------------------------------------------------------------------------------

def _known_hosts(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "known_hosts"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_ed25519_pinned_even_when_rsa_comes_first(tmp_path):
    kh = _known_hosts(tmp_path, ["# ssh-keyscan 10.0.0.5", "10.0.0.5 ssh-rsa AAAAB3NzaC1yc2EAAAArsa",
                                 "10.0.0.5 ecdsa-sha2-nistp256 AAAAE2VjZHNhecdsa",
                                 "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIed",
                                 "10.0.0.6 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIother"])
    assert ssh.lookup_host_key(kh, "10.0.0.5", 22) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIed"
    assert ssh.lookup_host_key(kh, "10.0.0.7", 22) is None


def test_ecdsa_preferred_over_rsa(tmp_path):
    kh = _known_hosts(tmp_path, ["pbx1,10.0.0.5 ssh-rsa AAAAB3NzaC1yc2EAAAArsa",
                                 "pbx1,10.0.0.5 ecdsa-sha2-nistp384 AAAAE2VjZHNhecdsa384"])
    assert ssh.lookup_host_key(kh, "10.0.0.5", 22) == "ecdsa-sha2-nistp384 AAAAE2VjZHNhecdsa384"


def test_rsa_only_host_is_refused_with_the_reason(tmp_path):
    kh = _known_hosts(tmp_path, ["10.0.0.5 ssh-rsa AAAAB3NzaC1yc2EAAAArsa",
                                 "@revoked 10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIrevoked"])
    with pytest.raises(ConfigError) as err:
        ssh.lookup_host_key(kh, "10.0.0.5", 22)
    text = str(err.value)
    assert "ssh.knownHostsFile" in text and "10.0.0.5" in text and "ssh-rsa" in text
    assert "OpenSSH 8.8" in text and "ssh-keyscan -t ed25519" in text


def test_rsa_only_known_hosts_fails_the_update(tmp_path, ssh_files):
    raw = stack_config("lab")
    hosts = [n["address"] for n in raw["nodes"]] + [raw["witness"]["address"]]
    kh = _known_hosts(tmp_path, [f"{h} ssh-rsa AAAAB3NzaC1yc2EAAAArsa{i}" for i, h in enumerate(hosts)])
    raw["ssh"] = {**raw["ssh"], "privateKeyFile": ssh_files["privateKeyFile"], "knownHostsFile": kh}
    graph, _ = run_program(raw)
    assert graph.error is not None and "OpenSSH 8.8" in str(graph.error)
    assert all(h in str(graph.error) for h in hosts)
    assert not graph.resources


def test_rsa_host_key_pin_is_refused_by_check(tmp_path):
    doc = lab_doc()
    doc["config"]["high-cc-pbx:nodes"][0]["hostKey"] = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"
    path = tmp_path / "Pulumi.rsa.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_stack_file(str(path))
    assert f"nodes[0].hostKey: 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7' {RSA_PIN_REFUSED}" in err.value.errors
    assert "OpenSSH 8.8" in RSA_PIN_REFUSED and "ed25519" in RSA_PIN_REFUSED
    raw = stack_config("lab")
    raw["witness"] = {**raw["witness"], "hostKey": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"}
    with pytest.raises(ConfigError) as err:
        build(raw)
    assert any(e.startswith("witness.hostKey:") and RSA_PIN_REFUSED in e for e in err.value.errors)
    raw["witness"]["hostKey"] = f"{ED25519}ok"
    build(raw)  # the same stack with an ed25519 pin is fine


def _hash_host(host: str, salt: bytes) -> str:
    mac = hmac.new(salt, host.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


def test_hashed_known_hosts_entries_match(tmp_path):
    lines = ["10.0.0.5 ssh-rsa AAAAB3NzaC1yc2EAAAArsa", "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIed",
             "[10.0.0.6]:2222 ecdsa-sha2-nistp256 AAAAE2VjZHNhecdsa", "10.0.0.6 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5port22"]
    kh = _known_hosts(tmp_path, lines)
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-H", "-f", kh], check=True, capture_output=True, timeout=30)
    else:
        salt = os.urandom(20)
        hashed = [_hash_host(line.split()[0], salt) + " " + line.split(" ", 1)[1] for line in lines]
        _known_hosts(tmp_path, hashed)
    text = open(kh, encoding="utf-8").read()
    assert "10.0.0.5" not in text and "10.0.0.6" not in text and text.count("|1|") == 4
    assert ssh.lookup_host_key(kh, "10.0.0.5", 22) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIed"
    assert ssh.lookup_host_key(kh, "10.0.0.6", 2222) == "ecdsa-sha2-nistp256 AAAAE2VjZHNhecdsa"
    assert ssh.lookup_host_key(kh, "10.0.0.6", 22) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5port22"
    assert ssh.lookup_host_key(kh, "10.0.0.7", 22) is None


def test_hashed_entry_computed_like_openssh(tmp_path):
    salt = bytes(range(20))
    kh = _known_hosts(tmp_path, [f"{_hash_host('10.0.0.9', salt)} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIh"])
    assert ssh.lookup_host_key(kh, "10.0.0.9", 22) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIh"
    assert ssh.lookup_host_key(kh, "10.0.0.90", 22) is None


# --- 4, 5. command inputs of both stacks ---------------------------------------------------------

def test_no_command_adds_previous_output_to_env(stack):
    graph, _, _ = stack
    commands = graph.commands()
    assert len(commands) > 50
    assert [c.name for c in commands if c.inputs.get("addPreviousOutputInEnv") is not False] == []


def _secret_file_commands(graph, raw: dict) -> set[str]:
    """Names of the file commands installing a RenderedFile with secrets (from the render layer)."""
    cluster, _ = build(raw)
    rendered = render_cluster(cluster, masked_secrets())
    secret_files = {(host, f.slug) for host, files in rendered.items() for f in files if f.secrets}
    out, unmatched, installs = set(), [], 0
    for c in graph.commands():
        if "-file-" not in c.name:
            continue
        installs += 1
        prefix, slug = c.name.split("-file-", 1)
        hosts = [h for h in rendered if prefix == h or prefix.endswith(f"-{h}")]
        if len(hosts) != 1 or slug not in {f.slug for f in rendered[hosts[0]]}:
            unmatched.append(c.name)
        elif (hosts[0], slug) in secret_files:
            out.add(c.name)
    # every install command is one rendered file of its host, and every rendered file is installed
    assert unmatched == [] and installs == sum(len(files) for files in rendered.values())
    assert len(out) == len(secret_files), sorted(secret_files)
    return out


def test_previews_stay_readable(stack):
    graph, _, raw = stack
    commands = graph.commands()
    assert [c.name for c in commands if rpc.is_rpc_secret(c.inputs["create"])] == []
    assert [c.name for c in commands if rpc.is_rpc_secret(c.inputs.get("delete"))] == []
    for c in commands:
        triggers = c.inputs.get("triggers") or []
        assert not rpc.is_rpc_secret(c.inputs.get("triggers")), c.name
        assert not any(rpc.is_rpc_secret(t) for t in triggers), c.name
    secret_stdin_cmds = {c.name for c in commands if rpc.is_rpc_secret(c.inputs.get("stdin"))}
    expected = _secret_file_commands(graph, raw) | {f"postgres-{n['name']}-roles" for n in raw["nodes"]}
    if raw.get("witness"):
        expected.add("etcd-auth")
    assert secret_stdin_cmds == expected
    # most commands stay readable: the secret ones are the credential and certificate files (per
    # node its credentials and a certificate and key per TLS service), the roles steps and the etcd bootstrap
    assert 0 < len(secret_stdin_cmds) < len(commands) / 4, (len(secret_stdin_cmds), len(commands))
    for c in commands:
        assert (c.inputs.get("logging") == "none") == (c.name in secret_stdin_cmds), c.name


# --- 6. no secret in any error -------------------------------------------------------------------

FAILING = "cat {path}; echo 'bad line: ' $(grep pw {path}); false"
MASKED = ("# app.conf\n"
          "redis_pw=@@SECRET:redis_cdr@@\n"
          "backup_pw=@@SECRET:redis_cdr@@\n"
          "etcd_pw=@@SECRET:etcd_root@@\n"
          "port=6379\n")


def _real(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace(f"@@SECRET:{name}@@", value)
    return text


def _run_install(f: RenderedFile, real: str, values: list[str] | None) -> tuple[int, str, str, str]:
    """Run the install step as remote.remote_file builds it; returns (rc, stdout, stderr, script)."""
    body = script("pbx1", f"install {f.path}", install_script(f, hashlib.sha256(real.encode()).hexdigest()))
    proc = subprocess.run(["bash", "-c", body], input=secret_stdin(real, values), capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr, body


def _pulumi_command_error(rc: int, stdout: str, stderr: str, body: str) -> str:
    """The text of pulumi-command's error for a failed step (Go's %q of the command)."""
    return f"Process exited with status {rc}: running {json.dumps(body)}:\n{stdout}{stderr}"


def _stage_dirs_hold(value: str) -> list[str]:
    found = []
    for d in glob.glob("/tmp/hapbx-stage.*"):
        for root, _, files in os.walk(d):
            for name in files:
                try:
                    with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
                        if value in fh.read():
                            found.append(os.path.join(root, name))
                except OSError:
                    pass
    return found


def _secret_pair() -> dict[str, str]:
    return {"redis_cdr": pysecrets.token_urlsafe(24), "etcd_root": pysecrets.token_urlsafe(24)}


def test_failing_validator_output_is_masked(tmp_path):
    values = _secret_pair()
    f = RenderedFile(str(tmp_path / "x" / "app.conf"), content=MASKED, secrets=("redis_cdr", "etcd_root"),
                     validate=FAILING, mode="0600")
    real = _real(MASKED, values)
    found = secret_values(f.content, real)
    assert sorted(found) == sorted(values.values())
    rc, out, err, body = _run_install(f, real, found)
    text = _pulumi_command_error(rc, out, err, body)
    assert rc != 0
    assert "hapbx: [pbx1: install " in err and "cat rejected the new file" in err
    assert "[secret]" in err and "bad line:" in err and "port=6379" in err
    assert err.count("[secret]") >= 6  # cat: three lines, grep: three lines
    for value in values.values():
        assert value not in text
        assert base64.b64encode(value.encode()).decode() not in text
        assert _stage_dirs_hold(value) == []
    assert not (tmp_path / "x" / "app.conf").exists()


def test_unaligned_content_withholds_the_output(tmp_path):
    values = _secret_pair()
    f = RenderedFile(str(tmp_path / "x" / "app.conf"), content=MASKED, secrets=("redis_cdr", "etcd_root"),
                     validate=FAILING, mode="0600")
    real = _real(MASKED, values).replace("port=6379", "port=6380")  # not what was rendered masked
    assert secret_values(f.content, real) is None
    rc, out, err, body = _run_install(f, real, None)
    text = _pulumi_command_error(rc, out, err, body)
    assert rc != 0
    assert "rejected the new file" in text and "(output withheld: the file holds secrets)" in text
    assert "bad line" not in out + err and "pw=" not in out + err
    for value in values.values():
        assert value not in text
        assert _stage_dirs_hold(value) == []


def _id(flag: str) -> str:
    return subprocess.run(["id", flag], check=True, capture_output=True, text=True, timeout=10).stdout.strip()


def test_passing_validator_installs_the_real_content(tmp_path):
    values = _secret_pair()
    dest = tmp_path / "etc" / "hapbx" / "app.conf"
    f = RenderedFile(str(dest), content=MASKED, secrets=("redis_cdr", "etcd_root"),
                     validate="grep -q '^redis_pw=' {path}", owner=_id("-un"), group=_id("-gn"), mode="0600")
    real = _real(MASKED, values)
    rc, out, err, _ = _run_install(f, real, secret_values(f.content, real))
    assert (rc, out, err) == (0, "changed\n", "")
    assert dest.read_text() == real
    assert oct(dest.stat().st_mode & 0o7777) == "0o600"
    rc, out, err, _ = _run_install(f, real, secret_values(f.content, real))
    assert (rc, out, err) == (0, "unchanged\n", "")
    dest.chmod(0o644)  # drift in mode alone is repaired
    rc, out, _, _ = _run_install(f, real, secret_values(f.content, real))
    assert (rc, out) == (0, "changed\n") and oct(dest.stat().st_mode & 0o7777) == "0o600"
    # damaged in transit: the digest is of other content
    body = script("pbx1", "install", install_script(f, hashlib.sha256(b"other").hexdigest()))
    proc = subprocess.run(["bash", "-c", body], input=secret_stdin(real, secret_values(f.content, real)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "content damaged in transit" in proc.stderr
    assert dest.read_text() == real
    for value in values.values():
        assert _stage_dirs_hold(value) == []


SHAPES = {
    "no-placeholder": ("no placeholder\n", "no placeholder\n", []),
    "at-start": ("@@SECRET:redis_cdr@@\nrest\n", "S3cr3t\nrest\n", ["S3cr3t"]),
    "at-end": ("pw=@@SECRET:redis_cdr@@", "pw=S3cr3t", ["S3cr3t"]),
    "same-twice": ("a=@@SECRET:redis_cdr@@\nb=@@SECRET:redis_cdr@@\n", "a=same\nb=same\n", ["same"]),
    "longest-first": ("a=@@SECRET:redis_cdr@@;b=@@SECRET:etcd_root@@;\n", "a=x;b=longer;\n", ["longer", "x"]),
    "empty-value": ("pw=@@SECRET:redis_cdr@@\n", "pw=\n", []),
    "middle-piece-equals-last": ("@@SECRET:redis_cdr@@;@@SECRET:etcd_root@@;", "abc;de;", ["abc", "de"]),
    "adjacent": ("@@SECRET:redis_cdr@@@@SECRET:etcd_root@@\n", "ab\n", None),
    "adjacent-at-end": ("pw=@@SECRET:redis_cdr@@@@SECRET:etcd_root@@", "pw=ab", None),
    "prefix-mismatch": ("pw=@@SECRET:redis_cdr@@\n", "password=x\n", None),
    "suffix-mismatch": ("pw=@@SECRET:redis_cdr@@\nport=1\n", "pw=x\nport=2\n", None),
    "truncated": ("a=@@SECRET:redis_cdr@@\nb=@@SECRET:etcd_root@@\n", "a=x\n", None),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_secret_values_shapes(shape):
    masked, real, expected = SHAPES[shape]
    assert secret_values(masked, real) == expected


def test_secret_stdin_header():
    assert secret_stdin("body\n", None) == "-1\nbody\n"
    assert secret_stdin("body\n", []) == "0\nbody\n"
    assert secret_stdin("x\n", ["longer", "s"]) == (
        f"2\n{base64.b64encode(b'longer').decode()}\n{base64.b64encode(b's').decode()}\nx\n")
