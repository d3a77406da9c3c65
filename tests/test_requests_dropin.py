"""Drop-in: the same calls give the same responses through SecureSession as through requests.Session.

Both sessions talk to the same simulated enclave and WSGI app; the plain one
uses ``verify=False`` (it cannot attest), the secure one attests. Every
scenario runs on both and the observable results are compared.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

import blindbox.requests as br
from blindbox.testing.server import EnclaveServer

from .requests_support import enclave, session_kwargs

STREAM_SIZE = 300_000


def _multipart(environ: dict[str, Any], body: bytes) -> list[list[str]]:
    head = f"Content-Type: {environ.get('CONTENT_TYPE', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        payload = part.get_payload(decode=True) or b""
        parts.append([part.get_param("name", header="content-disposition") or "",
                      part.get_filename() or "", part.get_content_type(),
                      base64.b64encode(payload).decode()])
    return parts


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ["PATH_INFO"]
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if path.startswith("/status/"):
        start_response(f"{path.rsplit('/', 1)[1]} Whatever", [("Content-Type", "text/plain")])
        return [b"status"]
    if path == "/redirect":
        code = query.get("code", "302")
        start_response(f"{code} Moved", [("Location", query.get("to", "/echo?redirected=1"))])
        return [b""]
    if path == "/set-cookie":
        start_response("200 OK", [("Set-Cookie", "flavour=oat; Path=/"), ("Set-Cookie", "size=large; Path=/"),
                                  ("Content-Type", "text/plain")])
        return [b"cookies set"]
    if path == "/stream":
        data = hashlib.sha256(b"seed").digest() * (STREAM_SIZE // 32)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]
    if path == "/slow":
        time.sleep(float(query.get("s", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow"]
    if path == "/text":
        start_response("200 OK", [("Content-Type", "text/plain; charset=iso-8859-1")])
        return ["caf\u00e9".encode("latin-1")]
    doc = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ.get("QUERY_STRING", ""),
        "headers": {k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")},
        "content_type": environ.get("CONTENT_TYPE", ""),
        "body": base64.b64encode(body).decode(),
    }
    if doc["content_type"].startswith("multipart/form-data"):
        doc["parts"] = _multipart(environ, body)
        doc["content_type"] = "multipart/form-data"
        doc["body"] = ""
    out = json.dumps(doc, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Echo", "1")])
    return [out]


@pytest.fixture(scope="module")
def server() -> Iterator[EnclaveServer]:
    with enclave(app) as running:
        yield running


def _plain(server: EnclaveServer) -> requests.Session:
    session = requests.Session()
    session.verify = False
    session.trust_env = False
    return session


def _secure(server: EnclaveServer) -> br.SecureSession:
    session = br.SecureSession(server.address, **session_kwargs(server))
    session.trust_env = False
    return session


def _observe(response: requests.Response) -> dict[str, Any]:
    """Everything a script could look at (a multipart boundary is random, so it is left out)."""
    request_headers = dict(response.request.headers)
    if request_headers.get("Content-Type", "").startswith("multipart/form-data; boundary="):
        request_headers["Content-Type"] = "multipart/form-data; boundary=<random>"
    return {
        "status": response.status_code,
        "reason": response.reason,
        "ok": response.ok,
        "url": response.url,
        "content": response.content,
        "text": response.text,
        "encoding": response.encoding,
        "headers": {k: v for k, v in response.headers.items() if k.lower() not in ("date", "server")},
        "history": [(r.status_code, r.url) for r in response.history],
        "cookies": sorted(response.cookies.items()),
        "request_headers": request_headers,
        "request_url": response.request.url,
        "request_method": response.request.method,
    }


Scenario = Callable[[requests.Session, str], Any]


def _files() -> dict[str, Any]:
    return {"report": ("report.csv", io.BytesIO(b"a,b\n1,2\n"), "text/csv"), "note": (None, "hello")}


SCENARIOS: dict[str, Scenario] = {
    "get": lambda s, u: _observe(s.get(u + "/echo")),
    "params": lambda s, u: _observe(s.get(u + "/echo", params={"q": "a b", "l": ["1", "2"], "n": None})),
    "json": lambda s, u: _observe(s.post(u + "/echo", json={"k": [1, 2, {"n": None}], "u": "\u00e9"})),
    "form-data": lambda s, u: _observe(s.post(u + "/echo", data={"a": "1", "b": ["x", "y"]})),
    "raw-data": lambda s, u: _observe(s.put(u + "/echo", data=b"\x00\x01binary\xff")),
    "files": lambda s, u: _observe(s.post(u + "/echo", files=_files(), data={"field": "v"})),
    "chunked": lambda s, u: _observe(s.post(u + "/echo", data=iter([b"chunk-1;", b"chunk-2;", b"end"]))),
    "file-object": lambda s, u: _observe(s.post(u + "/echo", data=io.BytesIO(b"from a file object"))),
    "headers": lambda s, u: _observe(s.get(u + "/echo", headers={"X-Custom": "yes", "Accept": "text/x"})),
    "auth": lambda s, u: _observe(s.get(u + "/echo", auth=("user", "p\u00e4ss"))),
    "auth-object": lambda s, u: _observe(s.get(u + "/echo", auth=br.auth.HTTPBasicAuth("u", "p"))),
    "methods": lambda s, u: [_observe(getattr(s, m)(u + "/echo")) for m in ("delete", "options", "patch")],
    "head": lambda s, u: _observe(s.head(u + "/echo")),
    "status-404": lambda s, u: _observe(s.get(u + "/status/404")),
    "raise-for-status": lambda s, u: _raises(lambda: s.get(u + "/status/500").raise_for_status()),
    "text-encoding": lambda s, u: _observe(s.get(u + "/text")),
    "redirect-302-post": lambda s, u: _observe(s.post(u + "/redirect", data=b"dropped")),
    "redirect-307-post": lambda s, u: _observe(s.post(u + "/redirect?code=307&to=/echo", data=b"kept")),
    "redirect-absolute": lambda s, u: _observe(s.get(u + "/redirect", params={"to": u + "/echo?abs=1"})),
    "no-redirect": lambda s, u: _observe(s.get(u + "/redirect", allow_redirects=False)),
    "cookies": lambda s, u: _cookies(s, u),
    "request-cookies": lambda s, u: _observe(s.get(u + "/echo", cookies={"c1": "v1"})),
    "hooks": lambda s, u: _hooks(s, u),
    "stream": lambda s, u: _stream(s, u),
    "stream-raw": lambda s, u: _stream_raw(s, u),
    "read-timeout": lambda s, u: _raises(lambda: s.get(u + "/slow?s=1", timeout=(5, 0.2))),
    "timeout-ok": lambda s, u: _observe(s.get(u + "/slow?s=0.05", timeout=5)),
    "prepared": lambda s, u: _prepared(s, u),
    "session-headers": lambda s, u: _session_headers(s, u),
    "session-params": lambda s, u: _session_params(s, u),
    "json-decode": lambda s, u: (s.get(u + "/echo").json()["method"],
                                 _raises(lambda: s.get(u + "/text").json())),
}


def _raises(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "no exception"


def _cookies(s: requests.Session, u: str) -> Any:
    first = _observe(s.get(u + "/set-cookie"))
    second = _observe(s.get(u + "/echo"))
    return first, second, sorted(s.cookies.items())


def _hooks(s: requests.Session, u: str) -> Any:
    seen: list[tuple[int, str]] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        seen.append((response.status_code, response.url))
        response.headers["X-Hooked"] = "yes"
        return response

    s.hooks["response"].append(hook)
    try:
        result = _observe(s.get(u + "/redirect", hooks={"response": [hook]}))
    finally:
        s.hooks["response"].remove(hook)
    return result, seen


def _stream(s: requests.Session, u: str) -> Any:
    with s.get(u + "/stream", stream=True) as response:
        sizes = []
        digest = hashlib.sha256()
        for chunk in response.iter_content(chunk_size=10_000):
            sizes.append(len(chunk))
            digest.update(chunk)
        return response.status_code, sum(sizes), max(sizes) <= 10_000, digest.hexdigest()


def _stream_raw(s: requests.Session, u: str) -> Any:
    response = s.get(u + "/stream", stream=True)
    head = response.raw.read(100)
    lines = list(s.get(u + "/echo", stream=True).iter_lines())
    rest = response.raw.read()
    response.close()
    return head, len(rest), lines


def _prepared(s: requests.Session, u: str) -> Any:
    request = requests.Request("POST", u + "/echo", data={"x": "1"}, headers={"X-P": "1"},
                               params={"p": "q"})
    prepared = s.prepare_request(request)
    prepared.headers["X-Added"] = "after-prepare"
    response = s.send(prepared, timeout=5)
    bare = requests.Request("GET", u + "/echo").prepare()
    return _observe(response), _observe(s.send(bare))


def _session_headers(s: requests.Session, u: str) -> Any:
    s.headers["X-Session"] = "set"
    try:
        return _observe(s.get(u + "/echo"))
    finally:
        del s.headers["X-Session"]


def _session_params(s: requests.Session, u: str) -> Any:
    s.params = {"sp": "1"}
    try:
        return _observe(s.get(u + "/echo"))
    finally:
        s.params = {}


@pytest.fixture(scope="module")
def sessions(server: EnclaveServer) -> Iterator[tuple[requests.Session, br.SecureSession]]:
    plain, secure = _plain(server), _secure(server)
    yield plain, secure
    plain.close()
    secure.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_result_as_requests(name: str, server: EnclaveServer,
                                 sessions: tuple[requests.Session, br.SecureSession]) -> None:
    plain, secure = sessions
    expected = SCENARIOS[name](plain, server.url)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureRequestWarning)
        got = SCENARIOS[name](secure, server.url)
    assert got == expected
    assert len(secure.attestations) == 1


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_paths_are_relative_to_the_address(server: EnclaveServer,
                                           sessions: tuple[requests.Session, br.SecureSession]) -> None:
    plain, secure = sessions
    expected = _observe(plain.post(server.url + "/echo", params={"a": "1"}, json={"j": 1}))
    assert _observe(secure.post("/echo", params={"a": "1"}, json={"j": 1})) == expected
    assert _observe(secure.post("echo", params={"a": "1"}, json={"j": 1})) == expected
    prepared = secure.prepare_request(requests.Request("GET", "/echo"))
    assert prepared.url == server.url + "/echo"
    assert secure.send(prepared).json()["path"] == "/echo"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_module_level_functions_match_requests(server: EnclaveServer) -> None:
    kwargs = session_kwargs(server)
    for name in ("get", "post", "put", "patch", "delete", "options", "head"):
        plain = getattr(requests, name)(server.url + "/redirect", verify=False)
        secure = getattr(br, name)(server.url + "/redirect", **kwargs)
        assert _observe(secure) == _observe(plain), name
    plain = requests.request("POST", server.url + "/echo", json={"a": 1}, verify=False)
    assert _observe(br.request("POST", server.url + "/echo", json={"a": 1}, **kwargs)) == _observe(plain)


def test_context_manager_closes_the_pools(server: EnclaveServer) -> None:
    with br.SecureSession(server.address, **session_kwargs(server)) as session:
        assert session.get("/echo").status_code == 200
        adapter = session.get_adapter(session.base_url)
        assert len(adapter.poolmanager.pools) == 1  # type: ignore[attr-defined]
    assert len(adapter.poolmanager.pools) == 0  # type: ignore[attr-defined]
