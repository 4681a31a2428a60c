"""Throwaway TLS material for tests, made with PyPI `cryptography`: a CA, a server
certificate for 127.0.0.1 and localhost, and client certificates with a CN and SANs."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertAuthority:
    """A CA in `folder` that signs certificates on request."""

    folder: Path
    cert: Path
    key: Path

    def issue(self, name: str, common_name: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              uris: tuple[str, ...] = (), server: bool = False) -> Pair:
        """A certificate and key signed by this CA, as `<name>.pem` and `<name>-key.pem`."""
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _base(common_name, key, ca_cert.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.folder, name, builder.sign(ca_key, hashes.SHA256()), key)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TlsFiles:
    """What most tests need: the CA, a server pair for 127.0.0.1/localhost, one client pair."""

    ca: CertAuthority
    server: Pair
    client: Pair

    @property
    def ca_file(self) -> Path:
        return self.ca.cert


def make_ca(folder: Path, name: str = "fmesh-test-ca") -> CertAuthority:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = _base(name, key, subject).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
        x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                      key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                      decipher_only=False), critical=True).sign(key, hashes.SHA256())
    pair = _write(folder, "ca", cert, key)
    return CertAuthority(folder, pair.cert, pair.key)


def make_tls(folder: Path, client_cn: str = "mesh-eu.test", client_uris: tuple[str, ...] = ()) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    ca = make_ca(folder)
    server = ca.issue("server", "127.0.0.1", dns=("localhost",), ips=("127.0.0.1",), server=True)
    client = ca.issue("client", client_cn, uris=client_uris)
    return TlsFiles(ca, server, client)


def _base(common_name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2)))


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair
