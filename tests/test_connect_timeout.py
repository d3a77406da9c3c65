"""Connecting never hangs: TCP connect and TLS handshake are bounded on every attested connection.

The bound is the request's connect timeout, else the session's ``timeout`` (30 s by default);
running out raises ``requests.exceptions.ConnectTimeout`` naming the step. Real sockets on
loopback: one that accepts TCP and never answers the handshake, a relay that answers late.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests

import blindbox.requests as br
import blindbox.requests.api
from blindbox.testing.server import EnclaveServer

from .requests_support import ConnectProxy, enclave, session_kwargs
from .tls_impostor import CertificateSeekingImpostor

#: Generous: the timeouts below are fractions of a second; a hang would be 30 s or more.
BOUND = 10.0


@pytest.fixture
def silent() -> Iterator[str]:
    """An address that accepts TCP (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


def _timed(call: Callable[[], Any]) -> tuple[BaseException, float]:
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectTimeout) as raised:
        call()
    return raised.value, time.monotonic() - start


def test_the_request_connect_timeout_bounds_the_handshake(silent: str, honest: EnclaveServer) -> None:
    error, elapsed = _timed(lambda: br.get(f"https://{silent}/", timeout=(0.5, 60), **session_kwargs(honest)))
    assert elapsed < BOUND
    assert "the TLS handshake did not complete within 0.5 s" in str(error)
    assert not isinstance(error, requests.exceptions.ReadTimeout)


def test_without_a_timeout_the_default_bounds_the_handshake(silent: str, honest: EnclaveServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # requests.get(url) gives no timeout at all; the one-shot session's default applies.
    monkeypatch.setattr(blindbox.requests.api, "DEFAULT_TIMEOUT", 0.4)
    error, elapsed = _timed(lambda: br.get(f"https://{silent}/", **session_kwargs(honest)))
    assert elapsed < BOUND
    assert "within 0.4 s" in str(error)
    error, elapsed = _timed(lambda: br.SecureSession(silent, timeout=0.4, **session_kwargs(honest)))
    assert elapsed < BOUND


def test_the_session_timeout_bounds_each_new_connection(honest: EnclaveServer) -> None:
    """The first connection is relayed to the enclave; every later one meets silence."""
    target = ("127.0.0.1", honest.port)
    with CertificateSeekingImpostor("silent", relay_first_to=target) as server:
        with br.SecureSession(server.address, timeout=0.4, **session_kwargs(honest)) as session:
            assert session.get("/first").status_code == 200  # the eager, attested connection
            session.get_adapter(session.base_url).close()  # the next request needs a new one
            error, elapsed = _timed(lambda: session.get("/second"))
        assert elapsed < BOUND
        assert "within 0.4 s" in str(error)


def test_a_slow_handshake_is_fine_within_the_callers_timeout(honest: EnclaveServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's connect timeout wins over the default, both ways."""
    monkeypatch.setattr(blindbox.requests.api, "DEFAULT_TIMEOUT", 0.3)
    target = ("127.0.0.1", honest.port)
    with CertificateSeekingImpostor("silent", relay_first_to=target, relay_all=True,
                                    relay_delay=0.8) as server:
        assert br.get(server.url + "/slow", timeout=(5, 10), **session_kwargs(honest)).status_code == 200
        error, elapsed = _timed(lambda: br.get(server.url + "/slow", **session_kwargs(honest)))
        assert elapsed < BOUND
        assert "within 0.3 s" in str(error)


def test_the_read_timeout_stays_the_read_timeout() -> None:
    def slow_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        time.sleep(1.5)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with enclave(slow_app) as server:
        kwargs = session_kwargs(server)
        with pytest.raises(requests.exceptions.ReadTimeout):
            br.get(server.url + "/compute", timeout=(5, 0.3), **kwargs)
        # A connect timeout shorter than the response time does not cut the response short.
        assert br.get(server.url + "/compute", timeout=(1, 10), **kwargs).status_code == 200


def test_the_handshake_through_a_proxy_tunnel_is_bounded(silent: str, honest: EnclaveServer) -> None:
    with ConnectProxy() as proxy:
        error, elapsed = _timed(lambda: br.get(f"https://{silent}/", timeout=(0.5, 60),
                                               proxies={"https": proxy.url}, **session_kwargs(honest)))
        assert proxy.targets == [f"CONNECT {silent}"]
    assert elapsed < BOUND
    assert f"Connection to {silent} timed out: the proxy CONNECT or the TLS handshake did not complete " \
        "within 0.5 s" in str(error)
