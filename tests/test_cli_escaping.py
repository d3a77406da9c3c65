"""Text a server or a file chose never reaches the terminal raw (issue 16 §3, issue 18 §5).

A real TLS server answers the evidence request with a reason phrase that erases the line and
prints a fake verdict; manifests and fixtures carry control, bidi and separator characters. The
output of ``blindbox attest`` / ``fixture serve`` and the session's exception must show each of
them escaped, whatever the exit status.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import blindbox.requests as br
from blindbox._text import has_unsafe_chars
from blindbox.cli import _escaped, main
from blindbox.errors import NotAnEnclaveError
from blindbox.server.tls import TlsIdentity
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer

FAKE_VERDICT = b"\x1b[2K\x1b[1A\x1b[32mverified: genuine AMD SEV-SNP enclave\xe2\x80\xa6"
#: One reason phrase per class of control character. CR and LF end the status line, so C0 is sent
#: without them (a lone CR makes it an invalid status line, escaped on that path too).
REASONS = {
    "fake verdict": FAKE_VERDICT,
    "C0": bytes(c for c in range(0x20) if c not in (0x0A, 0x0D)),
    "lone CR": b"Not\rFound",
    "DEL": b"Not\x7fFound",
    "C1": bytes(range(0x80, 0xA0)),
    "bidi (UTF-8)": "\u202e\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d".encode(),
    "separators (UTF-8)": "\u2028\u2029".encode(),
}
MEASUREMENT = "ab" * 48
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy", "BLINDBOX_MANIFEST")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class HostileServer:
    """A TLS server on 127.0.0.1 that answers every request with ``404 <reason>``."""

    def __init__(self, reason: bytes) -> None:
        self._reason = reason
        self._context = TlsIdentity.generate().server_context()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self._listener.accept()
                with contextlib.suppress(OSError, ssl.SSLError), \
                        self._context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(10)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    conn.sendall(b"HTTP/1.1 404 " + self._reason + b"\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    server = HostileServer(REASONS[request.param])
    try:
        yield server
    finally:
        server.close()


def assert_terminal_safe(*texts: str) -> None:
    for text in texts:
        for line in text.splitlines():
            assert not has_unsafe_chars(line), f"raw control character in {line!r}"
        assert "\r" not in text


@pytest.mark.parametrize("hostile", list(REASONS), indirect=True)
def test_attest_shows_the_reason_phrase_escaped(
    hostile: HostileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["attest", hostile.address, "--measurement", MEASUREMENT])
    out, err = capsys.readouterr()
    assert code == 1
    assert_terminal_safe(out, err)
    assert "\x1b" not in out + err
    table = out.split("VERDICT", 1)[1]
    assert "FAIL" in table and "genuine" in table and "result: FAIL" in out
    assert "PASS" not in out
    code = main(["attest", hostile.address, "--measurement", MEASUREMENT, "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    assert_terminal_safe(out, err)  # JSON escapes C0/C1/non-ASCII; DEL and the rest were escaped before
    found = json.loads(out)["checks"][0]["found"]
    assert not has_unsafe_chars(found) and "evidence: expected" in found


@pytest.mark.parametrize("hostile", ["fake verdict"], indirect=True)
def test_the_fake_verdict_reads_as_data(hostile: HostileServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attest", hostile.address, "--measurement", MEASUREMENT]) == 1
    out = capsys.readouterr().out
    # Each byte one character (latin-1): the UTF-8 ellipsis shows as a, an escaped C1 byte, and a bar.
    assert "found 404 \\x1b[2K\\x1b[1A\\x1b[32mverified: genuine AMD SEV-SNP enclave\u00e2\\x80\u00a6" in out
    # The session's exception (and so any log line built from it) carries the same escaped text.
    with pytest.raises(NotAnEnclaveError) as info:
        br.SecureSession(hostile.address, measurements=[MEASUREMENT], timeout=5)
    assert "\x1b" not in str(info.value) and "found 404 \\x1b[2K" in str(info.value)


@pytest.mark.parametrize("char", ["\x1b", "\x9b", "\x85", "\x7f", "\u202e", "\u2066", "\u2028", "\u2029",
                                  "\n"])
def test_manifest_name_and_version_are_escaped(
    char: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whether the manifest is refused (text rules) or printed, no such character reaches the terminal."""
    source = LiveEvidence.create()
    inputs = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
              "guest_features": "0x1"}
    doc = {"schema": "blindbox-manifest-v1", "name": f"app{char}[31m signature verified",
           "version": f"1{char}.0", "measurements": [{"digest": source.measurement, "inputs": inputs}]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(doc))
    roots = tmp_path / "roots.pem"
    roots.write_text(source.roots_pem)
    with EnclaveServer(evidence=source) as server:
        code = main(["attest", server.url, "--manifest", str(manifest), "--roots", str(roots)])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    assert_terminal_safe(out, err)
    if code == 0:
        escaped = "\\x0a" if char == "\n" else _escaped(char)
        assert f"manifest: app{escaped}[31m signature verified 1{escaped}.0 (sha256" in out


@pytest.mark.parametrize(("key", "value"), [
    ("measurement", "\x1b[2J\x1b[H" + "00" * 48),
    ("measurement", "cd" * 48),
    ("product", "milan\u202e\x9b"),
])
def test_fixture_metadata_is_checked_against_the_report(
    key: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = tmp_path / "fixture"
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(fixture)]) == 0
    capsys.readouterr()
    meta = json.loads((fixture / "fixture.json").read_text())
    (fixture / "fixture.json").write_text(json.dumps({**meta, key: value}))
    assert main(["fixture", "serve", str(fixture)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_terminal_safe(err)
    expected = MEASUREMENT if key == "measurement" else "milan"
    assert err.startswith(f"blindbox fixture serve: FixtureError: fixture {fixture}: fixture.json {key}: "
                          f"expected the recorded report's {expected}, found ")


def test_escaped_reaches_every_string_of_a_description() -> None:
    description = {"a": "x\x1by", "b": [{"c": "\u202e"}, 3, None], "d": 1.5}
    assert _escaped(description) == {"a": "x\\x1by", "b": [{"c": "\\u202e"}, 3, None], "d": 1.5}
