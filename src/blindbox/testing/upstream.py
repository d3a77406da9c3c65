"""A WSGI app on a loopback HTTP server, as the upstream the agent proxies to.

The test kit runs its fixtures on the enclave agent (:mod:`blindbox.server`),
which forwards application requests over HTTP to an upstream as it does in
production; this module gives an in-process WSGI app that upstream:
:mod:`wsgiref` (standard library, one thread per request) bound to
127.0.0.1 on an ephemeral port. Each response closes its connection
(HTTP/1.0 framing), which the agent's upstream pool handles.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

log = logging.getLogger("blindbox.testing")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fixture upstream: " + format, *args)


class _Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    block_on_close = False


class WsgiUpstream:
    """``app`` served on ``127.0.0.1:<ephemeral>``; :attr:`address` is what the agent forwards to."""

    def __init__(self, app: WsgiApp) -> None:
        self._server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, app, server_class=_Server, handler_class=_Handler)
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
