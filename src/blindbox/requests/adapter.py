"""The transport adapter: every request goes to the attested origin over attested connections.

It installs the session's attested pool class in the pool manager *and* in
every proxy manager (``HTTPS_PROXY`` included), builds pool keys from the
origin rather than from the URL, ignores ``verify=``/CA bundles, and re-raises
attestation failures with their exact type.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, ProxyError, SSLError
from requests.models import PreparedRequest, Response
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.proxy import connection_requires_http_tunnel

from blindbox.errors import AttestationError, ConfigurationError
from blindbox.requests.attestor import Attestor, ClientCert
from blindbox.requests.connection import AttestationAbort, attested_pool_class
from blindbox.requests.origin import Origin

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

log = logging.getLogger("blindbox.requests")


class AttestedAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` bound to one origin and one session's pins."""

    def __init__(self, origin: Origin, attestor: Attestor, **kwargs: Any) -> None:
        self.origin = origin
        self.attestor = attestor
        self._pool_cls = attested_pool_class(attestor)
        super().__init__(**kwargs)

    # -- pool managers ----------------------------------------------------------------------------
    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        # A new dict: the default one is a module-level global shared by every PoolManager.
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool_cls}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy.lower().startswith("socks"):
            raise ConfigurationError(
                f"proxy {proxy!r}: SOCKS proxies are not supported by SecureSession; use an HTTP "
                "CONNECT proxy (attestation stays end to end through the tunnel)"
            )
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {"https": self._pool_cls}
        return manager

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: bool | str, cert: ClientCert = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        """Pool key from the attested origin (never from the URL) and the session's TLS context."""
        self.origin.check(request.url)
        host_params: _HostParams = {"scheme": "https", "host": self.origin.host, "port": self.origin.port}
        pool_kwargs: _PoolKwargs = {"ssl_context": self.attestor.context_for(cert), "cert_reqs": "CERT_NONE"}
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: ClientCert) -> None:
        """``verify=`` and CA bundles do not apply: the attested pin is the only trust."""
        conn.cert_reqs = "CERT_NONE"
        conn.ca_certs = None
        conn.ca_cert_dir = None
        conn.cert_file = None
        conn.key_file = None

    # -- sending ----------------------------------------------------------------------------------
    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        try:
            self.origin.check(request.url)
        except AttestationError as exc:
            exc.request = request
            log.warning("refused %s: %s", request.method, exc)
            raise
        try:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                proxies=proxies)
        except AttestationAbort as abort:
            error = abort.error
        # Raised outside the except block so the error keeps its own cause chain.
        error.request = request
        raise error

    def connect_origin(self, proxies: Mapping[str, str], timeout: float) -> None:
        """Open and attest one connection to the origin without sending any request.

        The connection goes back to the pool, so the first request reuses it.
        Raises the attestation error itself, ``ConnectTimeout``, ``ProxyError``
        or ``ConnectionError``, as a request would.
        """
        probe = PreparedRequest()
        probe.prepare(method="GET", url=self.origin.url + "/")
        pool = self.get_connection_with_tls_context(probe, True, proxies=proxies)
        if not isinstance(pool, HTTPSConnectionPool):
            raise ConfigurationError(
                f"expected an HTTPS pool for {self.origin.url}, got {type(pool).__name__}"
            )
        conn = pool._get_conn()
        conn.timeout = timeout
        tunnel = pool.proxy is not None and connection_requires_http_tunnel(
            pool.proxy, pool.proxy_config, "https"
        )
        try:
            if tunnel:
                pool._prepare_proxy(cast(HTTPSConnection, conn))
            else:
                conn.connect()
        except AttestationAbort as abort:
            conn.close()
            pool._put_conn(None)
            error: Exception = abort.error
        except (OSError, HTTPError) as exc:
            conn.close()
            pool._put_conn(None)
            error = _as_requests_error(exc, probe, proxied=pool.proxy is not None
                                       and not conn.has_connected_to_proxy)
            error.__cause__ = exc
        except BaseException:
            conn.close()
            pool._put_conn(None)
            raise
        else:
            pool._put_conn(conn)
            return
        if isinstance(error, AttestationError):
            error.request = probe
        raise error


def _as_requests_error(exc: OSError | HTTPError, request: PreparedRequest, *, proxied: bool) -> Exception:
    """The exception requests raises for this connect-time failure."""
    if isinstance(exc, (ConnectTimeoutError, TimeoutError)) and not isinstance(exc, NewConnectionError):
        return ConnectTimeout(exc, request=request)
    if isinstance(exc, Urllib3ProxyError) or proxied:
        return ProxyError(exc, request=request)
    if isinstance(exc, (ssl.SSLError, Urllib3SSLError)):
        return SSLError(exc, request=request)
    return RequestsConnectionError(exc, request=request)
