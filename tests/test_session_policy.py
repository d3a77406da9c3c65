"""Data-owner policy requirements and manifests, end to end through SecureSession and the module API.

Every enclave here is the fixture server with live simulated evidence whose
``policy`` is a canonical :class:`OwnerPolicy`; the client learns it only from
the evidence (bound into report_data). A refusal must come before any byte of
the user's request: each failing row sends a secret and checks the server's
raw received bytes, and a positive control shows the same detector sees the
secret when the requirements are met.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import blindbox.requests as br
from blindbox.attest.manifest import Manifest, sign_manifest
from blindbox.attest.owner_policy import EgressRule, OwnerPolicy, PolicyRequirements
from blindbox.errors import (
    ConfigurationError,
    InvalidEnclaveCode,
    ManifestError,
    ManifestTrustError,
    PolicyMismatchError,
    PolicyViolationError,
)
from blindbox.testing.server import EnclaveServer

from .conftest import manifest_validity
from .requests_support import SECRET, SECRET_BODY, SECRET_HEADERS, SECRET_PATH, server_bytes

TOKEN_DIGEST = hashlib.sha256(b"data-owner bearer token").hexdigest()
#: No authentication; egress to api.example.com:443 and logs.example.com:6514 only.
OPEN_ALLOWLIST = OwnerPolicy(
    authentication_required=False,
    egress_allow=[EgressRule("api.example.com", [443]), EgressRule("logs.example.com", [6514])],
)
#: Authentication with one bearer token; no egress at all.
AUTH_DENY_ALL = OwnerPolicy(authentication_required=True, bearer_token_sha256=[TOKEN_DIGEST])
MANIFEST_URL = "https://vendor.example/enclave/manifest.json"
SIGNATURE_URL = MANIFEST_URL + ".sig"
TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def no_manifest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLINDBOX_MANIFEST", raising=False)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EnclaveServer]]:
    """Long-lived enclaves for rows that send nothing secret: by served policy."""
    from blindbox.testing.evidence import LiveEvidence

    with contextlib.ExitStack() as stack:
        out = {
            name: stack.enter_context(EnclaveServer(evidence=LiveEvidence.create(policy=policy)))
            for name, policy in (("open", OPEN_ALLOWLIST.to_bytes()), ("auth", AUTH_DENY_ALL.to_bytes()),
                                 ("none", None))
        }
        yield out


def trust(server: EnclaveServer, **extra: Any) -> dict[str, Any]:
    return {"measurements": [server.measurement], "roots": server.roots_pem, "timeout": TIMEOUT, **extra}


def send_secret(server: EnclaveServer, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    return br.post(server.url + SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY, **kwargs)


def assert_nothing_sent(server: EnclaveServer) -> None:
    assert server.received == []
    assert SECRET.encode() not in server_bytes(server)
    assert len(server.evidence_requests) >= 1  # it was asked for evidence, and refused after it


def assert_secret_arrived(server: EnclaveServer) -> None:
    assert SECRET.encode() in server.raw_bytes_received()
    assert SECRET.encode() in server.received[-1].body


def manifest_doc(measurement: str, **members: Any) -> dict[str, Any]:
    inputs = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
              "guest_features": "0x1"}
    return {"schema": "blindbox-manifest-v2", "name": "fixture enclave", "version": "1.0.0",
            **manifest_validity(), "measurements": [{"digest": measurement, "inputs": inputs}], **members}


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


@pytest.fixture(scope="module")
def publisher() -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem


# -- expected_policy: exact digest ------------------------------------------------------------------
def test_exact_digest_match_sends_and_exposes_the_policy(
    blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory(policy=OPEN_ALLOWLIST.to_bytes())
    with br.SecureSession(server.address, expected_policy=OPEN_ALLOWLIST.digest(), **trust(server)) as s:
        attestation = s.attestation
        assert attestation is not None
        assert attestation.policy_document == OPEN_ALLOWLIST.to_bytes()
        assert attestation.policy_sha256 == OPEN_ALLOWLIST.digest()
        assert attestation.owner_policy == OPEN_ALLOWLIST
        summary = attestation.summary()
        assert summary["data-owner policy sha256"] == OPEN_ALLOWLIST.digest()
        assert summary["data-owner policy"] == (
            "authentication not required; egress allowlist [api.example.com:443, logs.example.com:6514]")
        assert s.manifest is None
    # Upper case works (digests are compared lowercased) and the module API takes the same keyword.
    send_secret(server, expected_policy=OPEN_ALLOWLIST.digest().upper(), **trust(server))
    assert_secret_arrived(server)


def test_exact_digest_mismatch_is_refused_before_any_request_byte(
    blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory(policy=OPEN_ALLOWLIST.to_bytes())
    wanted = AUTH_DENY_ALL.digest()
    with pytest.raises(PolicyMismatchError) as info:
        send_secret(server, expected_policy=wanted, **trust(server))
    assert info.type is PolicyMismatchError
    assert f"expected {wanted}, found {OPEN_ALLOWLIST.digest()}" in str(info.value)
    assert_nothing_sent(server)
    with pytest.raises(PolicyMismatchError):
        br.SecureSession(server.address, expected_policy=wanted, **trust(server))
    assert_nothing_sent(server)
    send_secret(server, expected_policy=OPEN_ALLOWLIST.digest(), **trust(server))  # positive control
    assert_secret_arrived(server)


def test_owner_policy_is_none_without_a_document_or_with_a_non_canonical_one(
    servers: dict[str, EnclaveServer], blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    with br.SecureSession(servers["none"].address, **trust(servers["none"])) as s:
        assert s.attestation is not None
        assert s.attestation.policy_document is None and s.attestation.owner_policy is None
        assert s.attestation.summary()["data-owner policy"] == "none"
    loose = json.dumps(OPEN_ALLOWLIST.to_dict(), indent=1).encode()  # same content, not canonical
    server = blindbox_enclave_factory(policy=loose)
    with br.SecureSession(server.address, **trust(server)) as s:
        assert s.attestation is not None and s.attestation.policy_document == loose
        assert s.attestation.owner_policy is None
        assert s.attestation.summary()["data-owner policy"] == "not a canonical v1 document"
    # The digest of those exact bytes matches, but a requirement also needs a canonical document.
    with pytest.raises(PolicyMismatchError, match="canonical"):
        br.SecureSession(server.address, expected_policy=hashlib.sha256(loose).hexdigest(), **trust(server))


# -- expected_policy: requirements ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("served", "requirement", "ok"),
    [
        ("auth", {"authentication_required": True}, True),
        ("auth", {"authentication_required": False}, False),
        ("open", {"authentication_required": False}, True),
        ("open", {"authentication_required": True}, False),
        ("open", {"egress_subset_of": ["api.example.com", "logs.example.com"]}, True),
        ("open", {"egress_subset_of": [("api.example.com", 443), ("logs.example.com", 6514)]}, True),
        ("open", {"egress_subset_of": ["api.example.com", ("logs.example.com", 514)]}, False),
        ("open", {"egress_subset_of": ["api.example.com"]}, False),
        ("open", {"egress_subset_of": []}, False),
        ("auth", {"egress_subset_of": []}, True),  # deny-all is within anything
        ("auth", {"egress_subset_of": ["api.example.com"]}, True),
        ("auth", {"authentication_required": True, "egress_subset_of": []}, True),
        ("open", {"authentication_required": False, "egress_subset_of": ["api.example.com"]}, False),
    ],
)
def test_requirements_end_to_end(servers: dict[str, EnclaveServer], served: str,
                                 requirement: dict[str, Any], ok: bool) -> None:
    server = servers[served]
    for expected in (requirement, PolicyRequirements(**requirement)):
        if ok:
            with br.SecureSession(server.address, expected_policy=expected, **trust(server)) as s:
                assert s.get("/ok").status_code == 200
        else:
            with pytest.raises(PolicyMismatchError) as info:
                br.SecureSession(server.address, expected_policy=expected, **trust(server))
            assert info.type is PolicyMismatchError and "expected" in str(info.value)


def test_failing_requirements_name_what_was_expected_and_found(servers: dict[str, EnclaveServer]) -> None:
    open_, auth = servers["open"], servers["auth"]
    with pytest.raises(PolicyMismatchError, match=r"authentication\.required: expected true, found false"):
        br.SecureSession(open_.address, expected_policy={"authentication_required": True}, **trust(open_))
    with pytest.raises(PolicyMismatchError, match=r"found logs\.example\.com:6514 outside it"):
        br.SecureSession(open_.address, expected_policy={"egress_subset_of": ["api.example.com"]},
                         **trust(open_))
    with pytest.raises(PolicyMismatchError, match=r"authentication\.required: expected false, found true"):
        br.SecureSession(auth.address, expected_policy={"authentication_required": False}, **trust(auth))


@pytest.mark.parametrize("requirement", [
    AUTH_DENY_ALL.digest(), {"authentication_required": False}, {"egress_subset_of": []},
])
def test_evidence_without_a_policy_fails_every_requirement(
    requirement: Any, blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory()  # serves no data-owner policy
    with pytest.raises(PolicyMismatchError, match="serves no data-owner policy") as info:
        send_secret(server, expected_policy=requirement, **trust(server))
    assert info.type is PolicyMismatchError
    assert_nothing_sent(server)
    send_secret(server, **trust(server))  # positive control: no requirement, the request goes through
    assert_secret_arrived(server)


def test_auth_and_egress_failures_send_nothing(
    blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory(policy=OPEN_ALLOWLIST.to_bytes())
    for requirement in ({"authentication_required": True}, {"egress_subset_of": ["api.example.com"]}):
        with pytest.raises(PolicyMismatchError):
            send_secret(server, expected_policy=requirement, **trust(server))
        assert_nothing_sent(server)
    send_secret(server, expected_policy={"egress_subset_of": ["api.example.com", "logs.example.com"]},
                **trust(server))
    assert_secret_arrived(server)


@pytest.mark.parametrize(("value", "match"), [
    ("abc", "64 hex"),
    ({"exact_digest": "zz" * 32}, "64 hex"),
    ({"sha256": AUTH_DENY_ALL.digest()}, "unknown requirement.*'sha256'"),
    ({}, "at least one of"),
    ({"egress_subset_of": ["*.example.com"]}, "no wildcard"),
    (42, "expected the policy's SHA-256"),
])
def test_bad_expected_policy_is_refused_before_connecting(
    value: Any, match: str, servers: dict[str, EnclaveServer],
) -> None:
    server = servers["open"]
    before = server.connections
    with pytest.raises(ConfigurationError, match=match):
        br.SecureSession(server.address, expected_policy=value, **trust(server))
    with pytest.raises(ConfigurationError, match=match):
        br.get(server.url + "/x", expected_policy=value, **trust(server))
    assert server.connections == before


# -- manifests --------------------------------------------------------------------------------------
def test_manifest_from_path_dict_text_bytes_and_object(
    servers: dict[str, EnclaveServer], tmp_path: Path,
) -> None:
    server = servers["open"]
    doc = manifest_doc(server.measurement)
    path = tmp_path / "manifest.json"
    path.write_bytes(encode(doc))
    for source in (path, str(path), doc, encode(doc).decode(), encode(doc), Manifest.load(doc)):
        with br.SecureSession(server.address, manifest=source, roots=server.roots_pem) as s:
            assert s.manifest is not None and s.manifest.name == "fixture enclave"
            assert s.attestation is not None and s.attestation.measurement == server.measurement
            assert s.get("/via-manifest").status_code == 200
    assert br.get(server.url + "/one-shot", manifest=str(path), roots=server.roots_pem).status_code == 200


def test_manifest_measurement_and_policy_apply(servers: dict[str, EnclaveServer]) -> None:
    server = servers["open"]
    with pytest.raises(InvalidEnclaveCode):
        br.SecureSession(server.address, manifest=manifest_doc("cd" * 48), roots=server.roots_pem)
    # The manifest's policy member is applied too (the fixture reports VMPL 0).
    with pytest.raises(PolicyViolationError, match="vmpl: expected 1, found 0"):
        br.SecureSession(server.address, manifest=manifest_doc(server.measurement, policy={"vmpls": [1]}),
                         roots=server.roots_pem)


def test_manifest_owner_policy_is_enforced(
    blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory(policy=OPEN_ALLOWLIST.to_bytes())
    strict = manifest_doc(server.measurement,
                          owner_policy={"egress_subset_of": [{"host": "api.example.com"}]})
    with pytest.raises(PolicyMismatchError, match=r"logs\.example\.com:6514"):
        send_secret(server, manifest=strict, roots=server.roots_pem)
    assert_nothing_sent(server)
    fitting = manifest_doc(server.measurement, owner_policy={
        "sha256": OPEN_ALLOWLIST.digest(), "authentication_required": False,
        "egress_subset_of": [{"host": "api.example.com", "ports": [443]}, {"host": "logs.example.com"}],
    })
    send_secret(server, manifest=fitting, roots=server.roots_pem)
    assert_secret_arrived(server)


def test_expected_policy_adds_to_a_manifest_without_owner_policy(servers: dict[str, EnclaveServer]) -> None:
    server = servers["open"]
    plain = manifest_doc(server.measurement)
    with br.SecureSession(server.address, manifest=plain, expected_policy=OPEN_ALLOWLIST.digest(),
                          roots=server.roots_pem) as s:
        assert s.attestation is not None
    with pytest.raises(PolicyMismatchError):
        br.SecureSession(server.address, manifest=plain, expected_policy=AUTH_DENY_ALL.digest(),
                         roots=server.roots_pem)


def test_ambiguous_combinations_are_refused_before_connecting(servers: dict[str, EnclaveServer]) -> None:
    server = servers["open"]
    before = server.connections
    doc = manifest_doc(server.measurement)
    with pytest.raises(ConfigurationError, match="both measurements and a manifest"):
        br.SecureSession(server.address, manifest=doc, measurements=[server.measurement],
                         roots=server.roots_pem)
    with pytest.raises(ConfigurationError, match=r"'debug'.*ambiguous"):
        br.SecureSession(server.address, manifest=doc, debug="any", roots=server.roots_pem)
    stated = manifest_doc(server.measurement, owner_policy={"authentication_required": False})
    with pytest.raises(ConfigurationError, match="already states data-owner policy requirements"):
        br.SecureSession(server.address, manifest=stated, expected_policy=OPEN_ALLOWLIST.digest(),
                         roots=server.roots_pem)
    with pytest.raises(ConfigurationError, match="no manifest was given"):
        br.SecureSession(server.address, measurements=[server.measurement], publisher_key=b"x",
                         roots=server.roots_pem)
    with pytest.raises(ConfigurationError, match="both measurements and a manifest"):
        br.get(server.url + "/", manifest=doc, measurements=[server.measurement], roots=server.roots_pem)
    with pytest.raises(TypeError, match="'debugg'"):  # unknown keywords stay a TypeError with a manifest
        br.SecureSession(server.address, manifest=doc, debugg=1, roots=server.roots_pem)
    assert server.connections == before


def test_signed_manifest_good_and_bad(servers: dict[str, EnclaveServer], tmp_path: Path,
                                      publisher: tuple[ed25519.Ed25519PrivateKey, bytes]) -> None:
    server = servers["open"]
    key, public_pem = publisher
    data = encode(manifest_doc(server.measurement))
    path, sig_path = tmp_path / "manifest.json", tmp_path / "manifest.json.sig"
    path.write_bytes(data)
    signature = sign_manifest(data, key)
    sig_path.write_bytes(signature)
    for sig in (signature, sig_path, str(sig_path)):
        with br.SecureSession(server.address, manifest=path, manifest_signature=sig, publisher_key=public_pem,
                              manifest_name="fixture enclave", roots=server.roots_pem) as s:
            assert s.manifest is not None and s.manifest.signed
            assert s.manifest.sha256 == hashlib.sha256(data).hexdigest()
    before = server.connections
    other = ed25519.Ed25519PrivateKey.generate()
    tampered = data.replace(b"fixture enclave", b"fixture enclavf")
    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({"manifest": path, "manifest_signature": sign_manifest(data, other)}, "invalid one"),
        ({"manifest": tampered, "manifest_signature": signature}, "invalid one"),
        ({"manifest": path}, "found none"),
        ({"manifest": manifest_doc(server.measurement), "manifest_signature": signature}, "dict"),
        ({"manifest": Manifest.load(data), "manifest_signature": signature}, "cannot be checked"),
    ]
    for kwargs, match in bad_cases:
        with pytest.raises(ConfigurationError, match=match):
            br.SecureSession(server.address, publisher_key=public_pem, manifest_name="fixture enclave",
                             roots=server.roots_pem, **kwargs)
    with pytest.raises(ManifestError, match="publisher_key"):  # a signature nobody checks proves nothing
        br.SecureSession(server.address, manifest=path, manifest_signature=signature, roots=server.roots_pem)
    assert server.connections == before


def test_manifest_from_https_url(servers: dict[str, EnclaveServer],
                                 publisher: tuple[ed25519.Ed25519PrivateKey, bytes]) -> None:
    """Only the manifest fetch is mocked; the enclave traffic passes through to the real server."""
    server = servers["open"]
    key, public_pem = publisher
    data = encode(manifest_doc(server.measurement, owner_policy={"authentication_required": False}))
    received = len(server.received)
    with responses.RequestsMock() as mock:
        mock.get(MANIFEST_URL, body=data)
        mock.get(SIGNATURE_URL, body=sign_manifest(data, key))
        mock.add_passthru(server.url)
        with br.SecureSession(server.address, manifest=MANIFEST_URL, manifest_signature=SIGNATURE_URL,
                              publisher_key=public_pem, manifest_name="fixture enclave",
                              roots=server.roots_pem) as s:
            assert s.manifest is not None and s.manifest.signed
            assert s.get("/after-url-manifest").json()["path"] == "/after-url-manifest"
        assert br.get(server.url + "/one-shot-url", manifest=MANIFEST_URL,
                      roots=server.roots_pem).status_code == 200
        assert [call.request.url for call in mock.calls if "vendor.example" in str(call.request.url)] == [
            MANIFEST_URL, SIGNATURE_URL, MANIFEST_URL]
    assert [r.path for r in server.received[received:]] == ["/after-url-manifest", "/one-shot-url"]
    with responses.RequestsMock() as mock:
        mock.get(MANIFEST_URL, status=404)
        with pytest.raises(ManifestError, match="HTTP 404"):
            br.SecureSession(server.address, manifest=MANIFEST_URL, roots=server.roots_pem)
    with pytest.raises(ManifestError, match="https://"):  # plain http is refused before any request
        br.SecureSession(server.address, manifest="http://vendor.example/manifest.json",
                         roots=server.roots_pem)


def test_served_rollback_and_swap_never_reach_the_enclave(
    servers: dict[str, EnclaveServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18 §1 end to end: the hosting serves an older release, then another product, of the same key."""
    server = servers["open"]  # runs OLD, the measurement the vendor has since withdrawn
    key = ed25519.Ed25519PrivateKey.generate()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    v100 = encode({**manifest_doc(server.measurement), **manifest_validity(1)})
    v110 = encode({**manifest_doc("cd" * 48, version="1.1.0", policy={"min_tcb": "amd-recommended"}),
                   **manifest_validity(2)})
    internal = encode({**manifest_doc(server.measurement, name="internal build",
                                      policy={"debug": "any", "vmpls": [0, 1, 2, 3]}),
                       **manifest_validity(9)})
    served = {"manifest": b"", "signature": b""}

    def serve(data: bytes) -> None:
        served["manifest"], served["signature"] = data, sign_manifest(data, key)

    before = server.connections
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback("GET", MANIFEST_URL, callback=lambda _: (200, {}, served["manifest"]))
        mock.add_callback("GET", SIGNATURE_URL, callback=lambda _: (200, {}, served["signature"]))
        mock.add_passthru(server.url)
        options: dict[str, Any] = {"manifest": MANIFEST_URL, "manifest_signature": SIGNATURE_URL,
                                   "publisher_key": public_pem, "roots": server.roots_pem}
        serve(v110)  # the current release: this server does not run it
        with pytest.raises(InvalidEnclaveCode):
            br.SecureSession(server.address, manifest_name="fixture enclave", **options)
        connections = server.connections
        serve(v100)  # the withdrawn release, genuinely signed: a rollback
        with pytest.raises(ManifestTrustError, match=r"sequence: expected at least 2 .* found 1"):
            br.SecureSession(server.address, manifest_name="fixture enclave", **options)
        serve(internal)  # another product of the same key
        with pytest.raises(ManifestTrustError, match=r"expected 'fixture enclave'.*found 'internal build'"):
            br.SecureSession(server.address, manifest_name="fixture enclave", **options)
        monkeypatch.setenv("BLINDBOX_MANIFEST_NAME", "fixture enclave")  # the name from the environment
        with pytest.raises(ManifestTrustError, match="found 'internal build'"):
            br.get(server.url + "/x", **options)
        with pytest.raises(ManifestTrustError, match=r"expected at least 3 \(min_sequence\), found 2"):
            serve(v110)
            br.SecureSession(server.address, min_sequence=3, **options)
    assert server.connections == connections > before  # refused before connecting
    with pytest.raises(ConfigurationError, match="min_sequence check a manifest, but no manifest was given"):
        br.SecureSession(server.address, measurements=[server.measurement], min_sequence=2)


# -- BLINDBOX_MANIFEST and the refusal ----------------------------------------------------------------
def test_blindbox_manifest_env_is_used_when_nothing_else_is_given(
    servers: dict[str, EnclaveServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = servers["open"]
    path = tmp_path / "manifest.json"
    path.write_bytes(encode(manifest_doc(server.measurement, owner_policy={"authentication_required": True})))
    monkeypatch.setenv("BLINDBOX_MANIFEST", str(path))
    # The environment's manifest applies, owner_policy included...
    with pytest.raises(PolicyMismatchError, match=r"authentication\.required: expected true"):
        br.SecureSession(server.address, roots=server.roots_pem)
    with pytest.raises(PolicyMismatchError):
        br.get(server.url + "/x", roots=server.roots_pem)
    auth = servers["auth"]
    path.write_bytes(encode(manifest_doc(auth.measurement, owner_policy={"authentication_required": True})))
    with br.SecureSession(auth.address, roots=auth.roots_pem) as s:
        assert s.manifest is not None and s.manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # ...and only when nothing else is given: explicit measurements or manifest= win.
    monkeypatch.setenv("BLINDBOX_MANIFEST", str(tmp_path / "missing.json"))
    with br.SecureSession(server.address, **trust(server)) as s:
        assert s.manifest is None
    with br.SecureSession(server.address, manifest=manifest_doc(server.measurement),
                          roots=server.roots_pem) as s:
        assert s.manifest is not None
    with pytest.raises(ManifestError, match=r"BLINDBOX_MANIFEST=.*missing\.json.*cannot read"):
        br.SecureSession(server.address, roots=server.roots_pem)


@pytest.mark.parametrize("value", ['{"schema": "blindbox-manifest-v2"}', '  {"name": "x"}', "[]"])
def test_blindbox_manifest_env_refuses_inline_json(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18 §8: the variable names a manifest (path or https:// URL); it never holds one."""
    monkeypatch.setenv("BLINDBOX_MANIFEST", value)
    with pytest.raises(ConfigurationError, match=r"BLINDBOX_MANIFEST: expected a manifest's path or https:// "
                                                  r"URL, found inline JSON; put the manifest in a file"):
        br.SecureSession("127.0.0.1:1", roots=None)


def test_blindbox_manifest_env_url_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLINDBOX_MANIFEST", "https://bucket.example/m.json?X-Amz-Signature=s3cr3t")
    with responses.RequestsMock() as mock:
        mock.get("https://bucket.example/m.json", status=403)
        with pytest.raises(ManifestError) as info:
            br.SecureSession("127.0.0.1:1")
    assert str(info.value).startswith("BLINDBOX_MANIFEST=https://bucket.example: manifest: expected HTTP 200")
    assert "s3cr3t" not in str(info.value)


def test_blindbox_manifest_env_url(
    servers: dict[str, EnclaveServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = servers["open"]
    monkeypatch.setenv("BLINDBOX_MANIFEST", MANIFEST_URL)
    with responses.RequestsMock() as mock:
        mock.get(MANIFEST_URL, body=encode(manifest_doc(server.measurement)))
        with br.SecureSession(server.address, roots=server.roots_pem) as s:
            assert s.manifest is not None and s.manifest.sha256 is not None


@pytest.mark.parametrize("env", [None, "", "   "])
def test_nothing_given_is_refused_with_every_way_out(
    env: str | None, servers: dict[str, EnclaveServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = servers["open"]
    if env is not None:
        monkeypatch.setenv("BLINDBOX_MANIFEST", env)
    before = server.connections
    for call in (lambda: br.SecureSession(server.address, roots=server.roots_pem),
                 lambda: br.get(server.url + "/x", roots=server.roots_pem)):
        with pytest.raises(ConfigurationError) as info:
            call()
        message = str(info.value)
        assert "no expected launch measurement" in message
        for way_out in ("measurements=['<96 hex characters>']", "manifest=", "BLINDBOX_MANIFEST"):
            assert way_out in message
    assert server.connections == before
