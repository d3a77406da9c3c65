"""TCB_VERSION: the firmware security patch levels in a report, per product layout."""

from __future__ import annotations

from dataclasses import dataclass

from blindbox.errors import NotAnEnclaveError
from blindbox.snp.product import Product

#: Names of the components, in the order BlindBox prints and compares them.
COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION.

    Milan and Genoa: byte 0 boot loader, 1 TEE, 2-5 reserved, 6 SNP, 7 microcode.
    Turin: byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 4-6 reserved, 7 microcode.
    ``fmc`` is None on products without an FMC. Reserved bytes must be zero.
    """

    raw: bytes
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: bytes, product: Product | None, field: str = "tcb") -> TcbVersion:
        """Decode 8 bytes; ``product`` None means the Milan/Genoa layout (v2 reports)."""
        if len(raw) != 8:
            raise NotAnEnclaveError(f"{field}: expected 8 bytes, found {len(raw)}")
        if product is not None and product.has_fmc:
            reserved = raw[4:7]
            if any(reserved):
                raise NotAnEnclaveError(
                    f"{field}: reserved bytes 4-6 must be zero (Turin layout), found {reserved.hex()}"
                )
            return cls(bytes(raw), raw[1], raw[2], raw[3], raw[7], fmc=raw[0])
        reserved = raw[2:6]
        if any(reserved):
            raise NotAnEnclaveError(
                f"{field}: reserved bytes 2-5 must be zero (Milan/Genoa layout), found {reserved.hex()}"
            )
        return cls(bytes(raw), raw[0], raw[1], raw[6], raw[7])

    @classmethod
    def from_components(
        cls,
        *,
        bootloader: int,
        tee: int,
        snp: int,
        microcode: int,
        fmc: int | None = None,
    ) -> TcbVersion:
        """Encode components; ``fmc`` given selects the Turin layout."""
        for name, value in (("bootloader", bootloader), ("tee", tee), ("snp", snp),
                            ("microcode", microcode), ("fmc", fmc or 0)):
            if not 0 <= value <= 0xFF:
                raise ValueError(f"TCB component {name} must be 0..255, got {value}")
        if fmc is not None:
            raw = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        else:
            raw = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
        return cls(raw, bootloader, tee, snp, microcode, fmc)

    def components(self) -> dict[str, int]:
        """The components present in this layout, by name."""
        out: dict[str, int] = {}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        out.update(bootloader=self.bootloader, tee=self.tee, snp=self.snp, microcode=self.microcode)
        return out

    def at_least(self, other: TcbVersion) -> bool:
        """Component-wise ``self >= other`` (the only meaningful TCB order)."""
        mine, theirs = self.components(), other.components()
        if mine.keys() != theirs.keys():
            raise ValueError("cannot compare TCBs of different layouts")
        return all(mine[k] >= theirs[k] for k in mine)

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.components().items())
