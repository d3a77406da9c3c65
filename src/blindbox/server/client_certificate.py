"""TLS client certificates asked for after the handshake, without WebPKI trust.

BlindBox clients present a certificate only by TLS 1.3 post-handshake
authentication, once they pinned the server's attested key (see the threat
model, "The client's certificate"). So the agent asks on a connection whose
request needs it, never in the handshake.

Python's ``ssl`` verifies a client certificate only against trust anchors it
is given; the owner policy lists SPKI digests, not certificates.
:func:`accept_any_client_certificate` therefore installs an OpenSSL verify
callback that accepts any chain: the identity check is the caller's SPKI pin
(:class:`blindbox.server.auth.Authenticator`), and the TLS 1.3
``CertificateVerify`` signature, which OpenSSL checks regardless, proves the
client holds that key.
"""

from __future__ import annotations

import ctypes
import select
import ssl
import sys
import sysconfig
import time
from typing import Any

from blindbox.errors import ConfigurationError

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1  # any chain: the caller pins the SPKI; CertificateVerify proves the key is held


_accept: Any = _VERIFY_CALLBACK(_accept_any)  # module-level: lives as long as OpenSSL may call it


class ClientCertificateUnsupported(ConfigurationError):
    """This Python cannot accept client certificates without a trust anchor (a policy lists SPKIs)."""


def _libssl() -> ctypes.CDLL:
    """The libssl the ``_ssl`` module uses (the same loaded copy: dlopen returns its handle)."""
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        paths = {line.split()[-1] for line in maps if "/libssl" in line and line.rstrip().endswith(
            tuple(f".so{suffix}" for suffix in ("", ".3", ".1.1")))}
    if len(paths) != 1:
        raise ClientCertificateUnsupported(f"expected one libssl loaded in this process, found {len(paths)}")
    return ctypes.CDLL(paths.pop())


def accept_any_client_certificate(context: ssl.SSLContext) -> None:
    """Make ``context`` ask for a client certificate only post-handshake, and take any chain.

    Sets ``post_handshake_auth`` and ``CERT_REQUIRED`` (an empty answer ends
    the connection at once) with a verify callback that accepts every chain.
    Raises :class:`ClientCertificateUnsupported` where this cannot be done safely
    (not CPython, a debug build, no single libssl).
    """
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount") \
            or sysconfig.get_config_var("Py_GIL_DISABLED") or ctypes.sizeof(ctypes.c_void_p) != 8:
        raise ClientCertificateUnsupported(
            "client certificates (authentication.client_certificate_spki_sha256) need a 64-bit CPython "
            "release build with the GIL")
    lib = _libssl()
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    lib.SSL_CTX_get_verify_callback.restype = ctypes.c_void_p
    lib.SSL_CTX_get_verify_callback.argtypes = [ctypes.c_void_p]
    context.post_handshake_auth = True
    context.verify_mode = ssl.CERT_REQUIRED
    # PySSLContext begins with PyObject_HEAD (refcount, type), then its SSL_CTX pointer.
    ctx_ptr = ctypes.c_void_p.from_address(id(context) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    expected = _SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT
    if not ctx_ptr or lib.SSL_CTX_get_verify_mode(ctx_ptr) != expected:
        raise ClientCertificateUnsupported("cannot reach the OpenSSL context of this ssl.SSLContext")
    lib.SSL_CTX_set_verify(ctx_ptr, expected, _accept)
    if lib.SSL_CTX_get_verify_callback(ctx_ptr) != ctypes.cast(_accept, ctypes.c_void_p).value:
        raise ClientCertificateUnsupported("the verify callback did not take")
    # ssl keeps an installed callback when verify_mode is set again (it re-reads it first).


def request_client_certificate(sock: ssl.SSLSocket, timeout: float) -> bytes | None:
    """Ask the client for its certificate by TLS 1.3 post-handshake authentication.

    Returns the DER certificate the client presented (on this connection, now
    or earlier), or None when it sent none, cannot do post-handshake
    authentication, or did not answer within ``timeout`` seconds. The context
    should require a certificate (``CERT_REQUIRED``): an empty answer then ends
    the connection at once, where otherwise it would look like no answer yet.
    Application data arriving before an answer counts as no answer (one byte
    of it is consumed): close the connection after a None.
    """
    return request_client_certificate_buffered(sock, timeout, 0)[0]


def request_client_certificate_buffered(sock: ssl.SSLSocket, timeout: float,
                                        limit: int) -> tuple[bytes | None, bytes]:
    """:func:`request_client_certificate`, keeping up to ``limit`` bytes of application data read meanwhile.

    A client answers a post-handshake request only when it next reads, after
    sending its whole request: the request body arrives first. Returns the
    certificate (or None) and the application data read while waiting, which
    the caller must process as if read normally; past ``limit`` bytes the
    wait ends with None.
    """
    buffered = bytearray()
    presented = sock.getpeercert(binary_form=True)
    if presented:
        return presented, b""
    previous = sock.gettimeout()
    try:
        sock.verify_client_post_handshake()
        sock.do_handshake()  # sends the CertificateRequest now
        sock.setblocking(False)
        deadline = time.monotonic() + timeout
        while not (presented := sock.getpeercert(binary_form=True)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, bytes(buffered)
            if not sock.pending():
                select.select([sock], [], [], remaining)
            try:
                data = sock.recv(max(1, min(65536, limit + 1 - len(buffered))))
            except ssl.SSLWantReadError:
                continue
            if not data:
                return None, bytes(buffered)
            buffered += data
            if len(buffered) > limit:
                return None, bytes(buffered)
        return presented, bytes(buffered)
    except (OSError, ValueError):
        return None, bytes(buffered)
    finally:
        try:
            sock.settimeout(previous)
        except OSError:
            pass
