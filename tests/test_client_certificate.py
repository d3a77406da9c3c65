"""cert=: the client's identity goes only to a TLS key already attested and pinned in the session.

Handshakes never carry the client certificate; once the server's key is pinned, the certificate
is available to TLS 1.3 post-handshake authentication. Real TLS servers on loopback: impostors
that ask for a certificate in the handshake or after it, an impostor that relays the first
connection to an honest enclave and then shows its own key, and an honest enclave that requires
mutual TLS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

import blindbox.requests as br
from blindbox.errors import NotAnEnclaveError
from blindbox.server.tls import TlsIdentity
from blindbox.testing.server import EnclaveServer

from .requests_support import (
    SECRET_BODY,
    SECRET_PATH,
    ConnectProxy,
    assert_no_secret,
    enclave,
    session_kwargs,
)
from .tls_impostor import CertificateSeekingImpostor

TIMEOUT = (5, 10)
ASKING_MODES = ("handshake", "handshake-tls1.2", "post-handshake")
ONE_SHOT: dict[str, Callable[..., requests.Response]] = {
    "get": lambda url, **kw: br.get(url, **kw),
    "post": lambda url, **kw: br.post(url, data=SECRET_BODY, **kw),
    "put": lambda url, **kw: br.request("PUT", url, data=SECRET_BODY, **kw),
}


@pytest.fixture(scope="module")
def alice() -> TlsIdentity:
    return TlsIdentity.generate(["alice.invalid"], common_name="alice@hospital.example")


@pytest.fixture
def cert(alice: TlsIdentity, tmp_path: Path) -> tuple[str, str]:
    crt, key = tmp_path / "alice.pem", tmp_path / "alice.key"
    alice.save(crt, key)
    return str(crt), str(key)


@pytest.fixture(scope="module")
def mtls_enclave(alice: TlsIdentity) -> Iterator[EnclaveServer]:
    with enclave(client_certificates=alice.cert_pem) as server:
        yield server


def _expected_error(mode: str) -> type[Exception]:
    # TLS 1.2 cannot carry a certificate after the handshake: refused before any evidence request.
    return requests.exceptions.SSLError if mode == "handshake-tls1.2" else NotAnEnclaveError


@pytest.mark.parametrize("mode", ASKING_MODES)
def test_the_impostor_records_a_certificate_that_is_sent(mode: str, alice: TlsIdentity,
                                                         cert: tuple[str, str]) -> None:
    """Positive control: plain requests hands the certificate over, and the impostor records it."""
    with CertificateSeekingImpostor(mode, accept=alice) as impostor:
        with pytest.warns(InsecureRequestWarning):
            response = requests.get(impostor.url + "/", cert=cert, verify=False, timeout=TIMEOUT)
        assert response.status_code == 200
        assert impostor.certificates == [alice.cert_der]


@pytest.mark.parametrize("call", sorted(ONE_SHOT))
@pytest.mark.parametrize("mode", ASKING_MODES)
def test_an_impostor_asking_for_the_certificate_sees_none(mode: str, call: str, alice: TlsIdentity,
                                                          cert: tuple[str, str],
                                                          mtls_enclave: EnclaveServer) -> None:
    with CertificateSeekingImpostor(mode, accept=alice) as impostor:
        with pytest.raises(_expected_error(mode)) as raised:
            ONE_SHOT[call](impostor.url + SECRET_PATH, cert=cert, timeout=TIMEOUT,
                           **session_kwargs(mtls_enclave))
        if mode == "handshake-tls1.2":
            assert "TLS 1.3 post-handshake authentication" in str(raised.value)
        assert impostor.wait_for_handshakes(1) == 1  # it was asked, in the handshake or after it
        assert impostor.certificates == []


@pytest.mark.parametrize("mode", ASKING_MODES)
def test_secure_session_gives_an_impostor_no_certificate(mode: str, alice: TlsIdentity,
                                                         cert: tuple[str, str],
                                                         mtls_enclave: EnclaveServer) -> None:
    with CertificateSeekingImpostor(mode, accept=alice) as impostor:
        with pytest.raises(NotAnEnclaveError):
            br.SecureSession(impostor.address, **session_kwargs(mtls_enclave))
        assert impostor.certificates == []


@pytest.mark.parametrize("mode", ["handshake", "post-handshake"])
def test_a_new_key_after_the_pin_sees_no_certificate(mode: str, alice: TlsIdentity, cert: tuple[str, str],
                                                     mtls_enclave: EnclaveServer) -> None:
    """The first connection reaches the honest enclave (pinned); the next shows the impostor's key."""
    honest_before = len(mtls_enclave.client_certificates), len(mtls_enclave.received)
    target = ("127.0.0.1", mtls_enclave.port)
    with CertificateSeekingImpostor(mode, accept=alice, relay_first_to=target) as impostor:
        with br.SecureSession(impostor.address, **session_kwargs(mtls_enclave)) as session:
            assert len(session.attestations) == 1  # the honest key, through the relay
            with pytest.raises(NotAnEnclaveError):
                session.post(SECRET_PATH, data=SECRET_BODY, cert=cert, timeout=TIMEOUT)
            assert len(session.attestations) == 1
        assert impostor.handshakes == 1
        assert impostor.certificates == []
    assert (len(mtls_enclave.client_certificates), len(mtls_enclave.received)) == honest_before


def test_an_honest_enclave_requiring_mtls_gets_the_certificate(alice: TlsIdentity,
                                                               cert: tuple[str, str]) -> None:
    with enclave(client_certificates=alice.cert_pem) as server:
        # One-shot: attest on the connection, then the certificate on that same connection.
        response = br.post(server.url + SECRET_PATH, data=SECRET_BODY, cert=cert, timeout=TIMEOUT,
                           **session_kwargs(server))
        assert response.status_code == 200
        assert response.json()["body"] == SECRET_BODY.decode()
        assert server.client_certificates == [(1, alice.cert_der)]
        assert [r.connection for r in server.evidence_requests] == [1]
        assert [r.connection for r in server.received] == [1]

        # Without a certificate the enclave refuses (TLS alert): it really requires one.
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_REQUIRED"):
            br.get(server.url + "/who", timeout=TIMEOUT, **session_kwargs(server))
        assert len(server.client_certificates) == 1

        # A session: the eager connection has no certificate; cert= (per request or on the session)
        # gets a connection of its own to the pinned key, which reuses the attestation.
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            assert session.get("/who", cert=cert, timeout=TIMEOUT).status_code == 200
            session.cert = cert
            assert session.post("/records", data=SECRET_BODY, timeout=TIMEOUT).status_code == 200
            assert len(session.attestations) == 1
        assert [der for _, der in server.client_certificates] == [alice.cert_der] * 2
        # One per attested connection (both one-shots, the session's eager one), none for the pinned one.
        assert len(server.evidence_requests) == 3


def test_mtls_through_an_https_proxy(alice: TlsIdentity, cert: tuple[str, str], tmp_path: Path) -> None:
    """TLS inside the proxy's TLS: the certificate still waits for the pin, and then goes out."""
    with enclave(client_certificates=alice.cert_pem) as server, ConnectProxy(tls=True) as proxy:
        response = br.post(server.url + SECRET_PATH, data=SECRET_BODY, cert=cert, timeout=TIMEOUT,
                           proxies={"https": proxy.url}, verify=proxy.write_ca(tmp_path),
                           **session_kwargs(server))
        assert response.status_code == 200
        assert server.client_certificates == [(1, alice.cert_der)]
        assert proxy.targets == [f"CONNECT {server.address}"]
        assert_no_secret(proxy.client_bytes())
