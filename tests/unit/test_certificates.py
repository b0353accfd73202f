"""components/certificates.py under Pulumi mocks: a provided certificate and key pass through
untouched; otherwise a CA and a server certificate for the VIP and the nodes, as five
children of the component (the mocks give them real keys and certificates)."""
import os

import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pulumi.runtime import rpc

from components.certificates import SipCertificate, SipCertificateArgs, chain_after_first, server_names
from components.config import load_stack_file
import harness
from tests.mockrun import ROOT, run_function

CHILDREN = {"sip-tls-ca-key": "tls:index/privateKey:PrivateKey", "sip-tls-ca": "tls:index/selfSignedCert:SelfSignedCert",
            "sip-tls-key": "tls:index/privateKey:PrivateKey", "sip-tls-csr": "tls:index/certRequest:CertRequest",
            "sip-tls-cert": "tls:index/locallySignedCert:LocallySignedCert"}


@pytest.fixture(scope="module")
def cluster():
    cfg, _ = load_stack_file(os.path.join(ROOT, "Pulumi.lab.yaml"))
    return cfg


def run(args_of):
    """Run a program holding one SipCertificate 'sip-tls' (args from args_of()) and exporting its outputs."""
    def program():
        cert = SipCertificate("sip-tls", args_of())
        pulumi.export("certificate", cert.certificate_pem)
        pulumi.export("key", cert.private_key_pem)
        pulumi.export("ca", cert.ca_pem)
    graph, _ = run_function(program)
    return graph


def plain(value):
    return rpc.unwrap_rpc_secret(value) if rpc.is_rpc_secret(value) else value


@pytest.fixture(scope="module")
def generated(cluster):
    graph = run(lambda: SipCertificateArgs(cluster=cluster))
    assert graph.error is None, repr(graph.error)
    return graph


def test_generated_path_creates_the_five_children_of_the_component(generated):
    assert generated.resources["sip-tls"].type == "hapbx:index:SipCertificate"
    children = {r.name: r for r in generated.resources.values() if r.parent == "sip-tls"}
    assert {name: r.type for name, r in children.items()} == CHILDREN
    assert set(generated.resources) == {"sip-tls", *CHILDREN}


def test_generated_inputs_ca_and_server_certificate_for_vip_and_nodes(generated, cluster):
    r = generated.resources
    for key in ("sip-tls-ca-key", "sip-tls-key"):
        assert (r[key].inputs["algorithm"], r[key].inputs["ecdsaCurve"]) == ("ECDSA", "P256")
    assert r["sip-tls-ca"].inputs["isCaCertificate"] is True
    assert "cert_signing" in r["sip-tls-ca"].inputs["allowedUses"]
    domain = cluster.network.domain
    assert r["sip-tls-csr"].inputs["dnsNames"] == [f"vip.{domain}", *(f"{n.name}.{domain}" for n in cluster.nodes)]
    assert r["sip-tls-csr"].inputs["ipAddresses"] == [cluster.vip.address, *(n.address for n in cluster.nodes)]
    cert = r["sip-tls-cert"].inputs
    assert cert["validityPeriodHours"] == 2 * 365 * 24 and cert["earlyRenewalHours"] == 30 * 24
    assert "server_auth" in cert["allowedUses"] and not cert.get("isCaCertificate")
    # the key inputs of the request and the certificate arrive secret (pulumi-tls marks them)
    assert rpc.is_rpc_secret(r["sip-tls-csr"].inputs["privateKeyPem"])
    assert rpc.is_rpc_secret(r["sip-tls-cert"].inputs["caPrivateKeyPem"])


def test_generated_outputs_full_chain_secret_key_and_ca(generated, cluster):
    out = generated.outputs
    assert rpc.is_rpc_secret(out["key"]) and not rpc.is_rpc_secret(out["certificate"])
    chain = x509.load_pem_x509_certificates(out["certificate"].encode())
    ca = x509.load_pem_x509_certificate(out["ca"].encode())
    assert len(chain) == 2 and chain[1] == ca  # server certificate, then the CA
    chain[0].verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(plain(out["key"]).encode(), None)
    assert chain[0].public_key() == key.public_key()
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns, ips = server_names(cluster)
    assert san.get_values_for_type(x509.DNSName) == dns
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ips


@pytest.fixture(scope="module")
def provided_chain():
    _, ca_key = harness.tls_generate("tls:index/privateKey:PrivateKey", {"algorithm": "ECDSA", "ecdsaCurve": "P256"})
    _, ca = harness.tls_generate("tls:index/selfSignedCert:SelfSignedCert", {
        "privateKeyPem": ca_key["privateKeyPem"], "subject": {"commonName": "Some CA"}, "isCaCertificate": True,
        "validityPeriodHours": 24, "allowedUses": ["cert_signing"]})
    _, leaf = harness.tls_generate("tls:index/selfSignedCert:SelfSignedCert", {
        "privateKeyPem": ca_key["privateKeyPem"], "subject": {"commonName": "vip.example.org"},
        "validityPeriodHours": 24, "allowedUses": ["server_auth"]})
    # as an operator pastes it: CRLF-free but no final newline, a comment line between
    return leaf["certPem"] + "# intermediate\n" + ca["certPem"].rstrip("\n"), ca["certPem"], ca_key["privateKeyPem"]


@pytest.mark.parametrize("secret_key", [True, False])
def test_provided_certificate_and_key_pass_through_untouched(cluster, provided_chain, secret_key):
    chain, ca_pem, key_pem = provided_chain
    wrap = pulumi.Output.secret if secret_key else pulumi.Output.from_input
    graph = run(lambda: SipCertificateArgs(cluster=cluster, provided_certificate=chain, provided_key=wrap(key_pem)))
    assert graph.error is None, repr(graph.error)
    assert set(graph.resources) == {"sip-tls"}  # nothing generated
    out = graph.outputs
    assert out["certificate"] == chain  # byte for byte
    assert rpc.is_rpc_secret(out["key"]) and plain(out["key"]) == key_pem  # secret even if handed in plain
    assert out["ca"] == ca_pem  # the chain after the server certificate


def test_provided_certificate_needs_its_key(cluster, provided_chain):
    graph = run(lambda: SipCertificateArgs(cluster=cluster, provided_certificate=provided_chain[0]))
    assert isinstance(graph.error, ValueError) and "needs its key" in str(graph.error)


def test_chain_after_first():
    block = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
    assert chain_after_first(block + "\n") == ""
    assert chain_after_first(f"{block}\n{block}\n{block}") == f"{block}\n{block}\n"


# --- ClusterCa: the internal CA and each node's service certificate (issue 21) --------------------

def run_ca(cluster):
    from components.certificates import ClusterCa, ClusterCaArgs

    def program():
        ca = ClusterCa("cluster-ca", ClusterCaArgs(cluster=cluster))
        pulumi.export("ca", ca.ca_pem)
        for name, value in ca.secrets(cluster).items():
            pulumi.export(name, value)
    graph, _ = run_function(program)
    assert graph.error is None, repr(graph.error)
    return graph


def test_cluster_ca_signs_each_nodes_service_certificate_for_its_addresses(cluster):
    """verify-full from the peer needs the node's address in the certificate (and the VIP, which the
    node may hold, and loopback); the chain ends at the CA; the key is a secret, the certificate too
    in the render's map (masked in render output) though it is public."""
    graph = run_ca(cluster)
    out = graph.outputs
    ca = x509.load_pem_x509_certificate(plain(out["ca"]).encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i, node in enumerate(cluster.nodes, start=1):
        assert rpc.is_rpc_secret(out[f"tls_postgres_key_{i}"])
        cert = x509.load_pem_x509_certificate(plain(out[f"tls_postgres_certificate_{i}"]).encode())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {node.address, cluster.vip.address,
                                                                            "127.0.0.1"}
        assert sans.get_values_for_type(x509.DNSName) == [f"{node.name}.{cluster.network.domain}"]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH}
        key = serialization.load_pem_private_key(plain(out[f"tls_postgres_key_{i}"]).encode(), None)
        assert key.public_key() == cert.public_key()


def test_every_service_certificate_has_no_common_name_and_the_witness_only_etcd(cluster):
    """Each PBX node has one certificate per TLS service, the witness one for its etcd member (its
    address and loopback: it never holds the VIP). None has a common name (etcd's gRPC gateway
    refuses a client certificate that has one once authentication is on) but pgBackRest's, which
    its peer's TLS server admits by that name alone."""
    from components.render import TLS_SERVICES, pgbackrest
    out = run_ca(cluster).outputs
    ca = x509.load_pem_x509_certificate(plain(out["ca"]).encode())
    names = {f"tls_{svc}_certificate_{i}" for svc in TLS_SERVICES for i in (1, 2)} | {"tls_etcd_certificate_witness"}
    assert names <= set(out), sorted(set(out))
    assert "tls_postgres_certificate_witness" not in out and "tls_redis_certificate_witness" not in out
    for name in names:
        cert = x509.load_pem_x509_certificate(plain(out[name]).encode())
        cert.verify_directly_issued_by(ca)
        cn = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        if name.startswith(f"tls_{pgbackrest.TLS_SERVICE}_"):
            node = cluster.nodes[int(name.rsplit("_", 1)[1]) - 1].name
            assert cn == [pgbackrest.client_cn(node)], (name, cert.subject)
        else:
            assert not cn, (name, cert.subject)
    witness = x509.load_pem_x509_certificate(plain(out["tls_etcd_certificate_witness"]).encode())
    sans = witness.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {cluster.witness.address, "127.0.0.1"}
    assert rpc.is_rpc_secret(out["tls_etcd_key_witness"])


def test_tls_rotate_replaces_the_service_keys_and_keeps_the_ca(cluster):
    import dataclasses
    rotated = dataclasses.replace(cluster, tls=dataclasses.replace(cluster.tls, rotate=3))
    before, after = set(run_ca(cluster).resources), set(run_ca(rotated).resources)
    assert {"cluster-ca", "cluster-ca-key"} <= before & after
    node = cluster.nodes[0].name
    assert f"cluster-ca-{node}-postgres-key" in before - after
    assert {f"cluster-ca-{node}-postgres-{k}-r3" for k in ("key", "csr", "cert")} <= after - before
