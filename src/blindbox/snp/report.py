"""ATTESTATION_REPORT: the 1184-byte structure the AMD secure processor signs.

:meth:`AttestationReport.from_bytes` is strict: any length, version, algorithm,
key selector or must-be-zero range it does not expect is refused with a
:class:`~blindbox.errors.NotAnEnclaveError` naming the field, and the original
bytes are kept so that the signature is always checked over what was received.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from blindbox.errors import NotAnEnclaveError
from blindbox.snp.guest_policy import GuestPolicy
from blindbox.snp.platform_info import PlatformInfo
from blindbox.snp.product import Product, product_from_cpuid
from blindbox.snp.tcb import TcbVersion

REPORT_SIZE = 0x4A0
SIGNED_LENGTH = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
_COMPONENT_SIZE = 72
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)


class SigningKey(enum.Enum):
    """Which AMD key signed the report (SIGNER_INFO bits 4:2)."""

    VCEK = 0
    VLEK = 1


@dataclass(frozen=True)
class SignerInfo:
    """SIGNER_INFO (offset 0x48)."""

    raw: int
    author_key_enabled: bool
    chip_id_masked: bool
    signing_key: SigningKey

    @classmethod
    def decode(cls, raw: int) -> SignerInfo:
        if raw >> 5:
            raise NotAnEnclaveError(
                f"signer_info: bits 31:5 must be zero, found 0x{raw:08x}"
            )
        selector = raw >> 2 & 0x7
        if selector not in (0, 1):
            raise NotAnEnclaveError(
                "signer_info.signing_key: expected 0 (VCEK) or 1 (VLEK), "
                f"found {selector}" + (" (no signing key)" if selector == 7 else " (reserved)")
            )
        return cls(raw, bool(raw & 1), bool(raw & 2), SigningKey(selector))

    @classmethod
    def encode(cls, *, signing_key: SigningKey, author_key_enabled: bool = False,
               chip_id_masked: bool = False) -> SignerInfo:
        raw = int(author_key_enabled) | int(chip_id_masked) << 1 | signing_key.value << 2
        return cls.decode(raw)


@dataclass(frozen=True)
class FirmwareVersion:
    """A SEV firmware version (major.minor, build)."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.build)


@dataclass(frozen=True)
class Cpuid:
    """CPUID family, model and stepping from a v3+ report."""

    family: int
    model: int
    stepping: int

    def __str__(self) -> str:
        return f"family 0x{self.family:02x} model 0x{self.model:02x} stepping {self.stepping}"


def _mbz(raw: bytes, start: int, end: int, field: str) -> None:
    chunk = raw[start:end]
    if any(chunk):
        first = next(i for i, b in enumerate(chunk) if b)
        raise NotAnEnclaveError(
            f"{field} (0x{start:03x}..0x{end:03x}): must be zero, found non-zero byte "
            f"0x{chunk[first]:02x} at offset 0x{start + first:03x}"
        )


def _signature_component(raw: bytes, offset: int, name: str) -> int:
    field = raw[offset : offset + _COMPONENT_SIZE]
    _mbz(raw, offset + 48, offset + _COMPONENT_SIZE, f"signature.{name} upper 24 bytes")
    value = int.from_bytes(field[:48], "little")
    if not 0 < value < _P384_ORDER:
        raise NotAnEnclaveError(
            f"signature.{name}: expected 0 < {name} < n (P-384 order), found "
            + ("zero" if value == 0 else f"{name} >= n ({value:#x})")
        )
    return value


@dataclass(frozen=True)
class AttestationReport:
    """A parsed SEV-SNP attestation report (versions 2, 3, 4 and 5).

    ``product`` comes from CPUID for v3+; for v2 reports it is whatever the
    caller supplied (typically from the VCEK's productName) or None. The TCB
    layout follows the product: Turin never emits v2 reports, so a v2 report
    always uses the Milan/Genoa layout.
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    signer_info: SignerInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    product: Product | None

    def __repr__(self) -> str:
        """One line: what identifies the report, never its 1184 raw bytes."""
        product = self.product.value if self.product is not None else "unknown product"
        return (f"AttestationReport(v{self.version}, {product}, {self.signing_key.name}, "
                f"measurement={self.measurement.hex()}, reported_tcb=[{self.reported_tcb}], "
                f"vmpl={self.vmpl}, policy=0x{self.policy.raw:x})")

    @property
    def signed_bytes(self) -> bytes:
        """Bytes [0, 0x2A0): exactly what the AMD secure processor signed."""
        return self.raw[:SIGNED_LENGTH]

    @property
    def signing_key(self) -> SigningKey:
        return self.signer_info.signing_key

    @property
    def chip_id_masked(self) -> bool:
        return self.signer_info.chip_id_masked

    @classmethod
    def from_bytes(cls, data: bytes, product: Product | None = None) -> AttestationReport:
        """Parse and strictly validate the layout of a raw report.

        ``product`` is a hint used only for v2 reports, which carry no CPUID; for
        v3+ it must agree with CPUID if given.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotAnEnclaveError(f"report: expected bytes, found {type(data).__name__}")
        raw = bytes(data)
        if len(raw) != REPORT_SIZE:
            raise NotAnEnclaveError(
                f"report: expected {REPORT_SIZE} bytes, found {len(raw)}"
            )

        def u32(off: int) -> int:
            return int.from_bytes(raw[off : off + 4], "little")

        def u64(off: int) -> int:
            return int.from_bytes(raw[off : off + 8], "little")

        version = u32(0x000)
        if version not in SUPPORTED_VERSIONS:
            raise NotAnEnclaveError(
                f"version: expected one of {', '.join(map(str, SUPPORTED_VERSIONS))}, found {version}"
            )
        signature_algo = u32(0x034)
        if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise NotAnEnclaveError(
                f"signature_algo: expected 1 (ECDSA P-384 with SHA-384), found {signature_algo}"
            )
        signer_info = SignerInfo.decode(u32(0x048))
        _mbz(raw, 0x04C, 0x050, "reserved after signer_info")

        cpuid: Cpuid | None = None
        if version >= 3:
            cpuid = Cpuid(raw[0x188], raw[0x189], raw[0x18A])
            _mbz(raw, 0x18B, 0x1A0, "reserved after cpuid")
            detected = product_from_cpuid(cpuid.family, cpuid.model)
            if product is not None and product is not detected:
                raise NotAnEnclaveError(
                    f"product: expected {product.value}, found {detected.value} from CPUID"
                )
            product = detected
        else:
            _mbz(raw, 0x188, 0x1A0, "reserved (v2 report)")
            if product is Product.TURIN:
                raise NotAnEnclaveError(
                    "version: Turin firmware emits report version 3 or later, found a v2 report "
                    "claimed to be from Turin"
                )

        chip_id = raw[0x1A0:0x1E0]
        if signer_info.chip_id_masked:
            _mbz(raw, 0x1A0, 0x1E0, "chip_id (MASK_CHIP_ID is set)")
        elif product is Product.TURIN:
            _mbz(raw, 0x1A8, 0x1E0, "chip_id bytes 8..63 (Turin)")

        _mbz(raw, 0x1EB, 0x1EC, "reserved after current version")
        _mbz(raw, 0x1EF, 0x1F0, "reserved after committed version")
        launch_mit: int | None = None
        current_mit: int | None = None
        if version >= 5:
            launch_mit, current_mit = u64(0x1F8), u64(0x200)
        else:
            _mbz(raw, 0x1F8, 0x208, f"reserved (mitigation vectors, v{version} report)")
        _mbz(raw, 0x208, SIGNED_LENGTH, "reserved before signature")
        r = _signature_component(raw, 0x2A0, "r")
        s = _signature_component(raw, 0x2E8, "s")
        _mbz(raw, 0x330, REPORT_SIZE, "signature tail")

        def tcb(off: int, name: str) -> TcbVersion:
            return TcbVersion.decode(raw[off : off + 8], product, name)

        return cls(
            raw=raw,
            version=version,
            guest_svn=u32(0x004),
            policy=GuestPolicy.decode(u64(0x008)),
            family_id=raw[0x010:0x020],
            image_id=raw[0x020:0x030],
            vmpl=u32(0x030),
            signature_algo=signature_algo,
            current_tcb=tcb(0x038, "current_tcb"),
            platform_info=PlatformInfo.decode(u64(0x040)),
            signer_info=signer_info,
            report_data=raw[0x050:0x090],
            measurement=raw[0x090:0x0C0],
            host_data=raw[0x0C0:0x0E0],
            id_key_digest=raw[0x0E0:0x110],
            author_key_digest=raw[0x110:0x140],
            report_id=raw[0x140:0x160],
            report_id_ma=raw[0x160:0x180],
            reported_tcb=tcb(0x180, "reported_tcb"),
            cpuid=cpuid,
            chip_id=chip_id,
            committed_tcb=tcb(0x1E0, "committed_tcb"),
            current_version=FirmwareVersion(raw[0x1EA], raw[0x1E9], raw[0x1E8]),
            committed_version=FirmwareVersion(raw[0x1EE], raw[0x1ED], raw[0x1EC]),
            launch_tcb=tcb(0x1F0, "launch_tcb"),
            launch_mit_vector=launch_mit,
            current_mit_vector=current_mit,
            signature_r=r,
            signature_s=s,
            product=product,
        )

    def with_product(self, product: Product) -> AttestationReport:
        """Re-parse a v2 report with its product now known (from the certificate)."""
        if self.product is product:
            return self
        return AttestationReport.from_bytes(self.raw, product)
