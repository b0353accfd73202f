"""pulumi-tls's keys and certificates, built byte for byte as terraform-provider-tls builds them."""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import re
import secrets as _csprng
import string
import time
from typing import Any, Callable, Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID


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
TLS_PEM_STATE = re.compile(r"-----BEGIN [A-Za-z ]+-----\n(?:.|[\t\n\f\r ])+\n-----END [A-Za-z ]+-----\n?")
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))")
# unicode.IsSpace, UTF-8 encoded: strings.TrimSpace trims these from both ends
_GO_SPACES = tuple(c.encode() for c in "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                   "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
HOUR_NS = 3600 * 10**9


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


def parse_rfc3339_ns(text: str) -> int:
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


def tls_private_key(inputs: dict, warn: Callable[[str], None]) -> dict:
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


def ready_for_renewal(inputs: dict) -> bool:
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
    not_after = not_before + hours * HOUR_NS
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
            "readyForRenewal": ready_for_renewal(inputs),
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


def tls_self_signed_cert(inputs: dict, warn: Callable[[str], None]) -> dict:
    key, algorithm = _input_key(inputs, "privateKeyPem", "Failed to parse private key PEM")
    fields, email, zero = _subject_fields(inputs.get("subject"))
    sans = _sans(list(inputs.get("dnsNames") or []), [_ip_address(i) for i in inputs.get("ipAddresses") or []],
                 list(inputs.get("uris") or []))
    outputs = _create_certificate(inputs, subject=_go_name(fields, email), subject_is_zero=zero, sans=sans,
                                  public_key=key.public_key(), signer=key, parent=None,
                                  authority_key_id_allowed=True)
    return {**outputs, "keyAlgorithm": algorithm, "setAuthorityKeyId": bool(inputs.get("setAuthorityKeyId"))}


def tls_cert_request(inputs: dict, warn: Callable[[str], None]) -> dict:
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


def tls_locally_signed_cert(inputs: dict, warn: Callable[[str], None]) -> dict:
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


def pem_id(kind: str, key: str) -> Callable[[dict], str]:
    return lambda outputs: _hash_for_state(_decode_pem_of(outputs[key], kind))


def serial_id(outputs: dict) -> str:
    return str(x509.load_pem_x509_certificate(outputs["certPem"].encode()).serial_number)
