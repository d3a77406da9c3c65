"""`blindbox manifest create | sign | verify`: the vendor's tools, run through the real argument parser.

The command functions return 0 or 1 and raise typed errors for everything else (the entry point maps
ManifestTrustError to exit 3 and other ConfigurationErrors to 2), so these tests call the parsed
handler and check exactly that contract.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindbox.attest.manifest import SIGNATURE_CONTEXT, Manifest
from blindbox.attest.measure import measure
from blindbox.cli import _build_parser
from blindbox.errors import ConfigurationError, ManifestError, ManifestTrustError

from .conftest import VECTORS

OVMF = VECTORS / "measure" / "ovmf_AmdSev_suffix.bin"
NAME = "Example transcription enclave"


def run(*argv: str) -> int:
    args = _build_parser().parse_args(["manifest", *argv])
    code: int = args.handler(args)
    return code


@pytest.fixture
def vendor(tmp_path: Path) -> dict[str, Path]:
    """A publisher key pair on disk and two measurement entries written by `blindbox measure`."""
    key = ed25519.Ed25519PrivateKey.generate()
    paths = {"key": tmp_path / "key.pem", "pub": tmp_path / "pub.pem", "kernel": tmp_path / "vmlinuz",
             "entry1": tmp_path / "entry1.json", "entry2": tmp_path / "entry2.json",
             "manifest": tmp_path / "manifest.json", "policy": tmp_path / "policy.json"}
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["pub"].write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    paths["kernel"].write_bytes(b"a measured kernel")
    from blindbox.cli import main

    assert main(["measure", "--ovmf", str(OVMF), "--vcpus", "2", "--vcpu-type", "EPYC-Milan",
                 "--manifest", str(paths["entry1"])]) == 0
    assert main(["measure", "--ovmf", str(OVMF), "--vcpus", "4", "--vmm", "ec2", "--kernel",
                 str(paths["kernel"]), "--append", "console=ttyS0", "--manifest", str(paths["entry2"])]) == 0
    paths["policy"].write_text(json.dumps({"min_tcb": "amd-recommended", "vmpls": [0]}))
    return paths


def create(vendor: dict[str, Path], *extra: str, sequence: int = 7) -> int:
    return run("create", "--entry", str(vendor["entry1"]), "--entry", str(vendor["entry2"]), "--name", NAME,
               "--version", "1.2.0", "--sequence", str(sequence), "--valid-days", "30",
               "--policy", str(vendor["policy"]), "-o", str(vendor["manifest"]), *extra)


def verify(vendor: dict[str, Path], *extra: str) -> int:
    return run("verify", str(vendor["manifest"]), "--publisher-key", str(vendor["pub"]),
               "--manifest-name", NAME, *extra)


def test_create_sign_verify(vendor: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert create(vendor, "--description", "Speech to text") == 0
    manifest = Manifest.load(vendor["manifest"])
    assert (manifest.name, manifest.version, manifest.sequence) == (NAME, "1.2.0", 7)
    assert manifest.description == "Speech to text"
    assert manifest.expires - manifest.issued == dt.timedelta(days=30)
    assert [m.hex for m in manifest.measurements] == [
        json.loads(vendor[e].read_text())["digest"] for e in ("entry1", "entry2")]
    assert manifest.attestation_policy().vmpls == frozenset({0})
    assert run("sign", str(vendor["manifest"]), "--key", str(vendor["key"])) == 0
    signature = Path(f"{vendor['manifest']}.sig")
    assert signature.is_file()
    capsys.readouterr()
    assert verify(vendor) == 0
    out = capsys.readouterr().out
    assert f"manifest: {NAME} 1.2.0 (sequence 7" in out and "signature: verified" in out
    assert out.count("inputs are claims (not recomputed") == 2 and "result: VERIFIED" in out
    assert verify(vendor, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True and doc["manifest"]["sequence"] == 7
    assert doc["manifest"]["sha256"] == hashlib.sha256(vendor["manifest"].read_bytes()).hexdigest()
    assert [m["recomputed"] for m in doc["measurements"]] == [None, None]


def test_recompute(vendor: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert create(vendor) == 0 and run("sign", str(vendor["manifest"]), "--key", str(vendor["key"])) == 0
    capsys.readouterr()
    assert verify(vendor, "--json", "--recompute", str(OVMF), str(vendor["kernel"])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["recomputed"] for m in doc["measurements"]] == ["match", "match"]
    # Without the kernel, the second digest cannot be recomputed: refused, naming the missing file's hash.
    assert verify(vendor, "--recompute", str(OVMF)) == 1
    out = capsys.readouterr().out
    kernel_sha = hashlib.sha256(b"a measured kernel").hexdigest()
    assert f"NOT recomputed: no given file has SHA-256 {kernel_sha}" in out and "REFUSED" in out


def test_recompute_catches_inputs_that_do_not_produce_the_digest(
    vendor: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    """A signed manifest whose inputs claim something else: only recomputation shows it."""
    entry = json.loads(vendor["entry1"].read_text())
    entry["inputs"]["vcpus"] = 3  # the digest is for 2 vCPUs
    vendor["entry1"].write_text(json.dumps(entry))
    assert create(vendor) == 0 and run("sign", str(vendor["manifest"]), "--key", str(vendor["key"])) == 0
    assert verify(vendor) == 0  # signature, name, validity, sequence: all fine
    capsys.readouterr()
    assert verify(vendor, "--json", "--recompute", str(OVMF), str(vendor["kernel"])) == 1
    rows = json.loads(capsys.readouterr().out)["measurements"]
    assert rows[0]["recomputed"] == "mismatch"
    assert rows[0]["found"] == measure(OVMF, vcpus=3, vcpu_type="EPYC-Milan").hex
    assert rows[1]["recomputed"] == "match"


def test_verify_trust_failures_raise_manifest_trust_error(vendor: dict[str, Path], tmp_path: Path) -> None:
    assert create(vendor, sequence=7) == 0
    assert run("sign", str(vendor["manifest"]), "--key", str(vendor["key"])) == 0
    with pytest.raises(ManifestTrustError, match="expected 'Other product'"):
        run("verify", str(vendor["manifest"]), "--publisher-key", str(vendor["pub"]),
            "--manifest-name", "Other product")
    with pytest.raises(ManifestTrustError, match=r"expected at least 8 \(min_sequence\)"):
        verify(vendor, "--min-sequence", "8")
    with pytest.raises(ManifestTrustError, match="expired at"):
        verify(vendor, "--at", (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)).isoformat())
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other.pem").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ManifestTrustError, match="found an invalid one"):
        run("verify", str(vendor["manifest"]), "--publisher-key", str(tmp_path / "other.pem"),
            "--manifest-name", NAME)
    # Rollback: after verifying sequence 9, the sequence-7 release is refused.
    newer = tmp_path / "newer.json"
    assert run("create", "--entry", str(vendor["entry1"]), "--name", NAME, "--version", "1.3.0", "--sequence",
               "9", "--valid-days", "30", "-o", str(newer)) == 0
    assert run("sign", str(newer), "--key", str(vendor["key"])) == 0
    assert run("verify", str(newer), "--publisher-key", str(vendor["pub"]), "--manifest-name", NAME) == 0
    with pytest.raises(ManifestTrustError, match="expected at least 9"):
        verify(vendor)
    # --at checks old material offline and leaves the mark alone.
    assert verify(vendor, "--at", dt.datetime.now(dt.timezone.utc).isoformat()) == 0


def test_create_and_sign_refuse_what_a_client_would_refuse(vendor: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"\$\.sequence: expected an integer from 1"):
        create(vendor, sequence=0)
    assert not vendor["manifest"].exists()  # nothing written
    with pytest.raises(ManifestError, match=r"\$\.name: expected a string of 1 to 128 characters without"):
        run("create", "--entry", str(vendor["entry1"]), "--name", "evil\u202e", "--version", "1",
            "--sequence", "1", "--valid-days", "1", "-o", str(vendor["manifest"]))
    with pytest.raises(ConfigurationError, match="--valid-days: expected 1 to 3660 days"):
        run("create", "--entry", str(vendor["entry1"]), "--name", NAME, "--version", "1", "--sequence", "1",
            "--valid-days", "0", "-o", str(vendor["manifest"]))
    assert create(vendor) == 0
    with pytest.raises(ConfigurationError, match="already exists; pass --force"):
        create(vendor)
    assert create(vendor, "--force", sequence=8) == 0
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"schema": "blindbox-manifest-v1", "name": NAME, "version": "1",
                              "measurements": [json.loads(vendor["entry1"].read_text())]}))
    with pytest.raises(ManifestError, match="v1 manifests are no longer accepted"):
        run("sign", str(v1), "--key", str(vendor["key"]))
    assert not Path(f"{v1}.sig").exists()
    expired = tmp_path / "expired.json"
    doc = json.loads(vendor["manifest"].read_text())
    doc.update(issued="2020-01-01T00:00:00Z", expires="2020-02-01T00:00:00Z")
    expired.write_text(json.dumps(doc))
    with pytest.raises(ManifestTrustError, match="expired"):
        run("sign", str(expired), "--key", str(vendor["key"]))
    with pytest.raises(ManifestError, match="--key: cannot read"):
        run("sign", str(vendor["manifest"]), "--key", str(tmp_path / "missing.pem"))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigurationError, match="private_key: expected an unencrypted PEM private key"):
        run("sign", str(vendor["manifest"]), "--key", str(tmp_path / "bad.pem"))


def test_signature_is_what_openssl_makes_over_the_documented_message(vendor: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    assert create(vendor) == 0
    message = tmp_path / "message"
    message.write_bytes(SIGNATURE_CONTEXT + vendor["manifest"].read_bytes())
    subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(vendor["key"]),
                    "-in", str(message), "-out", f"{vendor['manifest']}.sig"],
                   check=True, capture_output=True)
    assert verify(vendor) == 0


def test_help_documents_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    from blindbox.cli import main

    assert main(["manifest", "--help"]) == 0
    text = capsys.readouterr().out
    assert "create" in text and "sign" in text and "verify" in text and "3 a signature" in text
    assert main(["manifest", "verify", "--help"]) == 0
    assert "--recompute" in capsys.readouterr().out
