"""`blindbox measure`: launch digests from the CLI, and manifest entries anyone can recompute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blindbox.attest.manifest import Manifest
from blindbox.cli import main

from .conftest import VECTORS, manifest_validity

MEASURE = VECTORS / "measure"
VECTOR_SET: list[dict[str, Any]] = json.loads((MEASURE / "launch_digests.json").read_text())["vectors"]


def _args(vector: dict[str, Any], tmp_path: Path) -> list[str]:
    args = ["measure", "--ovmf", str(MEASURE / vector["ovmf"]), "--vcpus", str(vector["vcpus"]),
            "--vmm", vector["vmm_type"].lower(), "--guest-features", vector["guest_features"]]
    if vector["vcpu_type"] and vector["vmm_type"] == "QEMU":
        args += ["--vcpu-type", vector["vcpu_type"]]
    for part in ("kernel", "initrd"):
        if vector[part] == "empty":
            empty = tmp_path / part
            empty.write_bytes(b"")
            args += [f"--{part}", str(empty)]
    if vector["append"] is not None and vector["kernel"] is not None:
        args += ["--append", vector["append"]]
    return args


SNP_VECTORS = [v for v in VECTOR_SET if v["mode"] == "SEV_SNP" and v.get("expected_launch_digest")
               and not v.get("snp_ovmf_hash")]


@pytest.mark.parametrize("vector", SNP_VECTORS, ids=lambda v: v["name"])
def test_cli_reproduces_launch_digest(vector: dict[str, Any], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(vector, tmp_path)) == 0
    assert capsys.readouterr().out.strip() == vector["expected_launch_digest"]


def test_manifest_entry_records_every_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vector = next(v for v in SNP_VECTORS if v["name"] == "snp_default")
    out = tmp_path / "entry.json"
    assert main([*_args(vector, tmp_path), "--manifest", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    entry = json.loads(out.read_text())
    assert printed == entry
    assert entry["digest"] == vector["expected_launch_digest"]
    inputs = entry["inputs"]
    assert inputs["vcpus"] == 1 and inputs["vcpu_type"] == "EPYC-v4" and inputs["vmm"] == "qemu"
    assert inputs["append"] == "console=ttyS0 loglevel=7" and inputs["guest_features"] == "0x21"
    assert inputs["kernel_sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # The entry drops straight into a manifest.
    manifest = Manifest.load({"schema": "blindbox-manifest-v2", "name": "demo", "version": "1",
                              **manifest_validity(), "measurements": [entry]})
    assert manifest.attestation_policy().measurements == (bytes.fromhex(vector["expected_launch_digest"]),)


def test_unmeasurable_inputs_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_ovmf = tmp_path / "not-ovmf.bin"
    not_ovmf.write_bytes(bytes(4096))
    assert main(["measure", "--ovmf", str(not_ovmf), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]) == 2
    assert "SEV" in capsys.readouterr().err
    ovmf = str(MEASURE / "ovmf_AmdSev_suffix.bin")
    assert main(["measure", "--ovmf", ovmf, "--vcpus", "1"]) == 2  # qemu needs a vCPU type
    assert main(["measure", "--ovmf", ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-Nope"]) == 2
    missing = str(tmp_path / "missing")
    assert main(["measure", "--ovmf", missing, "--vcpus", "1", "--vcpu-type", "EPYC-v4"]) == 2
    assert main(["measure", "--ovmf", ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                 "--guest-features", "zz"]) == 2
