"""Test key hierarchies: the shared PUBLIC test keys, or fresh random ones.

A hierarchy holds, per product, an RSA-4096 ARK (self-signed), ASK and ASVK
with their certificates, and the P-384 VCEK/VLEK keys and certificates issued
so far. Every key comes from ``cryptography``'s key generation and every
signature from ``cryptography``; nothing here does RSA arithmetic.

- :func:`shared_hierarchy` is the default of the test kit (pytest plugin, demo,
  simulator): committed PUBLIC test keys (``data/public-test-keys-*.pem``).
  Their private keys ship with blindbox, so anyone can sign evidence that
  verifies under their roots, fresh nonce included: they are fit for loopback
  tests only, and say so wherever their roots are written.
- :meth:`Hierarchy.generate` makes fresh random keys, in memory only (e.g. one
  set per ``blindbox fixture create``). A fixture made from them is
  reproducible because it is committed, not because its keys can be derived.

CA keys are made on first use per product (an RSA-4096 key takes a few tenths
of a second to generate); VCEK/VLEK keys and certificates are made once per
hierarchy and (chip or CSP, TCB, validity), and reused.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from blindbox.snp.product import Product
from blindbox.testing import _x509

CaRole = Literal["ark", "ask", "asvk"]
ROLES: tuple[CaRole, ...] = ("ark", "ask", "asvk")
CA_NAMES: dict[str, str] = {"ark": "ARK-{}", "ask": "SEV-{}", "asvk": "SEV-VLEK-{}"}
RSA_BITS = 4096
SHARED_FILE = "public-test-keys-{}.pem"
#: Written above the shared keys and above every PEM of their roots.
SHARED_NOTICE = (
    "BlindBox PUBLIC TEST KEYS - NOT SECRET, NOT AMD. These private keys ship with blindbox:\n"
    "anyone can sign simulated SEV-SNP evidence that verifies under these roots. Trust the\n"
    "roots only in loopback tests, passed explicitly (roots=...); never anywhere else.\n"
)
FRESH_NOTICE = (
    "BlindBox TEST ROOTS - NOT AMD. Simulated SEV-SNP roots with fresh random keys, made for\n"
    "one test hierarchy. Trust them only in tests, passed explicitly (roots=...).\n"
)
_BLOCK = re.compile(rb"-----BEGIN (PRIVATE KEY|CERTIFICATE)-----\r?\n.+?-----END \1-----\r?\n?", re.S)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Authority:
    """One test CA: its private key and its certificate (DER)."""

    key: rsa.RSAPrivateKey
    der: bytes
    subject: x509.Name


class Hierarchy:
    """A simulated AMD key hierarchy; see the module docstring. Safe to share between threads."""

    def __init__(self, make: Callable[[Product], Mapping[str, Authority]], *, shared: bool) -> None:
        self.shared = shared
        self._make = make
        self._lock = threading.RLock()
        self._authorities: dict[Product, Mapping[str, Authority]] = {}
        self._memo: dict[Hashable, object] = {}

    @classmethod
    def generate(cls) -> Hierarchy:
        """A hierarchy of fresh random keys (made per product on first use, never written anywhere)."""
        return cls(_generate, shared=False)

    @property
    def notice(self) -> str:
        """What these roots are, for the head of every PEM of them."""
        return SHARED_NOTICE if self.shared else FRESH_NOTICE

    def authority(self, product: Product, role: CaRole) -> Authority:
        if role not in CA_NAMES:
            raise ValueError(f"role: expected ark, ask or asvk, got {role!r}")
        with self._lock:
            authorities = self._authorities.get(product)
            if authorities is None:
                authorities = self._authorities[product] = self._make(product)
            return authorities[role]

    def memo(self, key: Hashable, make: Callable[[], _T]) -> _T:
        """``make()`` once per ``key`` for this hierarchy (leaf keys and certificates)."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]  # type: ignore[return-value]


def _unit(shared: bool) -> str:
    return _x509.UNIT_SHARED if shared else _x509.UNIT_FRESH


def _generate(product: Product, *, shared: bool = False) -> dict[str, Authority]:
    """Fresh random ARK, ASK and ASVK keys for ``product``, certified as AMD certifies them.

    ``shared=True`` labels them as the shared PUBLIC test keys: only for writing
    the committed files again (:func:`export_pem`).
    """
    keys = {role: rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS) for role in ROLES}
    names = {role: _x509.name(CA_NAMES[role].format(product.value), _unit(shared)) for role in ROLES}
    return {
        role: Authority(
            key=keys[role],
            der=_x509.ca_certificate(
                subject=names[role], key=keys[role], issuer=names["ark"], issuer_key=keys["ark"],
                path_length=None if role == "ark" else 0,
            ),
            subject=names[role],
        )
        for role in ROLES
    }


def _load_shared(product: Product) -> dict[str, Authority]:
    """The committed PUBLIC test keys of ``product``, each checked against its certificate."""
    name = SHARED_FILE.format(product.value.lower())
    text = (resources.files("blindbox.testing") / "data" / name).read_bytes()
    return _parse_shared(name, text, product)


def _parse_shared(name: str, text: bytes, product: Product) -> dict[str, Authority]:
    blocks = [m.group(0) for m in _BLOCK.finditer(text)]
    if len(blocks) != 2 * len(ROLES):
        raise ValueError(f"{name}: expected a private key and a certificate for each of "
                         f"{', '.join(ROLES)}, found {len(blocks)} PEM blocks")
    out: dict[str, Authority] = {}
    for role, key_pem, cert_pem in zip(ROLES, blocks[0::2], blocks[1::2], strict=True):
        # Package data: OpenSSL's key check (a primality test, ~0.3 s per key) is skipped; the
        # key must match its certificate, and every signature it makes is verified by clients.
        key = serialization.load_pem_private_key(key_pem, None, unsafe_skip_rsa_key_validation=True)
        cert = x509.load_pem_x509_certificate(cert_pem)
        expected_cn = CA_NAMES[role].format(product.value)
        common_names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        public = cert.public_key()
        if (not isinstance(key, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey)
                or common_names != [expected_cn]
                or key.public_key().public_numbers() != public.public_numbers()):
            raise ValueError(f"{name}: expected the {role.upper()} key and its certificate "
                             f"(CN {expected_cn!r}), found CN {common_names!r} or another key")
        out[role] = Authority(key, cert.public_bytes(serialization.Encoding.DER), cert.subject)
    return out


def export_pem(hierarchy: Hierarchy, product: Product) -> str:
    """The text of a shared-keys file for ``product``: the notice, then each key and certificate."""
    parts = [hierarchy.notice, f"Simulated {product.value} hierarchy: ARK, ASK and ASVK (RSA-4096).\n"]
    for role in ROLES:
        authority = hierarchy.authority(product, role)
        parts.append(f"\n{role.upper()} private key (PUBLIC, for tests only)\n")
        key_pem = authority.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        parts.append(key_pem.decode("ascii"))
        parts.append(f"{role.upper()} certificate\n")
        cert = x509.load_der_x509_certificate(authority.der)
        parts.append(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return "".join(parts)


_SHARED = Hierarchy(_load_shared, shared=True)


def shared_hierarchy() -> Hierarchy:
    """The committed PUBLIC test keys (one instance per process)."""
    return _SHARED
