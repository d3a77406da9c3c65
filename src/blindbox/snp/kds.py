"""AMD Key Distribution Service (KDS) client: the only part of :mod:`blindbox.snp` on the network.

Nothing fetched is trusted. A VCEK is parsed and must be the one requested
(product, hwID and every SPL), and :func:`~blindbox.snp.verify.verify_report`
then walks its chain to a pinned root; a CRL counts only when the anchor of the
chain being checked signed it and it is current (:mod:`blindbox.snp.crl`).
Revocation fails closed: a CRL that cannot be fetched or verified is an error.

The cache is untrusted input too. Every level from ``cache_dir`` down must be a
directory owned by this user and writable by nobody else (created 0700), every
entry a regular file of this user's, writable by nobody else, opened with
``O_NOFOLLOW|O_NONBLOCK`` (a symlink is not followed, a FIFO cannot block);
anything else is refused with a warning naming it. Entries are written
atomically (temporary file then ``os.replace``, safe across processes); one that
fails to parse is deleted, and a cached VCEK whose chain fails is evicted and
fetched once more. A cached CRL records its product and key family on its first
line (both families are signed by the same ARK), is used only while current and
at most ``max_crl_age_seconds`` after its thisUpdate (offline: while current),
and is never replaced by an older one. Layout under ``cache_dir`` (provision it
by hand for air-gapped use with ``offline=True``)::

    kds/vcek/<Product>/<hwid hex>/[fmc<n>_]bl<n>_tee<n>_snp<n>_uc<n>.der
    kds/crl/<vcek|vlek>/<Product>.crl   (the line "blindbox-kds-crl <vcek|vlek> <Product>", then the DER)

Every response size is bounded, and each request has one deadline (``timeout``)
covering the connection, every read, the retries and their backoff. HTTP 429 is
honoured (Retry-After in seconds or as an HTTP-date) with a bounded exponential
backoff; 5xx and transport errors are retried a bounded number of times; 404 and
other 4xx never are. What leaves the verification incomplete (KDS unreachable,
HTTP errors, rate limiting, the deadline, an offline miss) is :class:`KdsError`,
a :class:`~blindbox.errors.VerificationIncompleteError`. VLEKs cannot be
fetched: AMD gives them only to cloud providers, so a VLEK must come with the
evidence.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import hmac
import logging
import math
import os
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs
import requests

from blindbox import _http
from blindbox._text import shown
from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    NotAnEnclaveError,
    VerificationIncompleteError,
)
from blindbox.snp.certificate import AmdCertificate, load_all
from blindbox.snp.chain import CertificateChain
from blindbox.snp.crl import MAX_CRL_SIZE, RevocationList, check_revocation
from blindbox.snp.extensions import parse_extensions
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.snp.tcb import TcbVersion

log = logging.getLogger("blindbox.snp.kds")

DEFAULT_BASE_URL = "https://kdsintf.amd.com"
#: Largest VCEK or cert_chain response accepted.
MAX_CERTIFICATE_RESPONSE = 64 * 1024
_MAX_RETRIES_LIMIT = 20
_BACKOFF_BASE_SECONDS = 2.0
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_SPL_PARAMETERS = {"fmc": "fmcSPL", "bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL",
                   "microcode": "ucodeSPL"}
_SPL_SHORT = {"fmc": "fmc", "bootloader": "bl", "tee": "tee", "snp": "snp", "microcode": "uc"}


class KdsError(VerificationIncompleteError):
    """AMD KDS did not deliver what was needed (unreachable, HTTP error, deadline, offline miss...).

    Verification is incomplete, not failed: the enclave was neither shown genuine nor refused.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class KdsRateLimitedError(KdsError):
    """AMD KDS kept answering HTTP 429 beyond the retry and backoff budget."""


# ---------------------------------------------------------------------------- URLs


def _base(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    loopback = parts.hostname in _LOOPBACK_HOSTS
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigurationError(
            f"base_url: expected an https:// URL (http:// only on loopback), found {base_url!r}"
        )
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"base_url: expected scheme://host[:port][/path], found {base_url!r}")
    return base_url.rstrip("/")


def _family(signing_key: SigningKey) -> str:
    return "vlek" if signing_key is SigningKey.VLEK else "vcek"


def _hwid(product: Product, chip_id: bytes) -> bytes:
    """The hwID a VCEK is issued for: CHIP_ID, or its first 8 bytes on Turin."""
    size = product.hwid_length
    if len(chip_id) not in (size, 64):
        sizes = "64" if size == 64 else f"{size} or 64"
        raise NotAnEnclaveError(
            f"chip_id: expected {sizes} bytes for {product.value}, found {len(chip_id)}"
        )
    hwid, tail = bytes(chip_id[:size]), bytes(chip_id[size:])
    if any(tail):
        raise NotAnEnclaveError(
            f"chip_id: bytes {size}-63 must be zero on {product.value}, found {tail.hex()}"
        )
    if not any(hwid):
        raise NotAnEnclaveError("chip_id: all zero (masked); no VCEK can be fetched for it")
    return hwid


def _check_layout(product: Product, tcb: TcbVersion) -> None:
    if product.has_fmc != (tcb.fmc is not None):
        expected = "with" if product.has_fmc else "without"
        raise NotAnEnclaveError(
            f"tcb: expected the {product.value} layout ({expected} an FMC SPL), found {tcb}"
        )


def vcek_url(product: Product, chip_id: bytes, tcb: TcbVersion, *,
             base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the VCEK for this chip and TCB.

    Milan/Genoa: ``{base}/vcek/v1/{P}/{hex(chip_id)}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=``;
    Turin: ``{base}/vcek/v1/Turin/{hex(chip_id[:8])}?fmcSPL=&blSPL=&teeSPL=&snpSPL=&ucodeSPL=``.
    """
    hwid = _hwid(product, chip_id)
    _check_layout(product, tcb)
    query = "&".join(f"{_SPL_PARAMETERS[name]}={value}" for name, value in tcb.components().items())
    return f"{_base(base_url)}/vcek/v1/{product.kds_name}/{hwid.hex()}?{query}"


def cert_chain_url(product: Product, signing_key: SigningKey = SigningKey.VCEK, *,
                   base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the PEM ASK+ARK (VCEK) or ASVK+ARK (VLEK) chain."""
    return f"{_base(base_url)}/{_family(signing_key)}/v1/{product.kds_name}/cert_chain"


def crl_url(product: Product, signing_key: SigningKey = SigningKey.VCEK, *,
            base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the DER CRL covering the VCEK (ASK) or VLEK (ASVK) chain."""
    return f"{_base(base_url)}/{_family(signing_key)}/v1/{product.kds_name}/crl"


# ---------------------------------------------------------------------------- disk cache
#
# The cache is untrusted input: every level from the cache root down must be a real directory
# (not a symlink) owned by this user and writable by nobody else, and every entry a regular file
# of this user's, writable by nobody else, opened without following links or blocking (a FIFO).


def _insecure(st: os.stat_result, kind: str) -> str | None:
    """Why an lstat/fstat result may not be trusted as a cache ``kind``, or None."""
    want_dir = kind == "directory"
    if not (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)):
        return f"expected a {kind}, found {_file_type(st.st_mode)}"
    if st.st_uid != os.geteuid():
        return f"expected owner uid {os.geteuid()} (this user), found uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"expected no group/other write permission, found mode {stat.S_IMODE(st.st_mode):04o}"
    return None


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "an unknown file type"


def _cache_dir(root: Path, parts: tuple[str, ...], *, create: bool) -> Path | None:
    """``root/parts...`` when every level is safe (created 0700 if ``create``); else None.

    A missing level is a plain miss (None, no warning) when not creating. An unsafe level is
    refused with a warning naming it: the cache is then neither read nor written there.
    """
    path = root
    for part in ("", *parts):
        path = path / part if part else path
        if create:
            try:
                path.mkdir(mode=0o700, parents=path == root, exist_ok=True)
            except OSError as exc:
                log.warning("KDS cache: cannot create %s (%s); not caching", _path(path), exc)
                return None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("KDS cache: cannot inspect %s (%s); ignoring the cache", _path(path), exc)
            return None
        problem = _insecure(st, "directory")
        if problem is not None:
            log.warning("KDS cache: refusing %s: %s; ignoring the cache there", _path(path), problem)
            return None
    return path


def _read_entry(path: Path, limit: int) -> bytes | None:
    """The entry's bytes, or None when missing, unsafe (then deleted, with a warning) or too large."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # ELOOP: a symbolic link in place of the entry.
        _discard(path, f"cannot be opened safely ({exc.strerror or exc})")
        return None
    try:
        problem = _insecure(os.fstat(fd), "regular file")
        if problem is not None:
            _discard(path, problem)
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        log.warning("KDS cache: cannot read %s (%s); ignoring it", _path(path), exc)
        return None
    finally:
        os.close(fd)
    if size > limit:
        _discard(path, f"larger than {limit} bytes")
        return None
    return b"".join(chunks)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` (mode 0600) so that readers (any process) see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _path(path: Path) -> str:
    """A cache path as shown in messages and logs (escaped, never cut)."""
    return shown(str(path), limit=None)


def _discard(path: Path, reason: str) -> None:
    log.warning("KDS cache: discarding %s: %s", _path(path), reason)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("KDS cache: cannot delete %s (%s)", _path(path), exc)


def _crl_entry_header(product: Product, signing_key: SigningKey) -> bytes:
    """The first line of a cached CRL: the product and key family it was fetched for."""
    return f"blindbox-kds-crl {_family(signing_key)} {product.kds_name}\n".encode("ascii")


# ---------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None = None
    rate_limited: bool = False


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # e.g. year 10**20: OverflowError
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())



# ---------------------------------------------------------------------------- client


class KdsClient:
    """Fetches VCEKs and checks revocation against AMD KDS (implements ``KdsSource``).

    ``offline=True`` never touches the network: only the cache under
    ``cache_dir`` is used, and a miss says which file (and URL) was needed.
    ``timeout`` is one deadline for each request, its retries and backoff
    included (not a per-read timeout). ``max_retries`` bounds the retries of one
    request and ``max_backoff_seconds`` the total time slept for it; ``sleep``
    is injectable for tests. A cached CRL older than ``max_crl_age_seconds``
    (by its thisUpdate, at the time checked) is fetched again so that AMD's
    re-issues are picked up (offline, any current one is used).
    ``on_fetch(what, url)`` is called before each network request, e.g. to
    tell a user what is being fetched. A ``session`` of your own keeps its
    adapters: the deadline is then checked between body chunks, and each socket
    wait is bounded by what remained when the request began. Errors that leave the verification
    incomplete (KDS unreachable, HTTP errors, rate limiting, the deadline, an
    offline miss) are :class:`KdsError`, a
    :class:`~blindbox.errors.VerificationIncompleteError`.
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
        session: requests.Session | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_backoff_seconds: float = 120.0,
        max_crl_age_seconds: float = 86400.0,
        sleep: Callable[[float], None] = time.sleep,
        on_fetch: Callable[[str, str], None] | None = None,
    ) -> None:
        if not (isinstance(max_retries, int) and 0 <= max_retries <= _MAX_RETRIES_LIMIT):
            raise ConfigurationError(f"max_retries: expected 0..{_MAX_RETRIES_LIMIT}, found {max_retries!r}")
        for name, value, positive in (("max_backoff_seconds", max_backoff_seconds, False),
                                      ("timeout", timeout, True),
                                      ("max_crl_age_seconds", max_crl_age_seconds, True)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value > 0 if positive else value >= 0)):
                raise ConfigurationError(
                    f"{name}: expected a finite number {'>' if positive else '>='} 0, found {value!r}"
                )
        self._root = Path(cache_dir) if cache_dir is not None else Path(
            platformdirs.user_cache_dir("blindbox"))
        self._offline = offline
        self._session = session if session is not None else _http.new_session()
        self._base_url = _base(base_url)
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._max_backoff = float(max_backoff_seconds)
        self._max_crl_age = _dt.timedelta(seconds=max_crl_age_seconds)
        self._sleep = sleep
        self._on_fetch = on_fetch
        self._lock = threading.Lock()
        self._crls: dict[tuple[Product, SigningKey], RevocationList] = {}

    def _entry(self, parts: tuple[str, ...], name: str, *, create: bool = False) -> Path | None:
        """The cache entry ``kds/parts.../name``, or None when a level is missing or unsafe."""
        directory = _cache_dir(self._root, ("kds", *parts), create=create)
        return None if directory is None else directory / name

    def _display(self, parts: tuple[str, ...], name: str) -> Path:
        return self._root.joinpath("kds", *parts, name)

    def _store(self, parts: tuple[str, ...], name: str, data: bytes) -> None:
        path = self._entry(parts, name, create=True)
        if path is None:
            return
        try:
            _write_atomic(path, data)
        except OSError as exc:
            log.warning("KDS cache: cannot write %s (%s)", _path(path), exc)

    # -- VCEK

    def vcek(self, product: Product, chip_id: bytes, tcb: TcbVersion, *,
             check: Callable[[AmdCertificate], object] | None = None) -> AmdCertificate:
        """The VCEK for this chip and TCB, from the cache or KDS; parsed and matched, not yet trusted.

        ``check`` (e.g. the chain walk to the caller's roots) runs on a cached VCEK and on a fetched
        one: a cached VCEK that fails it is evicted and fetched once more; a fetched one that fails
        it raises the check's error and is not cached.
        """
        url = vcek_url(product, chip_id, tcb, base_url=self._base_url)
        hwid = _hwid(product, chip_id)
        parts = ("vcek", product.kds_name, hwid.hex())
        name = "_".join(f"{_SPL_SHORT[k]}{v}" for k, v in tcb.components().items()) + ".der"
        path = self._entry(parts, name)
        missing = f"is not cached at {_path(self._display(parts, name))}"
        cached = _read_entry(path, MAX_CERTIFICATE_RESPONSE) if path is not None else None
        if path is not None and cached is not None:
            try:
                cert = AmdCertificate.from_der(cached)
                _check_vcek(cert, product, hwid, tcb)
                if check is not None:
                    check(cert)
            except Exception as exc:  # untrusted cache bytes: any failure evicts the entry
                _discard(path, _reason(exc))
                missing = f"was cached at {_path(path)} but discarded ({_reason(exc)})"
            else:
                return cert
        what = f"the {product.value} VCEK for chip {hwid.hex()[:16]}... ({tcb})"
        if self._offline:
            raise KdsError(f"offline: {what} {missing}; it would be fetched from {url}", url)
        data = self._get(url, MAX_CERTIFICATE_RESPONSE, "VCEK", what)
        try:
            cert = AmdCertificate.from_der(data)
            _check_vcek(cert, product, hwid, tcb)
        except NotAnEnclaveError as exc:
            raise KdsError(f"KDS: unusable VCEK from {url}: {exc}", url) from None
        if check is not None:
            check(cert)  # a genuine failure: KDS served it, and it is not trusted
        self._store(parts, name, data)
        return cert

    # -- certificate chain

    def cert_chain(self, product: Product,
                   signing_key: SigningKey = SigningKey.VCEK) -> tuple[AmdCertificate, AmdCertificate]:
        """AMD's (ASK or ASVK, ARK) for ``product`` as KDS serves them: parsed, never anchors."""
        url = cert_chain_url(product, signing_key, base_url=self._base_url)
        if self._offline:
            raise KdsError(f"offline: the cert_chain is not cached; it would be fetched from {url}", url)
        data = self._get(url, MAX_CERTIFICATE_RESPONSE, "cert_chain",
                         f"the {product.value} {_family(signing_key).upper()} cert_chain")
        try:
            certs = load_all(data) if b"-----BEGIN" in data else []
        except NotAnEnclaveError as exc:
            raise KdsError(f"KDS: unusable cert_chain from {url}: {exc}", url) from None
        expected = (f"SEV-VLEK-{product.value}" if signing_key is SigningKey.VLEK
                    else f"SEV-{product.value}", f"ARK-{product.value}")
        found = tuple(c.common_name for c in certs)
        if found != expected:
            raise KdsError(
                f"KDS: expected a PEM cert_chain {' then '.join(expected)} from {url}, "
                f"found {', '.join(shown(name) for name in found) or 'no certificate'}",
                url,
            )
        return certs[0], certs[1]

    # -- revocation

    def check_revocation(self, chain: CertificateChain, at: _dt.datetime) -> None:
        """Fail closed unless a current CRL signed by ``chain``'s anchor lists neither chain certificate."""
        if at.tzinfo is None:
            raise ValueError("at: expected a timezone-aware datetime")
        product = chain.anchor.product or parse_extensions(chain.leaf).product
        leaf_name = chain.leaf.common_name
        if leaf_name not in ("SEV-VCEK", "SEV-VLEK"):
            raise NotAnEnclaveError(
                f"revocation: expected a SEV-VCEK or SEV-VLEK leaf, found {shown(leaf_name)!r}")
        signing_key = SigningKey.VLEK if leaf_name == "SEV-VLEK" else SigningKey.VCEK
        check_revocation(self._current_crl(product, signing_key, chain, at), chain, at)

    def _current_crl(self, product: Product, signing_key: SigningKey, chain: CertificateChain,
                     at: _dt.datetime) -> RevocationList:
        """The newest CRL verified under ``chain``'s anchor and current at ``at``.

        A cached one (memory, then disk) serves while its thisUpdate is at most
        ``max_crl_age_seconds`` before ``at`` (offline: while current); otherwise KDS is asked,
        and whichever of the fetched and the cached CRL has the later thisUpdate is used and kept:
        a newer CRL is never replaced by an older one.
        """
        anchor = chain.anchor.certificate
        family = _family(signing_key)
        url = crl_url(product, signing_key, base_url=self._base_url)
        parts, name = ("crl", family), f"{product.kds_name}.crl"
        header = _crl_entry_header(product, signing_key)
        where = _path(self._display(parts, name))
        key = (product, signing_key)
        reasons: list[str] = []
        best: RevocationList | None = None
        newest_on_disk: RevocationList | None = None
        with self._lock:
            in_memory = self._crls.get(key)
        path = self._entry(parts, name)
        on_disk: RevocationList | None = None
        data = _read_entry(path, MAX_CRL_SIZE + len(header)) if path is not None else None
        if path is not None and data is not None:
            try:
                on_disk = _parse_crl_entry(data, header)
            except Exception as exc:  # untrusted cache bytes: any parsing failure discards them
                _discard(path, _reason(exc))
                reasons.append(f"the cached one ({where}) was discarded: {_reason(exc)}")
        for source, crl in (("memory", in_memory), ("disk", on_disk)):
            if crl is None:
                continue
            try:
                crl.verify_signed_by(anchor)
            except NotAnEnclaveError as exc:
                reasons.append(f"the cached one ({source}, {where}) is unusable: {exc}")
                continue
            if source == "disk":
                newest_on_disk = crl
            try:
                crl.check_current(at)
            except NotAnEnclaveError as exc:
                reasons.append(f"the cached one ({source}, {where}) is unusable: {exc}")
                continue
            if best is None or crl.this_update > best.this_update:
                best = crl
        if best is not None and (self._offline or at - best.this_update <= self._max_crl_age):
            self._remember(key, best)
            return best
        if best is not None:
            reasons.append(f"the cached one was issued {best.this_update.isoformat()}, more than "
                           f"max_crl_age_seconds={self._max_crl_age.total_seconds():g} before "
                           f"{at.isoformat()}")
        label = f"{product.value} {family.upper()} CRL"
        if self._offline:
            reason = "; ".join(reasons) or f"none cached at {where}"
            raise KdsError(f"offline: no current {label} at {at.isoformat()}: {reason}; "
                           f"it would be fetched from {url}", url)
        data = self._get(url, MAX_CRL_SIZE, "CRL", f"the {label}")
        try:
            fetched = _verified_crl(data, anchor, at)
        except NotAnEnclaveError as exc:
            raise KdsError(f"KDS: the {label} from {url} is refused: {exc}", url) from None
        if best is not None and best.this_update > fetched.this_update:
            log.warning("KDS: the %s from %s (thisUpdate %s) is older than the cached one (%s); "
                        "keeping the cached one", label, url, fetched.this_update.isoformat(),
                        best.this_update.isoformat())
            self._remember(key, best)
            return best
        self._remember(key, fetched)
        if newest_on_disk is None or fetched.this_update >= newest_on_disk.this_update:
            self._store(parts, name, header + fetched.der)
        return fetched

    def _remember(self, key: tuple[Product, SigningKey], crl: RevocationList) -> None:
        """Keep ``crl`` in memory unless a CRL with a later thisUpdate is kept already."""
        with self._lock:
            kept = self._crls.get(key)
            if kept is None or kept.this_update <= crl.this_update:
                self._crls[key] = crl

    # -- HTTP with one deadline and bounded retries

    def _get(self, url: str, limit: int, kind: str, what: str) -> bytes:
        """GET ``url`` within one ``timeout`` deadline, retries and backoff included.

        At most ``max_retries`` retries and ``max_backoff_seconds`` of sleep in total.
        """
        if self._on_fetch is not None:
            self._on_fetch(what, url)
        deadline = _http.Deadline(self._timeout, f"{kind} request {url}")
        waited = 0.0
        attempts = 0
        while True:
            attempts += 1
            outcome = self._attempt(url, limit, kind, deadline)
            if isinstance(outcome, bytes):
                return outcome
            if attempts > self._max_retries:
                raise self._give_up(url, kind, outcome, attempts, waited)
            budget, left = self._max_backoff - waited, deadline.remaining()
            if outcome.retry_after is not None:
                delay = outcome.retry_after
                if delay > budget or delay >= left:
                    room, limit_name = ((budget, "max_backoff_seconds") if delay > budget
                                        else (left, f"the {self._timeout:g} s deadline"))
                    reason = (f"{outcome.reason} with Retry-After {delay:.0f} s, more than the "
                              f"{max(room, 0):.0f} s left of {limit_name}")
                    raise self._give_up(url, kind, replace(outcome, reason=reason), attempts, waited)
            elif budget > 0:
                delay = min(_BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), budget)
                if delay >= left:
                    reason = (f"{outcome.reason}; the next retry (in {delay:.0f} s) would pass "
                              f"the {self._timeout:g} s deadline")
                    raise self._give_up(url, kind, replace(outcome, reason=reason), attempts, waited)
            else:
                raise self._give_up(url, kind, outcome, attempts, waited)
            log.debug("KDS: %s for %s; retrying in %.1f s", outcome.reason, url, delay)
            self._sleep(delay)
            waited += delay

    def _give_up(self, url: str, kind: str, outcome: _Retry, attempts: int, waited: float) -> KdsError:
        budget = f"{attempts} attempt(s), {waited:.0f} s waited (max_retries={self._max_retries}, " \
                 f"max_backoff_seconds={self._max_backoff:g}, timeout={self._timeout:g})"
        if outcome.rate_limited:
            return KdsRateLimitedError(
                f"KDS rate limited: {kind} request {url} still answered {outcome.reason} after {budget}",
                url,
            )
        return KdsError(
            f"KDS unavailable: {kind} request {url} failed ({outcome.reason}) after {budget}", url
        )

    def _attempt(self, url: str, limit: int, kind: str, deadline: _http.Deadline) -> bytes | _Retry:
        log.debug("KDS: GET %s", url)
        try:
            response = _http.get(url, deadline=deadline, session=self._session)
        except AttestationError:
            raise
        except _http.DeadlineExceeded as exc:
            raise KdsError(f"KDS: {exc}", url) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            return _Retry(f"transport error {type(exc).__name__}")
        except requests.RequestException as exc:
            raise KdsError(
                f"KDS: {kind} request {url} failed: {type(exc).__name__}: {shown(str(exc))}", url
            ) from None
        with response:
            status = response.status_code
            if status == 200:
                try:
                    body = _http.read_bounded(response, limit, deadline=deadline)
                except AttestationError:
                    raise
                except _http.DeadlineExceeded as exc:
                    raise KdsError(f"KDS: {exc}", url) from None
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError) as exc:
                    return _Retry(f"transport error {type(exc).__name__} while reading")
                except requests.RequestException as exc:
                    raise KdsError(
                        f"KDS: {kind} response from {url} is malformed: {shown(str(exc))}", url
                    ) from None
                if body is None:
                    raise KdsError(f"KDS: {kind} response from {url} exceeds {limit} bytes; refused", url)
                return body
            if status == 429:
                return _Retry("HTTP 429", _parse_retry_after(response.headers.get("Retry-After")), True)
            if 500 <= status <= 599:
                return _Retry(f"HTTP {status}", _parse_retry_after(response.headers.get("Retry-After")))
        if status == 404:
            raise KdsError(f"KDS has no {kind} at {url} (HTTP 404 Not Found; not retried)", url)
        raise KdsError(f"KDS: {kind} request {url} answered HTTP {status}; not retried", url)


def _reason(exc: BaseException) -> str:
    """An exception as one safe line (its type when it carries no message)."""
    text = shown(str(exc))
    return text if text and isinstance(exc, AttestationError) else f"{type(exc).__name__}: {text}"


def _parse_crl_entry(data: bytes, header: bytes) -> RevocationList:
    """A cached CRL: the header recording its product and key family, then the DER."""
    if not data.startswith(header):
        first = data.split(b"\n", 1)[0][:80]
        raise NotAnEnclaveError(
            f"CRL cache entry: expected the first line {header.decode().strip()!r}, found {shown(first)!r}"
        )
    return RevocationList.from_der(data[len(header):])


def _verified_crl(data: bytes, anchor: AmdCertificate, at: _dt.datetime) -> RevocationList:
    crl = RevocationList.from_der(data)
    crl.verify_signed_by(anchor)
    crl.check_current(at)
    return crl


def _check_vcek(cert: AmdCertificate, product: Product, hwid: bytes, tcb: TcbVersion) -> None:
    """Require ``cert`` to be the VCEK of this product, hwID and TCB."""
    if cert.common_name != "SEV-VCEK":
        raise NotAnEnclaveError(f"VCEK: expected subject CN 'SEV-VCEK', found {cert.common_name!r}")
    ext = parse_extensions(cert)
    if ext.product is not product:
        raise NotAnEnclaveError(f"VCEK: expected product {product.value}, found {ext.product_name!r}")
    if ext.csp_id is not None or ext.hwid is None or not hmac.compare_digest(ext.hwid, hwid):
        found = ext.hwid.hex()[:16] + "..." if ext.hwid is not None else "none"
        raise NotAnEnclaveError(f"VCEK: expected hwID {hwid.hex()[:16]}..., found {found}")
    if ext.spls() != tcb.components():
        found_tcb = " ".join(f"{k}={v}" for k, v in ext.spls().items())
        raise NotAnEnclaveError(f"VCEK: expected TCB {tcb}, found {found_tcb}")
