"""SEV-SNP launch measurements: sev-snp-measure, minus the inputs it silently gets wrong.

sev-snp-measure computes a 48-byte "digest" for any file it is handed: an OVMF
build without SEV-SNP metadata still yields one, which no SEV-SNP guest can
ever report. :func:`measure` first checks that the firmware declares what an
SNP launch needs (the secrets and CPUID pages, page-aligned sections, an
SEV-ES reset block, and a kernel-hashes page when a kernel is measured) and
raises :class:`~blindbox.errors.MeasurementError` naming what it expected and
found. Inputs are copied to a private directory while being hashed, so the
SHA-256 values recorded in the :class:`Measurement` are those of the very
bytes that were measured.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sevsnpmeasure.guest import snp_calc_launch_digest  # type: ignore[import-untyped]
from sevsnpmeasure.ovmf import OVMF  # type: ignore[import-untyped]
from sevsnpmeasure.sev_hashes import PaddedSevHashTable  # type: ignore[import-untyped]
from sevsnpmeasure.vcpu_types import CPU_SIGS  # type: ignore[import-untyped]
from sevsnpmeasure.vmm_types import VMMType  # type: ignore[import-untyped]

from blindbox.errors import MeasurementError

DIGEST_SIZE = 48
PAGE_SIZE = 4096
MAX_OVMF_SIZE = 64 * 1024 * 1024
MAX_BOOT_FILE_SIZE = 2 * 1024 * 1024 * 1024
MAX_VCPUS = 4096
MAX_APPEND_BYTES = 4096
MAX_NAME_LENGTH = 255
MAX_METADATA_SECTIONS = 64
"""Most SEV metadata sections accepted (OVMF declares about seven)."""
MAX_METADATA_BYTES = 16 * 1024 * 1024
"""Largest total size of the SEV metadata sections (OVMF's come to about 128 KiB). sev-snp-measure
hashes each of their pages, so an unbounded sum would let 4 KiB of firmware cost minutes."""
SNP_ACTIVE = 0x1
"""Bit 0 of the VMSA SEV_FEATURES (``guest_features``): SNPActive, set in every SEV-SNP guest."""
VMMS = ("qemu", "ec2", "gce")
VCPU_TYPES: tuple[str, ...] = tuple(CPU_SIGS)
"""The vCPU model names sev-snp-measure knows (QEMU's ``-cpu`` names), e.g. ``EPYC-Milan``."""

_VMM_TYPES = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}
_FOUR_GIB = 1 << 32
_FOOTER_GUID = uuid.UUID(OVMF.OVMF_TABLE_FOOTER_GUID).bytes_le
_FOOTER_ENTRY_END = 32  # the footer table ends 32 bytes before the end of the image
_HASH_TABLE_SIZE: int = ctypes.sizeof(PaddedSevHashTable)
_REQUIRED_SECTIONS = ("SNP_SECRETS", "CPUID")
_ONE_PAGE_SECTIONS = ("SNP_SECRETS", "CPUID", "SNP_KERNEL_HASHES")
_HEX_RE = re.compile(r"[0-9a-f]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Measurement:
    """A 48-byte SEV-SNP launch digest with every input that produced it, so anyone can recompute it.

    ``ovmf_sha256``, ``kernel_sha256`` and ``initrd_sha256`` are the SHA-256 of
    the files measured; ``ovmf_hash`` is set only when the caller supplied a
    precomputed OVMF launch-digest seed (the OVMF file then only provided the
    SEV metadata). ``vcpu_type`` is a QEMU vCPU model and exists only for
    ``vmm="qemu"``: EC2 and GCE start every vCPU with a fixed signature.
    """

    digest: bytes
    ovmf_sha256: str
    vcpus: int
    vmm: str
    guest_features: int
    vcpu_type: str | None = None
    kernel_sha256: str | None = None
    initrd_sha256: str | None = None
    append: str | None = None
    ovmf_name: str | None = None
    ovmf_hash: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            found = (
                f"{len(self.digest)} bytes" if isinstance(self.digest, bytes) else type(self.digest).__name__
            )
            raise MeasurementError(f"digest: expected {DIGEST_SIZE} bytes, found {found}")
        _check_hex("ovmf_sha256", self.ovmf_sha256, 32)
        _check_options(
            vcpus=self.vcpus,
            vcpu_type=self.vcpu_type,
            vmm=self.vmm,
            guest_features=self.guest_features,
            append=self.append,
            has_kernel=self.kernel_sha256 is not None,
            has_initrd=self.initrd_sha256 is not None,
        )
        for name in ("kernel_sha256", "initrd_sha256"):
            value = getattr(self, name)
            if value is not None:
                _check_hex(name, value, 32)
        if self.ovmf_hash is not None:
            _check_hex("ovmf_hash", self.ovmf_hash, DIGEST_SIZE)
        if self.ovmf_name is not None:
            _check_text("ovmf_name", self.ovmf_name, MAX_NAME_LENGTH)

    @property
    def hex(self) -> str:
        """The digest as 96 lowercase hex characters (as reports and ``measurements=`` show it)."""
        return self.digest.hex()


def measure(
    ovmf: str | os.PathLike[str],
    *,
    vcpus: int,
    vcpu_type: str | None = None,
    vmm: str = "qemu",
    kernel: str | os.PathLike[str] | None = None,
    initrd: str | os.PathLike[str] | None = None,
    append: str | None = None,
    guest_features: int = SNP_ACTIVE,
    ovmf_hash: str | None = None,
) -> Measurement:
    """The SEV-SNP launch digest of a guest booted with these inputs (sev-snp-measure, mode ``snp``).

    ``vcpu_type`` is required for ``vmm="qemu"`` and refused for ``ec2`` and
    ``gce``. ``kernel``, ``initrd`` and ``append`` describe a measured direct
    boot (QEMU's kernel-hashes table) and need an OVMF with an
    SNP_KERNEL_HASHES page; ``initrd`` and ``append`` need ``kernel``.
    ``ovmf_hash`` is a precomputed OVMF launch-digest seed (96 hex); with it,
    ``ovmf`` is only read for its SEV metadata.

    Raises :class:`~blindbox.errors.MeasurementError` for inputs that would not
    give a digest an SEV-SNP guest can report.
    """
    _check_options(
        vcpus=vcpus,
        vcpu_type=vcpu_type,
        vmm=vmm,
        guest_features=guest_features,
        append=append,
        has_kernel=kernel is not None,
        has_initrd=initrd is not None,
    )
    seed = None
    if ovmf_hash is not None:
        seed = ovmf_hash.lower() if isinstance(ovmf_hash, str) else ovmf_hash
        _check_hex("ovmf_hash", seed, DIGEST_SIZE)
    with tempfile.TemporaryDirectory(prefix="blindbox-measure-") as workdir:
        ovmf_copy, ovmf_sha256 = _copy("ovmf", ovmf, Path(workdir) / "ovmf.fd", MAX_OVMF_SIZE)
        _check_ovmf(ovmf_copy, measures_kernel=kernel is not None)
        kernel_copy = initrd_copy = ""
        kernel_sha256 = initrd_sha256 = None
        if kernel is not None:
            path, kernel_sha256 = _copy("kernel", kernel, Path(workdir) / "kernel", MAX_BOOT_FILE_SIZE)
            kernel_copy = str(path)
        if initrd is not None:
            path, initrd_sha256 = _copy("initrd", initrd, Path(workdir) / "initrd", MAX_BOOT_FILE_SIZE)
            initrd_copy = str(path)
        try:
            digest: bytes = snp_calc_launch_digest(
                vcpus,
                CPU_SIGS[vcpu_type] if vcpu_type is not None else 0,
                str(ovmf_copy),
                kernel_copy,
                initrd_copy,
                append if append is not None else "",
                guest_features,
                seed if seed is not None else "",
                _VMM_TYPES[vmm],
                dump_vmsa=False,
            )
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise MeasurementError(f"sev-snp-measure refused the inputs: {exc}") from None
    name = Path(os.fspath(ovmf)).name
    return Measurement(
        digest=bytes(digest),
        ovmf_sha256=ovmf_sha256,
        vcpus=vcpus,
        vmm=vmm,
        guest_features=guest_features,
        vcpu_type=vcpu_type,
        kernel_sha256=kernel_sha256,
        initrd_sha256=initrd_sha256,
        append=append,
        ovmf_name=name if 0 < len(name) <= MAX_NAME_LENGTH and not _CONTROL_RE.search(name) else None,
        ovmf_hash=seed,
    )


def _check_options(
    *,
    vcpus: object,
    vcpu_type: object,
    vmm: object,
    guest_features: object,
    append: object,
    has_kernel: bool,
    has_initrd: bool,
) -> None:
    if type(vcpus) is not int or not 1 <= vcpus <= MAX_VCPUS:
        raise MeasurementError(f"vcpus: expected an integer from 1 to {MAX_VCPUS}, found {vcpus!r}")
    if not isinstance(vmm, str) or vmm not in VMMS:
        raise MeasurementError(f"vmm: expected one of {', '.join(VMMS)}, found {vmm!r}")
    if vmm == "qemu":
        if not isinstance(vcpu_type, str) or vcpu_type not in CPU_SIGS:
            raise MeasurementError(
                f"vcpu_type: expected a QEMU vCPU model known to sev-snp-measure "
                f"({', '.join(VCPU_TYPES)}), found {vcpu_type!r}"
            )
    elif vcpu_type is not None:
        raise MeasurementError(
            f"vcpu_type: expected none for vmm={vmm} (it starts every vCPU with the fixed signature "
            f"0x600, so a vCPU model does not enter the measurement), found {vcpu_type!r}"
        )
    if type(guest_features) is not int or not 0 <= guest_features < 1 << 64:
        raise MeasurementError(
            f"guest_features: expected a 64-bit unsigned integer, found {guest_features!r}"
        )
    if not guest_features & SNP_ACTIVE:
        raise MeasurementError(
            f"guest_features: expected bit 0 (SNPActive) set, as in every SEV-SNP guest, "
            f"found 0x{guest_features:x}"
        )
    if append is not None:
        if not isinstance(append, str):
            raise MeasurementError(f"append: expected a string, found {type(append).__name__}")
        if len(append.encode("utf-8", "surrogatepass")) > MAX_APPEND_BYTES or _CONTROL_RE.search(append):
            raise MeasurementError(
                f"append: expected a kernel command line of at most {MAX_APPEND_BYTES} bytes without "
                f"control characters, found {_show(append)}"
            )
    if not has_kernel and (has_initrd or append is not None):
        given = " and ".join(n for n, v in (("initrd", has_initrd), ("append", append is not None)) if v)
        raise MeasurementError(
            f"kernel: expected a kernel when {given} is given (sev-snp-measure would silently "
            "ignore it), found none"
        )


def _check_hex(name: str, value: object, size: int) -> None:
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX_RE.fullmatch(value):
        raise MeasurementError(f"{name}: expected {2 * size} lowercase hex characters, found {_show(value)}")


def _check_text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or _CONTROL_RE.search(value):
        raise MeasurementError(
            f"{name}: expected 1 to {limit} characters without control characters, found {_show(value)}"
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _copy(what: str, source: str | os.PathLike[str], target: Path, limit: int) -> tuple[Path, str]:
    """Copy ``source`` to ``target`` (at most ``limit`` bytes), returning its SHA-256."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            while size <= limit and (chunk := src.read(1024 * 1024)):
                size += len(chunk)
                digest.update(chunk)
                dst.write(chunk)
    except OSError as exc:
        raise MeasurementError(f"{what}: cannot read {os.fspath(source)!r} ({exc.strerror or exc})") from None
    if size > limit:
        raise MeasurementError(f"{what}: expected at most {limit} bytes, found more in {os.fspath(source)!r}")
    return target, digest.hexdigest()


def _check_ovmf(path: Path, *, measures_kernel: bool) -> None:
    """Refuse firmware that sev-snp-measure would measure without SEV-SNP meaning."""
    data = path.read_bytes()
    size = len(data)
    expected = "an OVMF image with SEV-SNP metadata"
    if size == 0 or size % PAGE_SIZE:
        raise MeasurementError(
            f"ovmf: expected {expected}, whose size is a non-zero multiple of {PAGE_SIZE} bytes, "
            f"found {size} bytes"
        )
    if data[-_FOOTER_ENTRY_END - 16:-_FOOTER_ENTRY_END] != _FOOTER_GUID:
        raise MeasurementError(
            f"ovmf: expected {expected}, found no OVMF footer table (GUID {OVMF.OVMF_TABLE_FOOTER_GUID}); "
            "sev-snp-measure would still compute a digest that no SEV-SNP guest can report"
        )
    try:
        image = OVMF(str(path))
        sections = [
            (item.section_type().name, int(item.gpa), int(item.size)) for item in image.metadata_items()
        ]
    except (RuntimeError, ValueError, IndexError) as exc:
        raise MeasurementError(
            f"ovmf: expected {expected}, found a malformed footer table or metadata ({exc})"
        ) from None
    if not sections:
        raise MeasurementError(
            f"ovmf: expected {expected}, found a footer table without SEV metadata "
            f"(GUID {OVMF.OVMF_SEV_META_DATA_GUID}); this firmware cannot launch an SEV-SNP guest and "
            "sev-snp-measure would still compute a digest for it"
        )
    total = sum(length for _, _, length in sections)
    if len(sections) > MAX_METADATA_SECTIONS or total > MAX_METADATA_BYTES:
        raise MeasurementError(
            f"ovmf: expected SEV metadata of at most {MAX_METADATA_SECTIONS} sections covering at most "
            f"0x{MAX_METADATA_BYTES:x} bytes, found {len(sections)} sections covering 0x{total:x} bytes"
        )
    names = [name for name, _, _ in sections]
    missing = [name for name in _REQUIRED_SECTIONS if name not in names]
    if missing:
        raise MeasurementError(
            f"ovmf: expected SEV metadata declaring {' and '.join(_REQUIRED_SECTIONS)} pages, "
            f"found sections [{', '.join(names)}] (missing {', '.join(missing)})"
        )
    for name, gpa, length in sections:
        if gpa % PAGE_SIZE or length % PAGE_SIZE or length == 0 or gpa + length > _FOUR_GIB:
            raise MeasurementError(
                f"ovmf: expected metadata section {name} to cover whole pages below 4 GiB, "
                f"found GPA 0x{gpa:x} size 0x{length:x}"
            )
        if name in _ONE_PAGE_SECTIONS and length != PAGE_SIZE:
            raise MeasurementError(
                f"ovmf: expected metadata section {name} of one page (0x{PAGE_SIZE:x} bytes), "
                f"found 0x{length:x}"
            )
    try:
        reset_eip = int(image.sev_es_reset_eip())
    except RuntimeError:
        raise MeasurementError(
            f"ovmf: expected an SEV-ES reset block (GUID {OVMF.SEV_ES_RESET_BLOCK_GUID}) giving the "
            "AP start address, found none"
        ) from None
    if reset_eip == 0:
        raise MeasurementError(
            "ovmf: expected a non-zero AP start address in the SEV-ES reset block, found 0"
        )
    if measures_kernel:
        _check_kernel_hashes(image, sections)


def _check_kernel_hashes(image: OVMF, sections: list[tuple[str, int, int]]) -> None:
    pages = [gpa for name, gpa, _ in sections if name == "SNP_KERNEL_HASHES"]
    if len(pages) != 1:
        raise MeasurementError(
            "kernel: expected an OVMF whose SEV metadata has one SNP_KERNEL_HASHES page (an AmdSevX64 "
            f"build) to measure a kernel, initrd and command line, found {len(pages)} in sections "
            f"[{', '.join(name for name, _, _ in sections)}]"
        )
    try:
        entry = bytes(image.table_item(OVMF.SEV_HASH_TABLE_RV_GUID))
    except KeyError:
        entry = b""
    table_gpa = int.from_bytes(entry[:4], "little")
    table_size = int.from_bytes(entry[4:8], "little")
    if len(entry) < 8 or table_gpa == 0:
        raise MeasurementError(
            f"kernel: expected an OVMF footer entry reserving the SEV hash table (GUID "
            f"{OVMF.SEV_HASH_TABLE_RV_GUID}), found {'none' if not entry else 'an empty one'}"
        )
    offset = table_gpa - pages[0]
    if not 0 <= offset <= PAGE_SIZE - _HASH_TABLE_SIZE or table_size < _HASH_TABLE_SIZE:
        raise MeasurementError(
            f"kernel: expected the SEV hash table ({_HASH_TABLE_SIZE} bytes) inside the SNP_KERNEL_HASHES "
            f"page at 0x{pages[0]:x}, found it at 0x{table_gpa:x} with 0x{table_size:x} bytes reserved"
        )
