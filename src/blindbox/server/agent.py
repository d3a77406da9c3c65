"""The enclave agent's listener: TLS on one port, one thread per connection, a bounded number of them.

Concurrency model: blocking sockets, a thread per connection, at most
``max_connections`` at once and ``max_per_client`` from one client address (a
connection past a bound is closed at once rather than queued, so waiting
clients do not pile up unseen, and one address cannot take every slot). CPython's
``ssl`` and ``socket`` release the GIL for every read, write and handshake, so
the threads overlap on I/O and crypto; blocking code keeps TLS 1.3
post-handshake authentication (:mod:`blindbox.server.client_certificate`)
simple and exact, which ``asyncio``'s TLS transport does not expose. Every
wait has a deadline (:class:`blindbox.server.connection.Limits`): a
slowloris client holds its thread only until its head deadline.

Security property: the TLS key exists only in this process's memory
(:meth:`blindbox.server.tls.TlsIdentity.server_context`); stopping the agent
stops accepting at once and gives in-flight requests ``grace`` seconds.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from blindbox.server.client_certificate import accept_any_client_certificate
from blindbox.server.connection import ClientConnection, Site
from blindbox.server.tls import TlsIdentity


class Agent:
    """A bound, not yet serving, agent. :meth:`serve_forever` runs it; :meth:`stop` ends it."""

    def __init__(self, identity: TlsIdentity, site: Site, *, host: str, port: int,
                 max_connections: int = 512, max_per_client: int = 64, backlog: int = 1024) -> None:
        self.site = site
        self.context = identity.server_context()
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if site.auth.wants_certificate:
            accept_any_client_certificate(self.context)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=backlog,
                                              reuse_port=False)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop` is called."""
        self._listener.settimeout(0.25)
        try:
            while not self._stopping.is_set():
                try:
                    sock, peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    time.sleep(0.05)  # e.g. EMFILE: let connections finish
                    continue
                client_ip = str(peer[0])
                if not self._admit(client_ip):
                    sock.close()
                    continue
                self._start(sock, client_ip)
        finally:
            self._listener.close()
            self._stopped.set()

    def _admit(self, client_ip: str) -> bool:
        """Take a connection slot, globally and for this client address, or refuse."""
        with self._lock:
            if self._per_client.get(client_ip, 0) >= self._max_per_client:
                return False
            if not self._slots.acquire(blocking=False):
                return False
            self._per_client[client_ip] = self._per_client.get(client_ip, 0) + 1
            return True

    def _release(self, client_ip: str) -> None:
        with self._lock:
            left = self._per_client[client_ip] - 1
            if left:
                self._per_client[client_ip] = left
            else:
                del self._per_client[client_ip]
            self._slots.release()

    def _start(self, sock: socket.socket, client_ip: str) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            sock.close()
            self._release(client_ip)
            return
        thread = threading.Thread(target=self._run, args=(tls, client_ip), daemon=True,
                                  name=f"blindbox-conn-{client_ip}")
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, tls: ssl.SSLSocket, client_ip: str) -> None:
        try:
            ClientConnection(tls, client_ip, self.site, self._stopping).run()
        finally:
            self._release(client_ip)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def request_stop(self) -> None:
        """Stop accepting (safe from a signal handler); :meth:`serve_forever` then returns."""
        self._stopping.set()

    def stop(self, grace: float = 10.0) -> bool:
        """Stop accepting, let in-flight requests finish within ``grace`` s; True if all did."""
        self._stopping.set()
        self._stopped.wait(timeout=2.0)
        deadline = time.monotonic() + grace
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            threads[0].join(timeout=remaining)

    def close(self) -> None:
        """Release the listening socket of an agent that never served."""
        self._listener.close()
