"""`blindbox attest` honours HTTPS_PROXY/NO_PROXY as SecureSession does; `--no-proxy` ignores them.

Through a real CONNECT proxy the attestation is end to end: the proxy sees one CONNECT and only
ciphertext, and a proxy that intercepts TLS is caught by the binding check.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindbox.cli import main
from blindbox.testing.server import EnclaveServer

from .requests_support import ConnectProxy, enclave
from .test_cli_attest import rows

VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
             "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "BLINDBOX_MANIFEST")


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def server() -> Iterator[EnclaveServer]:
    with enclave() as honest:
        yield honest


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as running:
        yield running


def attest(server: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
           *extra: str) -> tuple[int, str, str]:
    roots = tmp_path / "roots.pem"
    roots.write_text(server.roots_pem)
    code = main(["attest", server.url, "--measurement", server.measurement, "--roots", str(roots), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_through_the_connect_tunnel_end_to_end(
    server: EnclaveServer, proxy: ConnectProxy, env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("HTTPS_PROXY", proxy.url)
    code, out, err = attest(server, tmp_path, capsys)
    assert code == 0, err
    assert proxy.targets == [f"CONNECT {server.address}"]
    nonce = server.evidence_requests[-1].path.split("nonce=")[1]
    assert nonce in out  # the fresh nonce reached the enclave through the tunnel...
    assert nonce.encode() not in proxy.client_bytes() and b"attestation" not in proxy.client_bytes()
    assert len(proxy.client_bytes()) > 0  # ...as ciphertext only


@pytest.mark.parametrize("bypass", ["NO_PROXY", "no_proxy"])
def test_no_proxy_is_honoured(
    bypass: str, server: EnclaveServer, proxy: ConnectProxy, env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("HTTPS_PROXY", proxy.url)
    env.setenv(bypass, "127.0.0.1")
    assert attest(server, tmp_path, capsys)[0] == 0
    assert proxy.targets == []


def test_no_proxy_flag_connects_directly(
    server: EnclaveServer, proxy: ConnectProxy, env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.setenv("HTTPS_PROXY", proxy.url)
    assert attest(server, tmp_path, capsys, "--no-proxy")[0] == 0
    assert proxy.targets == []


def test_an_intercepting_proxy_fails_the_binding(
    server: EnclaveServer, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with ConnectProxy(mitm=True) as mitm:
        env.setenv("HTTPS_PROXY", mitm.url)
        code, out, _ = attest(server, tmp_path, capsys)
        assert mitm.targets == [f"CONNECT {server.address}"]
    assert code == 1
    table = rows(out)
    assert table["genuine"] == "pass" and table["binding"] == "FAIL"  # genuine evidence, another TLS key


def test_https_proxy_verified_as_requests_would(
    server: EnclaveServer, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with ConnectProxy(tls=True) as tls_proxy:
        env.setenv("HTTPS_PROXY", tls_proxy.url)
        code, out, err = attest(server, tmp_path, capsys)  # requests' CA bundle: the proxy is not trusted
        assert (code, out) == (4, "") and "through the proxy" in err and tls_proxy.targets == []
        env.setenv("REQUESTS_CA_BUNDLE", tls_proxy.write_ca(tmp_path))
        assert attest(server, tmp_path, capsys)[0] == 0
        assert tls_proxy.targets == [f"CONNECT {server.address}"]


def test_unreachable_proxy_is_4(
    server: EnclaveServer, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.setenv("HTTPS_PROXY", f"http://alice:s3cret@127.0.0.1:{port}")
    code, out, err = attest(server, tmp_path, capsys)
    assert "s3cret" not in err  # a proxy's credentials are never echoed
    assert (code, out) == (4, "")
    assert err == (f"blindbox attest: VerificationIncompleteError: cannot attest {server.url} through the "
                   f"proxy http://127.0.0.1:{port}: ProxyError: Connection refused\n")
