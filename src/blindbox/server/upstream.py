"""Kept-alive connections to the upstream application, reused across client requests.

Security property: a connection goes back to the pool only after a complete,
cleanly framed exchange with nothing left over (the caller checks h11's
state), and is checked for an EOF or stray bytes before reuse, so one
client's response can never be read as another's.
"""

from __future__ import annotations

import select
import socket
import threading
import time


class UpstreamPool:
    """At most ``max_idle`` idle connections to ``address``, each kept ``idle_seconds`` at most."""

    def __init__(self, address: tuple[str, int], *, connect_timeout: float, max_idle: int = 64,
                 idle_seconds: float = 20.0) -> None:
        self.address = address
        self._connect_timeout = connect_timeout
        self._max_idle, self._idle_seconds = max_idle, idle_seconds
        self._idle: list[tuple[float, socket.socket]] = []
        self._lock = threading.Lock()

    def acquire(self) -> tuple[socket.socket, bool]:
        """A connection and whether it was reused; OSError (TimeoutError) when none can be made."""
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                since, sock = self._idle.pop()
            if now - since < self._idle_seconds and not _readable(sock):
                return sock, True
            sock.close()  # expired, closed by the upstream, or sent something unasked
        sock = socket.create_connection(self.address, timeout=self._connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def release(self, sock: socket.socket) -> None:
        """Return a connection whose last exchange completed cleanly."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append((time.monotonic(), sock))
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, sock in idle:
            sock.close()


def _readable(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
