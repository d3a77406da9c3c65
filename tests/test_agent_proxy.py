"""The agent's reverse proxy over real loopback sockets: framing, streaming, smuggling, auth, faults.

Every request goes over real TLS to an :class:`~blindbox.server.agent.Agent`, and on
to a real upstream that logs what it receives: the upstream's log, not the
agent, proves what was forwarded.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import h11
import pytest

from blindbox.server.connection import Limits
from tests.agent_support import (
    OTHER_TOKEN,
    TOKEN,
    TOKEN_SHA256,
    GatedBackend,
    RunningAgent,
    Upstream,
    exchange,
    policy,
    running_agent,
    tls_client,
)

NONCE = "00" * 32


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def open_agent(upstream: Upstream) -> Iterator[RunningAgent]:
    with running_agent(upstream.port) as agent:
        yield agent


@pytest.fixture
def locked_agent(upstream: Upstream) -> Iterator[RunningAgent]:
    with running_agent(upstream.port, policy()) as agent:
        yield agent


def get(target: str = "/", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", "Host: enclave", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


AUTH = f"Authorization: Bearer {TOKEN}"


# -- plain proxying

def test_keep_alive_and_forwarding_headers(open_agent: RunningAgent, upstream: Upstream) -> None:
    raw = get("/a?x=1", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: http",
              "X-BlindBox-Principal: forged", "Connection: keep-alive, X-Hop", "X-Hop: secret") + get("/b")
    responses, closed = exchange(open_agent.port, raw, max_responses=2)
    assert [r[0] for r in responses] == [200, 200]
    assert not closed
    seen = upstream.seen()
    assert [s.target for s in seen] == ["/a?x=1", "/b"]
    assert seen[0].header("x-forwarded-for") == ["127.0.0.1"]
    assert seen[0].header("x-forwarded-proto") == ["https"]
    assert seen[0].header("x-blindbox-principal") == []
    assert seen[0].header("x-hop") == [] and seen[0].header("connection") == []
    assert responses[0][1].get("x-upstream") == "yes"


def test_head_requests_are_forwarded_without_a_body(open_agent: RunningAgent, upstream: Upstream) -> None:
    raw = b"HEAD /h HTTP/1.1\r\nHost: e\r\n\r\n" * 2
    responses, closed = exchange(open_agent.port, raw, method=b"HEAD", max_responses=2)
    assert [(r[0], r[2]) for r in responses] == [(200, b""), (200, b"")] and not closed
    assert int(responses[0][1]["content-length"]) > 0  # the upstream's length for a GET, kept
    assert [(s.method, s.target) for s in upstream.seen()] == [("HEAD", "/h")] * 2


def test_chunked_upload_is_rechunked_and_100_continue_is_answered(open_agent: RunningAgent,
                                                                   upstream: Upstream) -> None:
    sock = tls_client(open_agent.port)
    with sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        data = b""
        while b"}" not in data:
            data += sock.recv(65536)
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["body"] == "hello world"
    seen = upstream.seen()[-1]
    assert seen.header("transfer-encoding") == ["chunked"] and seen.header("expect") == []


def test_slow_response_reaches_the_client_chunk_by_chunk(open_agent: RunningAgent,
                                                         upstream: Upstream) -> None:
    sock = tls_client(open_agent.port)
    with sock:
        sock.sendall(get("/slow"))
        received = b""
        for i in range(3):
            upstream.release.release()  # the upstream sends chunk i only now
            while f"chunk{i}".encode() not in received:
                received += sock.recv(65536)
            assert f"chunk{i + 1}".encode() not in received  # nothing was held back and batched
        assert b"transfer-encoding: chunked" in received.lower()


def test_upstream_connections_are_reused_and_a_closed_one_is_not(open_agent: RunningAgent,
                                                                   upstream: Upstream) -> None:
    for target in ("/a", "/b", "/c"):  # three client connections, one upstream connection
        responses, _ = exchange(open_agent.port, get(target), max_responses=1)
        assert [r[0] for r in responses] == [200]
    assert upstream.connections == 1
    for target in ("/bye", "/after-bye", "/bye", "/after-bye-2"):  # the upstream drops its connection
        responses, _ = exchange(open_agent.port, get(target), max_responses=1)
        assert [r[0] for r in responses] == [200], target
    assert [s.target for s in upstream.seen()] == ["/a", "/b", "/c", "/bye", "/after-bye", "/bye",
                                                   "/after-bye-2"]


def test_absolute_form_and_connect_are_refused(open_agent: RunningAgent, upstream: Upstream) -> None:
    for raw in (b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
                b"OPTIONS * HTTP/1.1\r\nHost: e\r\n\r\n"):
        responses, closed = exchange(open_agent.port, raw)
        assert [r[0] for r in responses] == [400] and closed
    assert upstream.seen() == []


# -- request smuggling: 400, connection closed, nothing forwarded

SMUGGLING = {
    "CL and TE": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: e\r\n\r\n",
    "TE and CL": b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                 b"0\r\n\r\n",
    "duplicate CL": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "conflicting CL": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "CL list": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 4, 4\r\n\r\nabcd",
    "CL sign": b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: +4\r\n\r\nabcd",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: e\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: e\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: e\nX: y\r\n\r\n",
    "TE not chunked": b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE twice": b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
    "TE space before colon": b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Host": b"GET / HTTP/1.1\r\nHost: e\r\nHost: f\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "NUL in a header": b"GET / HTTP/1.1\r\nHost: e\r\nX: a\x00b\r\n\r\n",
}
BAD_CHUNKS = {
    "non-hex size": b"zz\r\nabc\r\n0\r\n\r\n",
    "0x size": b"0x3\r\nabc\r\n0\r\n\r\n",
    "negative size": b"-3\r\nabc\r\n0\r\n\r\n",
    "huge size": b"f" * 40 + b"\r\nabc\r\n0\r\n\r\n",
    "data longer than size": b"3\r\nabcXX\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_heads_are_400_and_close(name: str, open_agent: RunningAgent, upstream: Upstream) -> None:
    responses, closed = exchange(open_agent.port, SMUGGLING[name])
    assert [r[0] for r in responses] == [400], name
    assert closed
    assert upstream.seen() == []


@pytest.mark.parametrize("name", sorted(BAD_CHUNKS))
def test_invalid_chunks_are_400_and_close(name: str, open_agent: RunningAgent, upstream: Upstream) -> None:
    raw = b"POST /echo HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n" + BAD_CHUNKS[name] \
        + get("/after")
    responses, closed = exchange(open_agent.port, raw)
    assert [r[0] for r in responses] == [400] and closed
    # The head was admitted (no policy), so the upstream may have seen it begin; never a completed
    # request, and never the pipelined one.
    assert all(s.target == "/echo" for s in upstream.seen())
    assert "/after" not in [s.target for s in upstream.seen()]


# -- authentication, per request

UNAUTHENTICATED = {
    "none": get("/secret"),
    "other token": get("/secret", f"Authorization: Bearer {OTHER_TOKEN}"),
    "basic": get("/secret", f"Authorization: Basic {TOKEN}"),
    "token alone": get("/secret", f"Authorization: {TOKEN}"),
    "tab": get("/secret", f"Authorization: Bearer\t{TOKEN}"),
    "prefix": get("/secret", f"Authorization: Bearer {TOKEN[:-1]}"),
    "proxy-authorization": get("/secret", f"Proxy-Authorization: Bearer {TOKEN}"),
    "HTTP/1.0": get("/secret", version="1.0"),
    "evidence traversal": get("/.well-known/blindbox/attestation/../secret"),
    "evidence encoded": get("/.well-known/blindbox/%61ttestation"),
    "evidence prefix": get("/.well-known/blindbox/attestationx"),
    "head": b"HEAD /secret HTTP/1.1\r\nHost: e\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(UNAUTHENTICATED))
def test_unauthenticated_requests_get_401_and_reach_nothing(name: str, locked_agent: RunningAgent,
                                                            upstream: Upstream) -> None:
    method = b"HEAD" if name == "head" else b"GET"
    responses, _ = exchange(locked_agent.port, UNAUTHENTICATED[name], method=method, max_responses=1)
    assert [r[0] for r in responses] == [401], name
    assert responses[0][1]["www-authenticate"] == "Bearer"
    assert upstream.seen() == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("space", [" ", "   "])
def test_a_listed_token_passes_and_is_replaced_by_the_principal(scheme: str, space: str,
                                                                locked_agent: RunningAgent,
                                                                upstream: Upstream) -> None:
    raw = get("/secret", f"authorization:   {scheme}{space}{TOKEN}  ", "X-BlindBox-Principal: forged",
              "X_BlindBox_Principal: forged")
    responses, _ = exchange(locked_agent.port, raw, max_responses=1)
    assert [r[0] for r in responses] == [200]
    (seen,) = upstream.seen()
    assert seen.header("authorization") == []
    assert seen.header("x-blindbox-principal") == [TOKEN_SHA256]
    assert seen.header("x_blindbox_principal") == []  # a WSGI upstream would read it as the same header


def test_http_1_0_is_checked_and_forwarded_with_a_host(locked_agent: RunningAgent,
                                                       upstream: Upstream) -> None:
    raw = f"GET /old HTTP/1.0\r\n{AUTH}\r\n\r\n".encode()
    responses, closed = exchange(locked_agent.port, raw, max_responses=1)
    assert [r[0] for r in responses] == [200] and closed  # HTTP/1.0: one request per connection
    (seen,) = upstream.seen()
    assert seen.header("host") == [f"127.0.0.1:{upstream.port}"]
    assert seen.header("x-blindbox-principal") == [TOKEN_SHA256]


def test_two_authorization_headers_are_400(locked_agent: RunningAgent, upstream: Upstream) -> None:
    other = f"Authorization: Bearer {OTHER_TOKEN}"
    for raw in (get("/secret", AUTH, other), get("/secret", other, AUTH), get("/secret", AUTH, AUTH)):
        responses, closed = exchange(locked_agent.port, raw)
        assert [r[0] for r in responses] == [400] and closed
    assert upstream.seen() == []


def test_pipelined_and_keep_alive_requests_are_each_checked(locked_agent: RunningAgent,
                                                            upstream: Upstream) -> None:
    raw = (get("/one", AUTH) + get("/two") + get("/three", AUTH)
           + get("/four", f"Authorization: Bearer {OTHER_TOKEN}") + get("/five", AUTH))
    responses, closed = exchange(locked_agent.port, raw, max_responses=5)
    assert [r[0] for r in responses] == [200, 401, 200, 401, 200]
    assert not closed
    assert [s.target for s in upstream.seen()] == ["/one", "/three", "/five"]
    assert all(s.header("x-blindbox-principal") == [TOKEN_SHA256] for s in upstream.seen())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_unauthenticated_body_is_dropped_never_forwarded(framing: str, locked_agent: RunningAgent,
                                                            upstream: Upstream) -> None:
    body = b"patient records"
    if framing == "chunked":
        raw = b"POST /secret HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n" \
              + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        raw = f"POST /secret HTTP/1.1\r\nHost: e\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    responses, closed = exchange(locked_agent.port, raw + get("/next", AUTH), method=b"POST", max_responses=2)
    # The body was read and dropped, so the connection goes on to the next (authenticated) request.
    assert [r[0] for r in responses] == [401, 200] and not closed
    assert [s.target for s in upstream.seen()] == ["/next"]


def test_a_large_unauthenticated_body_or_an_expect_ends_the_connection(upstream: Upstream) -> None:
    with running_agent(upstream.port, policy(), limits=Limits(discard_limit=64 * 1024)) as agent:
        big = 1024 * 1024
        sock = tls_client(agent.port)
        with sock:
            sock.sendall(f"POST /secret HTTP/1.1\r\nHost: e\r\nContent-Length: {big}\r\n\r\n".encode())
            sent = 0
            try:
                while sent < big:
                    sock.sendall(b"x" * 65536)
                    sent += 65536
            except OSError:
                pass  # the agent stopped reading past its discard limit and closed
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError:
                pass
        assert data == b"" or (data.startswith(b"HTTP/1.1 401 ") and b"connection: close" in data.lower())
        raw = b"POST /secret HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        responses, closed = exchange(agent.port, raw, method=b"POST")
        assert [r[0] for r in responses] == [401] and closed  # no 100 Continue: the body never comes
    assert upstream.seen() == []


def test_the_evidence_path_needs_no_credentials(locked_agent: RunningAgent, upstream: Upstream) -> None:
    responses, closed = exchange(locked_agent.port, get(f"/.well-known/blindbox/attestation?nonce={NONCE}")
                                 + get("/.well-known/blindbox/attestation") + get("/secret", AUTH),
                                 max_responses=3)
    assert [r[0] for r in responses] == [200, 200, 200] and not closed
    doc = json.loads(responses[0][2])
    assert doc["version"] == 1 and doc["policy"] is not None
    assert responses[0][1]["content-type"] == "application/json" and "content-length" in responses[0][1]
    assert [s.target for s in upstream.seen()] == ["/secret"]
    bad, _ = exchange(locked_agent.port, get("/.well-known/blindbox/attestation?nonce=ABC"))
    assert bad[0][0] == 400 and "nonce" in json.loads(bad[0][2])["error"]
    post, _ = exchange(locked_agent.port, b"POST /.well-known/blindbox/attestation HTTP/1.1\r\nHost: e\r\n"
                       b"Content-Length: 0\r\n\r\n", method=b"POST")
    assert post[0][0] == 405 and post[0][1]["allow"] == "GET"


def test_evidence_floods_get_503_with_retry_after_and_do_not_block_the_app(upstream: Upstream) -> None:
    backend = GatedBackend()
    with running_agent(upstream.port, max_waiting=0, backend=backend) as agent:
        first = tls_client(agent.port)
        first.sendall(get(f"/.well-known/blindbox/attestation?nonce={NONCE}"))
        assert backend.entered.wait(5)  # the secure processor is busy with the first request
        responses, closed = exchange(agent.port, get(f"/.well-known/blindbox/attestation?nonce={'11' * 32}"),
                                     max_responses=1)
        assert [r[0] for r in responses] == [503] and not closed
        assert responses[0][1]["retry-after"].isdigit()
        app, _ = exchange(agent.port, get("/app"), max_responses=1)  # application traffic still flows
        assert [r[0] for r in app] == [200]
        backend.gate.set()
        with first:
            data = b""
            while b"\r\n\r\n" not in data:
                data += first.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 ")


# -- upstream faults

def test_upstream_down_is_502_without_internals_then_recovers() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with running_agent(port) as agent:
        responses, closed = exchange(agent.port, get("/x"), max_responses=1)
        assert [r[0] for r in responses] == [502] and not closed
        text = responses[0][2].decode()
        assert str(port) not in text and "Errno" not in text and "refused" not in text.lower()
        upstream = Upstream(port=port)
        try:
            responses, _ = exchange(agent.port, get("/x"), max_responses=1)
            assert [r[0] for r in responses] == [200]
            assert [s.target for s in upstream.seen()] == ["/x"]
        finally:
            upstream.close()


def test_a_misbehaving_upstream_is_502_or_reframed(open_agent: RunningAgent, upstream: Upstream) -> None:
    responses, closed = exchange(open_agent.port, get("/garbage"), max_responses=1)
    assert [r[0] for r in responses] == [502] and not closed
    responses, _ = exchange(open_agent.port, get("/te-and-cl"), max_responses=1)
    assert [(r[0], r[2]) for r in responses] == [(200, b"hello")]  # by its chunks, not its length
    assert "content-length" not in responses[0][1]
    responses, closed = exchange(open_agent.port, get("/cut"), max_responses=1)
    assert responses == [] and closed  # cut short, never completed as if whole


def test_upstream_timeout_is_504_and_client_disconnects_reach_the_upstream(upstream: Upstream) -> None:
    with running_agent(upstream.port, limits=Limits(upstream_timeout=1.0)) as agent:
        responses, _ = exchange(agent.port, get("/hang"), max_responses=1)
        assert [r[0] for r in responses] == [504]
        assert "upstream" in json.loads(responses[0][2])["error"]
        assert upstream.disconnected.wait(5)  # the agent dropped its upstream request
    upstream.disconnected.clear()
    with running_agent(upstream.port) as agent:
        sock = tls_client(agent.port)
        sock.sendall(get("/hang"))
        time.sleep(0.5)
        sock.close()  # the client gives up: the upstream's connection must go too
        assert upstream.disconnected.wait(5)


def test_slowloris_heads_are_cut_off_and_do_not_starve_others(upstream: Upstream) -> None:
    with running_agent(upstream.port, limits=Limits(head_timeout=1.0)) as agent:
        slow = [tls_client(agent.port) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: e\r\n")  # never finishes its head
        start = time.monotonic()
        responses, _ = exchange(agent.port, get("/fast"), max_responses=1)
        assert [r[0] for r in responses] == [200] and time.monotonic() - start < 2
        time.sleep(1.5)
        for sock in slow:
            sock.settimeout(2)
            assert sock.recv(100) == b""  # closed by the head deadline
            sock.close()
    assert [s.target for s in upstream.seen()] == ["/fast"]


def test_one_address_cannot_take_every_connection_slot(upstream: Upstream) -> None:
    with running_agent(upstream.port, limits=Limits(head_timeout=5.0), max_per_client=4) as agent:
        held = [tls_client(agent.port, source="127.0.0.2") for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # slowloris: a head that never ends
        with pytest.raises((ssl.SSLError, ConnectionError)):  # a fifth from there: closed before TLS
            tls_client(agent.port, source="127.0.0.2").close()
        responses, _ = exchange(agent.port, get("/other-client"), max_responses=1)  # 127.0.0.1
        assert [r[0] for r in responses] == [200]
        for sock in held:
            sock.close()
    assert [s.target for s in upstream.seen()] == ["/other-client"]


def test_concurrent_clients_through_an_upstream_restart() -> None:
    """32 keep-alive clients for ~3 s; the upstream is stopped and restarted meanwhile.

    Every answer is a 200, or a 502 while the upstream is down; no request errors
    otherwise, and every client connection stays usable throughout.
    """
    upstream = Upstream()
    port = upstream.port
    down = threading.Event()
    statuses: list[tuple[int, bool]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 3.0

    def client(agent_port: int, n: int) -> None:
        try:
            sock = tls_client(agent_port)
            conn = h11.Connection(h11.CLIENT)
            with sock:
                while time.monotonic() < stop_at:
                    was_down = down.is_set()
                    request = h11.Request(method="GET", target=f"/c{n}", headers=[("host", "e")])
                    sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
                    status = 0
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(sock.recv(65536))
                        elif isinstance(event, h11.Response):
                            status = event.status_code
                        elif isinstance(event, h11.EndOfMessage):
                            break
                    with lock:
                        statuses.append((status, was_down or down.is_set()))
                    conn.start_next_cycle()
        except Exception as exc:
            with lock:
                errors.append(repr(exc))

    with running_agent(port) as agent:
        threads = [threading.Thread(target=client, args=(agent.port, n)) for n in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        down.set()
        upstream.close()
        time.sleep(0.5)
        upstream = Upstream(port=port)
        down.clear()
        for thread in threads:
            thread.join(20)
    upstream.close()
    assert errors == []
    assert len(statuses) > 100
    assert {status for status, _ in statuses} <= {200, 502}
    assert all(status == 200 for status, during in statuses if not during)
    assert any(status == 502 for status, _ in statuses)  # the outage was seen, and then recovered from
