"""Every field of an ATTESTATION_REPORT, settable, and its exact 0x2A0-byte encoding.

:class:`ReportFields` encodes what it is given: it checks that each value fits
its field, not that the report makes sense, so tests can build reports the
verifier must refuse. ``ReportFields.from_report(parsed).encode()`` gives back
exactly the signed bytes of any report :class:`~blindbox.snp.AttestationReport`
accepts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

from blindbox.snp.product import Product
from blindbox.snp.report import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SIGNED_LENGTH,
    AttestationReport,
    Cpuid,
    FirmwareVersion,
    SigningKey,
)
from blindbox.snp.tcb import TcbVersion

#: CPUID (family, model, stepping) of the product lines' reference parts.
DEFAULT_CPUID: dict[Product, Cpuid] = {
    Product.MILAN: Cpuid(0x19, 0x01, 1),
    Product.GENOA: Cpuid(0x19, 0x11, 1),
    Product.TURIN: Cpuid(0x1A, 0x02, 1),
}
#: A TCB of each product line that meets blindbox.snp.bulletins' AMD-recommended table.
DEFAULT_TCB: dict[Product, TcbVersion] = {
    Product.MILAN: TcbVersion.from_components(bootloader=4, tee=0, snp=27, microcode=222),
    Product.GENOA: TcbVersion.from_components(bootloader=10, tee=0, snp=27, microcode=86),
    Product.TURIN: TcbVersion.from_components(fmc=0, bootloader=1, tee=0, snp=4, microcode=81),
}
DEFAULT_FIRMWARE = FirmwareVersion(1, 55, 43)
#: POLICY 0x3001F: ABI 0.31, SMT allowed, reserved bit 17 set, no debug, no migration agent.
DEFAULT_POLICY = 0x3001F
#: PLATFORM_INFO 0x25: SMT, ECC and alias check complete.
DEFAULT_PLATFORM_INFO = 0x25

# Resolved in __post_init__: "the default for this product".
_UNSET_TCB = TcbVersion(b"", 0, 0, 0, 0)
_UNSET_CHIP_ID = bytes(bytearray(b"unset"))  # a private object, compared by identity

_SIZES = {
    "family_id": 16, "image_id": 16, "report_data": 64, "measurement": 48, "host_data": 32,
    "id_key_digest": 48, "author_key_digest": 48, "report_id": 32, "report_id_ma": 32,
    "chip_id": 64,
}
_U32 = ("version", "guest_svn", "vmpl", "signature_algo")
_U64 = ("policy", "platform_info")
_TCBS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")


def default_chip_id(product: Product) -> bytes:
    """A fixed, obviously synthetic CHIP_ID (Turin: 8 bytes then zeros)."""
    digest = hashlib.sha512(b"BlindBox TEST chip - NOT AMD/" + product.value.encode()).digest()
    return digest[: product.hwid_length].ljust(64, b"\x00")


@dataclass(frozen=True)
class ReportFields:
    """The fields of one report, in ABI order, plus the ``product`` that produced it.

    Left unset: the TCBs take :data:`DEFAULT_TCB` for the product (in its
    layout), ``chip_id`` takes :func:`default_chip_id`, ``cpuid`` the
    product's CPUID for v3+ (None for v2, whose bytes are reserved), and the
    mitigation vectors 0 for v5+ (None before). A given ``cpuid`` or vector is
    written whatever the version. ``chip_id`` is the chip's identity: it keys
    the VCEK, and is written as zeros when ``mask_chip_id`` is set. On Turin an
    8-byte ``chip_id`` is zero-padded to 64.
    """

    product: Product = Product.MILAN
    version: int = 5
    guest_svn: int = 0
    policy: int = DEFAULT_POLICY
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIGNATURE_ALGO_ECDSA_P384_SHA384
    current_tcb: TcbVersion = _UNSET_TCB
    platform_info: int = DEFAULT_PLATFORM_INFO
    author_key_enabled: bool = False
    mask_chip_id: bool = False
    signing_key: SigningKey = SigningKey.VCEK
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: TcbVersion = _UNSET_TCB
    cpuid: Cpuid | None = None
    chip_id: bytes = _UNSET_CHIP_ID
    committed_tcb: TcbVersion = _UNSET_TCB
    current_version: FirmwareVersion = DEFAULT_FIRMWARE
    committed_version: FirmwareVersion = DEFAULT_FIRMWARE
    launch_tcb: TcbVersion = _UNSET_TCB
    launch_mit_vector: int | None = None
    current_mit_vector: int | None = None

    def __post_init__(self) -> None:
        def resolve(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.product, Product):
            raise TypeError(f"product: expected a Product, got {self.product!r}")
        if not isinstance(self.signing_key, SigningKey):
            raise TypeError(f"signing_key: expected a SigningKey, got {self.signing_key!r}")
        for name in _TCBS:
            if getattr(self, name) is _UNSET_TCB:
                resolve(name, DEFAULT_TCB[self.product])
            elif len(getattr(self, name).raw) != 8:
                raise ValueError(f"{name}: expected an 8-byte TCB_VERSION")
        if self.chip_id is _UNSET_CHIP_ID:
            resolve("chip_id", default_chip_id(self.product))
        elif self.product is Product.TURIN and len(self.chip_id) == 8:
            resolve("chip_id", bytes(self.chip_id).ljust(64, b"\x00"))
        if self.cpuid is None and self.version >= 3:
            resolve("cpuid", DEFAULT_CPUID[self.product])
        if self.version >= 5:
            for name in ("launch_mit_vector", "current_mit_vector"):
                if getattr(self, name) is None:
                    resolve(name, 0)
        for name, size in _SIZES.items():
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray)) or len(value) != size:
                found = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else repr(value)
                raise ValueError(f"{name}: expected {size} bytes, found {found}")
            resolve(name, bytes(value))
        for name, limit in [(n, 1 << 32) for n in _U32] + [(n, 1 << 64) for n in _U64] + [
            ("launch_mit_vector", 1 << 64), ("current_mit_vector", 1 << 64)
        ]:
            value = getattr(self, name)
            if value is not None and not 0 <= value < limit:
                raise ValueError(f"{name}: expected 0 <= value < 2**{limit.bit_length() - 1}, got {value}")
        parts: list[tuple[str, int]] = [
            (f"current_version.{k}", getattr(self.current_version, k)) for k in ("major", "minor", "build")
        ] + [(f"committed_version.{k}", getattr(self.committed_version, k))
             for k in ("major", "minor", "build")]
        if self.cpuid is not None:
            parts += [(f"cpuid.{k}", getattr(self.cpuid, k)) for k in ("family", "model", "stepping")]
        for name, byte in parts:
            if not 0 <= byte <= 0xFF:
                raise ValueError(f"{name}: expected 0..255, got {byte}")

    @property
    def signer_info(self) -> int:
        """The SIGNER_INFO word these fields encode."""
        return int(self.author_key_enabled) | int(self.mask_chip_id) << 1 | self.signing_key.value << 2

    @property
    def hwid(self) -> bytes:
        """The VCEK hwID of this chip: CHIP_ID, or its first 8 bytes on Turin."""
        return self.chip_id[: self.product.hwid_length]

    def encode(self) -> bytes:
        """The 0x2A0 signed bytes of the report (everything before the signature)."""
        out = bytearray(SIGNED_LENGTH)

        def put(offset: int, value: bytes) -> None:
            out[offset : offset + len(value)] = value

        def u32(value: int) -> bytes:
            return value.to_bytes(4, "little")

        def u64(value: int) -> bytes:
            return value.to_bytes(8, "little")

        def version(v: FirmwareVersion) -> bytes:
            return bytes([v.build, v.minor, v.major])

        put(0x000, u32(self.version))
        put(0x004, u32(self.guest_svn))
        put(0x008, u64(self.policy))
        put(0x010, self.family_id)
        put(0x020, self.image_id)
        put(0x030, u32(self.vmpl))
        put(0x034, u32(self.signature_algo))
        put(0x038, self.current_tcb.raw)
        put(0x040, u64(self.platform_info))
        put(0x048, u32(self.signer_info))
        put(0x050, self.report_data)
        put(0x090, self.measurement)
        put(0x0C0, self.host_data)
        put(0x0E0, self.id_key_digest)
        put(0x110, self.author_key_digest)
        put(0x140, self.report_id)
        put(0x160, self.report_id_ma)
        put(0x180, self.reported_tcb.raw)
        if self.cpuid is not None:
            put(0x188, bytes([self.cpuid.family, self.cpuid.model, self.cpuid.stepping]))
        if not self.mask_chip_id:
            put(0x1A0, self.chip_id)
        put(0x1E0, self.committed_tcb.raw)
        put(0x1E8, version(self.current_version))
        put(0x1EC, version(self.committed_version))
        put(0x1F0, self.launch_tcb.raw)
        if self.launch_mit_vector is not None:
            put(0x1F8, u64(self.launch_mit_vector))
        if self.current_mit_vector is not None:
            put(0x200, u64(self.current_mit_vector))
        return bytes(out)

    @classmethod
    def from_report(cls, report: AttestationReport, product: Product | None = None) -> ReportFields:
        """The fields of a parsed report; ``product`` is needed for v2 reports (no CPUID)."""
        resolved = report.product or product
        if resolved is None:
            raise ValueError("product: a v2 report carries no CPUID; pass product=")
        if report.product is not None and product is not None and product is not report.product:
            raise ValueError(f"product: the report's CPUID says {report.product.value}, got {product.value}")
        values = {f.name: getattr(report, f.name) for f in fields(cls)
                  if f.name not in ("product", "policy", "platform_info", "author_key_enabled",
                                    "mask_chip_id", "signing_key")}
        return cls(
            product=resolved,
            policy=report.policy.raw,
            platform_info=report.platform_info.raw,
            author_key_enabled=report.signer_info.author_key_enabled,
            mask_chip_id=report.signer_info.chip_id_masked,
            signing_key=report.signer_info.signing_key,
            **values,
        )
