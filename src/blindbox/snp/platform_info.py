"""PLATFORM_INFO (report offset 0x40): platform state at the time of the report."""

from __future__ import annotations

from dataclasses import dataclass

#: Known bits, by name. Unknown bits are preserved and left to the appraisal policy.
BITS: dict[str, int] = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
    "tio_enabled": 7,
}
_KNOWN_MASK = sum(1 << b for b in BITS.values())


@dataclass(frozen=True)
class PlatformInfo:
    """Decoded platform info; ``unknown_bits`` holds any bit this version does not name."""

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool
    unknown_bits: int

    @classmethod
    def decode(cls, raw: int) -> PlatformInfo:
        flags = {name: bool(raw >> bit & 1) for name, bit in BITS.items()}
        return cls(raw=raw, unknown_bits=raw & ~_KNOWN_MASK, **flags)

    def flags(self) -> dict[str, bool]:
        return {name: bool(self.raw >> bit & 1) for name, bit in BITS.items()}
