"""Launch measurements (blindbox.attest.measure) against sev-snp-measure's own golden vectors.

Every SEV-SNP digest in tests/vectors/snp/measure/launch_digests.json is
reproduced through :func:`measure`. The SEV and SEV-ES vectors are checked
against sev-snp-measure directly: BlindBox measures SEV-SNP guests only (its
verifier accepts nothing else), so it has no API for those modes, but the
check keeps the vector file and the installed sev-snp-measure honest. The
refusals run on synthetic 4 KiB OVMF images built here, each differing from a
measurable one in exactly one respect.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from sevsnpmeasure.guest import calc_launch_digest, calc_snp_ovmf_hash, snp_calc_launch_digest
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vcpu_types import CPU_SIGS
from sevsnpmeasure.vmm_types import VMMType

from blindbox.attest.measure import SNP_ACTIVE, VCPU_TYPES, Measurement, measure
from blindbox.errors import ConfigurationError, MeasurementError

from .conftest import VECTORS

MEASURE = VECTORS / "measure"
DATA: dict[str, Any] = json.loads((MEASURE / "launch_digests.json").read_text()) if MEASURE.is_dir() else {}
VECTOR_LIST: list[dict[str, Any]] = DATA.get("vectors", [])
SNP = [v for v in VECTOR_LIST if v["mode"] == "SEV_SNP" and v["expected_launch_digest"]]
SNP_FAIL = [v for v in VECTOR_LIST if v["mode"] == "SEV_SNP" and not v["expected_launch_digest"]]
OTHER = [v for v in VECTOR_LIST if v["mode"] != "SEV_SNP"]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _vmm(vector: dict[str, Any]) -> str:
    return {"QEMU": "qemu", "ec2": "ec2", "gce": "gce"}[vector["vmm_type"]]


def _boot_file(value: str | None, tmp_path: Path, name: str) -> Path | None:
    if value is None:
        return None
    assert value == "empty"
    path = tmp_path / name
    path.write_bytes(b"")
    return path


def _measure_vector(vector: dict[str, Any], tmp_path: Path) -> Measurement:
    vmm = _vmm(vector)
    return measure(
        MEASURE / vector["ovmf"],
        vcpus=vector["vcpus"],
        vcpu_type=vector["vcpu_type"] if vmm == "qemu" else None,
        vmm=vmm,
        kernel=_boot_file(vector["kernel"], tmp_path, "kernel"),
        initrd=_boot_file(vector["initrd"], tmp_path, "initrd"),
        append=vector["append"],
        guest_features=int(vector["guest_features"], 16),
        ovmf_hash=vector["snp_ovmf_hash"],
    )


def test_vector_file_is_complete() -> None:
    assert MEASURE.is_dir(), f"measurement vectors not found at {MEASURE}"
    assert len(SNP) == 14 and len(SNP_FAIL) == 1 and len(OTHER) == 5
    for name, sha256 in DATA["ovmf_files"].items():
        assert hashlib.sha256((MEASURE / name).read_bytes()).hexdigest() == sha256


@pytest.mark.parametrize("vector", SNP, ids=[v["name"] for v in SNP])
def test_snp_vectors(vector: dict[str, Any], tmp_path: Path) -> None:
    result = _measure_vector(vector, tmp_path)
    assert result.hex == vector["expected_launch_digest"]
    assert result.digest == bytes.fromhex(vector["expected_launch_digest"])
    # Every input is recorded, so the digest can be recomputed from the record.
    assert result.ovmf_sha256 == DATA["ovmf_files"][vector["ovmf"]]
    assert result.ovmf_name == vector["ovmf"]
    assert result.vcpus == vector["vcpus"]
    assert result.vmm == _vmm(vector)
    assert result.guest_features == int(vector["guest_features"], 16)
    assert result.kernel_sha256 == (EMPTY_SHA256 if vector["kernel"] else None)
    assert result.initrd_sha256 == (EMPTY_SHA256 if vector["initrd"] else None)
    assert result.append == vector["append"]
    assert result.ovmf_hash == vector["snp_ovmf_hash"]


@pytest.mark.parametrize("vector", SNP_FAIL, ids=[v["name"] for v in SNP_FAIL])
def test_snp_vector_that_must_fail(vector: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="SNP_KERNEL_HASHES") as info:
        _measure_vector(vector, tmp_path)
    assert "found 0" in str(info.value)
    # sev-snp-measure fails too, with the error the vector names.
    with pytest.raises(RuntimeError, match=vector["expected_error"]):
        snp_calc_launch_digest(1, CPU_SIGS["EPYC-v4"], str(MEASURE / vector["ovmf"]),
                               os.devnull, os.devnull, "", 0x21, "", VMMType.QEMU)


@pytest.mark.parametrize("vector", OTHER, ids=[v["name"] for v in OTHER])
def test_non_snp_vectors_match_sev_snp_measure(vector: dict[str, Any]) -> None:
    # BlindBox measures SEV-SNP only; this keeps the vector file and the installed library consistent.
    kernel = os.devnull if vector["kernel"] else ""
    initrd = os.devnull if vector["initrd"] else ""
    sig = CPU_SIGS[vector["vcpu_type"]] if vector["vcpu_type"] else 0
    digest = calc_launch_digest(SevMode[vector["mode"]], vector["vcpus"], sig, str(MEASURE / vector["ovmf"]),
                                kernel, initrd, vector["append"] or "", int(vector["guest_features"], 16))
    assert digest.hex() == vector["expected_launch_digest"]
    assert len(digest) == 32


def test_precomputed_ovmf_hash_equals_hashing_the_file(tmp_path: Path) -> None:
    ovmf = MEASURE / "ovmf_AmdSev_suffix.bin"
    seed = DATA["expected_snp_ovmf_hash_of_AmdSev_suffix"]
    assert calc_snp_ovmf_hash(str(ovmf)).hex() == seed
    plain = measure(ovmf, vcpus=2, vcpu_type="EPYC-Milan")
    seeded = measure(ovmf, vcpus=2, vcpu_type="EPYC-Milan", ovmf_hash=seed.upper())
    assert seeded.digest == plain.digest
    assert seeded.ovmf_hash == seed and plain.ovmf_hash is None
    other = measure(ovmf, vcpus=2, vcpu_type="EPYC-Milan", ovmf_hash="11" * 48)
    assert other.digest != plain.digest


def test_each_input_changes_the_digest(tmp_path: Path) -> None:
    ovmf = MEASURE / "ovmf_AmdSev_suffix.bin"
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    base = dict(vcpus=2, vcpu_type="EPYC-Genoa", kernel=kernel, initrd=initrd, append="console=ttyS0")
    digests = {
        measure(ovmf, **base).digest,  # type: ignore[arg-type]
        measure(ovmf, **{**base, "vcpus": 3}).digest,  # type: ignore[arg-type]
        measure(ovmf, **{**base, "vcpu_type": "EPYC-Turin"}).digest,  # type: ignore[arg-type]
        measure(ovmf, **{**base, "append": "console=ttyS1"}).digest,  # type: ignore[arg-type]
        measure(ovmf, **{**base, "guest_features": 0x21}).digest,  # type: ignore[arg-type]
        measure(ovmf, **{**base, "initrd": None}).digest,  # type: ignore[arg-type]
    }
    kernel.write_bytes(b"kernel2")
    digests.add(measure(ovmf, **base).digest)  # type: ignore[arg-type]
    assert len(digests) == 7
    recorded = measure(ovmf, **base)  # type: ignore[arg-type]
    assert recorded.kernel_sha256 == hashlib.sha256(b"kernel2").hexdigest()
    assert recorded.initrd_sha256 == hashlib.sha256(b"initrd").hexdigest()


def test_never_writes_vmsa_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    measure(MEASURE / "ovmf_AmdSev_suffix.bin", vcpus=4, vcpu_type="EPYC-v4")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- synthetic OVMF images

FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d"
RESET_BLOCK = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_METADATA = "dc886566-984a-4798-a75e-5585a7bf67cc"
HASH_TABLE = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEC_MEM, SECRETS, CPUID, KERNEL_HASHES = 1, 2, 3, 0x10
AMDSEV_SECTIONS = [(0x800000, 0x9000, SEC_MEM), (0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID),
                   (0x810000, 0x1000, KERNEL_HASHES), (0x811000, 0xF000, SEC_MEM)]


def synthetic_ovmf(
    *,
    sections: list[tuple[int, int, int]] | None = AMDSEV_SECTIONS,
    reset_eip: int | None = 0x80B004,
    hash_table: tuple[int, int] | None = (0x810C00, 0x400),
    signature: bytes = b"ASEV",
    footer: bool = True,
    size: int = 4096,
) -> bytes:
    """A 4 KiB OVMF suffix: GUIDed footer table, SEV metadata at 0x100 and the given entries."""
    data = bytearray(size)
    entries: list[tuple[str, bytes]] = []
    if reset_eip is not None:
        entries.append((RESET_BLOCK, struct.pack("<I", reset_eip)))
    if hash_table is not None:
        entries.append((HASH_TABLE, struct.pack("<II", *hash_table)))
    if sections is not None:
        meta = struct.pack("<4sIII", signature, 16 + 12 * len(sections), 1, len(sections))
        meta += b"".join(struct.pack("<III", *item) for item in sections)
        data[0x100:0x100 + len(meta)] = meta
        entries.append((SEV_METADATA, struct.pack("<I", size - 0x100)))
    table = b"".join(payload + struct.pack("<H", len(payload) + 18) + uuid.UUID(guid).bytes_le
                     for guid, payload in entries)
    if footer:
        table += struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER).bytes_le
    data[size - 32 - len(table):size - 32] = table
    return bytes(data)


def _write(tmp_path: Path, data: bytes, name: str = "OVMF.fd") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_synthetic_ovmf_measures_like_sev_snp_measure(tmp_path: Path) -> None:
    ovmf = _write(tmp_path, synthetic_ovmf())
    kernel = _write(tmp_path, b"\x7fELF kernel", "vmlinuz")
    result = measure(ovmf, vcpus=4, vcpu_type="EPYC-Milan", kernel=kernel, append="quiet")
    direct = snp_calc_launch_digest(4, CPU_SIGS["EPYC-Milan"], str(ovmf), str(kernel), "", "quiet",
                                    SNP_ACTIVE, "", VMMType.QEMU)
    assert result.digest == direct
    assert result.ovmf_sha256 == hashlib.sha256(ovmf.read_bytes()).hexdigest()


def test_ovmf_without_sev_metadata_is_refused(tmp_path: Path) -> None:
    ovmf = _write(tmp_path, synthetic_ovmf(sections=None))
    # The pitfall: sev-snp-measure silently "measures" it.
    silent = snp_calc_launch_digest(1, CPU_SIGS["EPYC-v4"], str(ovmf), "", "", "", 1, "", VMMType.QEMU)
    assert len(silent) == 48
    with pytest.raises(MeasurementError, match="without SEV metadata") as info:
        measure(ovmf, vcpus=1, vcpu_type="EPYC-v4")
    assert SEV_METADATA in str(info.value)
    assert isinstance(info.value, ConfigurationError) and isinstance(info.value, ValueError)


def test_garbage_without_footer_is_refused(tmp_path: Path) -> None:
    garbage = hashlib.shake_256(b"not firmware").digest(4096)
    for data in (garbage, synthetic_ovmf(footer=False), bytes(8192)):
        with pytest.raises(MeasurementError, match="no OVMF footer table"):
            measure(_write(tmp_path, data), vcpus=1, vcpu_type="EPYC-v4")


@pytest.mark.parametrize("size", [0, 1, 100, 4095, 4097])
def test_truncated_images_are_refused(tmp_path: Path, size: int) -> None:
    data = (MEASURE / "ovmf_AmdSev_suffix.bin").read_bytes()
    truncated = data[len(data) - size:] if size <= len(data) else b"\0" + data
    with pytest.raises(MeasurementError, match=f"non-zero multiple of 4096 bytes, found {size} bytes"):
        measure(_write(tmp_path, truncated), vcpus=1, vcpu_type="EPYC-v4")


@pytest.mark.parametrize(("sections", "message"), [
    ([(0x800000, 0x9000, SEC_MEM), (0x80E000, 0x1000, CPUID)], r"missing SNP_SECRETS"),
    ([(0x80D000, 0x1000, SECRETS)], r"missing CPUID"),
    ([(0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID), (0x800800, 0x1000, SEC_MEM)],
     r"whole pages below 4 GiB, found GPA 0x800800"),
    ([(0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID), (0x800000, 0x1800, SEC_MEM)],
     r"whole pages .* size 0x1800"),
    ([(0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID), (0xFFFFF000, 0x2000, SEC_MEM)],
     r"below 4 GiB"),
    ([(0x80D000, 0x2000, SECRETS), (0x80E000, 0x1000, CPUID)], r"SNP_SECRETS of one page"),
    ([(0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID), (0x80F000, 0x1000, 7)], r"malformed"),
], ids=["no-secrets", "no-cpuid", "unaligned-gpa", "unaligned-size", "above-4g", "big-secrets",
        "unknown-type"])
def test_bad_snp_metadata_is_refused(
    tmp_path: Path, sections: list[tuple[int, int, int]], message: str
) -> None:
    with pytest.raises(MeasurementError, match=message):
        measure(_write(tmp_path, synthetic_ovmf(sections=sections)), vcpus=1, vcpu_type="EPYC-v4")


def test_malformed_metadata_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"malformed.*signature"):
        measure(_write(tmp_path, synthetic_ovmf(signature=b"XSEV")), vcpus=1, vcpu_type="EPYC-v4")


def test_missing_reset_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="SEV-ES reset block"):
        measure(_write(tmp_path, synthetic_ovmf(reset_eip=None)), vcpus=2, vcpu_type="EPYC-v4")
    with pytest.raises(MeasurementError, match="non-zero AP start address"):
        measure(_write(tmp_path, synthetic_ovmf(reset_eip=0)), vcpus=2, vcpu_type="EPYC-v4")


def test_kernel_needs_kernel_hashes_page(tmp_path: Path) -> None:
    kernel = _write(tmp_path, b"kernel", "vmlinuz")
    no_page = [s for s in AMDSEV_SECTIONS if s[2] != KERNEL_HASHES]
    ovmf = _write(tmp_path, synthetic_ovmf(sections=no_page))
    measure(ovmf, vcpus=1, vcpu_type="EPYC-v4")  # fine without a kernel
    with pytest.raises(MeasurementError, match=r"one SNP_KERNEL_HASHES page .* found 0"):
        measure(ovmf, vcpus=1, vcpu_type="EPYC-v4", kernel=kernel)
    with pytest.raises(MeasurementError, match="reserving the SEV hash table"):
        measure(_write(tmp_path, synthetic_ovmf(hash_table=None)), vcpus=1, vcpu_type="EPYC-v4",
                kernel=kernel)
    with pytest.raises(MeasurementError, match="page at 0x810000, found it at 0x811000"):
        measure(_write(tmp_path, synthetic_ovmf(hash_table=(0x811000, 0x400))), vcpus=1, vcpu_type="EPYC-v4",
                kernel=kernel)
    with pytest.raises(MeasurementError, match="inside the SNP_KERNEL_HASHES page"):
        measure(_write(tmp_path, synthetic_ovmf(hash_table=(0x810FC0, 0x40))), vcpus=1, vcpu_type="EPYC-v4",
                kernel=kernel)
    twice = [*AMDSEV_SECTIONS, (0x820000, 0x1000, KERNEL_HASHES)]
    with pytest.raises(MeasurementError, match="found 2"):
        measure(_write(tmp_path, synthetic_ovmf(sections=twice)), vcpus=1, vcpu_type="EPYC-v4", kernel=kernel)
    big = [(gpa, 0x2000 if kind == KERNEL_HASHES else size, kind) for gpa, size, kind in AMDSEV_SECTIONS]
    with pytest.raises(MeasurementError, match="SNP_KERNEL_HASHES of one page"):
        measure(_write(tmp_path, synthetic_ovmf(sections=big)), vcpus=1, vcpu_type="EPYC-v4")


# --------------------------------------------------------------------------- option validation

AMDSEV = MEASURE / "ovmf_AmdSev_suffix.bin"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vcpus": 0, "vcpu_type": "EPYC-v4"}, r"vcpus: expected an integer from 1 to 4096, found 0"),
    ({"vcpus": 4097, "vcpu_type": "EPYC-v4"}, r"vcpus: .* found 4097"),
    ({"vcpus": True, "vcpu_type": "EPYC-v4"}, r"vcpus: .* found True"),
    ({"vcpus": "2", "vcpu_type": "EPYC-v4"}, r"vcpus: .* found '2'"),
    ({"vcpus": 1}, r"vcpu_type: expected a QEMU vCPU model .* found None"),
    ({"vcpus": 1, "vcpu_type": "epyc-v4"}, r"vcpu_type: .*EPYC-Milan.* found 'epyc-v4'"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "vmm": "ec2"}, r"vcpu_type: expected none for vmm=ec2"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "vmm": "gce"}, r"vcpu_type: expected none for vmm=gce"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "vmm": "QEMU"}, r"vmm: expected one of qemu, ec2, gce, found"),
    ({"vcpus": 1, "vmm": "kvm"}, r"vmm: .* found 'kvm'"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "guest_features": 0}, r"bit 0 \(SNPActive\) set.* found 0x0"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "guest_features": 0x20}, r"found 0x20"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "guest_features": -1}, r"64-bit unsigned integer, found -1"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "guest_features": 1 << 64}, r"64-bit unsigned integer"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "guest_features": "0x1"}, r"64-bit unsigned integer, found '0x1'"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "append": "quiet"}, r"kernel: expected a kernel when append is"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "initrd": os.devnull}, r"when initrd is given"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "ovmf_hash": "ab" * 47}, r"ovmf_hash: expected 96 lowercase hex"),
    ({"vcpus": 1, "vcpu_type": "EPYC-v4", "ovmf_hash": "zz" * 48}, r"ovmf_hash: expected 96 lowercase hex"),
])
def test_invalid_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        measure(AMDSEV, **kwargs)


@pytest.mark.parametrize("append", ["a\nb", "tab\there", "nul\0", "x" * 4097, "é" * 2049])
def test_bad_command_lines_are_refused(append: str) -> None:
    with pytest.raises(MeasurementError, match="append: expected a kernel command line"):
        measure(AMDSEV, vcpus=1, vcpu_type="EPYC-v4", kernel=os.devnull, append=append)


def test_unreadable_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="ovmf: cannot read"):
        measure(tmp_path / "missing.fd", vcpus=1, vcpu_type="EPYC-v4")
    with pytest.raises(MeasurementError, match="kernel: cannot read"):
        measure(AMDSEV, vcpus=1, vcpu_type="EPYC-v4", kernel=tmp_path / "missing")
    with pytest.raises(MeasurementError, match="ovmf: cannot read"):
        measure(tmp_path, vcpus=1, vcpu_type="EPYC-v4")


def test_vcpu_types_are_sev_snp_measures() -> None:
    assert VCPU_TYPES == tuple(CPU_SIGS)
    assert "EPYC-Turin" in VCPU_TYPES


def test_measurement_validates_its_fields() -> None:
    good = measure(AMDSEV, vcpus=1, vcpu_type="EPYC-v4")
    fields = {name: getattr(good, name) for name in good.__dataclass_fields__}
    assert Measurement(**fields) == good
    for change, message in [
        ({"digest": b"\0" * 32}, r"digest: expected 48 bytes, found 32 bytes"),
        ({"digest": good.hex}, r"digest: expected 48 bytes, found str"),
        ({"ovmf_sha256": "AB" * 32}, r"ovmf_sha256: expected 64 lowercase hex"),
        ({"kernel_sha256": "00" * 31}, r"kernel_sha256: expected 64 lowercase hex"),
        ({"initrd_sha256": "00" * 32}, r"kernel: expected a kernel when initrd is given"),
        ({"ovmf_name": ""}, r"ovmf_name: expected 1 to 255 characters"),
        ({"ovmf_name": "a\x1b[31m"}, r"ovmf_name: .*without control characters"),
        ({"vmm": "ec2"}, r"vcpu_type: expected none for vmm=ec2"),
    ]:
        with pytest.raises(MeasurementError, match=message):
            Measurement(**{**fields, **change})
    with pytest.raises(AttributeError):
        good.vcpus = 2  # type: ignore[misc]


def test_input_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blindbox.attest import measure as measure_module

    monkeypatch.setattr(measure_module, "MAX_OVMF_SIZE", 4096)
    measure(AMDSEV, vcpus=1, vcpu_type="EPYC-v4")  # exactly at the bound
    with pytest.raises(MeasurementError, match="ovmf: expected at most 4096 bytes, found more"):
        measure(_write(tmp_path, bytes(4096) + AMDSEV.read_bytes()), vcpus=1, vcpu_type="EPYC-v4")
