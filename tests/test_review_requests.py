"""Security review of blindbox.requests: regressions for what the review found.

- a refused (non-attested) adapter must not put the request's path, query or
  userinfo into the exception message (they may hold secrets, and exception
  messages end up in logs);
- an address's credentials are never echoed in a ConfigurationError;
- an internationalised (IDNA) host is the same origin that requests prepares
  (its ASCII form), so such a session works instead of refusing every request.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests

import blindbox.requests as br
from blindbox.errors import ConfigurationError, OriginRefusedError
from blindbox.requests.origin import Origin
from blindbox.testing.server import EnclaveServer

from .requests_support import SECRET, SECRET_PATH, server_bytes, session_kwargs

TIMEOUT = 5.0
UNICODE_HOST = "bücher.example"
ASCII_HOST = "xn--bcher-kva.example"


# -- exception messages name no path, query or credentials ------------------------------------------
def test_non_attested_adapter_refusal_names_no_path_query_or_userinfo(
    blindbox_enclave: EnclaveServer,
) -> None:
    server = blindbox_enclave
    with br.SecureSession(server.address, **session_kwargs(server)) as session:
        session.adapters["https://"] = requests.adapters.HTTPAdapter()  # bypassing mount()
        url = f"https://user:{SECRET}-pw@{server.address}{SECRET_PATH}?token={SECRET}-query"
        with pytest.raises(ConfigurationError) as info:
            session.get(url, timeout=TIMEOUT)
    message = str(info.value)
    assert "not this SecureSession's attested adapter" in message
    assert server.address in message  # still says where
    assert SECRET not in message
    assert SECRET.encode() not in server_bytes(server)  # and nothing was sent


@pytest.mark.parametrize("addr", [
    f"https://user:{SECRET}@enclave.example",
    f"https://user:{SECRET}@enclave.example:bad",
    f"http://user:{SECRET}@enclave.example",
    f"https://user:{SECRET}@enclave.example/api",
])
def test_address_credentials_are_never_echoed(addr: str) -> None:
    with pytest.raises(ConfigurationError, match="addr") as info:
        Origin.parse(addr)
    assert SECRET not in str(info.value)
    assert "enclave.example" in str(info.value)


# -- internationalised host names -------------------------------------------------------------------
@pytest.fixture
def idna_host_resolves_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """``xn--bcher-kva.example`` (bücher.example) resolves to 127.0.0.1, as DNS would for a real name."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == ASCII_HOST:
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_origin_of_a_unicode_host_is_its_idna_form() -> None:
    for addr in (f"https://{UNICODE_HOST}:8443", "https://BÜCHER.example:8443", f"{ASCII_HOST}:8443"):
        origin = Origin.parse(addr)
        assert (origin.host, origin.port) == (ASCII_HOST, 8443)
        assert origin.url == f"https://{ASCII_HOST}:8443"
    origin = Origin.parse(f"{UNICODE_HOST}:8443")
    prepared = requests.Request("GET", f"https://{UNICODE_HOST}:8443/x").prepare()
    assert prepared.url is not None
    origin.check(prepared.url)  # what requests actually sends
    origin.check(f"https://{UNICODE_HOST}:8443/x")
    assert Origin.of_url(f"https://{UNICODE_HOST}:8443/x") == origin
    for other in ("https://bucher.example:8443/", "https://bücher.example:443/",
                  "https://xn--bcher-kva.exampl:8443/"):
        with pytest.raises(OriginRefusedError):
            origin.check(other)
    with pytest.raises(ConfigurationError, match="addr"):
        Origin.parse("https://a..b\u0301.example")  # not a valid IDNA name


@pytest.mark.usefixtures("idna_host_resolves_locally")
def test_session_on_a_unicode_host_sends_to_it(blindbox_enclave: EnclaveServer) -> None:
    server = blindbox_enclave
    with br.SecureSession(f"https://{UNICODE_HOST}:{server.port}", **session_kwargs(server)) as session:
        assert session.base_url == f"https://{ASCII_HOST}:{server.port}"
        assert session.get("/ping", timeout=TIMEOUT).status_code == 200
        assert session.get(f"https://{UNICODE_HOST}:{server.port}/ping", timeout=TIMEOUT).status_code == 200
    response = br.get(f"https://{UNICODE_HOST}:{server.port}/one-shot", timeout=TIMEOUT,
                      **session_kwargs(server))
    assert response.status_code == 200
    assert [r.headers["Host"] for r in server.received] == [f"{ASCII_HOST}:{server.port}"] * 3
