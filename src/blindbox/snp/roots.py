"""Trust anchors: AMD's pinned root keys, or roots a caller passes explicitly.

AMD's ARK, ASK and ASVK for each product ship as package data and are pinned
by the SHA-256 fingerprints below, written in code: a bundled file whose
fingerprint differs is refused. A trust anchor is never taken from evidence or
from the network. Callers may replace (never extend) AMD's roots, for tests or
a simulator, with :func:`load_roots`.
"""

from __future__ import annotations

import functools
import hmac
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from blindbox.errors import ConfigurationError, NotAnEnclaveError
from blindbox.snp.certificate import AmdCertificate, load_all
from blindbox.snp.product import Product

#: SHA-256 of the DER of each genuine AMD certificate, by product and role.
AMD_FINGERPRINTS: dict[Product, dict[str, str]] = {
    Product.MILAN: {
        "ark": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "ask": "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        "asvk": "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    },
    Product.GENOA: {
        "ark": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "ask": "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        "asvk": "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    },
    Product.TURIN: {
        "ark": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        "ask": "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        "asvk": "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
    },
}

_ARK_CN = re.compile(r"ARK-(Milan|Genoa|Turin)\b")


@dataclass(frozen=True)
class Anchor:
    """A self-signed root key (an ARK), with the product it serves (None: any)."""

    certificate: AmdCertificate
    product: Product | None


@dataclass(frozen=True)
class TrustRoots:
    """The anchors a verification may end in, plus intermediates known to the caller.

    ``is_amd`` is True only for AMD's pinned roots from :func:`amd_roots`.
    """

    anchors: tuple[Anchor, ...]
    intermediates: tuple[AmdCertificate, ...]
    is_amd: bool

    def anchors_for(self, product: Product) -> tuple[Anchor, ...]:
        return tuple(a for a in self.anchors if a.product in (None, product))

    def describe(self) -> str:
        kind = "AMD's pinned roots" if self.is_amd else "caller-supplied roots"
        names = ", ".join(a.certificate.common_name or "?" for a in self.anchors)
        return f"{kind} ({names})"


def _read_bundled(product: Product, role: str) -> AmdCertificate:
    path = resources.files("blindbox.snp") / "roots" / product.value.lower() / f"{role}.pem"
    cert = AmdCertificate.load(path.read_bytes())
    expected = AMD_FINGERPRINTS[product][role]
    if not hmac.compare_digest(cert.fingerprint_sha256, expected):
        raise NotAnEnclaveError(
            f"bundled AMD {role.upper()} for {product.value}: expected SHA-256 {expected}, "
            f"found {cert.fingerprint_sha256}; the installation has been tampered with"
        )
    return cert


@functools.lru_cache(maxsize=1)
def amd_roots() -> TrustRoots:
    """AMD's genuine ARKs (anchors) and ASKs/ASVKs (intermediates), fingerprint-checked."""
    anchors = []
    intermediates = []
    for product in Product:
        anchors.append(Anchor(_read_bundled(product, "ark"), product))
        intermediates.append(_read_bundled(product, "ask"))
        intermediates.append(_read_bundled(product, "asvk"))
    return TrustRoots(tuple(anchors), tuple(intermediates), is_amd=True)


def load_roots(source: str | bytes | os.PathLike[str] | TrustRoots) -> TrustRoots:
    """Load caller-supplied roots from PEM text/bytes, DER bytes or a file path.

    Self-signed certificates become anchors (their self-signature is checked);
    the others are kept as intermediates, usable only when they chain to one of
    those anchors by signature. The product an anchor serves is read from an
    ``ARK-<Product>`` common name when present, else it may serve any product.
    """
    if isinstance(source, TrustRoots):
        return source
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "-----BEGIN" not in source and Path(source).is_file()
    ):
        data: bytes | str = Path(source).read_bytes()
    else:
        data = source
    anchors: list[Anchor] = []
    intermediates: list[AmdCertificate] = []
    try:
        for cert in load_all(data):
            if cert.subject_der == cert.issuer_der:
                cert.verify_signed_by(cert)
                match = _ARK_CN.match(cert.common_name)
                anchors.append(Anchor(cert, Product(match.group(1)) if match else None))
            else:
                intermediates.append(cert)
    except NotAnEnclaveError as exc:
        raise ConfigurationError(f"roots: {exc}") from exc
    if not anchors:
        raise ConfigurationError("roots: expected at least one self-signed ARK, found none")
    return TrustRoots(tuple(anchors), tuple(intermediates), is_amd=False)
