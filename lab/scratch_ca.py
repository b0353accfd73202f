"""A throwaway CA and the certificates it signs, made with openssl as the cluster CA makes them
(components/certificates.py: ECDSA P-256, server_auth + client_auth): what the daemon tests' TLS
links verify against, in place of the cluster CA's files on a node (the daemon tests, the loopback
devstack of the benchmarks)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from hapbx_node.layout import TLS_CA, tls_certificate, tls_key

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ScratchCa:
    dir: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path, name: str = "test cluster CA") -> "ScratchCa":
        """A CA in ``directory`` (``<slug>-ca.pem``, ``<slug>-ca-key.pem``)."""
        directory.mkdir(parents=True, exist_ok=True)
        slug = name.replace(" ", "-")
        cert, key = directory / f"{slug}-ca.pem", directory / f"{slug}-ca-key.pem"
        subprocess.run(["openssl", "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
        return cls(directory, cert, key)

    def issue(self, stem: str, ips: tuple[str, ...] = ("127.0.0.1",), dns: tuple[str, ...] = ("localhost",)) -> Issued:
        """A certificate for ``ips`` and ``dns`` names, server and client use, signed by this CA; no
        common name, as the cluster CA issues them."""
        cert, key = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        san = ",".join([*(f"IP:{ip}" for ip in ips), *(f"DNS:{d}" for d in dns)])
        subprocess.run(["openssl", "req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", f"/O=high-cc-pbx/OU={stem}", "-CA", str(self.cert), "-CAkey", str(self.key),
                        "-addext", f"subjectAltName={san}", "-addext", "extendedKeyUsage=serverAuth,clientAuth"],
                       check=True, capture_output=True)
        key.chmod(0o600)
        return Issued(cert, key)


def localize(text: str, ca: Path, issued: Issued, service: str) -> str:
    """``text`` (a rendered file, script or environment value) with a node's TLS paths of ``service``
    (hapbx_node.layout: the CA, its certificate and key) made these scratch files."""
    for node_path, path in ((TLS_CA, ca), (tls_certificate(service), issued.cert), (tls_key(service), issued.key)):
        text = text.replace(node_path, str(path))
    return text
