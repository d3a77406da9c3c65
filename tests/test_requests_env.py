"""The pin holds whatever verify=, REQUESTS_CA_BUNDLE, cert= or HTTPS_PROXY say (positive and negative)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

import blindbox.requests as br
from blindbox.errors import BindingMismatchError, NotAnEnclaveError
from blindbox.server.tls import TlsIdentity
from blindbox.testing.server import EnclaveServer

from .requests_support import (
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


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def impostor_ca(tmp_path: Path) -> tuple[PlainServer, str]:
    """An ordinary HTTPS site and a CA file under which its certificate *does* verify."""
    site = PlainServer(tls=True)
    assert site.identity is not None
    path = tmp_path / "impostor-ca.pem"
    path.write_bytes(site.identity.cert_pem)
    return site, str(path)


def test_bogus_ca_bundle_env_does_not_matter(clean_env: pytest.MonkeyPatch, honest: EnclaveServer) -> None:
    clean_env.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca-bundle.pem")
    clean_env.setenv("CURL_CA_BUNDLE", "/nonexistent/ca-bundle.pem")
    # Plain requests would refuse to run at all with this environment...
    with pytest.raises(OSError, match="CA certificate bundle"):
        requests.get(honest.url + "/plain")
    # ...a SecureSession trusts only the attestation, so it works.
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        assert session.get("/env").status_code == 200
        assert session.get("/env", verify=True).status_code == 200
        assert session.get("/env", verify="/nonexistent/other.pem").status_code == 200


def test_verify_options_never_replace_the_pin(clean_env: pytest.MonkeyPatch, honest: EnclaveServer,
                                              impostor_ca: tuple[PlainServer, str]) -> None:
    site, ca_path = impostor_ca
    with site:
        # The impostor's certificate verifies under ca_path (plain requests trusts it)...
        assert requests.get(site.url + "/", verify=ca_path).status_code == 200
        # ...but it is not an attested enclave.
        with pytest.raises(NotAnEnclaveError):
            br.post(site.url + SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS, verify=ca_path,
                    **session_kwargs(honest))
        clean_env.setenv("REQUESTS_CA_BUNDLE", ca_path)
        for verify in (True, False, ca_path):
            with pytest.raises(NotAnEnclaveError):
                br.post(site.url + SECRET_PATH, data=SECRET_BODY, verify=verify, **session_kwargs(honest))
        with pytest.raises(NotAnEnclaveError):
            br.SecureSession(site.address, **session_kwargs(honest))
        assert_no_secret(site.raw_bytes_received())
    # Positive: the honest enclave works with the same options.
    for verify in (True, False, ca_path):
        assert br.get(honest.url + "/ok", verify=verify, **session_kwargs(honest)).status_code == 200


def test_client_certificate_does_not_disable_the_pin(clean_env: pytest.MonkeyPatch, honest: EnclaveServer,
                                                     tmp_path: Path) -> None:
    client = TlsIdentity.generate(["client.invalid"])
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.save(cert, key)
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        assert session.get("/mtls", cert=(str(cert), str(key))).status_code == 200
        assert session.get("/mtls", cert=(str(cert), str(key))).status_code == 200
    with PlainServer(tls=True) as site:
        with pytest.raises(NotAnEnclaveError):
            br.post(site.url + SECRET_PATH, data=SECRET_BODY, cert=(str(cert), str(key)),
                    **session_kwargs(honest))
        assert_no_secret(site.raw_bytes_received())


def test_no_insecure_request_warning(honest: EnclaveServer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureRequestWarning)
        with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
            session.verify = False
            assert session.get("/quiet").status_code == 200
            session.get_adapter(session.base_url).close()
            assert session.get("/quiet-new-connection").status_code == 200


def test_https_proxy_env_tunnels_and_stays_attested(clean_env: pytest.MonkeyPatch,
                                                    honest: EnclaveServer) -> None:
    with ConnectProxy() as proxy:
        clean_env.setenv("HTTPS_PROXY", proxy.url)
        with br.SecureSession(honest.address, **session_kwargs(honest)) as session:  # eager: via proxy
            assert proxy.targets == [f"CONNECT {honest.address}"]
            response = session.post(SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS)
        assert response.status_code == 200
        assert len(proxy.targets) == 1  # the attested connection was reused for the request
        assert_no_secret(proxy.client_bytes())
        assert br.get(honest.url + "/one-shot", **session_kwargs(honest)).status_code == 200
        assert len(proxy.targets) == 2


def test_proxy_environment_changed_after_construction_applies_to_the_next_request(
        clean_env: pytest.MonkeyPatch, honest: EnclaveServer) -> None:
    """The session keeps the environment's proxy settings only while the environment is unchanged."""
    with ConnectProxy() as proxy, br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        assert session.get("/direct").status_code == 200  # the lookup made while constructing
        clean_env.setenv("HTTPS_PROXY", proxy.url)
        session.get_adapter(session.base_url).close()  # so the next request needs a new connection
        assert session.get("/via-proxy").status_code == 200
        assert proxy.targets == [f"CONNECT {honest.address}"]
        clean_env.setenv("NO_PROXY", "127.0.0.1")
        session.get_adapter(session.base_url).close()
        assert session.get("/direct-again").status_code == 200
        assert len(proxy.targets) == 1
        clean_env.delenv("NO_PROXY")
        clean_env.setenv("HTTPS_PROXY", "socks5://127.0.0.1:9")
        with pytest.raises(br.ConfigurationError, match="SOCKS"):
            session.get("/socks")


def test_https_proxy_env_cannot_intercept(clean_env: pytest.MonkeyPatch) -> None:
    with ConnectProxy(mitm=True) as proxy, enclave() as server:
        clean_env.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(BindingMismatchError):
            br.SecureSession(server.address, **session_kwargs(server))
        with pytest.raises(BindingMismatchError):
            br.post(server.url + SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS,
                    **session_kwargs(server))
        # A pinned session meeting the interceptor on a new connection refuses it too.
        clean_env.delenv("HTTPS_PROXY")
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            with pytest.raises(BindingMismatchError):
                session.post(SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS,
                             proxies={"https": proxy.url})
        assert len(proxy.targets) == 3
        assert_no_secret(proxy.client_bytes(), server_bytes(server))


def test_socks_proxy_is_refused_clearly(honest: EnclaveServer) -> None:
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        with pytest.raises(br.ConfigurationError, match="SOCKS"):
            session.get("/x", proxies={"https": "socks5://127.0.0.1:9"})
