"""Certificates and keys for a federation: a CA, the coordinator's TLS certificate, node keys,
the coordinator's app-signing key.

Private keys are written with mode 0600 inside 0700 directories and are never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import AtollError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class TlsFilesMissing(AtollError, FileNotFoundError):
    """The coordinator's certificates are not where a command looks for them."""


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def within(cls, directory: Path) -> TlsFiles:
        """The names `atoll certs create` gives the files in `directory`."""
        return cls(directory / "ca.crt", directory / "server.crt", directory / "server.key")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def create_tls(
    directory: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365
) -> TlsFiles:
    """A self-contained CA plus a server certificate whose SANs cover every dialled address."""
    directory = directory.resolve()
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Atoll federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles.within(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, _pem(key))
    _write_private(directory / "ca.key", _pem(ca_key))
    return files


def tls_files(directory: Path) -> TlsFiles:
    files = TlsFiles.within(directory.resolve())
    missing = [
        str(p) for p in (files.ca_cert, files.server_cert, files.server_key) if not p.exists()
    ]
    if missing:
        raise TlsFilesMissing(
            f"TLS files missing: {', '.join(missing)}; run `atoll certs create` first"
        )
    return files


def create_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as SuperNode authentication expects."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = directory.resolve() / name
    public = private.with_name(f"{name}.pub")
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_public(public, pub + f" atoll-node-{name}\n".encode())
    return private, public


@dataclass(frozen=True)
class AppSigningFiles:
    private_key: Path
    trusted_entities: Path  # what node owners install: `atoll node start --trusted-entities`


def create_app_signing_key(directory: Path) -> AppSigningFiles:
    """The coordinator's Ed25519 app-signing key, plus the trusted-entities file for nodes."""
    from server.app_store import trusted_entities_yaml

    key = ed25519.Ed25519PrivateKey.generate()
    files = AppSigningFiles(
        directory.resolve() / "app-signing", directory.resolve() / "trusted-entities.yaml"
    )
    _write_private(
        files.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    _write_public(files.trusted_entities, trusted_entities_yaml(key.public_key()).encode())
    return files
