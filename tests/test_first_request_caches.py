"""What the first request may reuse within a process, and what it must check again every time.

Parsed certificates, their decoded extensions and CA flags are kept per exact input; every check
that involves the report still runs on every report, a failure is never remembered as a result,
and the one TLS handshake context that all sessions share carries no client certificate, even
after a session of the same process presented one.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

import blindbox.requests as br
from blindbox.errors import NotAnEnclaveError
from blindbox.server.tls import TlsIdentity
from blindbox.snp.verify import verify_report
from blindbox.testing.server import EnclaveServer

from .conftest import ReportVector, report_vectors
from .requests_support import enclave, session_kwargs
from .tls_impostor import CertificateSeekingImpostor

VCEK_VECTORS = [v for v in report_vectors() if v.entry["signing_key"] == "VCEK"]


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


@pytest.fixture(params=VCEK_VECTORS[:2], ids=lambda v: v.name)
def vector(request: pytest.FixtureRequest) -> ReportVector:
    value: ReportVector = request.param
    return value


def test_every_form_of_the_same_certificate_verifies(vector: ReportVector) -> None:
    """DER, PEM text and bytes-like inputs (which cannot be cache keys) all give the same result."""
    forms: list[bytes | str | bytearray | memoryview] = [
        vector.cert, _pem(vector.cert), _pem(vector.cert).encode("ascii"), bytearray(vector.cert),
        memoryview(vector.cert),
    ]
    for form in forms:
        verified = verify_report(vector.report, certificates={"vcek": form}, at=vector.at)  # type: ignore[dict-item]
        assert verified.certificate.der == vector.cert


def test_each_verification_gets_its_own_copy_of_the_decoded_extensions(vector: ReportVector) -> None:
    first = verify_report(vector.report, certificates={"vcek": vector.cert}, at=vector.at)
    decoded = dict(first.extensions.reserved_spls)
    first.extensions.reserved_spls.clear()  # a caller scribbling on what it was given
    first.extensions.reserved_spls["spl_4"] = 7
    second = verify_report(vector.report, certificates={"vcek": vector.cert}, at=vector.at)
    assert second.extensions.reserved_spls == decoded
    assert second.extensions == dataclasses.replace(first.extensions, reserved_spls=decoded)


def test_a_verified_certificate_does_not_vouch_for_another_report(vector: ReportVector) -> None:
    """After the VCEK verified once, a report it does not match is still refused (every time)."""
    verify_report(vector.report, certificates={"vcek": vector.cert}, at=vector.at)
    other = bytearray(vector.report)
    other[0x180] ^= 0x01  # reported_tcb: no longer the TCB the VCEK was issued for
    for _ in range(2):
        with pytest.raises(NotAnEnclaveError, match="certificate TCB"):
            verify_report(bytes(other), certificates={"vcek": vector.cert}, at=vector.at)


def test_a_certificate_that_does_not_parse_fails_every_time(vector: ReportVector) -> None:
    broken = _pem(vector.cert[:-40])
    for _ in range(2):
        with pytest.raises(NotAnEnclaveError, match="certificate"):
            verify_report(vector.report, certificates={"vcek": broken}, at=vector.at)
    verify_report(vector.report, certificates={"vcek": vector.cert}, at=vector.at)


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


def test_sessions_share_one_handshake_context_that_never_carries_a_client_certificate(
        honest: EnclaveServer, tmp_path: Path) -> None:
    alice = TlsIdentity.generate(["alice.invalid"], common_name="alice@example")
    crt, key = tmp_path / "alice.pem", tmp_path / "alice.key"
    alice.save(crt, key)
    with br.SecureSession(honest.address, **session_kwargs(honest)) as first, \
            br.SecureSession(honest.address, **session_kwargs(honest)) as second:
        first_attestor, second_attestor = first._attestor, second._attestor
        assert first_attestor is not None and second_attestor is not None
        assert first_attestor.context is second_attestor.context
        with_cert = first_attestor.context_for((str(crt), str(key)))
        assert with_cert is not first_attestor.context  # cert= gets a context of its own
        assert second_attestor.context_for((str(crt), str(key))) is not with_cert  # per session
        assert first.get("/with-cert", cert=(str(crt), str(key))).status_code == 200
    # A later session's handshake, in the same process, offers no certificate to a server asking.
    with CertificateSeekingImpostor("handshake", accept=alice) as impostor:
        with pytest.raises(NotAnEnclaveError):
            br.SecureSession(impostor.address, **session_kwargs(honest))
        assert impostor.wait_for_handshakes(1) == 1
        assert impostor.certificates == []
