"""The agent's sans-IO pieces: head checks, authentication, header rewriting, evidence service."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import responses

from blindbox.attest.binding import check_binding
from blindbox.attest.evidence import Evidence
from blindbox.server.auth import Authenticator
from blindbox.server.backends import RawEvidence
from blindbox.server.evidence import EvidenceBusy, EvidenceService, parse_nonce_query
from blindbox.server.framing import MAX_HEAD_BYTES, Refusal, check_head, head_end
from blindbox.server.headers import client_response_headers, upstream_request_headers
from blindbox.server.tls import TlsIdentity
from blindbox.snp import verify_report
from blindbox.snp.kds import KdsClient, cert_chain_url, vcek_url
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport
from blindbox.testing.backend import SimulatedBackend
from blindbox.testing.evidence import DEMO_MEASUREMENT
from tests.agent_support import BACKEND, TOKEN, TOKEN_SHA256, policy

GOOD = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"


def test_head_end_finds_the_blank_line() -> None:
    assert head_end(GOOD) == GOOD.index(b"abc")
    assert head_end(GOOD[:20]) is None
    check_head(GOOD[: head_end(GOOD)])  # accepted


@pytest.mark.parametrize(("raw", "why"), [
    (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\n", "bare LF"),  # before the head is even complete
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "empty line"),
])
def test_head_end_refuses_bare_lf_and_leading_blank_lines(raw: bytes, why: str) -> None:
    with pytest.raises(Refusal, match=why) as info:
        head_end(raw)
    assert info.value.status == 400


def test_head_end_bounds_the_head() -> None:
    with pytest.raises(Refusal) as info:
        head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert info.value.status == 431


@pytest.mark.parametrize(("head", "why"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "folding"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", "folding"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "more than once"),
    (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\nCONTENT-LENGTH: 3\r\n\r\n", "more than once"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "as a list"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", "both"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
])
def test_check_head_refuses_what_h11_tolerates(head: bytes, why: str) -> None:
    with pytest.raises(Refusal, match=why) as info:
        check_head(head)
    assert info.value.status == 400


def _headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}",
                                   f"BeArEr   {TOKEN}"])
def test_a_listed_bearer_token_is_admitted_in_any_scheme_case(value: str) -> None:
    principal = Authenticator(policy()).bearer(_headers(("Authorization", value)))
    assert principal is not None
    assert (principal.kind, principal.digest) == ("bearer", TOKEN_SHA256)


@pytest.mark.parametrize("value", [f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer\t{TOKEN}",
                                   "Bearer ", f"Bearer {TOKEN} extra", f"Bearer{TOKEN}"])
def test_anything_else_is_not_admitted(value: str) -> None:
    assert Authenticator(policy()).bearer(_headers(("Authorization", value))) is None


def test_two_authorization_headers_are_refused() -> None:
    with pytest.raises(Refusal, match="more than one") as info:
        Authenticator(policy()).bearer(_headers(("Authorization", f"Bearer {TOKEN}"),
                                                ("Authorization", "Bearer other")))
    assert info.value.status == 400


def test_a_certificate_is_admitted_by_its_spki_digest_only() -> None:
    alice, mallory = TlsIdentity.generate(["alice"]), TlsIdentity.generate(["alice"])
    auth = Authenticator(policy(tokens=(), spkis=(hashlib.sha256(alice.spki_der).hexdigest(),)))
    assert auth.wants_certificate
    admitted = auth.certificate(alice.cert_der)
    assert admitted is not None and admitted.kind == "certificate"
    assert auth.certificate(mallory.cert_der) is None  # same name, other key
    assert auth.certificate(None) is None
    assert auth.certificate(b"\x30\x03garbage") is None
    assert not Authenticator(None).required and not Authenticator(None).wants_certificate


def test_upstream_headers_strip_hop_by_hop_and_replace_forwarding() -> None:
    headers = _headers(("Host", "a"), ("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
                       ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Upgrade", "h2c"),
                       ("Proxy-Authorization", "Basic x"), ("X-Forwarded-For", "6.6.6.6"),
                       ("X-Forwarded-Proto", "http"), ("Forwarded", "for=6.6.6.6"),
                       ("X-BlindBox-Principal", "forged"), ("Authorization", f"Bearer {TOKEN}"),
                       ("Expect", "100-continue"), ("Transfer-Encoding", "chunked"), ("Accept", "*/*"),
                       ("X_BlindBox_Principal", "forged"), ("X_Forwarded_For", "6.6.6.6"))
    out = upstream_request_headers(headers, client_ip="10.0.0.9", chunked=True, principal="d" * 64,
                                   drop_authorization=True)
    assert out == _headers(("Host", "a"), ("Accept", "*/*"), ("Transfer-Encoding", "chunked"),
                           ("X-Forwarded-For", "10.0.0.9"), ("X-Forwarded-Proto", "https"),
                           ("X-BlindBox-Principal", "d" * 64))
    kept = upstream_request_headers(headers, client_ip="::1", chunked=False, principal=None,
                                    drop_authorization=False)
    assert (b"authorization", f"Bearer {TOKEN}".encode()) in kept
    assert not [v for k, v in kept if k == b"x-blindbox-principal"]


def test_response_headers_strip_hop_by_hop() -> None:
    headers = _headers(("Content-Type", "a"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
                       ("Transfer-Encoding", "chunked"), ("Content-Length", "5"))
    assert client_response_headers(headers) == _headers(("Content-Type", "a"))  # chunked: its length goes
    plain = _headers(("Content-Type", "a"), ("Content-Length", "5"), ("Keep-Alive", "timeout=5"))
    assert client_response_headers(plain) == _headers(("Content-Type", "a"), ("Content-Length", "5"))


@pytest.mark.parametrize("query", ["nonce=" + "A" * 64, "nonce=abc", "nonce", "nonce=&x=1",
                                   "nonce=" + "0" * 64 + "&nonce=" + "0" * 64])
def test_bad_nonces_are_400(query: str) -> None:
    with pytest.raises(Refusal) as info:
        parse_nonce_query(query)
    assert info.value.status == 400


def test_evidence_binds_key_policy_and_nonce_and_caches_only_without_nonce() -> None:
    identity = TlsIdentity.generate()
    owner = policy().to_bytes()
    service = EvidenceService(BACKEND, spki_der=identity.spki_der, policy=owner)
    nonce = os.urandom(32)
    evidence = Evidence.from_json(service.document(nonce))
    assert evidence.policy == owner and set(evidence.certificates) >= {"vcek", "ask", "ark"}
    result = verify_report(evidence.report, certificates=dict(evidence.certificates), roots=BACKEND.roots_pem)
    check_binding(result.report.report_data, identity.spki_der, owner, nonce)
    assert service.document(nonce) != service.document(nonce)  # fresh each time (signature nonce)
    assert parse_nonce_query("") is None and parse_nonce_query("x=1&y") is None  # others ignored
    first = service.document(None)
    assert service.document(None) is first
    check_binding(verify_report(Evidence.from_json(first).report, roots=BACKEND.roots_pem,
                                certificates=dict(evidence.certificates)).report.report_data,
                  identity.spki_der, owner, None)


class _SlowBackend:
    name = "slow"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        self.calls += 1
        self.gate.wait(10)
        return BACKEND.get_report(report_data, vmpl)


def test_concurrent_nonce_requests_queue_with_a_bound() -> None:
    backend = _SlowBackend()
    service = EvidenceService(backend, spki_der=b"k", policy=None, max_waiting=2)
    results: list[object] = []

    def ask() -> None:
        try:
            results.append(service.document(os.urandom(32)))
        except EvidenceBusy as busy:
            results.append(busy)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with pytest.raises(EvidenceBusy) as info:  # one in progress, two waiting: the fourth is refused
        service.document(os.urandom(32))
    assert info.value.retry_after >= 1
    backend.gate.set()
    for thread in threads:
        thread.join(10)
    assert all(isinstance(r, bytes) for r in results) and backend.calls == 3


def _fd_links() -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return links


def test_the_key_is_not_in_repr_and_its_memory_file_is_closed_at_once() -> None:
    identity = TlsIdentity.generate()
    assert b"PRIVATE" in identity.key_pem
    assert "PRIVATE" not in repr(identity) and "key_pem" not in repr(identity)
    context = identity.server_context()
    assert context is not None
    assert not [link for link in _fd_links() if "blindbox-tls" in link]


def test_certificates_fetched_from_kds_once_are_served_when_the_host_attaches_none(tmp_path: Path) -> None:
    from blindbox._serve_cli import kds_certificates
    from blindbox.snp.certificate import pem_encode

    bare = SimulatedBackend.create(DEMO_MEASUREMENT, certificates=False)
    table = BACKEND.get_report(bytes(64)).certificates  # what AMD KDS would serve for this chip
    report = AttestationReport.from_bytes(bare.get_report(bytes(64)).report)
    with responses.RequestsMock() as mock:
        mock.get(vcek_url(Product.MILAN, report.chip_id, report.reported_tcb), body=table["vcek"])
        mock.get(cert_chain_url(Product.MILAN),
                 body=pem_encode(table["ask"]) + pem_encode(table["ark"]))
        fetched = kds_certificates("milan", bare, KdsClient(cache_dir=tmp_path))
        assert len(mock.calls) == 2
    assert set(fetched) == {"vcek", "ask", "ark"}
    identity = TlsIdentity.generate()
    service = EvidenceService(bare, spki_der=identity.spki_der, policy=None, certificates=fetched)
    nonce = os.urandom(32)
    evidence = Evidence.from_json(service.document(nonce))
    assert dict(evidence.certificates) == fetched
    result = verify_report(evidence.report, certificates=dict(evidence.certificates), roots=BACKEND.roots_pem)
    check_binding(result.report.report_data, identity.spki_der, None, nonce)
    assert kds_certificates("milan", BACKEND, KdsClient(cache_dir=tmp_path, offline=True)) == {}
