"""Connection life cycle: pinning across connections, replicas, Connection: close, retries, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from urllib3.util import Retry

import blindbox.requests as br
from blindbox.errors import BindingMismatchError
from blindbox.testing.server import EnclaveServer, Fault

from .requests_support import (
    SECRET_BODY,
    SECRET_PATH,
    ConnectProxy,
    RoundRobinBalancer,
    assert_no_secret,
    enclave,
    server_bytes,
    session_kwargs,
)


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


def test_new_connections_are_checked_against_the_pin(honest: EnclaveServer) -> None:
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        evidence_before = len(honest.evidence_requests)
        connections_before = honest.connections
        for _ in range(3):
            session.get_adapter(session.base_url).close()
            assert session.get("/again").status_code == 200
        assert honest.connections == connections_before + 3
        assert len(honest.evidence_requests) == evidence_before  # pinned key: no new evidence
        assert len(session.attestations) == 1


def test_evidence_with_connection_close_reconnects_and_rechecks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="blindbox.requests")
    with enclave(faults=[Fault.CLOSE_AFTER_EVIDENCE]) as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            assert "closed the connection after serving evidence; reconnecting" in caplog.text
            assert "is already attested for this session" in caplog.text
            assert session.get("/after-close").status_code == 200
        assert len(server.evidence_requests) == 1
        assert [r.path for r in server.received] == ["/after-close"]
        assert [r.connection for r in server.evidence_requests] == [1]
        assert server.received[0].connection >= 2


def test_connection_close_then_another_key_is_attested_and_refused() -> None:
    with enclave(faults=[Fault.SWITCH_CERTIFICATE, Fault.CLOSE_AFTER_EVIDENCE]) as server:
        with pytest.raises(BindingMismatchError):
            br.SecureSession(server.address, **session_kwargs(server))
        with pytest.raises(BindingMismatchError):
            br.post(server.url + SECRET_PATH, data=SECRET_BODY, **session_kwargs(server))
        assert server.received == []
        assert_no_secret(server_bytes(server))


def test_replicas_behind_one_address_are_each_attested_once() -> None:
    with enclave() as first, enclave() as second, RoundRobinBalancer(first, second) as balancer:
        assert first.identity.spki_der != second.identity.spki_der
        with br.SecureSession(balancer.address, **session_kwargs(first)) as session:
            for i in range(6):
                session.get_adapter(session.base_url).close()  # every request on a new connection
                assert session.get(f"/replica/{i}").json()["path"] == f"/replica/{i}"
            attested = {a.tls_spki_sha256 for a in session.attestations}
        assert len(attested) == 2
        assert len(first.evidence_requests) == 1 and len(second.evidence_requests) == 1
        assert len(first.received) == 3 and len(second.received) == 3


def _status_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    status = "503 Service Unavailable" if environ["PATH_INFO"] == "/busy" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"busy" if status.startswith("503") else b"ok"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_attestation_failures_are_never_retried(method: str) -> None:
    retry = Retry(total=5, connect=5, read=5, other=5, status=5, backoff_factor=0,
                  allowed_methods=None, status_forcelist=[503], raise_on_status=False)
    with enclave(_status_app, faults=[Fault.SWITCH_CERTIFICATE]) as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            session.get_adapter(session.base_url).max_retries = retry
            # Positive control: the same Retry does retry what it should (503 from the app).
            assert session.get("/busy").status_code == 503
            assert [r.path for r in server.received] == ["/busy"] * 6
            session.get_adapter(session.base_url).close()
            with pytest.raises(BindingMismatchError):
                session.request(method, SECRET_PATH, data=SECRET_BODY)
        assert len(server.evidence_requests) == 2  # the eager one, then exactly one refusal
        assert_no_secret(server_bytes(server))


def test_sixteen_threads_share_one_session(honest: EnclaveServer) -> None:
    threads, per_thread = 16, 50
    errors: list[BaseException] = []
    mismatches: list[tuple[str, Any]] = []
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        evidence_before = len(honest.evidence_requests)
        session.get_adapter(session.base_url).close()

        def worker(n: int) -> None:
            try:
                for i in range(per_thread):
                    token = f"t{n}-{i}"
                    response = session.post(f"/echo/{token}", params={"token": token}, data=token)
                    doc = response.json()
                    expected = (f"/echo/{token}", f"token={token}", token)
                    if (doc["path"], doc["query"], doc["body"]) != expected:
                        mismatches.append((token, doc))
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert not errors and not mismatches
        assert len(session.attestations) == 1
    assert len(honest.evidence_requests) == evidence_before  # many connections, one pinned key
    assert sum(r.path.startswith("/echo/t") for r in honest.received) >= threads * per_thread


def test_concurrent_first_contact_attests_a_key_once() -> None:
    with enclave() as first, enclave() as second, RoundRobinBalancer(first, second) as balancer:
        with br.SecureSession(balancer.address, **session_kwargs(first)) as session:
            assert len(first.evidence_requests) == 1 and len(second.evidence_requests) == 0
            barrier = threading.Barrier(8)
            results: list[int] = []

            def worker() -> None:
                barrier.wait()
                results.append(session.get("/hello").status_code)

            workers = [threading.Thread(target=worker) for _ in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=30)
            assert len(session.attestations) == 2
        assert results == [200] * 8
        assert len(first.evidence_requests) == 1 and len(second.evidence_requests) == 1


def test_connection_close_through_a_proxy_keeps_the_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with enclave(faults=[Fault.CLOSE_AFTER_EVIDENCE]) as server, ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            assert session.post(SECRET_PATH, data=SECRET_BODY).status_code == 200
        # Every connection, the reconnection included, went through the tunnel to the enclave.
        assert len(proxy.targets) >= 2 and set(proxy.targets) == {f"CONNECT {server.address}"}
        assert len(server.evidence_requests) == 1
        assert_no_secret(proxy.client_bytes())


def test_the_eagerly_attested_connection_carries_the_first_request() -> None:
    with enclave() as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            for _ in range(3):
                assert session.get("/reuse").status_code == 200
        assert server.connections == 1
        assert [r.connection for r in server.evidence_requests + server.received] == [1, 1, 1, 1]
