"""``blindbox serve`` as a process: end to end with SecureSession, mTLS, memory, the key, signals, errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import blindbox.requests as br
from blindbox.attest.owner_policy import OwnerPolicy, PolicyRequirements
from blindbox.errors import PolicyMismatchError
from blindbox.server.tls import TlsIdentity
from blindbox.testing.evidence import DEMO_MEASUREMENT
from tests.agent_support import TOKEN, TOKEN_SHA256, Upstream, policy, serve_process, tls_client

TIMEOUT = 20


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def _write_policy(path: Path, owner: OwnerPolicy) -> Path:
    # Written as a person would (indented): the agent serves the canonical bytes.
    path.write_text(json.dumps(owner.to_dict(), indent=2))
    return path


def test_secure_session_end_to_end_with_the_owner_policy(upstream: Upstream, tmp_path: Path) -> None:
    owner = policy()
    proc, url = serve_process(upstream.url, tmp_path, "--owner-policy", str(_write_policy(tmp_path / "p.json",
                                                                                        owner)))
    try:
        roots = (tmp_path / "roots.pem").read_text()
        wanted = PolicyRequirements(exact_digest=owner.digest(), authentication_required=True)
        with br.SecureSession(url, measurements=[DEMO_MEASUREMENT], roots=roots, expected_policy=wanted) as s:
            response = s.post("/records", data=b"patient 7", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=TIMEOUT)
            assert response.status_code == 200
            assert response.json()["body"] == "patient 7"
            assert s.get("/records", timeout=TIMEOUT).status_code == 401
        seen = upstream.seen()
        assert [(r.method, r.target) for r in seen] == [("POST", "/records")]
        assert seen[0].header("x-blindbox-principal") == [TOKEN_SHA256]
        assert seen[0].header("authorization") == []
        # A client expecting another policy refuses before sending anything.
        other = PolicyRequirements(exact_digest="0" * 64)
        with pytest.raises(PolicyMismatchError):
            br.get(url + "/records", measurements=[DEMO_MEASUREMENT], roots=roots, expected_policy=other,
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
        assert len(upstream.seen()) == 1
    finally:
        assert _stop(proc) == 0


def test_mtls_with_a_blindbox_client_certificate(upstream: Upstream, tmp_path: Path) -> None:
    alice = TlsIdentity.generate(["alice"])
    spki = hashlib.sha256(alice.spki_der).hexdigest()
    cert = (str(tmp_path / "alice.pem"), str(tmp_path / "alice.key"))
    alice.save(*cert)
    owner = policy(tokens=(), spkis=(spki,))
    proc, url = serve_process(upstream.url, tmp_path, "--owner-policy", str(_write_policy(tmp_path / "p.json",
                                                                                        owner)))
    try:
        roots = (tmp_path / "roots.pem").read_text()
        kwargs = {"measurements": [DEMO_MEASUREMENT], "roots": roots,
                  "expected_policy": PolicyRequirements(exact_digest=owner.digest())}
        response = br.post(url + "/who", data=b"hello", cert=cert, timeout=TIMEOUT, **kwargs)
        assert response.status_code == 200
        with br.SecureSession(url, **kwargs) as session:
            session.cert = cert
            assert session.get("/again", timeout=TIMEOUT).status_code == 200
        assert [s.target for s in upstream.seen()] == ["/who", "/again"]
        assert all(s.header("x-blindbox-principal") == [spki] for s in upstream.seen())
        # Without a certificate: refused (the TLS alert certificate_required), nothing forwarded.
        with pytest.raises(requests.exceptions.SSLError):
            br.get(url + "/nocert", timeout=TIMEOUT, **kwargs)
        # Another key with the same name: refused too.
        mallory = TlsIdentity.generate(["alice"])
        other = (str(tmp_path / "m.pem"), str(tmp_path / "m.key"))
        mallory.save(*other)
        response = br.get(url + "/mallory", cert=other, timeout=TIMEOUT, **kwargs)
        assert response.status_code == 401
        assert [s.target for s in upstream.seen()] == ["/who", "/again"]
    finally:
        assert _stop(proc) == 0


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_large_upload_streams_in_bounded_memory(upstream: Upstream, tmp_path: Path) -> None:
    proc, url = serve_process(upstream.url, tmp_path)
    size = 256 * 1024 * 1024
    try:
        port = int(url.rsplit(":", 1)[1])
        warm = tls_client(port)  # warm up one request so start-up allocations are counted before
        warm.sendall(b"GET /warm HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        while warm.recv(65536):
            pass
        before = _rss_peak_kib(proc.pid)
        sock = tls_client(port)
        with sock:
            sock.sendall(f"POST /size HTTP/1.1\r\nHost: e\r\nContent-Length: {size}\r\n\r\n".encode())
            block = b"x" * (1024 * 1024)
            for _ in range(size // len(block)):
                sock.sendall(block)
            data = b""
            while b"}" not in data:
                data += sock.recv(65536)
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["body_bytes"] == size
        growth_mib = (_rss_peak_kib(proc.pid) - before) / 1024
        assert growth_mib < 32, f"the agent's peak RSS grew by {growth_mib:.0f} MiB for a 256 MiB upload"
    finally:
        assert _stop(proc) == 0


def test_the_tls_key_is_never_on_disk(upstream: Upstream, tmp_path: Path) -> None:
    home, tmp, cwd = (tmp_path / name for name in ("home", "tmp", "cwd"))
    for path in (home, tmp, cwd):
        path.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")}
    proc, url = serve_process(upstream.url, out, env=env, cwd=cwd)
    try:
        roots = (out / "roots.pem").read_text()
        assert br.get(url + "/x", measurements=[DEMO_MEASUREMENT], roots=roots,
                      timeout=TIMEOUT).status_code == 200
        for path in (home, tmp, cwd):
            assert list(path.iterdir()) == [], path
        fd_dir = Path(f"/proc/{proc.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            assert "blindbox-tls" not in target  # the memory file was closed after loading
            if target.startswith("/") and Path(target).is_file():
                content = Path(target).read_bytes()[: 1 << 20]
                assert b"PRIVATE KEY" not in content, target
    finally:
        assert _stop(proc) == 0


def test_sigterm_finishes_in_flight_requests_and_exits_0(upstream: Upstream, tmp_path: Path) -> None:
    proc, url = serve_process(upstream.url, tmp_path, "--grace", "15")
    port = int(url.rsplit(":", 1)[1])
    sock = tls_client(port)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: e\r\n\r\n")
    received = bytearray()

    def read() -> None:
        while chunk := sock.recv(65536):
            received.extend(chunk)
            if b"0\r\n\r\n" in received:
                return

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    for _ in range(3):
        upstream.release.release()
    reader.join(10)
    sock.close()
    assert proc.wait(timeout=20) == 0
    assert b"chunk2" in received


@pytest.mark.parametrize(("args", "status", "text"), [
    (["--upstream", "https://127.0.0.1:1"], 2, "--upstream: expected http://HOST:PORT"),
    (["--upstream", "http://127.0.0.1:1/app"], 2, "--upstream"),
    (["--upstream", "http://127.0.0.1:1", "--listen", "nowhere"], 2, "--listen"),
    (["--upstream", "http://127.0.0.1:1", "--measurement", "00"], 2, "only with --backend simulator"),
    (["--upstream", "http://127.0.0.1:1", "--backend", "simulator"], 2, "needs --measurement"),
    (["--upstream", "http://127.0.0.1:1", "--owner-policy", "/nonexistent/p.json"], 2, "cannot read"),
    (["--upstream", "http://127.0.0.1:1", "--backend", "configfs-tsm"], 4, "configfs"),
])
def test_command_errors_are_typed_exit_statuses(args: list[str], status: int, text: str) -> None:
    result = subprocess.run([sys.executable, "-m", "blindbox", "serve", "--listen", "127.0.0.1:0", *args]
                            if "--listen" not in args else [sys.executable, "-m", "blindbox", "serve", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == status, result.stderr
    assert text in result.stderr and "Traceback" not in result.stderr


def test_a_bad_policy_file_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"version": 1, "authentication": {"required": true}}')
    result = subprocess.run([sys.executable, "-m", "blindbox", "serve", "--upstream", "http://127.0.0.1:1",
                             "--listen", "127.0.0.1:0", "--owner-policy", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ConfigurationError" in result.stderr
