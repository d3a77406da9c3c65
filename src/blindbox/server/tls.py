"""The enclave's TLS identity: a key pair generated inside the enclave, never exported.

The certificate is self-signed; clients trust it only because an attestation
report binds the SHA-256 of its SubjectPublicKeyInfo.

Security property: :meth:`TlsIdentity.server_context` loads the key from an
anonymous memory file (``memfd_create``), closed as soon as OpenSSL has read
it; the key never touches a filesystem, and ``repr`` never shows it.
(:meth:`TlsIdentity.save` exists for the test kit's recorded fixtures only.)
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsIdentity:
    """A TLS private key and its self-signed certificate (both PEM)."""

    key_pem: bytes = field(repr=False)
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
        """A server-side TLS context (TLS 1.2+) presenting this identity; the key stays in memory."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys only from paths: give it /proc/self/fd/N of an anonymous memory file
        # (no name in any filesystem, never swapped to one; sealed against writes), closed at once.
        fd = os.memfd_create("blindbox-tls", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(self.key_pem + b"\n" + self.cert_pem)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            path = f"/proc/self/fd/{fd}"
            ctx.load_cert_chain(path, path)
        finally:
            os.close(fd)
        return ctx
