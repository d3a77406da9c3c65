"""Bounded HTTP fetches with ``requests`` (KDS, manifests): bounded bodies, one deadline per fetch.

A ``timeout=`` given to ``requests`` bounds each socket wait, not the fetch: a peer that sends one
byte a second holds it for ever. Here a :class:`Deadline` bounds the whole fetch (connection, TLS
handshake, headers, every body chunk; a caller's retries share it too): before every read the
socket timeout is shrunk to what remains, and running out raises :class:`DeadlineExceeded`.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from blindbox._text import shown

#: The longest ``Content-Length`` value read as a number (a 20-digit length is already absurd).
_MAX_LENGTH_DIGITS = 20


class DeadlineExceeded(requests.exceptions.Timeout):
    """A fetch did not finish before its deadline (connection, headers and body together)."""


class Deadline:
    """One monotonic deadline for a whole fetch, retries included."""

    def __init__(self, seconds: float, what: str = "") -> None:
        self.seconds = seconds
        self.what = what
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self._end - time.monotonic()

    def expired(self) -> DeadlineExceeded:
        """The error to raise once the deadline has passed."""
        prefix = f"{self.what}: " if self.what else ""
        return DeadlineExceeded(f"{prefix}no complete answer within {self.seconds:g} s (deadline)")

    def timeout(self) -> float:
        """What remains, for the next blocking wait; :class:`DeadlineExceeded` when nothing does."""
        left = self.remaining()
        if left <= 0:
            raise self.expired()
        return left


# ------------------------------------------------------------------------- the socket side


_active = threading.local()


class _DeadlineSocket:
    """A connected socket whose every read first shrinks its timeout to what the deadline leaves."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        left = self._deadline.remaining()
        if left <= 0:
            raise TimeoutError(str(self._deadline.expired()))
        self._sock.settimeout(left)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(size, flags)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> io.BufferedReader:
        """A buffered reader over this wrapper, counted like ``socket.makefile`` (close waits for it)."""
        if mode != "rb":
            raise ValueError(f"makefile: expected mode 'rb', found {mode!r}")
        self._sock._io_refs += 1  # type: ignore[attr-defined]  # what socket.makefile does
        raw = socket.SocketIO(self, "rb")  # type: ignore[arg-type]
        return io.BufferedReader(raw, buffering or io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self) -> None:
        self._sock._decref_socketios()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineConnectionMixin:
    """Bounds the TLS handshake and every response read of a urllib3 connection by the active deadline."""

    sock: Any
    _raw_socket: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._raw_socket = sock
        return sock

    def _shutdown_raw(self) -> None:
        if self._raw_socket is not None:
            try:
                self._raw_socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def connect(self) -> None:
        deadline: Deadline | None = getattr(_active, "deadline", None)
        if deadline is None:
            super().connect()  # type: ignore[misc]
            return
        # The TLS handshake runs inside ssl: a watchdog shuts the raw socket down when time is up.
        watchdog = threading.Timer(max(deadline.remaining(), 0.0), self._shutdown_raw)
        watchdog.daemon = True
        watchdog.start()
        try:
            super().connect()  # type: ignore[misc]
        finally:
            watchdog.cancel()

    def getresponse(self) -> Any:
        deadline: Deadline | None = getattr(_active, "deadline", None)
        real = self.sock
        if deadline is None or not isinstance(real, socket.socket):
            return super().getresponse()  # type: ignore[misc]
        wrapper = _DeadlineSocket(real, deadline)
        self.sock = wrapper
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if self.sock is wrapper:  # http.client sets it to None when the server closes
                self.sock = real


class _HTTPConnection(_DeadlineConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose connections honour :func:`get`'s deadline at every socket read."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def new_session() -> requests.Session:
    """A ``requests.Session`` whose fetches through :func:`get` are bounded at every socket read."""
    made = requests.Session()
    adapter = _DeadlineAdapter()
    made.mount("https://", adapter)
    made.mount("http://", adapter)
    return made


@contextmanager
def _deadline_active(deadline: Deadline) -> Iterator[None]:
    previous = getattr(_active, "deadline", None)
    _active.deadline = deadline
    try:
        yield
    finally:
        _active.deadline = previous


# ------------------------------------------------------------------------- fetching


def get(url: str, *, deadline: Deadline, session: requests.Session | None = None,
        **kwargs: Any) -> requests.Response:
    """``GET url`` streamed, without following redirects, under ``deadline`` up to the headers.

    Read the body with :func:`read_bounded` under the same deadline. Without ``session`` (like
    ``requests.get``, a fresh one) or with one from :func:`new_session`, every socket read, the TLS
    handshake included, is bounded by the deadline; another session's adapters bound each wait by
    what remained when the request began. Raises :class:`DeadlineExceeded` (a
    ``requests.Timeout``) once the deadline has passed.
    """
    left = deadline.timeout()
    try:
        with _deadline_active(deadline):
            if session is not None:
                return session.get(url, timeout=(left, left), stream=True, allow_redirects=False, **kwargs)
            with new_session() as fresh:
                return fresh.get(url, timeout=(left, left), stream=True, allow_redirects=False, **kwargs)
    except requests.RequestException:
        if deadline.remaining() <= 0:
            raise deadline.expired() from None
        raise


def declared_length(response: requests.Response) -> int | None:
    """The ``Content-Length`` as a number, None when absent.

    The value converted is the value checked: 1 to 20 ASCII digits, optionally surrounded by
    spaces or tabs; anything else (a control character, a sign, thousands of digits) raises
    ``requests.exceptions.InvalidHeader``, so ``int()`` never meets an attacker-sized number.
    """
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    digits = value.strip(" \t")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_LENGTH_DIGITS):
        raise requests.exceptions.InvalidHeader(
            f"Content-Length: expected 1 to {_MAX_LENGTH_DIGITS} ASCII digits, found {shown(value, 40)!r}"
        )
    return int(digits)


def read_bounded(response: requests.Response, limit: int, chunk_size: int = 16 * 1024, *,
                 deadline: Deadline | None = None) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (never read past it).

    ``response`` must come from ``stream=True``, so nothing is read before this call. A malformed
    ``Content-Length`` raises ``requests.exceptions.InvalidHeader``. With a ``deadline``, it is
    checked between chunks (and, for a response from :func:`get`, before every socket read);
    running out raises :class:`DeadlineExceeded`.
    """
    declared = declared_length(response)
    if declared is not None and declared > limit:
        return None
    body = bytearray()
    try:
        for chunk in response.iter_content(chunk_size=chunk_size):
            body += chunk
            if len(body) > limit:
                return None
            if deadline is not None:
                deadline.timeout()
    except requests.RequestException:
        if deadline is not None and deadline.remaining() <= 0:
            raise deadline.expired() from None
        raise
    return bytes(body)
