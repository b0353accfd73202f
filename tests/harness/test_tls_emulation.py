"""The live harness's pulumi-tls emulation: a CA and a locally signed server certificate
from a throwaway program, as terraform-provider-tls (bridged by pulumi-tls 5.6.2) makes
them; kept in state, replaced when a RequiresReplace input changes or the certificate is
due for renewal; private keys secret everywhere but in the 0600 state file. No sshd needed."""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import harness
from harness import providers
from harness import tls as tls_emulation
from harness.preview import preview

from .stack import ThrowawayStack, write_program

pytestmark = pytest.mark.timeout(120)
PROJECT = "tls-test"
NAMES = ["vip.pbx.test", "pbx1.pbx.test", "pbx2.pbx.test"]
IPS = ["10.9.0.10", "10.9.0.11", "10.9.0.12"]

PROGRAM = '''
"""Throwaway program: a cluster CA and a server certificate, as components/certificates.py builds them."""
import json

import pulumi
import pulumi_tls as tls

cfg = pulumi.Config()
names = json.loads(cfg.require("names"))
ca_key = tls.PrivateKey("ca-key", algorithm="ECDSA", ecdsa_curve="P256")
ca = tls.SelfSignedCert(
    "ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
    subject=tls.SelfSignedCertSubjectArgs(common_name="Test CA", organization="hapbx & test"),
    validity_period_hours=87600, allowed_uses=["cert_signing", "crl_signing", "digital_signature"])
key = tls.PrivateKey("server-key", algorithm="ECDSA", ecdsa_curve="P256")
csr = tls.CertRequest(
    "server-csr", private_key_pem=key.private_key_pem, subject=tls.CertRequestSubjectArgs(common_name=names[0]),
    dns_names=names, ip_addresses=json.loads(cfg.require("ips")))
cert = tls.LocallySignedCert(
    "server-cert", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=ca_key.private_key_pem,
    ca_cert_pem=ca.cert_pem, validity_period_hours=17520, early_renewal_hours=cfg.require_int("early"),
    allowed_uses=["digital_signature", "server_auth"])
others = {"rsa": tls.PrivateKey("rsa", algorithm="RSA"), "ed": tls.PrivateKey("ed", algorithm="ED25519"),
          "p224": tls.PrivateKey("p224", algorithm="ECDSA")}

pulumi.export("caPem", ca.cert_pem)
pulumi.export("certPem", cert.cert_pem)
pulumi.export("chain", pulumi.Output.all(cert.cert_pem, ca.cert_pem).apply(lambda p: p[0] + p[1]))
pulumi.export("serverKey", key.private_key_pem)
pulumi.export("caKey", ca_key.private_key_pem)
pulumi.export("cert", {"start": cert.validity_start_time, "end": cert.validity_end_time,
                       "ready": cert.ready_for_renewal, "early": cert.early_renewal_hours,
                       "caKeyAlgorithm": cert.ca_key_algorithm, "keyAlgorithm": csr.key_algorithm,
                       "caStart": ca.validity_start_time, "caEnd": ca.validity_end_time})
pulumi.export("keys", {name: {"pem": k.private_key_pem, "pkcs8": k.private_key_pem_pkcs8,
                              "openssh": k.private_key_openssh, "public": k.public_key_pem,
                              "publicOpenssh": k.public_key_openssh, "md5": k.public_key_fingerprint_md5,
                              "sha256": k.public_key_fingerprint_sha256, "rsaBits": k.rsa_bits,
                              "curve": k.ecdsa_curve}
                       for name, k in {**others, "server": key}.items()})
'''
TLS_NAMES = ("ca-key", "ca", "server-key", "server-csr", "server-cert", "rsa", "ed", "p224")


class Stack(ThrowawayStack):
    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path, PROJECT, PROGRAM)

    def config(self, names=NAMES, ips=IPS, early=720) -> dict:
        raw = {"names": json.dumps(names), "ips": json.dumps(ips), "early": str(early)}
        return {f"{PROJECT}:{k}": v for k, v in raw.items()}

    def apply(self, reveal=True, **config) -> harness.ApplyResult:
        return harness.apply(str(self.program), PROJECT, "test", self.config(**config), [], str(self.state),
                             log=self.logs.append, reveal=reveal)

    def entries(self) -> dict[str, dict]:
        with open(self.state) as fh:
            return {e["name"]: e for e in json.load(fh)["resources"].values()}


@pytest.fixture
def stack(tmp_path) -> Stack:
    return Stack(tmp_path)


@pytest.fixture
def applied(stack):
    return stack, stack.apply()


def cert_of(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def test_first_apply_creates_a_ca_and_a_server_certificate_it_signed(applied, tmp_path):
    stack, result = applied
    assert sorted(result.created) == sorted(TLS_NAMES)
    ca, server = cert_of(result.outputs["caPem"]), cert_of(result.outputs["certPem"])
    server.verify_directly_issued_by(ca)
    assert ca.issuer == ca.subject and server.issuer == ca.subject
    # the server certificate's key is the server key's, not the CA's
    server_key = serialization.load_pem_private_key(result.outputs["serverKey"].encode(), None)
    assert server.public_key() == server_key.public_key()
    assert result.outputs["chain"] == result.outputs["certPem"] + result.outputs["caPem"]
    # a second opinion: openssl
    (tmp_path / "ca.pem").write_text(result.outputs["caPem"])
    (tmp_path / "server.pem").write_text(result.outputs["certPem"])
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "server.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and verified.stdout.strip().endswith(": OK"), verified.stdout + verified.stderr


def test_server_certificate_names_usages_and_extensions_as_go_builds_them(applied):
    _, result = applied
    ca, server = cert_of(result.outputs["caPem"]), cert_of(result.outputs["certPem"])
    san = ext(server, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == NAMES
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == IPS
    assert not san.critical  # the subject is not empty
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NAMES[0]
    ku = ext(server, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = ext(server, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    # crypto/x509: the issuer's subject key id becomes the authority key id
    assert ext(server, x509.AuthorityKeyIdentifier).value.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    with pytest.raises(x509.ExtensionNotFound):
        ext(server, x509.SubjectKeyIdentifier)  # set_subject_key_id defaults to false
    # extension order of crypto/x509's buildCertExtensions
    assert [e.oid._name for e in server.extensions] == [
        "keyUsage", "extendedKeyUsage", "basicConstraints", "authorityKeyIdentifier", "subjectAltName"]
    # the CA: CA:TRUE, a key id, the uses asked for, a PrintableString/UTF8String subject as Go encodes it
    assert ext(ca, x509.BasicConstraints).value.ca and ext(ca, x509.BasicConstraints).value.path_length is None
    ca_ku = ext(ca, x509.KeyUsage).value
    assert ca_ku.key_cert_sign and ca_ku.crl_sign and ca_ku.digital_signature
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
    org = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]
    assert cn._type == _ASN1Type.PrintableString and org._type == _ASN1Type.UTF8String  # '&' is not printable
    assert [a.oid for a in ca.subject] == [NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]  # ToRDNSequence order
    ca_key = serialization.load_pem_private_key(result.outputs["caKey"].encode(), None)
    point = ca_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert ext(ca, x509.SubjectKeyIdentifier).value.digest == hashlib.sha1(point).digest()


RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def _instant(text: str) -> datetime.datetime:
    assert RFC3339_NANO.fullmatch(text), text
    whole = re.sub(r"\.\d+", "", text).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(whole)


def test_validity_two_years_times_rfc3339_not_ready_for_renewal(applied):
    _, result = applied
    server, info = cert_of(result.outputs["certPem"]), result.outputs["cert"]
    assert server.not_valid_after_utc - server.not_valid_before_utc == datetime.timedelta(hours=17520)
    start, end = _instant(info["start"]), _instant(info["end"])
    assert start == server.not_valid_before_utc and end == server.not_valid_after_utc  # same second
    assert abs(datetime.datetime.now(datetime.timezone.utc) - start) < datetime.timedelta(minutes=5)
    assert info["ready"] is False and info["early"] == 720
    assert info["caKeyAlgorithm"] == "ECDSA" and info["keyAlgorithm"] == "ECDSA"
    ca = cert_of(result.outputs["caPem"])
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(hours=87600)


def test_private_key_formats_as_the_provider_writes_them(applied):
    _, result = applied
    keys = result.outputs["keys"]
    assert keys["server"]["pem"].startswith("-----BEGIN EC PRIVATE KEY-----\n")
    assert keys["rsa"]["pem"].startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    assert keys["ed"]["pem"].startswith("-----BEGIN PRIVATE KEY-----\n")
    for name, k in keys.items():
        assert k["pkcs8"].startswith("-----BEGIN PRIVATE KEY-----\n") and k["pkcs8"].endswith("-----END PRIVATE KEY-----\n")
        assert k["public"].startswith("-----BEGIN PUBLIC KEY-----\n"), name
        assert all(len(line) <= 64 for line in k["pem"].splitlines()), name  # encoding/pem line length
        private = serialization.load_pem_private_key(k["pem"].encode(), None)
        assert serialization.load_pem_private_key(k["pkcs8"].encode(), None).private_numbers() == private.private_numbers() \
            if not isinstance(private, ed25519.Ed25519PrivateKey) else True
        assert serialization.load_pem_public_key(k["public"].encode()) == private.public_key()
    rsa_key = serialization.load_pem_private_key(keys["rsa"]["pem"].encode(), None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048 == keys["rsa"]["rsaBits"]
    p224 = serialization.load_pem_private_key(keys["p224"]["pem"].encode(), None)
    assert isinstance(p224, ec.EllipticCurvePrivateKey) and p224.curve.name == "secp224r1"  # the default curve
    # x/crypto/ssh has no P-224: no OpenSSH forms, no fingerprints
    assert (keys["p224"]["curve"], keys["p224"]["openssh"], keys["p224"]["publicOpenssh"], keys["p224"]["md5"],
            keys["p224"]["sha256"]) == ("P224", "", "", "", "")
    for name in ("server", "rsa", "ed"):
        k = keys[name]
        assert k["openssh"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        loaded = serialization.load_ssh_private_key(k["openssh"].encode(), None)
        assert loaded.public_key() == serialization.load_pem_public_key(k["public"].encode())
        kind, blob = k["publicOpenssh"].split()
        assert k["publicOpenssh"] == f"{kind} {blob}\n"  # MarshalAuthorizedKey: no comment, one newline
        raw = base64.b64decode(blob)
        assert k["sha256"] == "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
        assert k["md5"] == ":".join(f"{b:02x}" for b in hashlib.md5(raw).digest())
    assert keys["server"]["publicOpenssh"].startswith("ecdsa-sha2-nistp256 ")
    assert keys["ed"]["publicOpenssh"].startswith("ssh-ed25519 ")


def test_resource_ids_as_the_provider_computes_them(applied):
    stack, result = applied
    entries = stack.entries()
    for name in ("ca-key", "server-key", "rsa", "ed", "p224"):
        public = serialization.load_pem_public_key(entries[name]["outputs"]["publicKeyPem"].encode())
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert entries[name]["id"] == hashlib.sha1(tls_emulation._go_trim_space(der)).hexdigest()
    assert entries["server-cert"]["id"] == str(cert_of(result.outputs["certPem"]).serial_number)
    assert entries["ca"]["id"] == str(cert_of(result.outputs["caPem"]).serial_number)
    request = x509.load_pem_x509_csr(entries["server-csr"]["outputs"]["certRequestPem"].encode())
    der = request.public_bytes(serialization.Encoding.DER)
    assert entries["server-csr"]["id"] == hashlib.sha1(tls_emulation._go_trim_space(der)).hexdigest()


def test_go_trim_space_trims_unicode_spaces_at_both_ends():
    assert tls_emulation._go_trim_space(b" \t\x01\x02\n") == b"\x01\x02"
    assert tls_emulation._go_trim_space(b"\x01\xc2\x85") == b"\x01"       # U+0085 as UTF-8
    assert tls_emulation._go_trim_space(b"\x01\xe3\x80\x80\r") == b"\x01"  # U+3000, then \r
    assert tls_emulation._go_trim_space(b"\x01\x85") == b"\x01\x85"         # not UTF-8: not a space


def test_second_apply_keeps_every_key_and_certificate(applied, stack):
    _, first = applied
    second = stack.apply()
    assert sorted(second.unchanged) == sorted(TLS_NAMES)
    assert second.created == second.replaced == second.updated == second.deleted == []
    assert second.outputs == first.outputs


def test_changed_dns_names_replace_request_and_certificate_but_keep_the_keys(applied, stack):
    _, first = applied
    names = [*NAMES, "sip.pbx.test"]
    result = stack.apply(names=names)
    assert sorted(result.replaced) == ["server-cert", "server-csr"]
    assert "server-key" in result.unchanged and "ca-key" in result.unchanged and "ca" in result.unchanged
    assert result.outputs["serverKey"] == first.outputs["serverKey"]
    assert result.outputs["caPem"] == first.outputs["caPem"]
    old, new = cert_of(first.outputs["certPem"]), cert_of(result.outputs["certPem"])
    assert new.serial_number != old.serial_number and new.public_key() == old.public_key()
    assert ext(new, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == names
    new.verify_directly_issued_by(cert_of(result.outputs["caPem"]))
    assert "server-csr" in {e["name"] for e in stack.entries().values()}  # the old halves are gone
    assert len([e for e in stack.entries().values() if e["name"] == "server-cert"]) == 1


def test_early_renewal_hours_is_an_update_unless_the_certificate_falls_due(applied, stack):
    _, first = applied
    result = stack.apply(early=1440)  # not RequiresReplace: the same certificate, new state
    assert result.updated == ["server-cert"] and result.replaced == []
    assert result.outputs["certPem"] == first.outputs["certPem"] and result.outputs["cert"]["early"] == 1440
    # renewal window reaching now (ModifyPlan: end - early_renewal_hours <= now): a new certificate
    result = stack.apply(early=17520)
    assert result.replaced == ["server-cert"] and result.outputs["certPem"] != first.outputs["certPem"]
    assert result.outputs["cert"]["ready"] is True  # early >= validity (the ReadyForRenewal plan modifier)
    assert stack.apply(early=17520).replaced == ["server-cert"]  # due again at every apply, as the provider


def test_changed_ips_replace_the_request_in_preview_and_both_in_the_apply(applied, stack):
    plan = preview(str(stack.program), PROJECT, "test", stack.config(ips=IPS[:2]), [], str(stack.state),
                   log=lambda _: None)
    # harness/preview.py hands a replaced resource's old outputs on, so the certificate's request looks
    # unchanged there (the engine would show it unknown, and the certificate replaced)
    assert plan.replace == ["server-csr"] and plan.changes["server-csr"] == ["ipAddresses"]
    assert plan.update == plan.create == []
    result = stack.apply(ips=IPS[:2])
    assert sorted(result.replaced) == ["server-cert", "server-csr"]


def test_private_keys_are_secret_everywhere_but_the_private_state_file(stack, capfd):
    result = stack.apply(reveal=False)
    assert result.outputs["serverKey"] == result.outputs["caKey"] == harness.MASK
    assert result.outputs["keys"] == harness.MASK  # an export holding a secret is secret as a whole
    assert result.outputs["certPem"].startswith("-----BEGIN CERTIFICATE-----")  # not a secret
    entries = stack.entries()
    private = [entries[n]["outputs"][k] for n in ("ca-key", "server-key", "rsa", "ed", "p224")
               for k in ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh") if entries[n]["outputs"][k]]
    # a PEM line that only encodes the public key can also be found in a certificate: leave those out
    public = "\n".join(str(v) for e in entries.values() for k, v in e["outputs"].items()
                       if k not in providers.HANDLERS[e["type"]].secret_outputs)
    bodies = [line for pem in private for line in pem.splitlines()
              if not line.startswith("-----") and line not in public]
    assert len(bodies) > 20
    captured = capfd.readouterr()
    shown = "\n".join([*stack.logs, repr(result), captured.out, captured.err])
    assert stack.logs and not [b for b in bodies if b in shown]
    assert not [pem for pem in private if pem in shown or pem.strip() in shown]
    # the state file holds them, readable by its owner only, and lists them as the entries' secrets
    assert stat.S_IMODE(os.stat(stack.state).st_mode) == 0o600
    assert set(private) <= {s for e in entries.values() for s in e["secrets"]}
    # the certificate resources' key inputs are secret too (the SDK marks them)
    assert entries["server-csr"]["inputs"]["privateKeyPem"] in entries["server-csr"]["secrets"]
    assert entries["server-cert"]["inputs"]["caPrivateKeyPem"] in entries["server-cert"]["secrets"]


def test_tls_errors_name_the_resource_and_keep_what_was_done(tmp_path):
    program = write_program(tmp_path / "program", PROJECT, textwrap.dedent('''
        import pulumi_tls as tls
        key = tls.PrivateKey("key", algorithm="ECDSA", ecdsa_curve="P256")
        tls.SelfSignedCert("no-subject-ca", private_key_pem=key.private_key_pem, is_ca_certificate=True,
                           validity_period_hours=1, allowed_uses=["cert_signing"])
        '''))
    state = str(tmp_path / "state" / "s.json")
    with pytest.raises(harness.ApplyError) as caught:
        harness.apply(str(program), PROJECT, "test", {}, [], state, log=lambda _: None)
    assert caught.value.resource == "no-subject-ca"
    assert "Invalid Certificate Subject" in str(caught.value)
    assert caught.value.partial.created == ["key"]


# Go's crypto/x509 where it differs from what `cryptography` would do on its own
# (checked byte for byte against Go's CreateCertificate when this emulation was written)

def _key(**inputs) -> dict:
    return harness.tls_generate("tls:index/privateKey:PrivateKey", inputs)[1]


def _self_signed(**inputs) -> dict:
    return harness.tls_generate("tls:index/selfSignedCert:SelfSignedCert",
                                {"validityPeriodHours": 1, "allowedUses": ["cert_signing"], **inputs})[1]


def test_max_path_length_on_a_non_ca_fails_and_zero_means_no_limit():
    key = _key(algorithm="ECDSA", ecdsaCurve="P256")["privateKeyPem"]
    with pytest.raises(harness.TlsError, match="only CAs are allowed to specify MaxPathLen"):
        _self_signed(privateKeyPem=key, subject={"commonName": "x"}, maxPathLength=1)
    assert _self_signed(privateKeyPem=key, subject={"commonName": "x"}, maxPathLength=0)["maxPathLength"] == 0
    ca = cert_of(_self_signed(privateKeyPem=key, subject={"commonName": "x"}, isCaCertificate=True,
                              maxPathLength=0)["certPem"])
    assert ext(ca, x509.BasicConstraints).value.path_length is None  # MaxPathLenZero is never set


def test_a_ca_whose_key_usage_cryptography_refuses_still_gives_its_key_id():
    ca_key = _key(algorithm="ECDSA", ecdsaCurve="P256")["privateKeyPem"]
    ca = _self_signed(privateKeyPem=ca_key, subject={"commonName": "ca"}, isCaCertificate=True,
                      allowedUses=["cert_signing", "decipher_only"])  # Go allows it without key_agreement
    server_key = _key(algorithm="ED25519")["privateKeyPem"]
    request = harness.tls_generate("tls:index/certRequest:CertRequest", {
        "privateKeyPem": server_key, "subject": {"commonName": "s", "emailAddress": "a@b.c"}})[1]
    warnings = []
    cert = harness.tls_generate("tls:index/locallySignedCert:LocallySignedCert", {
        "certRequestPem": request["certRequestPem"], "caPrivateKeyPem": ca_key, "caCertPem": ca["certPem"],
        "validityPeriodHours": 1, "allowedUses": ["server_auth"]}, warnings.append)[1]
    assert warnings == [] and cert["caKeyAlgorithm"] == "ECDSA"
    parsed = cert_of(cert["certPem"])
    authority = ext(parsed, x509.AuthorityKeyIdentifier).value.key_identifier
    assert authority == tls_emulation._key_id_of(cert_of(ca["certPem"])) != b""
    # Go re-marshals the request's parsed subject: the e-mail address is not kept
    assert [a.oid for a in parsed.subject] == [NameOID.COMMON_NAME]


def test_a_certificate_that_is_not_a_ca_signs_with_a_warning():
    key = _key(algorithm="ECDSA", ecdsaCurve="P384")["privateKeyPem"]
    not_ca = _self_signed(privateKeyPem=key, subject={"commonName": "leaf"}, allowedUses=["server_auth"])
    request = harness.tls_generate("tls:index/certRequest:CertRequest", {
        "privateKeyPem": _key(algorithm="ECDSA", ecdsaCurve="P256")["privateKeyPem"], "dnsNames": ["x.test"]})[1]
    warnings = []
    cert = harness.tls_generate("tls:index/locallySignedCert:LocallySignedCert", {
        "certRequestPem": request["certRequestPem"], "caPrivateKeyPem": key, "caCertPem": not_ca["certPem"],
        "validityPeriodHours": 1, "allowedUses": ["server_auth"]}, warnings.append)[1]
    assert [w.split(":")[0] for w in warnings] == ["Potentially Invalid Certificate Authority"]
    parsed = cert_of(cert["certPem"])
    assert parsed.signature_hash_algorithm.name == "sha384"  # the signer's curve picks the hash
    san = ext(parsed, x509.SubjectAlternativeName)
    assert san.critical  # an empty subject makes the SAN critical (RFC 5280 4.2.1.6)


COMPONENT_PROGRAM = '''
"""components/certificates.py as the stack will run it, the lab stack's cluster with the VIP from config."""
import dataclasses
import os

import pulumi

from components.certificates import SipCertificate, SipCertificateArgs
from components.config import load_stack_file

cluster, _ = load_stack_file(os.path.join({root!r}, "Pulumi.lab.yaml"))
cluster = dataclasses.replace(cluster, vip=dataclasses.replace(cluster.vip, address=pulumi.Config().require("vip")))
cert = SipCertificate("sip-tls", SipCertificateArgs(cluster=cluster))
pulumi.export("chain", cert.certificate_pem)
pulumi.export("key", cert.private_key_pem)
pulumi.export("ca", cert.ca_pem)
'''


def test_the_sip_certificate_component_through_the_harness(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    program = write_program(tmp_path / "program", PROJECT, COMPONENT_PROGRAM.replace("{root!r}", repr(root)))
    state = str(tmp_path / "state" / "s.json")

    def apply(vip: str) -> harness.ApplyResult:
        return harness.apply(str(program), PROJECT, "test", {f"{PROJECT}:vip": vip}, [], state,
                             log=lambda _: None, reveal=True)

    first = apply("10.77.0.10")
    assert sorted(first.created) == ["sip-tls-ca", "sip-tls-ca-key", "sip-tls-cert", "sip-tls-csr", "sip-tls-key"]
    server, ca = x509.load_pem_x509_certificates(first.outputs["chain"].encode())
    assert ca == cert_of(first.outputs["ca"])
    server.verify_directly_issued_by(ca)
    assert "10.77.0.10" in [str(ip) for ip in ext(server, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress)]
    assert apply("10.77.0.10").outputs == first.outputs  # nothing new
    moved = apply("10.77.0.20")  # a new VIP: a new certificate for the same key, from the same CA
    assert sorted(moved.replaced) == ["sip-tls-cert", "sip-tls-csr"]
    assert moved.outputs["key"] == first.outputs["key"] and moved.outputs["ca"] == first.outputs["ca"]
    server = x509.load_pem_x509_certificates(moved.outputs["chain"].encode())[0]
    assert str(ext(server, x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)[0]) == "10.77.0.20"
