"""AMD EPYC product lines that BlindBox can verify, and how to recognise them."""

from __future__ import annotations

import enum

from blindbox.errors import NotAnEnclaveError


class Product(enum.Enum):
    """An SEV-SNP product line: names its KDS path, its roots and its TCB layout."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def kds_name(self) -> str:
        """The product name used in AMD KDS URLs and certificate names."""
        return self.value

    @property
    def has_fmc(self) -> bool:
        """Whether TCB_VERSION uses the Turin layout (with an FMC component)."""
        return self is Product.TURIN

    @property
    def hwid_length(self) -> int:
        """Length of the VCEK hwID and of the KDS chip-id path component."""
        return 8 if self is Product.TURIN else 64

    @classmethod
    def from_name(cls, name: str) -> Product:
        """Parse a product name as a user writes it ("milan", "Genoa")."""
        for product in cls:
            if product.value.lower() == name.strip().lower():
                return product
        expected = ", ".join(p.value.lower() for p in cls)
        raise ValueError(f"unknown product {name!r}: expected one of {expected}")


def product_from_cpuid(family: int, model: int) -> Product:
    """Identify the product line from the report's CPUID family and model (v3+).

    Ranges: family 19h models 00h-0Fh are Milan; 10h-1Fh and A0h-AFh are Genoa
    (including Bergamo and Siena, which share Genoa's KDS product); family 1Ah
    models 00h-11h are Turin. Anything else is refused: an unknown CPU cannot be
    matched to a pinned root or a TCB layout.
    """
    if family == 0x19:
        if 0x00 <= model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    elif family == 0x1A and 0x00 <= model <= 0x11:
        return Product.TURIN
    raise NotAnEnclaveError(
        "cpuid: expected an SEV-SNP product line (Milan family 0x19 model 0x00-0x0f, "
        "Genoa 0x19/0x10-0x1f or 0xa0-0xaf, Turin 0x1a/0x00-0x11), "
        f"found family 0x{family:02x} model 0x{model:02x}"
    )


def product_from_certificate_name(product_name: str) -> Product:
    """Identify the product line from a VCEK/VLEK productName ("Milan-B0", "Genoa")."""
    base = product_name.split("-", 1)[0]
    for product in Product:
        if product.value == base:
            return product
    raise NotAnEnclaveError(
        f"certificate productName: expected Milan[-stepping], Genoa[-stepping] or "
        f"Turin[-stepping], found {product_name!r}"
    )
