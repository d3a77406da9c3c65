"""Enclave manifests (blindbox.attest.manifest): validation, schema agreement, signatures, https loading."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sevsnpmeasure.vcpu_types import CPU_SIGS

from blindbox.attest.manifest import (
    MAX_MANIFEST_BYTES,
    SCHEMA,
    SIGNATURE_CONTEXT,
    Manifest,
    manifest_entry,
    sign_manifest,
)
from blindbox.attest.measure import Measurement, measure
from blindbox.attest.owner_policy import EgressRule, OwnerPolicy, PolicyRequirements
from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError, ManifestError, PolicyMismatchError
from blindbox.snp.platform_info import BITS
from blindbox.snp.product import Product
from blindbox.snp.report import SUPPORTED_VERSIONS

from .conftest import VECTORS, manifest_validity

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_DOC: dict[str, Any] = json.loads((DOCS / "manifest.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA_DOC)
AMDSEV = VECTORS / "measure" / "ovmf_AmdSev_suffix.bin"

QEMU = measure(AMDSEV, vcpus=2, vcpu_type="EPYC-Milan")
DIRECT_BOOT = measure(AMDSEV, vcpus=4, vcpu_type="EPYC-Genoa", kernel=os.devnull, initrd=os.devnull,
                      append="console=ttyS0", guest_features=0x21)
EC2 = measure(AMDSEV, vcpus=2, vmm="ec2")
OWNER = OwnerPolicy(True, bearer_token_sha256=[hashlib.sha256(b"t").hexdigest()],
                    egress_allow=[EgressRule("api.example.com", [443])])


def valid_doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "name": "Example transcription enclave",
        "version": "1.2.0",
        "description": "Speech to text; audio never leaves the enclave.",
        **manifest_validity(7),
        "measurements": [manifest_entry(QEMU), manifest_entry(DIRECT_BOOT), manifest_entry(EC2)],
        "policy": {"vmpls": [0], "min_tcb": "amd-recommended", "smt_allowed": "off"},
        "owner_policy": {
            "sha256": OWNER.digest(),
            "authentication_required": True,
            "egress_subset_of": [{"host": "api.example.com", "ports": [443]}, {"host": "logs.example.com"}],
        },
    }


def minimal_doc() -> dict[str, Any]:
    return {"schema": SCHEMA, "name": "m", "version": "0", **manifest_validity(),
            "measurements": [manifest_entry(QEMU)]}


def test_load_from_every_source(tmp_path: Path) -> None:
    doc = valid_doc()
    raw = json.dumps(doc, indent=2).encode()
    path = tmp_path / "manifest.json"
    path.write_bytes(raw)
    loaded = [Manifest.load(raw), Manifest.load(raw.decode()), Manifest.load(path), Manifest.load(str(path))]
    from_dict = Manifest.load(doc)
    for manifest in [*loaded, from_dict]:
        assert manifest.name == "Example transcription enclave" and manifest.version == "1.2.0"
        assert manifest.measurements == (QEMU, DIRECT_BOOT, EC2)
        assert manifest.attestation_policy() == from_dict.attestation_policy()
        assert manifest.policy_requirements() == from_dict.policy_requirements()
        assert manifest.signed is False
    assert {m.sha256 for m in loaded} == {hashlib.sha256(raw).hexdigest()}
    assert from_dict.sha256 is None


def test_attestation_policy_and_requirements() -> None:
    manifest = Manifest.load(valid_doc())
    policy = manifest.attestation_policy()
    assert policy == AttestationPolicy(measurements=[QEMU.digest, DIRECT_BOOT.digest, EC2.digest],
                                       vmpls=[0], min_tcb="amd-recommended", smt_allowed="off")
    assert policy.debug.value == "off"  # defaults are the secure ones
    requirements = manifest.policy_requirements()
    assert requirements == PolicyRequirements(
        exact_digest=OWNER.digest(), authentication_required=True,
        egress_subset_of=[("api.example.com", 443), "logs.example.com"],
    )
    assert requirements is not None
    requirements.check(OWNER.to_bytes())
    with pytest.raises(PolicyMismatchError):
        requirements.check(OwnerPolicy(False).to_bytes())
    plain = Manifest.load(minimal_doc())
    assert plain.policy_requirements() is None
    assert plain.attestation_policy() == AttestationPolicy(measurements=[QEMU.digest])


def test_manifest_entry_round_trips_measurements() -> None:
    entry = manifest_entry(DIRECT_BOOT)
    assert entry == {
        "digest": DIRECT_BOOT.hex,
        "inputs": {
            "ovmf_sha256": hashlib.sha256(AMDSEV.read_bytes()).hexdigest(),
            "ovmf_name": "ovmf_AmdSev_suffix.bin",
            "vcpus": 4,
            "vcpu_type": "EPYC-Genoa",
            "vmm": "qemu",
            "kernel_sha256": hashlib.sha256(b"").hexdigest(),
            "initrd_sha256": hashlib.sha256(b"").hexdigest(),
            "append": "console=ttyS0",
            "guest_features": "0x21",
        },
    }
    assert "vcpu_type" not in manifest_entry(EC2)["inputs"]
    VALIDATOR.validate({**minimal_doc(), "measurements": [entry]})
    seeded = measure(AMDSEV, vcpus=1, vcpu_type="EPYC-v4", ovmf_hash="ab" * 48)
    loaded = Manifest.load({**minimal_doc(), "measurements": [manifest_entry(seeded)]})
    assert loaded.measurements == (seeded,)


def test_to_dict_round_trip_and_schema() -> None:
    manifest = Manifest.load(valid_doc())
    doc = manifest.to_dict()
    VALIDATOR.validate(doc)
    again = Manifest.load(json.dumps(doc))
    assert again.to_dict() == doc
    assert again.measurements == manifest.measurements
    assert again.attestation_policy() == manifest.attestation_policy()
    assert again.policy_requirements() == manifest.policy_requirements()


# --------------------------------------------------------------------------- schema violations

_DELETE = object()


def _mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    *parents, last = path.split("/")
    for parent in parents:
        target = target[int(parent)] if isinstance(target, list) else target[parent]
    if value is _DELETE:
        if isinstance(target, list):
            del target[int(last)]
        else:
            del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


INPUTS = "measurements/0/inputs"
# (mutation path, new value, expected JSON path in the error, does JSON Schema reject it too?)
VIOLATIONS: list[tuple[str, Any, str, bool]] = [
    ("schema", _DELETE, "$.schema: expected this required member, found none", True),
    ("name", _DELETE, "$.name: expected this required member", True),
    ("version", _DELETE, "$.version: expected this required member", True),
    ("measurements", _DELETE, "$.measurements: expected this required member", True),
    ("measurements/0/digest", _DELETE, "$.measurements[0].digest: expected this required member", True),
    ("measurements/0/inputs", _DELETE, "$.measurements[0].inputs: expected this required member", True),
    (f"{INPUTS}/ovmf_sha256", _DELETE, "$.measurements[0].inputs.ovmf_sha256: expected this required", True),
    (f"{INPUTS}/vcpus", _DELETE, "$.measurements[0].inputs.vcpus: expected this required member", True),
    (f"{INPUTS}/vmm", _DELETE, "$.measurements[0].inputs.vmm: expected this required member", True),
    (f"{INPUTS}/guest_features", _DELETE, "$.measurements[0].inputs.guest_features: expected this", True),
    (f"{INPUTS}/vcpu_type", _DELETE, "$.measurements[0].inputs.vcpu_type: expected a QEMU vCPU model", True),
    ("schema", "blindbox-manifest-v3", "$.schema: expected 'blindbox-manifest-v2'", True),
    ("schema", 1, "$.schema: expected 'blindbox-manifest-v2'", True),
    ("sequence", _DELETE, "$.sequence: expected this required member", True),
    ("issued", _DELETE, "$.issued: expected this required member", True),
    ("expires", _DELETE, "$.expires: expected this required member", True),
    ("sequence", 0, "$.sequence: expected an integer from 1 to 9007199254740991", True),
    ("sequence", -1, "$.sequence: expected an integer from 1", True),
    ("sequence", 2**53, "$.sequence: expected an integer from 1", True),
    ("sequence", "7", "$.sequence: expected an integer from 1", True),
    ("sequence", True, "$.sequence: expected an integer from 1", True),
    ("sequence", 7.0, "$.sequence: expected an integer from 1", False),
    ("issued", "2026-01-01", "$.issued: expected an RFC 3339 UTC time", True),
    ("issued", "2026-01-01T00:00:00+00:00", "$.issued: expected an RFC 3339 UTC time", True),
    ("issued", "2026-01-01T00:00:00.5Z", "$.issued: expected an RFC 3339 UTC time", True),
    ("issued", "2026-01-01t00:00:00z", "$.issued: expected an RFC 3339 UTC time", True),
    ("issued", 1767225600, "$.issued: expected an RFC 3339 UTC time", True),
    ("expires", "2026-02-30T00:00:00Z", "$.expires: expected an existing date and time", False),
    ("expires", "2000-01-01T00:00:00Z", "$.expires: expected a time after issued", False),
    ("description", "", "$.description: expected a string of 1 to 1024", True),
    ("description", "x" * 1025, "$.description: expected a string of 1 to 1024", True),
    ("extra", True, "$.extra: expected no such member", True),
    ("measurements/0/note", "x", "$.measurements[0].note: expected no such member", True),
    (f"{INPUTS}/firmware", "x", "$.measurements[0].inputs.firmware: expected no such member", True),
    ("name", 5, "$.name: expected a string of 1 to 128 characters", True),
    ("name", "", "$.name: expected a string of 1 to 128", True),
    ("name", "x" * 129, "$.name: expected a string of 1 to 128", True),
    ("name", "evil\x1b[2J", "$.name: expected a string of 1 to 128 characters without control", True),
    # C1 controls and bidi overrides print as something else, or reorder what follows (issue 18 §5).
    ("name", "evil\x9b2J", "$.name: expected a string of 1 to 128 characters without control, format", True),
    ("name", "line\x85break", "$.name: expected a string of 1 to 128 characters without control", True),
    ("name", "safe\u202eevil", "$.name: expected a string of 1 to 128 characters without control", True),
    ("name", "a\u2066b\u2069", "$.name: expected a string of 1 to 128 characters without control", True),
    ("name", "zero\u200bwidth", "$.name: expected a string of 1 to 128 characters without control", True),
    ("version", "1.2.0\u200f", "$.version: expected a string of 1 to 64 characters without control", True),
    ("version", "1\u2028", "$.version: expected a string of 1 to 64 characters without control", True),
    ("description", "ok\x9b31m", "$.description: expected a string of 1 to 1024 characters without", True),
    ("description", "\ufeffbom", "$.description: expected a string of 1 to 1024 characters without", True),
    ("name", "private\ue000use", "$.name: expected a string of 1 to 128 characters without control", False),
    (f"{INPUTS}/ovmf_name", "OVMF\u202e.fd", "$.measurements[0].inputs.ovmf_name: expected text", True),
    ("measurements/1/inputs/append", "console=ttyS0\u2066",
     "$.measurements[1].inputs.append: expected text without control, format or bidi", True),
    ("version", None, "$.version: expected a string of 1 to 64 characters", True),
    ("measurements", {},
     "$.measurements: expected an array of 1 to 1024 measurements, found an object", True),
    ("measurements", [],
     "$.measurements: expected an array of 1 to 1024 measurements, found an array of 0", True),
    ("measurements/0", "abc", "$.measurements[0]: expected an object, found 'abc'", True),
    ("measurements/0/digest", QEMU.hex.upper(), "$.measurements[0].digest: expected 96 lowercase hex", True),
    ("measurements/0/digest", QEMU.hex[:-2], "$.measurements[0].digest: expected 96 lowercase hex", True),
    ("measurements/1/digest", QEMU.hex,
     "$.measurements[1].digest: expected a digest not listed before", False),
    (f"{INPUTS}/ovmf_sha256", "00" * 31,
     "$.measurements[0].inputs.ovmf_sha256: expected 64 lowercase hex", True),
    (f"{INPUTS}/ovmf_hash", "00" * 32, "$.measurements[0].inputs.ovmf_hash: expected 96 lowercase hex", True),
    (f"{INPUTS}/vcpus", "2", "$.measurements[0].inputs.vcpus: expected an integer, found '2'", True),
    (f"{INPUTS}/vcpus", 1.5, "$.measurements[0].inputs.vcpus: expected an integer, found 1.5", True),
    (f"{INPUTS}/vcpus", 2.0, "$.measurements[0].inputs.vcpus: expected an integer, found 2.0", False),
    (f"{INPUTS}/vcpus", True, "$.measurements[0].inputs.vcpus: expected an integer, found true", True),
    (f"{INPUTS}/vcpus", 0, "$.measurements[0].inputs.vcpus: expected an integer from 1 to 4096", True),
    (f"{INPUTS}/vcpus", 4097, "$.measurements[0].inputs.vcpus: expected an integer from 1 to 4096", True),
    (f"{INPUTS}/vmm", "QEMU", "$.measurements[0].inputs.vmm: expected one of qemu, ec2, gce", True),
    (f"{INPUTS}/vmm", 1, "$.measurements[0].inputs.vmm: expected a string", True),
    (f"{INPUTS}/vcpu_type", "EPYC-Zen9", "$.measurements[0].inputs.vcpu_type: expected a QEMU vCPU", True),
    ("measurements/2/inputs/vcpu_type", "EPYC-v4", "$.measurements[2].inputs.vcpu_type: expected none", True),
    (f"{INPUTS}/guest_features", 1,
     "$.measurements[0].inputs.guest_features: expected a lowercase hex", True),
    (f"{INPUTS}/guest_features", "0X1", "inputs.guest_features: expected a lowercase hex string", True),
    (f"{INPUTS}/guest_features", "0x01", "inputs.guest_features: expected a lowercase hex string", True),
    (f"{INPUTS}/guest_features", "1", "inputs.guest_features: expected a lowercase hex string", True),
    (f"{INPUTS}/guest_features", "0x20", "inputs.guest_features: expected bit 0 (SNPActive) set", True),
    (f"{INPUTS}/guest_features", "0x1" + "0" * 16, "inputs.guest_features: expected a lowercase hex", True),
    (f"{INPUTS}/append", "quiet", "$.measurements[0].inputs.kernel_sha256: expected a measured kernel", True),
    (f"{INPUTS}/initrd_sha256", "00" * 32,
     "$.measurements[0].inputs.kernel_sha256: expected a measured", True),
    ("measurements/1/inputs/append", "a\nb",
     "$.measurements[1].inputs.append: expected text without control", True),
    ("measurements/1/inputs/append", 7, "$.measurements[1].inputs.append: expected a string", True),
    (f"{INPUTS}/ovmf_name", "", "$.measurements[0].inputs.ovmf_name: expected 1 to 255 characters", True),
    ("policy", [], "$.policy: expected an object (appraisal policy fields), found an array of 0", True),
    ("policy/measurements", [QEMU.hex], "$.policy.measurements: expected no such member", True),
    ("policy/debug", "maybe", "$.policy.debug: expected 'on', 'off' or 'any'", True),
    ("policy/frobnicate", True, "$.policy: unknown field(s) 'frobnicate'", True),
    ("policy/vmpls", [7], "$.policy.vmpls: expected values among 0, 1, 2, 3", True),
    ("policy/min_tcb", {"milan": {"fmc": 1}}, "$.policy.min_tcb[milan]: Milan TCB components are", True),
    ("policy/allow_masked_chip_id", "yes", "$.policy.allow_masked_chip_id: expected True or False", True),
    ("owner_policy", {}, "$.owner_policy: expected at least one of sha256", True),
    ("owner_policy", "abc", "$.owner_policy: expected an object", True),
    ("owner_policy/sha", "00", "$.owner_policy.sha: expected no such member", True),
    ("owner_policy/sha256", "AB" * 32, "$.owner_policy.sha256: expected 64 lowercase hex", True),
    ("owner_policy/sha256", None, "$.owner_policy.sha256: expected 64 lowercase hex characters", True),
    ("owner_policy/authentication_required", 1,
     "$.owner_policy.authentication_required: expected true", True),
    ("owner_policy/egress_subset_of", {}, "$.owner_policy.egress_subset_of: expected an array", True),
    ("owner_policy/egress_subset_of/0/ports", [],
     "$.owner_policy.egress_subset_of[0].ports: expected a non", True),
    ("owner_policy/egress_subset_of/0/ports", [0],
     "egress_subset_of[0].ports[0]: expected a port from 1", True),
    ("owner_policy/egress_subset_of/0/ports", [443, 443],
     "egress_subset_of[0].ports[1]: expected a port", True),
    ("owner_policy/egress_subset_of/0/host", "*.example.com",
     "$.owner_policy.egress_subset_of[0].host: expected a lowercase DNS host name", True),
    ("owner_policy/egress_subset_of/0/host", 5,
     "$.owner_policy.egress_subset_of[0].host: expected a host", True),
    ("owner_policy/egress_subset_of/1/host", "api.example.com",
     "egress_subset_of[1].host: expected a host", False),
    ("owner_policy/egress_subset_of/0/extra", 1, "egress_subset_of[0].extra: expected no such member", True),
    ("owner_policy/egress_subset_of/0/host", _DELETE,
     "egress_subset_of[0].host: expected this required", True),
]


@pytest.mark.parametrize(("path", "value", "message", "schema_rejects"), VIOLATIONS,
                         ids=[f"{p}={v!r}"[:60] for p, v, _, _ in VIOLATIONS])
def test_schema_violations(path: str, value: Any, message: str, schema_rejects: bool) -> None:
    doc = _mutate(valid_doc(), path, value)
    with pytest.raises(ManifestError) as info:
        Manifest.load(json.dumps(doc))
    assert message in str(info.value)
    assert isinstance(info.value, ConfigurationError)
    # The published schema agrees, except where JSON Schema cannot express the rule (see docs/manifest.md).
    assert (not VALIDATOR.is_valid(doc)) is schema_rejects


def _policy_fields(policy: AttestationPolicy) -> dict[str, Any]:
    return {k: v for k, v in policy.to_dict().items() if k != "measurements"}


@pytest.mark.parametrize("doc", [
    minimal_doc(),
    valid_doc(),
    {**minimal_doc(), "measurements": [manifest_entry(measure(AMDSEV, vcpus=8, vmm="gce"))]},
    {**minimal_doc(), "owner_policy": {"sha256": "00" * 32}},
    {**minimal_doc(), "owner_policy": {"egress_subset_of": []}},
    {**minimal_doc(), "owner_policy": {
        "authentication_required": False,
        "egress_subset_of": [{"host": "10.0.0.1"}, {"host": "::1", "ports": [53]}],
    }},
    {**minimal_doc(), "policy": {}},
    {**minimal_doc(), "policy": _policy_fields(AttestationPolicy(
        measurements=[QEMU.digest], host_data="11" * 32, chip_ids=["22" * 64, "33" * 8],
        id_key_digests=["44" * 48], require_id_block=True, signing_keys=["VLEK"], csp_ids=["CN=example"],
        vmpls=[0, 1], report_versions=[3, 5], min_guest_svn=2, debug="off", ciphertext_hiding="on",
        min_abi="1.55", platform_info_required=["smt_enabled"], platform_info_forbidden=0x80,
        min_tcb={"milan": {"bootloader": 4, "snp": 24}, "turin": {"fmc": 1}},
        min_current_tcb="amd-recommended",
        min_firmware="1.55.21", allow_provisional_firmware=True, min_launch_mit_vector=3,
    ))},
], ids=["minimal", "full", "gce", "digest-only", "deny-all-only", "ip-hosts", "empty-policy", "rich-policy"])
def test_valid_documents_agree(doc: dict[str, Any]) -> None:
    VALIDATOR.validate(doc)
    manifest = Manifest.load(copy.deepcopy(doc))
    VALIDATOR.validate(manifest.to_dict())


def test_schema_tracks_the_code() -> None:
    defs = SCHEMA_DOC["$defs"]
    assert defs["inputs"]["properties"]["vcpu_type"]["enum"] == list(CPU_SIGS)
    policy_fields = set(AttestationPolicy(measurements=[QEMU.digest]).to_dict()) - {"measurements"}
    assert set(defs["policy"]["properties"]) == policy_fields
    assert defs["platform_info"]["anyOf"][1]["items"]["enum"] == list(BITS)
    products = defs["tcb_minimum"]["anyOf"][2]["properties"]
    assert set(products) == {p.value.lower() for p in Product}
    for product in Product:
        layout = defs[products[product.value.lower()]["$ref"].rsplit("/", 1)[1]]
        assert ("fmc" in layout["properties"]) is product.has_fmc
    assert defs["policy"]["properties"]["report_versions"]["items"]["enum"] == list(SUPPORTED_VERSIONS)
    top = {"schema", "name", "version", "description", "sequence", "issued", "expires", "measurements",
           "policy", "owner_policy"}
    assert set(SCHEMA_DOC["properties"]) == top


@pytest.mark.parametrize(("data", "message"), [
    (b"", "$: expected a UTF-8 JSON object, found invalid JSON"),
    (b"[]", "$: expected an object, found an array of 0"),
    (b"\xff", "found invalid JSON"),
    (b'{"schema":"blindbox-manifest-v2","schema":"blindbox-manifest-v2"}', "duplicate member 'schema'"),
    (b'{"schema":NaN}', "NaN is not JSON"),
    (b"[" * 50_000, "found invalid JSON"),
    (b" " * (MAX_MANIFEST_BYTES + 1), f"manifest: expected at most {MAX_MANIFEST_BYTES} bytes"),
])
def test_malformed_json(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.load(data)
    assert message in str(info.value)


def test_unusable_sources(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest: cannot read"):
        Manifest.load(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="expected at most 1048576 bytes, found more"):
        Manifest.load(big)
    with pytest.raises(ManifestError, match="found int"):
        Manifest.load(5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- signatures

def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[no-any-return]
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


KEYS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
}
RAW = json.dumps(valid_doc(), indent=2).encode()
NAME = "Example transcription enclave"


@pytest.mark.parametrize("kind", list(KEYS))
def test_good_signatures(kind: str, tmp_path: Path) -> None:
    key = KEYS[kind]
    signature = sign_manifest(RAW, key)
    manifest = Manifest.load(RAW, signature=signature, publisher_key=_pem(key), name=NAME)
    assert manifest.signed and manifest.sha256 == hashlib.sha256(RAW).hexdigest()
    (tmp_path / "m.json").write_bytes(RAW)
    (tmp_path / "m.json.sig").write_bytes(signature)
    again = Manifest.load(tmp_path / "m.json", signature=tmp_path / "m.json.sig",
                          publisher_key=_pem(key).decode(), name=NAME)
    assert again.signed and again.measurements == manifest.measurements
    # A vendor's PEM private key works as well as a key object.
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    Manifest.load(RAW, signature=sign_manifest(RAW, pem.decode()), publisher_key=_pem(key), name=NAME)


@pytest.mark.parametrize("kind", list(KEYS))
def test_bad_signatures(kind: str) -> None:
    key = KEYS[kind]
    signature = sign_manifest(RAW, key)
    flipped = bytes([signature[0], signature[1], signature[2] ^ 1]) + signature[3:]
    same_kind = (ed25519.Ed25519PrivateKey.generate() if kind == "ed25519"
                 else ec.generate_private_key(key.curve))  # type: ignore[union-attr]
    others = [k for name, k in KEYS.items() if name != kind] + [same_kind]
    cases = [
        (RAW, flipped),  # tampered signature
        (RAW + b"\n", signature),  # same JSON, different bytes
        (RAW.replace(b"1.2.0", b"1.2.1"), signature),  # tampered manifest
        (RAW, signature + b"\0"),  # trailing garbage
    ]
    for data, sig in cases:
        with pytest.raises(ManifestError, match=r"signature: expected a valid .* found an invalid one"):
            Manifest.load(data, signature=sig, publisher_key=_pem(key), name=NAME)
    for other in others:
        with pytest.raises(ManifestError, match="found an invalid one"):
            Manifest.load(RAW, signature=signature, publisher_key=_pem(other), name=NAME)


def test_signature_configuration_errors(tmp_path: Path) -> None:
    key = KEYS["ed25519"]
    signature = sign_manifest(RAW, key)
    with pytest.raises(ManifestError, match=r"signature: expected a detached signature .* found none"):
        Manifest.load(RAW, publisher_key=_pem(key), name=NAME)
    with pytest.raises(ManifestError, match="publisher_key: expected the publisher's pinned public key"):
        Manifest.load(RAW, signature=signature)
    with pytest.raises(ManifestError, match="found an already-parsed dict"):
        Manifest.load(valid_doc(), signature=signature, publisher_key=_pem(key), name=NAME)
    with pytest.raises(ManifestError, match="signature: expected 1 to 1024 bytes, found 0"):
        Manifest.load(RAW, signature=b"", publisher_key=_pem(key), name=NAME)
    with pytest.raises(ManifestError, match="signature: cannot read"):
        Manifest.load(RAW, signature=tmp_path / "missing.sig", publisher_key=_pem(key), name=NAME)
    with pytest.raises(ManifestError, match="publisher_key: expected a PEM SubjectPublicKeyInfo"):
        Manifest.load(RAW, signature=signature, publisher_key="not a key", name=NAME)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p521 = ec.generate_private_key(ec.SECP521R1())
    for weird in (rsa_key, p521):
        with pytest.raises(ManifestError, match="publisher_key: expected an Ed25519 or ECDSA P-256/P-384"):
            Manifest.load(RAW, signature=signature, publisher_key=_pem(weird), name=NAME)
        with pytest.raises(ConfigurationError, match="private_key: expected an Ed25519 or ECDSA P-256/P-384"):
            sign_manifest(RAW, weird)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="private_key: expected an unencrypted PEM private key"):
        sign_manifest(RAW, "garbage")


# --------------------------------------------------------------------------- https

URL = "https://vendor.example/enclave/manifest.json"


@responses.activate
def test_https_loading() -> None:
    key = KEYS["p256"]
    responses.get(URL, body=RAW, content_type="application/json")
    responses.get(URL + ".sig", body=sign_manifest(RAW, key))
    manifest = Manifest.load(URL, signature=URL + ".sig", publisher_key=_pem(key), name=NAME, timeout=3)
    assert manifest.signed and manifest.sha256 == hashlib.sha256(RAW).hexdigest()
    for call in responses.calls:
        verify = call.request.req_kwargs["verify"]  # True, or the CA bundle requests reads from the env
        assert verify is True or (isinstance(verify, str) and Path(verify).exists())
        connect, read = call.request.req_kwargs["timeout"]  # what remains of the one 3 s deadline
        assert 0 < connect <= 3 and 0 < read <= 3
        assert call.request.req_kwargs["stream"] is True


@responses.activate
def test_https_redirects_stay_on_https() -> None:
    responses.get(URL, status=302, headers={"Location": "/releases/manifest.json"})
    responses.get("https://vendor.example/releases/manifest.json", status=301,
                  headers={"Location": "https://cdn.example/m.json"})
    responses.get("https://cdn.example/m.json", body=RAW)
    assert Manifest.load(URL).sha256 == hashlib.sha256(RAW).hexdigest()
    responses.get("https://vendor.example/downgrade", status=302, headers={"Location": "http://cdn.example/m"})
    with pytest.raises(ManifestError, match=r"manifest URL: expected https://.* found http://cdn.example$"):
        Manifest.load("https://vendor.example/downgrade")
    responses.get("https://vendor.example/loop", status=302, headers={"Location": "/loop"})
    with pytest.raises(ManifestError, match="expected at most 5 redirects"):
        Manifest.load("https://vendor.example/loop")


@pytest.mark.parametrize("url", ["http://vendor.example/manifest.json", "HTTP://vendor.example/m",
                                 "ftp://vendor.example/m", "file:///etc/passwd"])
@responses.activate
def test_non_https_urls_are_refused_without_a_request(url: str) -> None:
    with pytest.raises(ManifestError, match=r"manifest URL: expected https://"):
        Manifest.load(url)
    with pytest.raises(ManifestError, match=r"signature URL: expected https://"):
        Manifest.load(RAW, signature=url, publisher_key=_pem(KEYS["ed25519"]), name=NAME)
    assert len(responses.calls) == 0


@responses.activate
def test_https_failures() -> None:
    responses.get(URL, body=b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match=r"expected at most 1048576 bytes from .* found more; refused"):
        Manifest.load(URL)
    responses.get("https://vendor.example/missing", status=404)
    with pytest.raises(ManifestError, match=r"HTTP 200 from https://vendor\.example, found HTTP 404"):
        Manifest.load("https://vendor.example/missing")
    responses.get("https://vendor.example/down", body=requests.ConnectionError("refused"))
    with pytest.raises(ManifestError, match=r"fetching https://vendor.example failed \(ConnectionError"):
        Manifest.load("https://vendor.example/down")
    responses.get("https://vendor.example/big.sig", body=b"x" * 2000)
    with pytest.raises(ManifestError, match="signature: expected at most 1024 bytes"):
        Manifest.load(RAW, signature="https://vendor.example/big.sig", publisher_key=_pem(KEYS["ed25519"]),
                      name=NAME)


def test_streamed_body_is_bounded_without_content_length() -> None:
    class Endless:
        headers: ClassVar[dict[str, str]] = {}

        def iter_content(self, chunk_size: int) -> Any:
            while True:
                yield b"x" * chunk_size

    from blindbox._http import read_bounded

    assert read_bounded(Endless(), 100_000) is None  # type: ignore[arg-type]


def test_measurement_type_is_shared() -> None:
    loaded = Manifest.load(valid_doc()).measurements[1]
    assert isinstance(loaded, Measurement) and loaded == DIRECT_BOOT


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
@pytest.mark.parametrize(("keygen", "sign"), [
    (["genpkey", "-algorithm", "ed25519"],
     ["pkeyutl", "-sign", "-rawin", "-inkey", "{key}", "-out", "{sig}", "-in", "{data}"]),
    (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
     ["dgst", "-sha256", "-sign", "{key}", "-out", "{sig}", "{data}"]),
    (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
     ["dgst", "-sha384", "-sign", "{key}", "-out", "{sig}", "{data}"]),
], ids=["ed25519", "p256", "p384"])
def test_documented_openssl_signatures_verify(tmp_path: Path, keygen: list[str], sign: list[str]) -> None:
    key, data, sig = tmp_path / "key.pem", tmp_path / "manifest.json", tmp_path / "manifest.json.sig"
    data.write_bytes(RAW)
    message = tmp_path / "message"  # what the docs have vendors sign: the context string, then the bytes
    subprocess.run(["sh", "-c", f"(printf 'blindbox-manifest-signature-v2\\0'; cat '{data}') > '{message}'"],
                   check=True)
    assert message.read_bytes() == SIGNATURE_CONTEXT + RAW
    subprocess.run(["openssl", *keygen, "-out", str(key)], check=True, capture_output=True)
    public = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"], check=True,
                            capture_output=True).stdout
    args = [a.format(key=key, data=message, sig=sig) for a in sign]
    subprocess.run(["openssl", *args], check=True, capture_output=True)
    assert Manifest.load(data, signature=sig, publisher_key=public, name=NAME).signed
    with pytest.raises(ManifestError, match="found an invalid one"):
        Manifest.load(RAW.replace(b"1.2.0", b"1.2.9"), signature=sig, publisher_key=public, name=NAME)
