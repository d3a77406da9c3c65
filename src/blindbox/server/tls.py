"""The enclave's TLS identity: a key pair generated inside the enclave, never exported.

The certificate is self-signed; clients trust it only because an attestation
report binds the SHA-256 of its SubjectPublicKeyInfo.
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsIdentity:
    """A TLS private key and its self-signed certificate (both PEM)."""

    key_pem: bytes
    cert_pem: bytes

    @classmethod
    def generate(cls, hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
                 *, valid_days: int = 365, common_name: str = "blindbox-enclave") -> TlsIdentity:
        """A fresh P-256 key and a self-signed certificate for ``hostnames``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _dt.datetime.now(_dt.timezone.utc)
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=valid_days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> TlsIdentity:
        return cls(key_pem=Path(key_path).read_bytes(), cert_pem=Path(cert_path).read_bytes())

    def save(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Write the certificate, and the key with owner-only permissions."""
        Path(cert_path).write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)

    @functools.cached_property
    def cert_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)

    @functools.cached_property
    def spki_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo that protocol v1 binds into report_data (read once)."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2+) presenting this identity."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain needs files; use a private temporary directory and remove it at once.
        with tempfile.TemporaryDirectory(prefix="blindbox-tls-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            self.save(cert_path, key_path)
            ctx.load_cert_chain(cert_path, key_path)
        return ctx
