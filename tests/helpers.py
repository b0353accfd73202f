"""Small helpers shared by the test tiers."""
from __future__ import annotations

import socket
import time

from components.config import ClusterConfig, load_stack_file
from tests.mockrun import ROOT


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_cluster(name: str) -> ClusterConfig:
    """A shipped stack's validated config (absent secrets stand as placeholders)."""
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{name}.yaml", assume_secrets=True)
    return cluster


def self_signed(address: str) -> dict[str, str]:
    """A throwaway SIP TLS certificate and key for `address` (ECDSA P-256, one day), as the render
    layer's secrets kamailio_tls_certificate and kamailio_tls_key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    return {"kamailio_tls_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "kamailio_tls_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode()}


def wait_for(what: str, fn, seconds: float = 30.0, every: float = 0.1):
    """fn's first truthy value within `seconds` (polled every `every`), or an AssertionError naming
    what did not happen and fn's last value."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds} s (last: {last!r})")
