"""The transcription example behind ``blindbox serve``: an unmodified WSGI app becomes an attested enclave."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from types import ModuleType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import blindbox.requests as br
from blindbox.attest.owner_policy import OwnerPolicy, PolicyRequirements
from blindbox.testing.evidence import DEMO_MEASUREMENT
from blindbox.testing.transcribe_demo import EXAMPLE_DIR, load_example
from tests.agent_support import serve_process

TOKEN = "transcription-customer-token"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    try:
        return load_example("app")
    except ImportError as exc:
        pytest.skip(f"the transcription example needs the examples extra "
                    f"(pip install -e '.[examples]'): {exc}")


@pytest.fixture
def app_url(app_module: ModuleType) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app_module.make_app(grammar="demo"),
                         server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_transcription_app_behind_the_agent(app_url: str, tmp_path: Path) -> None:
    owner = OwnerPolicy(authentication_required=True,
                        bearer_token_sha256=(hashlib.sha256(TOKEN.encode()).hexdigest(),))
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(owner.to_dict()))
    proc, url = serve_process(app_url, tmp_path, "--owner-policy", str(policy_file))
    try:
        client = load_example("transcribe")
        roots = (tmp_path / "roots.pem").read_text()
        wanted = PolicyRequirements(exact_digest=owner.digest(), authentication_required=True)
        with br.SecureSession(url, measurements=[DEMO_MEASUREMENT], roots=roots,
                              expected_policy=wanted) as session:
            assert client.transcribe(session, EXAMPLE_DIR / "hello.wav", progress=None).status_code == 401
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            response = client.transcribe(session, EXAMPLE_DIR / "hello.wav", progress=None)
            assert response.status_code == 200, response.text
            text = response.json()["text"]
        expected = (EXAMPLE_DIR / "hello.txt").read_text().replace(".", "").split()
        recognised = set(text.split())
        assert sum(word in recognised for word in expected) >= len(expected) * 0.6, text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
