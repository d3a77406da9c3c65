"""The guest POLICY word a VM was launched with (report offset 0x08)."""

from __future__ import annotations

from dataclasses import dataclass

from blindbox.errors import NotAnEnclaveError

_RESERVED_ONE = 1 << 17
_MBZ_MASK = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class GuestPolicy:
    """Decoded guest policy. Bit 17 must be one and bits 63:26 must be zero."""

    raw: int
    abi_minor: int
    abi_major: int
    smt_allowed: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allowed: bool
    mem_aes_256_xts: bool
    rapl_disabled: bool
    ciphertext_hiding: bool
    page_swap_disabled: bool

    @classmethod
    def decode(cls, raw: int) -> GuestPolicy:
        if not raw & _RESERVED_ONE:
            raise NotAnEnclaveError(
                f"policy: reserved bit 17 must be 1, found policy 0x{raw:x} with it clear"
            )
        if raw & _MBZ_MASK:
            raise NotAnEnclaveError(
                f"policy: bits 63:26 must be zero, found 0x{raw & _MBZ_MASK:x} in policy 0x{raw:x}"
            )

        def bit(n: int) -> bool:
            return bool(raw >> n & 1)

        return cls(
            raw=raw,
            abi_minor=raw & 0xFF,
            abi_major=raw >> 8 & 0xFF,
            smt_allowed=bit(16),
            migrate_ma=bit(18),
            debug=bit(19),
            single_socket=bit(20),
            cxl_allowed=bit(21),
            mem_aes_256_xts=bit(22),
            rapl_disabled=bit(23),
            ciphertext_hiding=bit(24),
            page_swap_disabled=bit(25),
        )

    @classmethod
    def build(
        cls,
        *,
        abi_major: int = 0,
        abi_minor: int = 0,
        smt_allowed: bool = True,
        migrate_ma: bool = False,
        debug: bool = False,
        single_socket: bool = False,
        cxl_allowed: bool = False,
        mem_aes_256_xts: bool = False,
        rapl_disabled: bool = False,
        ciphertext_hiding: bool = False,
        page_swap_disabled: bool = False,
    ) -> GuestPolicy:
        """Compose a policy word (bit 17 always set)."""
        raw = (abi_minor & 0xFF) | (abi_major & 0xFF) << 8 | _RESERVED_ONE
        for n, on in ((16, smt_allowed), (18, migrate_ma), (19, debug), (20, single_socket),
                      (21, cxl_allowed), (22, mem_aes_256_xts), (23, rapl_disabled),
                      (24, ciphertext_hiding), (25, page_swap_disabled)):
            raw |= int(on) << n
        return cls.decode(raw)

    def flags(self) -> dict[str, bool]:
        """The boolean flags by name, for display."""
        return {
            "smt_allowed": self.smt_allowed,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
            "cxl_allowed": self.cxl_allowed,
            "mem_aes_256_xts": self.mem_aes_256_xts,
            "rapl_disabled": self.rapl_disabled,
            "ciphertext_hiding": self.ciphertext_hiding,
            "page_swap_disabled": self.page_swap_disabled,
        }
