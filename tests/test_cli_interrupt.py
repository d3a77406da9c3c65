"""Ctrl-C ends `blindbox verify | attest | demo | fixture serve` with status 130 and one line.

Each command is started for real (``python -m blindbox``) and interrupted with SIGINT while it is
blocked: ``fixture serve`` serving, ``attest`` in a TLS handshake with a server that never answers,
``verify`` fetching its VCEK from "AMD KDS" through a proxy that never answers, and ``demo``
attesting its enclave through that same proxy. Nothing leaves the machine: the proxy is ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_cli import GENOA

ROOT = Path(__file__).resolve().parents[1]
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "BLINDBOX_MANIFEST")


class Silent:
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._held.append(conn)
                self.accepted.set()

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    try:
        yield server
    finally:
        server.close()


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (e.g. from a background shell job), and Python then installs
    # no KeyboardInterrupt handler: give it the disposition a terminal's Ctrl-C would meet.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    return subprocess.Popen([sys.executable, "-m", "blindbox", *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**base, **(env or {})},
                            preexec_fn=_default_sigint)


def interrupt(proc: subprocess.Popen[str], command: str, *, only_line: bool = True) -> str:
    """SIGINT ``proc``; assert status 130 and the one line; return its standard output.

    ``only_line=False`` allows progress lines the command wrote to stderr before it was interrupted.
    """
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    if only_line:
        assert err == f"blindbox {command}: interrupted\n", err
    else:
        assert err.splitlines()[-1] == f"blindbox {command}: interrupted" and err.endswith("\n"), err
        assert err.count("interrupted") == 1, err
    assert proc.returncode == 130
    return out


def wait_for(event: threading.Event, proc: subprocess.Popen[str]) -> None:
    if not event.wait(timeout=60):
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the command never blocked where expected:\n{out}\n{err}")


def test_fixture_serve(tmp_path: Path) -> None:
    fixture = tmp_path / "fixture"
    created = subprocess.run([sys.executable, "-m", "blindbox", "fixture", "create", "--measurement",
                              "ab" * 48, "-o", str(fixture)], cwd=ROOT, capture_output=True, timeout=60)
    assert created.returncode == 0, created.stderr
    proc = start("fixture", "serve", str(fixture))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert re.search(r"at https://127\.0\.0\.1:\d+ .*Ctrl-C to stop", line), line
    interrupt(proc, "fixture serve")


def test_attest_in_a_handshake_that_never_completes(silent: Silent) -> None:
    proc = start("attest", f"127.0.0.1:{silent.port}", "--measurement", "ab" * 48, "--timeout", "120")
    wait_for(silent.accepted, proc)
    assert interrupt(proc, "attest") == ""


def test_verify_fetching_from_a_kds_that_never_answers(silent: Silent, tmp_path: Path) -> None:
    env = {"HTTPS_PROXY": f"http://127.0.0.1:{silent.port}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = start("verify", str(GENOA.report_path), "--at", GENOA.at.isoformat(), env=env)
    wait_for(silent.accepted, proc)  # the VCEK request reached the (silent) proxy to AMD KDS
    assert interrupt(proc, "verify", only_line=False) == ""  # verify may say what it is fetching


def test_demo_attesting_through_a_proxy_that_never_answers(silent: Silent) -> None:
    proc = start("demo", env={"HTTPS_PROXY": f"http://127.0.0.1:{silent.port}"})
    wait_for(silent.accepted, proc)
    out = interrupt(proc, "demo")
    assert "SecureSession(addr" in out and "verified in" not in out  # stopped while attesting
