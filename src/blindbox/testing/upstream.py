"""A WSGI app on a loopback HTTP server, as the upstream the agent proxies to.

The test kit runs its fixtures on the enclave agent (:mod:`blindbox.server`),
which forwards application requests over HTTP to an upstream as it does in
production; this module gives an in-process WSGI app that upstream:
:mod:`wsgiref` (standard library, one thread per request) bound to
127.0.0.1 on an ephemeral port. Each response closes its connection
(HTTP/1.0 framing), which the agent's upstream pool handles.
"""

from __future__ import annotations

import io
import logging
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

log = logging.getLogger("blindbox.testing")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: The largest request body the test kit's upstream takes (a chunked one is read whole).
MAX_BODY = 64 * 1024 * 1024


def _buffered(app: WsgiApp) -> WsgiApp:
    """``app`` given the whole request body, read before it runs (chunked bodies decoded).

    So an app that answers without reading the body (e.g. 413) does not close a
    connection the agent is still sending on; the agent re-frames every chunked
    body with h11, so the stream is well formed.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream, body = environ["wsgi.input"], bytearray()
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            while True:
                size = int(stream.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if len(body) + size > MAX_BODY:
                    raise ValueError("request body too large")
                body += stream.read(size)
                stream.readline(1024)
            del environ["HTTP_TRANSFER_ENCODING"]
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > MAX_BODY:
                raise ValueError("request body too large")
            body += stream.read(length) if length else b""
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(bytes(body)), str(len(body))
        return app(environ, start_response)

    return wrapped


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fixture upstream: " + format, *args)


class _Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # (socketserver's 5 drops the agent's connections under load)


class WsgiUpstream:
    """``app`` served on ``127.0.0.1:<ephemeral>``; :attr:`address` is what the agent forwards to."""

    def __init__(self, app: WsgiApp) -> None:
        self._server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, _buffered(app), server_class=_Server, handler_class=_Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> WsgiUpstream:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"blindbox-upstream-{self.address[1]}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WsgiUpstream:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
