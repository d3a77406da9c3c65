"""The fixture server: protocol v1 on a real TLS listener, fault modes, recorded fixtures."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from blindbox.attest.binding import spki_of_certificate
from blindbox.attest.evidence import EVIDENCE_PATH, Evidence
from blindbox.attest.policy import AttestationPolicy
from blindbox.attest.verifier import verify_evidence
from blindbox.errors import (
    BindingMismatchError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
)
from blindbox.snp import Product, SigningKey
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.fixture import RecordedEvidence
from blindbox.testing.server import EnclaveServer, Fault

NONCE = bytes(range(32))


def _connect(server: EnclaveServer, timeout: float = 10.0) -> tuple[http.client.HTTPSConnection, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=timeout)
    conn.connect()
    assert conn.sock is not None
    cert = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert cert is not None
    return conn, spki_of_certificate(cert)


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def _attest(server: EnclaveServer, nonce: bytes | None = NONCE) -> None:
    conn, spki = _connect(server)
    try:
        query = f"?nonce={nonce.hex()}" if nonce is not None else ""
        status, body = _get(conn, EVIDENCE_PATH + query)
        if status != 200:
            raise NotAnEnclaveError(f"evidence endpoint answered {status}")
        verify_evidence(
            Evidence.from_json(body),
            spki_der=spki,
            nonce=nonce,
            policy=AttestationPolicy.for_measurements([server.measurement]),
            roots=server.roots_pem,
        )
    finally:
        conn.close()


def test_honest_live_enclave_verifies(blindbox_enclave: EnclaveServer) -> None:
    _attest(blindbox_enclave)
    _attest(blindbox_enclave, nonce=None)
    assert len(blindbox_enclave.evidence_requests) == 2
    assert blindbox_enclave.received == []


@pytest.mark.parametrize(
    ("product", "version", "key"),
    [
        (Product.MILAN, 2, SigningKey.VCEK),
        (Product.GENOA, 3, SigningKey.VLEK),
        (Product.TURIN, 5, SigningKey.VCEK),
        (Product.TURIN, 5, SigningKey.VLEK),
    ],
)
def test_live_evidence_for_each_product(
    blindbox_enclave_factory: Callable[..., EnclaveServer], product: Product, version: int, key: SigningKey
) -> None:
    server = blindbox_enclave_factory(product=product, version=version, signing_key=key)
    _attest(server)


def test_evidence_is_fresh_per_nonce(blindbox_enclave: EnclaveServer) -> None:
    conn, _ = _connect(blindbox_enclave)
    reports = set()
    for nonce in (NONCE, bytes(32), b"\xff" * 32):
        status, body = _get(conn, f"{EVIDENCE_PATH}?nonce={nonce.hex()}")
        assert status == 200
        reports.add(Evidence.from_json(body).report)
    conn.close()
    assert len(reports) == 3
    # Three requests on one kept-alive connection.
    assert blindbox_enclave.connections == 1


@pytest.mark.parametrize(
    "query",
    [
        "nonce=",
        "nonce=" + "AB" * 32,
        "nonce=" + "ab" * 31,
        "nonce=" + "ab" * 33,
        "nonce=" + "zz" * 32,
        "nonce=" + "ab" * 32 + "&nonce=" + "ab" * 32,
        "nonce=%20" + "ab" * 32,
    ],
)
def test_bad_nonce_is_400_with_json_error(blindbox_enclave: EnclaveServer, query: str) -> None:
    conn, _ = _connect(blindbox_enclave)
    conn.request("GET", f"{EVIDENCE_PATH}?{query}")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 400
    assert response.getheader("Content-Type") == "application/json"
    assert "nonce" in json.loads(body)["error"]


def test_other_requests_go_to_the_wsgi_app(blindbox_enclave: EnclaveServer) -> None:
    conn, _ = _connect(blindbox_enclave)
    conn.request("POST", "/echo/path?q=1", body=b"payload", headers={"X-Test": "yes"})
    response = conn.getresponse()
    doc = json.loads(response.read())
    assert response.status == 200
    assert doc == {"method": "POST", "path": "/echo/path", "query": "q=1", "body": "payload"}
    # Chunked request bodies are decoded for the app.
    conn.putrequest("PUT", "/chunked")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for part in (b"abc", b"defg"):
        conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert json.loads(response.read())["body"] == "abcdefg"
    conn.close()
    recorded = blindbox_enclave.received
    assert [r.method for r in recorded] == ["POST", "PUT"]
    assert recorded[0].headers["X-Test"] == "yes" and recorded[0].body == b"payload"
    raw = blindbox_enclave.raw_bytes_received()
    assert b"POST /echo/path?q=1" in raw and b"payload" in raw


def test_slow_evidence_does_not_block_other_connections() -> None:
    faults = [Fault.SLOW_EVIDENCE]
    with EnclaveServer(evidence=LiveEvidence.create(), faults=faults, slow_seconds=3.0) as server:
        _slow_evidence_does_not_block(server)


def _slow_evidence_does_not_block(server: EnclaveServer) -> None:
    slow_done = threading.Event()

    def slow() -> None:
        conn, _ = _connect(server)
        _get(conn, EVIDENCE_PATH)
        conn.close()
        slow_done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    conn, _ = _connect(server)
    status, _ = _get(conn, "/fast")
    conn.close()
    assert status == 200
    assert time.monotonic() - started < 2.0
    assert not slow_done.is_set()
    thread.join(10)
    assert slow_done.is_set()


def test_a_silent_client_does_not_block_the_server(blindbox_enclave: EnclaveServer) -> None:
    # A TCP connection that never starts TLS must not stop others being served.
    idle = socket.create_connection(("127.0.0.1", blindbox_enclave.port))
    try:
        _attest(blindbox_enclave)
    finally:
        idle.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.WRONG_KEY, BindingMismatchError),
        (Fault.NONCE_IGNORED, BindingMismatchError),
        (Fault.DEBUG_POLICY, InsecureGuestPolicyError),
        (Fault.OTHER_MEASUREMENT, InvalidEnclaveCode),
        (Fault.CORRUPT_SIGNATURE, NotAnEnclaveError),
        (Fault.TRUNCATED_REPORT, NotAnEnclaveError),
        (Fault.HUGE_JSON, NotAnEnclaveError),
        (Fault.MALFORMED_JSON, NotAnEnclaveError),
        (Fault.NO_EVIDENCE, NotAnEnclaveError),
    ],
)
def test_each_evidence_fault_is_detected(
    blindbox_enclave_factory: Callable[..., EnclaveServer], fault: Fault, error: type[Exception]
) -> None:
    server = blindbox_enclave_factory(faults=[fault])
    with pytest.raises(error):
        _attest(server)


def test_switch_certificate_presents_another_key_later(
    blindbox_enclave_factory: Callable[..., EnclaveServer],
) -> None:
    server = blindbox_enclave_factory(faults=[Fault.SWITCH_CERTIFICATE])
    _attest(server)  # the first connection is honest
    conn, spki = _connect(server)
    conn.close()
    assert spki != server.identity.spki_der
    with pytest.raises(BindingMismatchError):
        _attest(server)


def test_redirect_fault_points_elsewhere(blindbox_enclave_factory: Callable[..., EnclaveServer]) -> None:
    server = blindbox_enclave_factory(faults=[Fault.REDIRECT_OTHER_ORIGIN])
    conn, _ = _connect(server)
    conn.request("POST", "/upload", body=b"x")
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 307
    location = response.getheader("Location") or ""
    assert location.startswith("https://") and not location.startswith(server.url)


def test_recorded_fixture_round_trip(tmp_path: Path) -> None:
    live = LiveEvidence.create(policy=b'{"version": 1}')
    live.record().save(tmp_path / "fx")
    assert sorted(p.name for p in (tmp_path / "fx").iterdir()) == [
        "evidence.json", "fixture.json", "roots.pem", "tls-cert.pem", "tls-key.pem",
    ]
    assert oct((tmp_path / "fx" / "tls-key.pem").stat().st_mode & 0o777) == "0o600"
    recorded = RecordedEvidence.load(tmp_path / "fx")
    with EnclaveServer(evidence=recorded) as server:
        _attest(server, nonce=None)  # recorded evidence binds no nonce
        with pytest.raises(BindingMismatchError):
            _attest(server, nonce=NONCE)  # ...so a fresh nonce is not answered
        # Replays are byte-identical.
        conn, _ = _connect(server)
        bodies = {_get(conn, f"{EVIDENCE_PATH}?nonce={n.hex()}")[1] for n in (NONCE, bytes(32))}
        conn.close()
        assert len(bodies) == 1
    with pytest.raises(ValueError, match="cannot simulate"):
        recorded.evidence(spki_der=b"", nonce=None, faults=frozenset({Fault.WRONG_KEY}))


def test_broken_fixture_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        RecordedEvidence.load(tmp_path)
    LiveEvidence.create().record().save(tmp_path / "fx")
    meta = tmp_path / "fx" / "fixture.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": "other"}))
    with pytest.raises(ValueError, match="expected format"):
        RecordedEvidence.load(tmp_path / "fx")
