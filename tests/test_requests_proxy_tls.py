"""An https:// proxy's own certificate is verified as plain requests verifies it; the enclave's never is.

``verify=`` (per request, the session's, or ``REQUESTS_CA_BUNDLE``) decides
trust in the proxy hop exactly as in requests: default requests' CA bundle, a
path that bundle, False no verification. The enclave hop inside the tunnel is
trusted only by attestation, whatever ``verify=`` says. A proxy that fails
verification sees nothing: no CONNECT (so no target, no proxy credentials) and
no request byte.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from requests.exceptions import ProxyError, SSLError
from urllib3.exceptions import InsecureRequestWarning

import blindbox.requests as br
from blindbox.errors import AttestationError, NotAnEnclaveError
from blindbox.testing.server import EnclaveServer

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
#: What requests raises when the proxy's certificate does not verify.
PROXY_REFUSED = (ProxyError, SSLError)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy or CA bundle from the environment (which would outrank a session's ``verify``)."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tls_proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy(tls=True) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


def send_secret(url: str, proxy: ConnectProxy, **kwargs: Any) -> requests.Response:
    return br.post(url + SECRET_PATH, headers=SECRET_HEADERS, data=SECRET_BODY, timeout=TIMEOUT,
                   proxies={"https": proxy.url}, **kwargs)


def _assert_end_to_end(response: requests.Response, server: EnclaveServer, proxy: ConnectProxy) -> None:
    """Through the proxy, attested: the proxy saw one CONNECT and only ciphertext; the enclave the secret."""
    assert response.status_code == 200
    assert proxy.targets == [f"CONNECT {server.address}"]
    assert len(proxy.client_bytes()) > len(SECRET_BODY)
    assert_no_secret(proxy.client_bytes())
    assert SECRET.encode() in server.received[-1].body


def _assert_refused_before_connect(info: pytest.ExceptionInfo[BaseException], server: EnclaveServer,
                                   proxy: ConnectProxy) -> None:
    assert not isinstance(info.value, AttestationError), f"not a proxy failure: {info.value!r}"
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert proxy.targets == []  # TLS to the proxy failed before the CONNECT line was sent
    assert server.raw_bytes_received() == b"" and server.received == []


# -- (1) default verify: a self-signed proxy is refused --------------------------------------------
def test_unverifiable_proxy_is_refused_by_default(clean_env: pytest.MonkeyPatch,
                                                  tls_proxy: ConnectProxy) -> None:
    with enclave() as server:
        with pytest.raises(PROXY_REFUSED) as info:
            send_secret(server.url, tls_proxy, **session_kwargs(server))
        _assert_refused_before_connect(info, server, tls_proxy)
        # The eager attestation of a SecureSession goes through HTTPS_PROXY too.
        clean_env.setenv("HTTPS_PROXY", tls_proxy.url)
        with pytest.raises(PROXY_REFUSED) as info:
            br.SecureSession(server.address, **session_kwargs(server))
        _assert_refused_before_connect(info, server, tls_proxy)
        assert_no_secret(tls_proxy.client_bytes(), server_bytes(server))


def test_proxy_credentials_are_not_sent_to_an_unverified_proxy(tls_proxy: ConnectProxy,
                                                               tmp_path: Path) -> None:
    # The CONNECT head (target and Proxy-Authorization) is written only after the proxy verified.
    authenticated = tls_proxy.url.replace("https://", "https://user:proxy-password@")
    with enclave() as server:
        with pytest.raises(PROXY_REFUSED) as info:
            br.get(server.url + "/", proxies={"https": authenticated}, timeout=TIMEOUT,
                   **session_kwargs(server))
        _assert_refused_before_connect(info, server, tls_proxy)
        # Positive control: once the proxy verifies, the same URL does reach it.
        assert br.get(server.url + "/", proxies={"https": authenticated}, timeout=TIMEOUT,
                      verify=tls_proxy.write_ca(tmp_path), **session_kwargs(server)).status_code == 200
        assert tls_proxy.targets == [f"CONNECT {server.address}"]


def test_proxy_hostname_is_checked(honest: EnclaveServer, tmp_path: Path) -> None:
    # Chains to the CA given, but is issued for another name than the proxy's address.
    with ConnectProxy(tls=True, tls_hostnames=["proxy.invalid"]) as proxy:
        with pytest.raises(PROXY_REFUSED, match="IP address mismatch"):
            send_secret(honest.url, proxy, verify=proxy.write_ca(tmp_path), **session_kwargs(honest))
        assert proxy.targets == []


# -- (2)-(4) trusting the proxy the requests way ---------------------------------------------------
def test_verify_path_trusts_the_proxy_and_attestation_stays_end_to_end(
        honest: EnclaveServer, tls_proxy: ConnectProxy, tmp_path: Path) -> None:
    response = send_secret(honest.url, tls_proxy, verify=tls_proxy.write_ca(tmp_path),
                           **session_kwargs(honest))
    _assert_end_to_end(response, honest, tls_proxy)


def test_verify_directory_trusts_the_proxy(honest: EnclaveServer, tls_proxy: ConnectProxy,
                                           tmp_path: Path) -> None:
    # A CA directory (OpenSSL's hashed file names), which requests also accepts as verify=.
    ca_dir = tmp_path / "cadir"
    ca_dir.mkdir()
    subject = x509.load_pem_x509_certificate(tls_proxy.ca_pem).subject.public_bytes()
    (ca_dir / f"{_openssl_subject_hash(subject):08x}.0").write_bytes(tls_proxy.ca_pem)
    response = send_secret(honest.url, tls_proxy, verify=str(ca_dir), **session_kwargs(honest))
    _assert_end_to_end(response, honest, tls_proxy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PROXY_REFUSED):  # trusted through that file: an empty directory trusts nothing
        send_secret(honest.url, tls_proxy, verify=str(empty), **session_kwargs(honest))


def _openssl_subject_hash(subject_der: bytes) -> int:
    """OpenSSL's X509_NAME_hash: SHA-1 of the canonical name, first 4 bytes little-endian.

    For TlsIdentity's one-attribute name (a lower-case ASCII UTF8String CN) the canonical form is
    the DER of the name without its outer SEQUENCE header.
    """
    assert subject_der[0] == 0x30 and subject_der[1] < 0x80
    return int.from_bytes(hashlib.sha1(subject_der[2:]).digest()[:4], "little")


def test_verify_false_skips_proxy_verification(honest: EnclaveServer, tls_proxy: ConnectProxy) -> None:
    response = send_secret(honest.url, tls_proxy, verify=False, **session_kwargs(honest))
    _assert_end_to_end(response, honest, tls_proxy)


def test_requests_ca_bundle_trusts_the_proxy(clean_env: pytest.MonkeyPatch, honest: EnclaveServer,
                                             tls_proxy: ConnectProxy, tmp_path: Path) -> None:
    clean_env.setenv("REQUESTS_CA_BUNDLE", tls_proxy.write_ca(tmp_path))
    response = send_secret(honest.url, tls_proxy, **session_kwargs(honest))
    _assert_end_to_end(response, honest, tls_proxy)
    # A SecureSession's eager attestation through HTTPS_PROXY uses the same merged settings.
    clean_env.setenv("HTTPS_PROXY", tls_proxy.url)
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        assert len(tls_proxy.targets) == 2
        assert session.get("/via-env").status_code == 200
    assert len(tls_proxy.targets) == 2  # the eagerly attested connection was reused


def test_session_verify_applies_to_the_proxy(honest: EnclaveServer, tls_proxy: ConnectProxy,
                                             tmp_path: Path) -> None:
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        session.proxies = {"https": tls_proxy.url}
        with pytest.raises(PROXY_REFUSED):
            session.get("/default")
        session.verify = tls_proxy.write_ca(tmp_path)
        assert session.get("/session-verify").status_code == 200
        assert tls_proxy.targets == [f"CONNECT {honest.address}"]


def test_a_connection_verified_under_one_verify_is_not_reused_under_another(
        honest: EnclaveServer, tls_proxy: ConnectProxy, tmp_path: Path) -> None:
    ca = tls_proxy.write_ca(tmp_path)
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        proxies = {"https": tls_proxy.url}
        assert session.get("/trusted", proxies=proxies, verify=ca).status_code == 200
        with pytest.raises(PROXY_REFUSED):  # a new proxy connection, verified under the default
            session.get("/default", proxies=proxies)
        assert session.get("/trusted-again", proxies=proxies, verify=ca).status_code == 200
        assert len(tls_proxy.targets) == 1  # the connection verified under `ca` was reused
        assert session.get("/unverified", proxies=proxies, verify=False).status_code == 200
        assert len(tls_proxy.targets) == 2


def test_missing_ca_bundle_with_an_https_proxy_is_an_error_as_in_requests(
        honest: EnclaveServer, tls_proxy: ConnectProxy) -> None:
    with pytest.raises(OSError, match="CA certificate bundle"):
        send_secret(honest.url, tls_proxy, verify="/nonexistent/ca.pem", **session_kwargs(honest))
    assert tls_proxy.targets == []
    # Without a proxy, verify= plays no part at all.
    assert br.get(honest.url + "/", verify="/nonexistent/ca.pem", **session_kwargs(honest)).ok


# -- the same outcomes as plain requests ------------------------------------------------------------
@pytest.mark.parametrize("choice", ["default", "bundle", "false"])
def test_same_outcome_as_plain_requests(honest: EnclaveServer, tls_proxy: ConnectProxy, tmp_path: Path,
                                        choice: str) -> None:
    site = PlainServer(tls=True)
    assert site.identity is not None
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls_proxy.ca_pem + site.identity.cert_pem)
    kwargs: dict[str, Any] = {"default": {}, "bundle": {"verify": str(bundle)},
                              "false": {"verify": False}}[choice]
    proxies = {"https": tls_proxy.url}

    def outcome(call: Any) -> object:
        try:
            return call().status_code
        except requests.RequestException as exc:
            return type(exc)

    with site, warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        plain = outcome(lambda: requests.get(site.url + "/", proxies=proxies, timeout=TIMEOUT, **kwargs))
        attested = outcome(lambda: br.get(honest.url + "/", proxies=proxies, timeout=TIMEOUT, **kwargs,
                                          **session_kwargs(honest)))
    assert attested == plain
    assert plain == (ProxyError if choice == "default" else 200)


# -- the enclave hop stays attestation-only ---------------------------------------------------------
def test_verify_never_trusts_the_enclave_hop_through_a_proxy(tls_proxy: ConnectProxy,
                                                             honest: EnclaveServer, tmp_path: Path) -> None:
    # The bundle verifies both the proxy and the impostor site (plain requests accepts both)...
    site = PlainServer(tls=True)
    assert site.identity is not None
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls_proxy.ca_pem + site.identity.cert_pem)
    with site:
        proxies = {"https": tls_proxy.url}
        assert requests.get(site.url + "/", proxies=proxies, verify=str(bundle)).status_code == 200
        # ...but the impostor is not an attested enclave.
        for verify in (str(bundle), False):
            with pytest.raises(NotAnEnclaveError):
                send_secret(site.url, tls_proxy, verify=verify, **session_kwargs(honest))
        assert_no_secret(site.raw_bytes_received(), tls_proxy.client_bytes())
