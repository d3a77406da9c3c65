"""Security matrix: every hostile server is refused with the right type, and sees none of the request.

Each row sends a secret in the path, a header and the body. The row passes
only if the exact exception type is raised AND the secret never reached the
hostile party. Every row also has a positive control: the same call to an
honest enclave succeeds and the secret does arrive there (so the "nothing
arrived" checks are able to see a leak).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import blindbox.requests as br
from blindbox.errors import (
    BindingMismatchError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
    OriginRefusedError,
)
from blindbox.testing.server import EnclaveServer, Fault

from .requests_support import (
    SECRET,
    SECRET_BODY,
    SECRET_HEADERS,
    SECRET_PATH,
    ConnectProxy,
    PlainServer,
    assert_no_secret,
    enclave,
    server_bytes,
    session_kwargs,
)

TIMEOUT = 5.0


def send_secret(url: str, **kwargs: Any) -> requests.Response:
    """The user's request: a secret in path, header and body, via the module-level API."""
    return br.post(url + SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY,
                   timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


def _assert_secret_arrived(server: EnclaveServer) -> None:
    """Positive control: the leak detector does see the secret when it is (rightly) sent."""
    assert SECRET.encode() in server.raw_bytes_received()
    request = server.received[-1]
    assert SECRET in request.path and SECRET in request.headers["X-Api-Key"]
    assert SECRET.encode() in request.body


def _assert_exact(info: pytest.ExceptionInfo[BaseException], expected: type[BaseException]) -> None:
    assert info.type is expected, f"expected {expected.__name__}, got {info.type.__name__}: {info.value}"
    if issubclass(expected, br.AttestationError):
        assert "MaxRetryError" not in repr(info.value)


# -- rows served by the fixture server's fault modes ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FaultRow:
    fault: Fault
    expected: type[BaseException]
    timeout: float = TIMEOUT


FAULT_ROWS = [
    FaultRow(Fault.WRONG_KEY, BindingMismatchError),
    FaultRow(Fault.NONCE_IGNORED, BindingMismatchError),
    FaultRow(Fault.DEBUG_POLICY, InsecureGuestPolicyError),
    FaultRow(Fault.OTHER_MEASUREMENT, InvalidEnclaveCode),
    FaultRow(Fault.CORRUPT_SIGNATURE, NotAnEnclaveError),
    FaultRow(Fault.TRUNCATED_REPORT, NotAnEnclaveError),
    FaultRow(Fault.HUGE_JSON, NotAnEnclaveError),
    FaultRow(Fault.MALFORMED_JSON, NotAnEnclaveError),
    FaultRow(Fault.NO_EVIDENCE, NotAnEnclaveError),
    FaultRow(Fault.SLOW_EVIDENCE, requests.exceptions.ConnectTimeout, timeout=0.5),
]
EVIDENCE_FAULTS = {row.fault for row in FAULT_ROWS}


def test_matrix_covers_every_fault_mode() -> None:
    # SWITCH_CERTIFICATE and REDIRECT_OTHER_ORIGIN need a session or a second origin: own tests below;
    # CLOSE_AFTER_EVIDENCE is honest behaviour a client must cope with (test_requests_connections).
    special = {Fault.SWITCH_CERTIFICATE, Fault.REDIRECT_OTHER_ORIGIN, Fault.CLOSE_AFTER_EVIDENCE}
    assert EVIDENCE_FAULTS | special == set(Fault)


@pytest.mark.parametrize("row", FAULT_ROWS, ids=lambda r: r.fault.value)
def test_fault_is_refused_before_any_request_byte(
    row: FaultRow, blindbox_enclave: EnclaveServer, blindbox_enclave_factory: Callable[..., EnclaveServer]
) -> None:
    """Against the fixture server of the pytest plugin; the positive control is ``blindbox_enclave``."""
    server = blindbox_enclave_factory(faults=[row.fault])
    started = time.monotonic()
    with pytest.raises(row.expected) as info:
        send_secret(server.url, timeout=row.timeout, **session_kwargs(server))
    elapsed = time.monotonic() - started
    _assert_exact(info, row.expected)
    assert server.received == []
    assert_no_secret(server_bytes(server))
    assert len(server.evidence_requests) == 1  # never retried
    # The constructor attests eagerly and raises the same type.
    with pytest.raises(row.expected) as eager:
        br.SecureSession(server.address, timeout=row.timeout, **session_kwargs(server))
    _assert_exact(eager, row.expected)
    assert server.received == []
    if row.fault is Fault.SLOW_EVIDENCE:
        assert elapsed < row.timeout + 1.5  # the exchange has an overall deadline
    # Positive control: same call, honest enclave.
    honest = blindbox_enclave
    response = send_secret(honest.url, timeout=row.timeout, **session_kwargs(honest))
    assert response.status_code == 200
    _assert_secret_arrived(honest)


def test_huge_evidence_is_refused_from_its_content_length() -> None:
    with enclave(faults=[Fault.HUGE_JSON]) as server:
        with pytest.raises(NotAnEnclaveError, match="refused without reading the body"):
            br.SecureSession(server.address, **session_kwargs(server))


def test_attestation_error_chains_its_root_cause() -> None:
    with enclave(faults=[Fault.CORRUPT_SIGNATURE]) as server:
        with pytest.raises(NotAnEnclaveError) as info:
            send_secret(server.url, **session_kwargs(server))
    assert "signature" in str(info.value)
    assert info.value.request is not None and info.value.request.url.endswith(SECRET_PATH)
    assert isinstance(info.value, requests.exceptions.ConnectionError)


# -- servers that are not enclaves at all -----------------------------------------------------------
def test_plain_https_server_is_not_an_enclave(honest: EnclaveServer) -> None:
    with PlainServer(tls=True) as site:
        with pytest.raises(NotAnEnclaveError) as info:
            send_secret(site.url, **session_kwargs(honest))
        _assert_exact(info, NotAnEnclaveError)
        assert "404" in str(info.value)
        received = site.raw_bytes_received()
    assert received.startswith(b"GET /.well-known/blindbox/attestation?nonce=")
    assert_no_secret(received)
    assert send_secret(honest.url, **session_kwargs(honest)).status_code == 200
    _assert_secret_arrived(honest)


def test_plain_http_server_gets_only_a_tls_hello(honest: EnclaveServer) -> None:
    with PlainServer(tls=False) as site:
        https_url = site.url.replace("http://", "https://")
        with pytest.raises(requests.exceptions.SSLError):
            send_secret(https_url, **session_kwargs(honest))
        received = site.raw_bytes_received()
    assert received[:1] == b"\x16"  # a TLS handshake record, nothing else
    assert_no_secret(received)
    assert send_secret(honest.url, **session_kwargs(honest)).status_code == 200
    _assert_secret_arrived(honest)


def test_plain_http_url_is_refused_without_connecting(honest: EnclaveServer) -> None:
    before = len(honest.received)
    with PlainServer(tls=False) as site:
        with pytest.raises(OriginRefusedError) as info:
            send_secret(site.url, **session_kwargs(honest))
        _assert_exact(info, OriginRefusedError)
        assert site.raw_bytes_received() == b""
        with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
            with pytest.raises(OriginRefusedError):
                session.post(site.url + SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY)
            with pytest.raises(OriginRefusedError):
                session.post(f"http://{honest.address}{SECRET_PATH}", data=SECRET_BODY)
        assert site.raw_bytes_received() == b""
    assert len(honest.received) == before


def test_other_origin_is_refused_by_a_session(honest: EnclaveServer) -> None:
    with enclave() as other, br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        for url in (other.url + SECRET_PATH, f"https://localhost:{honest.port}{SECRET_PATH}",
                    f"https://127.0.0.1:{other.port}{SECRET_PATH}", f"//127.0.0.1:{other.port}{SECRET_PATH}"):
            with pytest.raises(OriginRefusedError):
                session.post(url, headers=SECRET_HEADERS, data=SECRET_BODY)
        assert other.connections == 0
        assert session.post(SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY).status_code == 200
    _assert_secret_arrived(honest)


# -- a certificate switched after the first connection --------------------------------------------
def test_switched_certificate_is_attested_and_refused() -> None:
    with enclave(faults=[Fault.SWITCH_CERTIFICATE]) as server:
        session = br.SecureSession(server.address, **session_kwargs(server))
        assert session.get("/first").status_code == 200  # the attested first connection
        session.get_adapter(session.base_url).close()  # force a new connection
        with pytest.raises(BindingMismatchError) as info:
            session.post(SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY)
        _assert_exact(info, BindingMismatchError)
        assert [r.path for r in server.received] == ["/first"]
        assert_no_secret(server_bytes(server))
        assert len(server.evidence_requests) == 2
        assert len(session.attestations) == 1
        session.close()


def test_switched_certificate_positive_control(honest: EnclaveServer) -> None:
    session = br.SecureSession(honest.address, **session_kwargs(honest))
    session.get_adapter(session.base_url).close()
    response = session.post(SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY)
    assert response.status_code == 200
    _assert_secret_arrived(honest)
    assert len(session.attestations) == 1  # the new connection was checked against the pin


# -- redirects ------------------------------------------------------------------------------------
def test_cross_origin_redirect_is_refused() -> None:
    with PlainServer(tls=True) as elsewhere, \
            enclave(faults=[Fault.REDIRECT_OTHER_ORIGIN], redirect_target=elsewhere.url) as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            with pytest.raises(OriginRefusedError) as info:
                session.post(SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY)
            _assert_exact(info, OriginRefusedError)
            assert elsewhere.url in str(info.value)
        with pytest.raises(OriginRefusedError):
            send_secret(server.url, **session_kwargs(server))
        assert elsewhere.raw_bytes_received() == b""


def _redirecting_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] != "/landed":
        start_response("307 Temporary Redirect", [("Location", "/landed"), ("Content-Length", "0")])
        return [b""]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def test_same_origin_redirect_follows_on_attested_connections() -> None:
    with enclave(_redirecting_app) as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            response = session.post(SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY)
        assert response.status_code == 200 and response.content == SECRET_BODY
        assert [r.status_code for r in response.history] == [307]
        assert [r.path for r in server.received] == [SECRET_PATH, "/landed"]
        assert len(server.evidence_requests) == 1


# -- proxies --------------------------------------------------------------------------------------
def test_intercepting_proxy_is_refused(honest: EnclaveServer) -> None:
    with ConnectProxy(mitm=True) as proxy, enclave() as server:
        with pytest.raises(BindingMismatchError) as info:
            send_secret(server.url, proxies={"https": proxy.url}, **session_kwargs(server))
        _assert_exact(info, BindingMismatchError)
        assert proxy.targets == [f"CONNECT {server.address}"]
        assert_no_secret(proxy.client_bytes(), server_bytes(server))
        assert server.received == []


@pytest.mark.parametrize("tls_proxy", [False, True], ids=["http-proxy", "https-proxy"])
def test_tunnelling_proxy_keeps_attestation_end_to_end(honest: EnclaveServer, tls_proxy: bool,
                                                       tmp_path: Path) -> None:
    # With an https:// proxy the enclave's TLS runs inside the proxy's TLS (urllib3's SSLTransport):
    # attestation succeeding shows the inner (enclave) certificate is the one checked. verify= is
    # the proxy's CA: it verifies the proxy hop only (tests/test_requests_proxy_tls.py).
    with ConnectProxy(tls=tls_proxy) as proxy:
        extra: dict[str, Any] = {"verify": proxy.write_ca(tmp_path)} if tls_proxy else {}
        response = send_secret(honest.url, proxies={"https": proxy.url}, **extra, **session_kwargs(honest))
        assert response.status_code == 200
        assert proxy.targets == [f"CONNECT {honest.address}"]
        assert_no_secret(proxy.client_bytes())  # the proxy saw only ciphertext
        assert len(proxy.client_bytes()) > len(SECRET_BODY)
    _assert_secret_arrived(honest)


def test_roots_are_required_for_simulated_evidence(honest: EnclaveServer) -> None:
    # Without roots= the session trusts only AMD's pinned roots: test evidence is not genuine.
    with pytest.raises(NotAnEnclaveError, match="AMD"):
        send_secret(honest.url, measurements=[honest.measurement])
