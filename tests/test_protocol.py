"""Protocol v1: binding vectors from docs/protocol.md and evidence JSON strictness."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from blindbox.attest.binding import check_binding, expected_report_data, spki_of_certificate
from blindbox.attest.evidence import MAX_EVIDENCE_BYTES, Evidence, decode_nonce, encode_nonce
from blindbox.errors import BindingMismatchError, NotAnEnclaveError
from blindbox.server.tls import TlsIdentity

from .conftest import VECTORS

PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
REPORT = (VECTORS / "reports" / "milan_gcp-teekit_v5_vcek.bin").read_bytes()


def _doc_vectors() -> tuple[bytes, list[tuple[bytes | None, bytes | None, bytes]]]:
    text = PROTOCOL_DOC.read_text()
    spki = bytes.fromhex(re.search(r"```\n(3059[0-9a-f]+)\n```", text).group(1))  # type: ignore[union-attr]
    rows = []
    for m in re.finditer(r"^\| (\d) \| (.+?) \| (.+?) \| `([0-9a-f]{128})` \|$", text, re.M):
        policy_cell, nonce_cell, expected = m.group(2), m.group(3), bytes.fromhex(m.group(4))
        policy = None if policy_cell == "none" else re.match(r"`(.*?)`", policy_cell).group(1).encode()  # type: ignore[union-attr]
        nonce = None if nonce_cell == "none" else bytes.fromhex(nonce_cell.strip("`"))
        rows.append((policy, nonce, expected))
    return spki, rows


def test_binding_vectors_from_protocol_doc() -> None:
    spki, rows = _doc_vectors()
    assert len(rows) == 3
    for policy, nonce, expected in rows:
        assert expected_report_data(spki, policy, nonce) == expected
        check_binding(expected, spki, policy, nonce)


def test_binding_distinguishes_every_input() -> None:
    spki, rows = _doc_vectors()
    policy, nonce, expected = rows[2]
    assert policy is not None and nonce is not None
    with pytest.raises(BindingMismatchError, match="report_data: expected"):
        check_binding(expected, spki + b"\x00", policy, nonce)
    with pytest.raises(BindingMismatchError):
        check_binding(expected, spki, policy + b" ", nonce)
    with pytest.raises(BindingMismatchError):
        check_binding(expected, spki, None, nonce)
    with pytest.raises(BindingMismatchError):
        check_binding(expected, spki, policy, None)
    with pytest.raises(BindingMismatchError):
        check_binding(expected, spki, policy, bytes(32))
    # An empty policy document is present, and differs from no policy.
    assert expected_report_data(spki, b"", None) != expected_report_data(spki, None, None)
    with pytest.raises(ValueError):
        expected_report_data(spki, None, b"short")


def test_spki_of_certificate_matches_cryptography() -> None:
    identity = TlsIdentity.generate()
    assert spki_of_certificate(identity.cert_der) == identity.spki_der
    from cryptography import x509

    cert = x509.load_der_x509_certificate(identity.cert_der)
    assert identity.spki_der == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad in (b"", b"\x30\x00", identity.cert_der[:-1], identity.cert_der + b"\x00"):
        with pytest.raises(NotAnEnclaveError, match="TLS certificate"):
            spki_of_certificate(bad)


def test_evidence_round_trip() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    for evidence in (
        Evidence(report=REPORT),
        Evidence(report=REPORT, certificates={"vcek": pem, "ask": pem, "ark": pem}, policy=b'{"a":1}'),
        Evidence(report=REPORT, policy=b""),
    ):
        body = evidence.to_json()
        doc = json.loads(body)
        assert doc["version"] == 1 and doc["tee"] == "sev-snp"
        assert Evidence.from_json(body) == evidence


def _doc(**changes: object) -> bytes:
    doc: dict[str, object] = {"version": 1, "tee": "sev-snp", "report": base64.b64encode(REPORT).decode()}
    doc.update(changes)
    for key in [k for k, v in changes.items() if v is _DELETE]:
        del doc[key]
    return json.dumps(doc).encode()


_DELETE = object()
B64 = base64.b64encode(REPORT).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "invalid JSON"),
        (b"not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[]", "expected a JSON object, found list"),
        (b'"text"', "found str"),
        (_doc(version=_DELETE), "version: required member is missing"),
        (_doc(version=2), "version: expected 1, found 2"),
        (_doc(version="1"), "version: expected 1"),
        (_doc(version=True), "version: expected 1"),
        (_doc(version=1.0), "version: expected 1"),
        (_doc(tee=_DELETE), "tee: required member is missing"),
        (_doc(tee="tdx"), "tee: expected 'sev-snp'"),
        (_doc(report=_DELETE), "report: required member is missing"),
        (_doc(report=None), "report: expected a base64 string"),
        (_doc(report=123), "report: expected a base64 string"),
        (_doc(report=B64.rstrip("=") if B64.endswith("=") else B64[:-4]), "report"),
        (_doc(report="!!" + B64[2:]), "invalid standard base64"),
        (_doc(report=base64.urlsafe_b64encode(b"\xfb\xff" * 600).decode()), "invalid standard base64"),
        (_doc(report=base64.b64encode(REPORT[:1000]).decode()), "expected 1184 bytes, found 1000"),
        (_doc(report=base64.b64encode(REPORT + b"\x00").decode()), "expected 1184 bytes, found 1185"),
        (_doc(report=B64[:-2] + "\n" + B64[-2:]), "base64"),
        (_doc(certificates=[]), "certificates: expected an object"),
        (_doc(certificates="pem"), "certificates: expected an object"),
        (_doc(certificates={"vcek": 5}), "certificates.vcek: expected a PEM string"),
        (_doc(certificates={"ark": "not a pem"}), "certificates.ark: expected a PEM string"),
        (_doc(policy=5), "policy: expected a base64 string"),
        (_doc(policy="***"), "policy: invalid standard base64"),
        (b'{"version": 1, "version": 1, "tee": "sev-snp", "report": "' + B64.encode() + b'"}', "duplicate"),
        (b"[" * 60000, "invalid JSON"),
    ],
)
def test_malformed_evidence_is_not_an_enclave(body: bytes, message: str) -> None:
    with pytest.raises(NotAnEnclaveError, match=re.escape(message) if "(" not in message else message):
        Evidence.from_json(body)


def test_oversize_evidence_refused() -> None:
    body = _doc(padding="x" * MAX_EVIDENCE_BYTES)
    with pytest.raises(NotAnEnclaveError, match="at most 65536 bytes"):
        Evidence.from_json(body)
    # Exactly at the cap is fine when otherwise valid.
    base = _doc(padding="")
    exact = _doc(padding="x" * (MAX_EVIDENCE_BYTES - len(base)))
    assert len(exact) == MAX_EVIDENCE_BYTES
    assert Evidence.from_json(exact).report == REPORT


def test_unknown_members_ignored() -> None:
    body = _doc(future={"x": 1}, certificates={"future-cert": 1})
    assert Evidence.from_json(body) == Evidence(report=REPORT)


def test_nonce_forms() -> None:
    nonce = bytes(range(32))
    assert decode_nonce(encode_nonce(nonce)) == nonce
    for bad in ("", "00" * 31, "00" * 33, "AB" * 32, "zz" * 32, " " + "00" * 32, "00" * 32 + "\n"):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            decode_nonce(bad)
    with pytest.raises(ValueError):
        encode_nonce(b"x")
