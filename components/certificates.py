"""The cluster's certificates (pulumi-tls, kept in the stack's state, so every apply keeps the
same keys and certificates).

ClusterCa: the internal CA of the links between the hosts, and the service certificates it
issues to each PBX node (render.TLS_SERVICES: PostgreSQL, etcd, Redis, HTTPS) and to the witness
(its etcd member); each link verifies the other end against this CA:

=================================  ======================  ====================================
``<name>-key``, ``<name>``         PrivateKey, SelfSignedCert   the CA: ECDSA P-256, 10 years
``<name>-<node>-<svc>-key[-rN]``   PrivateKey              ECDSA P-256
``<name>-<node>-<svc>-csr[-rN]``   CertRequest             no CN (pgbackrest: pgbackrest-<node>); DNS <node>.<domain>;
                                                           IP node, VIP, 127.0.0.1
                                                           (the witness: no VIP)
``<name>-<node>-<svc>-cert[-rN]``  LocallySignedCert       2 years, server_auth + client_auth;
                                                           renewed within 30 days of its end
=================================  ======================  ====================================

``tls.rotate`` N > 0 names the service resources ``-rN``: new keys and certificates replace the old
ones (the CA stays, so every host keeps trusting the others'); the services reload them one host at
a time.

SipCertificate: the certificate of the cluster's SIP TLS listener (Kamailio).

Provided (``kamailio.tlsCertificate``, a PEM chain with the server certificate first, and
its key, the secret ``kamailioTlsKey``): both are passed through untouched and nothing
is generated. Otherwise the cluster's own CA signs a server certificate for the VIP's
and every PBX node's name and address (pulumi-tls, kept in the stack's state, so every
apply keeps the same key and certificate):

==================  ==========================  ==============================================
``<name>-ca-key``   tls.PrivateKey              ECDSA P-256
``<name>-ca``       tls.SelfSignedCert          the CA: 10 years, cert_signing/crl_signing
``<name>-key``      tls.PrivateKey              ECDSA P-256, the server's key
``<name>-csr``      tls.CertRequest             DNS vip.<domain>, <node>.<domain>; IP VIP, nodes
``<name>-cert``     tls.LocallySignedCert       2 years, server_auth; renewed by the first
                                                apply within 30 days of its end
==================  ==========================  ==============================================

A change of names or addresses replaces the request and the certificate and keeps both
keys; phones keep trusting the same CA. Phones must trust that CA (``ca_pem``).

Outputs: ``certificate_pem`` (the server certificate followed by the CA's: the full
chain), ``private_key_pem`` (secret), ``ca_pem`` (the generated CA; for a provided chain,
the certificates after the first one, "" when it holds only the server certificate).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_tls as tls

from .config import ClusterConfig
from .render import TLS_SERVICES, WITNESS_TLS_SERVICES, node_secret, pgbackrest, tls_stems

CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = 2 * 365 * 24
SERVER_EARLY_RENEWAL_HOURS = 30 * 24
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]
# digital_signature: an ECDSA server key signs the TLS handshake (RFC 5280 4.2.1.3)
SERVER_USES = ["digital_signature", "server_auth"]
#: a node's service certificate: the server side, and the client side of the same service's peer links
SERVICE_USES = ["digital_signature", "server_auth", "client_auth"]
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", re.S)


@dataclass
class SipCertificateArgs:
    cluster: ClusterConfig
    #: ``kamailio.tlsCertificate``: PEM chain, server certificate first
    provided_certificate: Optional[str] = None
    #: the secret ``kamailioTlsKey``: the provided certificate's private key (PEM)
    provided_key: Optional[pulumi.Output[str]] = None


def server_names(cluster: ClusterConfig) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the server certificate: the VIP first, then each PBX node."""
    domain = cluster.network.domain
    dns = [f"vip.{domain}", *(f"{n.name}.{domain}" for n in cluster.nodes)]
    ips = [cluster.vip.address, *(n.address for n in cluster.nodes)]
    return dns, ips


def chain_after_first(chain: str) -> str:
    """The certificates of a PEM chain after the first one, as written ("" if none)."""
    blocks = _PEM_CERTIFICATE.findall(chain)
    return "".join(block if block.endswith("\n") else block + "\n" for block in blocks[1:])


class SipCertificate(pulumi.ComponentResource):
    certificate_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]
    ca_pem: pulumi.Output[str]

    def __init__(self, name: str, args: SipCertificateArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("hapbx:index:SipCertificate", name, None, opts)
        if (args.provided_certificate is None) != (args.provided_key is None):
            raise ValueError("SipCertificate: a provided certificate needs its key, and a key its certificate")
        self.provided = args.provided_certificate is not None
        if args.provided_certificate is not None and args.provided_key is not None:
            self.certificate_pem = pulumi.Output.from_input(args.provided_certificate)
            self.private_key_pem = pulumi.Output.secret(args.provided_key)
            self.ca_pem = pulumi.Output.from_input(chain_after_first(args.provided_certificate))
        else:
            self._generate(name, args.cluster)
        self.register_outputs({
            "provided": self.provided,
            "certificatePem": self.certificate_pem,
            "privateKeyPem": self.private_key_pem,
            "caPem": self.ca_pem,
        })

    def _generate(self, name: str, cluster: ClusterConfig) -> None:
        child = pulumi.ResourceOptions(parent=self)
        domain = cluster.network.domain
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"{domain} PBX CA", organization="high-cc-pbx"),
            validity_period_hours=CA_VALIDITY_HOURS, allowed_uses=CA_USES, opts=child)
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        dns_names, ip_addresses = server_names(cluster)
        csr = tls.CertRequest(
            f"{name}-csr", private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=dns_names[0], organization="high-cc-pbx"),
            dns_names=dns_names, ip_addresses=ip_addresses, opts=child)
        cert = tls.LocallySignedCert(
            f"{name}-cert", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca.cert_pem, validity_period_hours=SERVER_VALIDITY_HOURS,
            early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS, allowed_uses=SERVER_USES, opts=child)
        self.certificate_pem = pulumi.Output.all(cert.cert_pem, ca.cert_pem).apply(lambda pems: pems[0] + pems[1])
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
        self.ca_pem = ca.cert_pem


@dataclass
class ClusterCaArgs:
    cluster: ClusterConfig


def service_names(cluster: ClusterConfig, node) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a host's service certificate: what the other hosts and the host
    itself connect to (its address, the VIP a PBX node may hold, loopback)."""
    vip = [] if cluster.witness is not None and node is cluster.witness else [cluster.vip.address]
    return [f"{node.name}.{cluster.network.domain}"], [node.address, *vip, "127.0.0.1"]


class ClusterCa(pulumi.ComponentResource):
    """The internal CA and each PBX node's service certificates; ``certificates[(node, service)]``
    is (certificate PEM, private key PEM: secret)."""
    ca_pem: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterCaArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("hapbx:index:ClusterCa", name, None, opts)
        c = args.cluster
        child = pulumi.ResourceOptions(parent=self)
        ca_key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            name, private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"{c.network.domain} cluster CA", organization="high-cc-pbx"),
            validity_period_hours=CA_VALIDITY_HOURS, allowed_uses=CA_USES, opts=child)
        self.ca_pem = ca.cert_pem
        suffix = f"-r{c.tls.rotate}" if c.tls.rotate else ""
        self.certificates: dict[tuple[str, str], tuple[pulumi.Output[str], pulumi.Output[str]]] = {}
        hosts = [(node, TLS_SERVICES) for node in c.nodes] + ([(c.witness, WITNESS_TLS_SERVICES)] if c.witness else [])
        for node, services in hosts:
            dns_names, ips = service_names(c, node)
            for service in services:
                stem = f"{name}-{node.name}-{service}"
                key = tls.PrivateKey(f"{stem}-key{suffix}", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
                csr = tls.CertRequest(
                    f"{stem}-csr{suffix}", private_key_pem=key.private_key_pem,
                    # no common name: the names are in the SANs, and etcd refuses any client certificate
                    # with one at its gRPC gateway once authentication is on (it cannot map it to a user)
                    # (pgBackRest's TLS server admits a client by common name only: its own, pgbackrest.client_cn)
                    subject=tls.CertRequestSubjectArgs(
                        organization="high-cc-pbx", organizational_unit=f"{service} {node.name}",
                        common_name=pgbackrest.client_cn(node.name) if service == pgbackrest.TLS_SERVICE else None),
                    dns_names=dns_names, ip_addresses=ips, opts=child)
                cert = tls.LocallySignedCert(
                    f"{stem}-cert{suffix}", cert_request_pem=csr.cert_request_pem,
                    ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
                    validity_period_hours=SERVER_VALIDITY_HOURS, early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS,
                    allowed_uses=SERVICE_USES, opts=child)
                self.certificates[(node.name, service)] = (cert.cert_pem, pulumi.Output.secret(key.private_key_pem))
        self.register_outputs({"caPem": self.ca_pem,
                               **{f"{n}-{svc}": pem for (n, svc), (pem, _) in self.certificates.items()}})

    def secrets(self, cluster: ClusterConfig) -> dict[str, pulumi.Output[str]]:
        """The render's secrets: the CA certificate, each node's service certificate and key."""
        out = {"tls_ca_certificate": pulumi.Output.secret(self.ca_pem)}
        for (node, service), (cert, key) in self.certificates.items():
            cert_stem, key_stem = tls_stems(service)
            out[node_secret(cluster, cert_stem, node)] = pulumi.Output.secret(cert)
            out[node_secret(cluster, key_stem, node)] = key
        return out
