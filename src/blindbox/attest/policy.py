"""The appraisal policy: which genuine enclaves a caller is willing to talk to.

:func:`~blindbox.snp.verify_report` decides that genuine AMD hardware signed a
report. :class:`AttestationPolicy` decides whether that report describes an
enclave the caller accepts: which code (launch measurement, ID block), on which
platform (TCB, firmware, platform info, VMPL, chip, signing key and cloud
provider) and under which guest policy. It offers at least every option of
go-sev-guest's ``validate.Options`` and, unlike it, reads TCBs in each
product's own layout (FMC on Turin), keys minimum TCBs by product, tolerates
unknown PLATFORM_INFO bits unless forbidden, and can hold a platform to the
TCB named by AMD's security bulletins (:mod:`blindbox.snp.bulletins`).

Every check yields a :class:`Check` naming what was expected and what was
found; :meth:`AttestationPolicy.appraise` raises the first failing one as a
typed :class:`~blindbox.errors.AttestationError`, and
:meth:`AttestationPolicy.checks` evaluates all of them for display.
"""

from __future__ import annotations

import enum
import hmac
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    OutdatedTcbWarning,
    PolicyViolationError,
    TcbTooLowError,
)
from blindbox.snp import bulletins
from blindbox.snp.guest_policy import GuestPolicy
from blindbox.snp.platform_info import BITS as PLATFORM_INFO_BITS
from blindbox.snp.product import Product
from blindbox.snp.report import SUPPORTED_VERSIONS, FirmwareVersion, SigningKey
from blindbox.snp.tcb import TcbVersion
from blindbox.snp.verify import VerifiedReport

log = logging.getLogger("blindbox.attest")

MEASUREMENT_SIZE = 48
#: ``min_tcb="amd-recommended"``: the TCB AMD's bulletins name as fixed (see :mod:`blindbox.snp.bulletins`).
AMD_RECOMMENDED: Final = "amd-recommended"
_DIGEST_SIZE = 48
_CHIP_ID_SIZE = 64
_TURIN_HWID_SIZE = 8
_U32 = 1 << 32
_U64 = 1 << 64
_HEX = re.compile(r"[0-9a-fA-F]*")


class Rule(enum.Enum):
    """A requirement on one boolean property: must be on, must be off, or don't care."""

    REQUIRED = "on"
    FORBIDDEN = "off"
    ANY = "any"

    def admits(self, value: bool) -> bool:
        return self is Rule.ANY or value is (self is Rule.REQUIRED)

    @classmethod
    def parse(cls, value: Rule | str, field: str) -> Rule:
        """A :class:`Rule`, or its JSON form "on", "off" or "any"."""
        if isinstance(value, Rule):
            return value
        if not isinstance(value, str):
            raise TypeError(f"{field}: expected a Rule or 'on'/'off'/'any', got {type(value).__name__}")
        try:
            return cls(value)
        except ValueError:
            raise ConfigurationError(f"{field}: expected 'on', 'off' or 'any', got {value!r}") from None


def _hex_bytes(field: str, value: str | bytes, sizes: tuple[int, ...]) -> bytes:
    """Bytes of one of ``sizes`` from raw bytes or hex text (any case, surrounding space ignored)."""
    expected = " or ".join(f"{2 * n} hex characters" for n in sizes)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) not in (2 * n for n in sizes) or not _HEX.fullmatch(text):
            raise ConfigurationError(f"{field}: expected {expected}, got {value!r}")
        raw = bytes.fromhex(text)
    else:
        raise TypeError(f"{field}: expected hex text or bytes, got {type(value).__name__}")
    if len(raw) not in sizes:
        raise ConfigurationError(
            f"{field}: expected {' or '.join(map(str, sizes))} bytes, got {len(raw)}"
        )
    return raw


def parse_measurement(value: str | bytes) -> bytes:
    """A launch measurement from 96 hex characters (any case) or 48 raw bytes."""
    return _hex_bytes("measurement", value, (MEASUREMENT_SIZE,))


def _values(field: str, value: object) -> list[Any]:
    """A bare value or an iterable of values as a list (a str/bytes is one value).

    A mapping is refused, never iterated: ``vmpls={0: True, 1: False}`` would otherwise accept
    both keys and silently drop what the values said.
    """
    if isinstance(value, (str, bytes, bytearray, int, enum.Enum)):
        return [value]
    if isinstance(value, Mapping):
        raise TypeError(
            f"{field}: expected a value or a list of values, got a mapping ({type(value).__name__}); "
            "pass the accepted values themselves"
        )
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"{field}: expected a value or an iterable of values, got {type(value).__name__}")


def _hex_set(field: str, value: object, sizes: tuple[int, ...], pad_to: int | None = None,
             ) -> frozenset[bytes] | None:
    if value is None:
        return None
    items = _values(field, value)
    if not items:
        raise ConfigurationError(f"{field}: an empty set accepts nothing; use None to accept any")
    out: set[bytes] = set()
    for item in items:
        raw = _hex_bytes(field, item, sizes)
        if not any(raw):
            raise ConfigurationError(f"{field}: an all-zero value is not an identity, got {raw.hex()}")
        out.add(raw.ljust(pad_to, b"\x00") if pad_to else raw)
    return frozenset(out)


def _int(field: str, value: object, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field}: expected an integer, got {type(value).__name__}")
    if not 0 <= value < limit:
        raise ConfigurationError(f"{field}: expected 0 <= value < {limit:#x}, got {value}")
    return value


def _bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field}: expected True or False, got {type(value).__name__}")
    return value


def _int_set(field: str, value: object, allowed: Iterable[int]) -> frozenset[int]:
    allowed = frozenset(allowed)
    items = frozenset(_int(field, v, _U32) for v in _values(field, value))
    if not items:
        raise ConfigurationError(f"{field}: an empty set accepts nothing")
    if not items <= allowed:
        raise ConfigurationError(
            f"{field}: expected values among {', '.join(map(str, sorted(allowed)))}, "
            f"got {', '.join(map(str, sorted(items - allowed)))}"
        )
    return items


def _dotted(field: str, value: object, parts: int) -> tuple[int, ...]:
    """"1.55.21" / (1, 55, 21) -> (1, 55, 21), each part 0..255."""
    if isinstance(value, FirmwareVersion):
        value = value.as_tuple()
    if isinstance(value, str):
        pieces = value.strip().split(".")
        if len(pieces) != parts or not all(p.isascii() and p.isdigit() for p in pieces):
            form = ".".join(["N"] * parts)
            raise ConfigurationError(f"{field}: expected {form!r}, got {value!r}")
        numbers: list[object] = [int(p) for p in pieces]
    elif isinstance(value, (tuple, list)):
        numbers = list(value)
        if len(numbers) != parts:
            raise ConfigurationError(f"{field}: expected {parts} numbers, got {len(numbers)}")
    else:
        raise TypeError(f"{field}: expected a dotted version string or a tuple, got {type(value).__name__}")
    return tuple(_int(field, n, 256) for n in numbers)


def _platform_mask(field: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return _int(field, value, _U64)
    mask = 0
    for name in _values(field, value):
        if not isinstance(name, str) or name not in PLATFORM_INFO_BITS:
            raise ConfigurationError(
                f"{field}: expected an integer mask or names among "
                f"{', '.join(PLATFORM_INFO_BITS)}, got {name!r}"
            )
        mask |= 1 << PLATFORM_INFO_BITS[name]
    return mask


def _describe_mask(mask: int) -> str:
    names = [name for name, bit in PLATFORM_INFO_BITS.items() if mask >> bit & 1]
    names += [f"bit{b}" for b in range(64) if mask >> b & 1 and b not in PLATFORM_INFO_BITS.values()]
    return f"{mask:#x} ({', '.join(names) if names else 'none'})"


class ProductTcbs(Mapping[Product, TcbVersion]):
    """An immutable {Product: TcbVersion}, each TCB in its own product's layout (FMC on Turin)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[Product, TcbVersion]) -> None:
        for product, tcb in items.items():
            if (tcb.fmc is not None) != product.has_fmc:
                layout = "with fmc (Turin layout)" if product.has_fmc else "without fmc (Milan/Genoa layout)"
                raise ConfigurationError(
                    f"TCB minimum for {product.value}: expected a TCB {layout}, got {tcb}"
                )
        self._items = dict(sorted(items.items(), key=lambda kv: list(Product).index(kv[0])))

    def __getitem__(self, product: Product) -> TcbVersion:
        return self._items[product]

    def __iter__(self) -> Iterator[Product]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.value}: {{{t}}}" for p, t in self._items.items())
        return f"ProductTcbs({{{inner}}})"


TcbMinimum = ProductTcbs | Literal["amd-recommended"] | None


def _tcb_minimum(field: str, value: object) -> TcbMinimum:
    if value is None or isinstance(value, ProductTcbs):
        return value
    if isinstance(value, str):
        if value != AMD_RECOMMENDED:
            raise ConfigurationError(
                f"{field}: expected {AMD_RECOMMENDED!r} or a {{product: TCB}} mapping, got {value!r}"
            )
        return AMD_RECOMMENDED
    if not isinstance(value, Mapping):
        raise TypeError(f"{field}: expected a {{product: TCB}} mapping, got {type(value).__name__}")
    if not value:
        raise ConfigurationError(f"{field}: an empty mapping accepts no product; use None for no minimum")
    out: dict[Product, TcbVersion] = {}
    for key, tcb in value.items():
        if isinstance(key, Product):
            product = key
        elif isinstance(key, str):
            try:
                product = Product.from_name(key)
            except ValueError as exc:
                raise ConfigurationError(f"{field}: {exc}") from None
        else:
            raise TypeError(f"{field}: expected Product keys, got {type(key).__name__}")
        if product in out:
            raise ConfigurationError(f"{field}: {product.value} is given twice")
        out[product] = _tcb(f"{field}[{product.value.lower()}]", product, tcb)
    return ProductTcbs(out)


def _tcb(field: str, product: Product, value: object) -> TcbVersion:
    if isinstance(value, TcbVersion):
        return value  # ProductTcbs checks its layout
    if not isinstance(value, Mapping):
        raise TypeError(f"{field}: expected a TcbVersion or a {{component: int}} mapping, "
                        f"got {type(value).__name__}")
    names = (("fmc",) if product.has_fmc else ()) + ("bootloader", "tee", "snp", "microcode")
    unknown = [k for k in value if k not in names]
    if unknown:
        raise ConfigurationError(
            f"{field}: {product.value} TCB components are {', '.join(names)}; "
            f"got {', '.join(map(repr, unknown))}"
        )
    parts = {name: _int(f"{field}.{name}", value.get(name, 0), 256) for name in names}
    return TcbVersion.from_components(
        bootloader=parts["bootloader"], tee=parts["tee"], snp=parts["snp"],
        microcode=parts["microcode"], fmc=parts.get("fmc"),
    )


def _tcb_minimum_to_json(value: TcbMinimum) -> object:
    if value is None or isinstance(value, str):
        return value
    return {product.value.lower(): tcb.components() for product, tcb in value.items()}


@dataclass(frozen=True)
class Check:
    """One appraisal check: what the policy expected, what the report showed, and the verdict.

    ``setting`` names the :class:`AttestationPolicy` field that decides it
    (None for a consistency rule that is always on). ``error`` is the
    exception :meth:`AttestationPolicy.appraise` raises when it fails. A check
    that passes with a ``warning`` is accepted but below a recommendation.
    """

    name: str
    passed: bool
    expected: str
    found: str
    error: type[AttestationError]
    setting: str | None
    reason: str = ""
    warning: str | None = None

    @property
    def verdict(self) -> Literal["pass", "warn", "fail"]:
        if not self.passed:
            return "fail"
        return "warn" if self.warning else "pass"

    @property
    def message(self) -> str:
        text = f"{self.name}: expected {self.expected}, found {self.found}"
        return f"{text}; {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form, for ``blindbox attest --json``."""
        out: dict[str, object] = {
            "name": self.name, "verdict": self.verdict, "expected": self.expected,
            "found": self.found, "setting": self.setting,
            "reason": self.reason or None, "warning": self.warning,
        }
        if not self.passed:  # the error a session raises; a passing check raises none
            out["error"] = self.error.__name__
        return out


def _one_of(values: Iterable[str]) -> str:
    items = list(values)
    return items[0] if len(items) == 1 else f"one of [{', '.join(items)}]"


def _onoff(value: bool) -> str:
    return "on" if value else "off"


#: Guest-policy flag rules, by GuestPolicy attribute, with why each matters when it fails.
_GUEST_FLAGS: dict[str, str] = {
    "debug": "a debuggable guest's memory and registers can be read and changed by the host",
    "migrate_ma": "a migration agent can export the guest's memory",
    "smt_allowed": "",
    "single_socket": "",
    "cxl_allowed": "",
    "mem_aes_256_xts": "",
    "rapl_disabled": "",
    "ciphertext_hiding": "",
    "page_swap_disabled": "",
}
_FIELDS = (
    "measurements", "host_data", "family_id", "image_id", "report_id", "report_id_ma",
    "chip_ids", "allow_masked_chip_id", "id_key_digests", "require_id_block",
    "author_key_digests", "require_author_key", "signing_keys", "csp_ids", "vmpls",
    "report_versions", "min_guest_svn", *_GUEST_FLAGS, "min_abi",
    "platform_info_required", "platform_info_forbidden", "min_tcb", "min_current_tcb",
    "min_committed_tcb", "min_launch_tcb", "min_firmware", "allow_provisional_firmware",
    "min_launch_mit_vector", "min_current_mit_vector",
)


@dataclass(frozen=True, init=False)
class AttestationPolicy:
    """What a verified report must also satisfy. Every default is the secure one.

    Construct with keywords; values are validated and normalised (hex text in
    any case becomes bytes, names become enums) and unknown keywords are a
    ``TypeError``. Fields and defaults:

    - ``measurements`` (required): accepted launch measurements (48 bytes).
      A mismatch raises :class:`~blindbox.errors.InvalidEnclaveCode`.
    - ``host_data`` (32), ``family_id``, ``image_id`` (16), ``report_id``,
      ``report_id_ma`` (32): exact values, or None for any.
    - ``chip_ids``: accepted chips (64 bytes, or a Turin's 8-byte hwID). For a
      report whose chip id is masked the VCEK's hwID (which only that chip can
      use) is the identity; a VLEK-signed report carries none and never
      matches. ``allow_masked_chip_id`` (default True): whether a report with
      MASK_CHIP_ID set is accepted. Masking only hides the id from the report;
      the VCEK that signed it is still chip-unique and verified, so
      genuineness does not depend on it. Set False to require an unmasked id.
    - ``id_key_digests`` / ``author_key_digests``: accepted SHA-384 digests
      (48 bytes) of the ID key / author key; ``require_id_block`` (an
      ID-key digest is present) and ``require_author_key`` (AUTHOR_KEY_EN and
      an author-key digest are present), default False.
    - ``signing_keys`` (default VCEK and VLEK) and, for VLEK-signed reports,
      ``csp_ids``: accepted cloud providers (the VLEK's csp_id, exact, e.g.
      "CN=cc-us-east-2.amazonaws.com"), None for any.
    - ``vmpls`` (default {0}): accepted VMPLs of the requesting software.
      VMPL 0 is the most privileged level: a report from a higher VMPL can be
      requested, with arbitrary REPORT_DATA, by less privileged code in the
      same guest. Accept 1-3 only for a guest whose VMPL 0 is a measured
      paravisor or SVSM (e.g. some AWS and GCP images report VMPL 1).
    - ``report_versions`` (default 2-5), ``min_guest_svn`` (default 0).
    - Guest policy :class:`Rule` s: ``debug`` and ``migrate_ma`` (default
      forbidden), ``cxl_allowed`` (default forbidden: CXL-attached memory lies
      outside the SoC; go-sev-guest forbids it by default too),
      ``smt_allowed``, ``single_socket``, ``mem_aes_256_xts``,
      ``rapl_disabled``, ``ciphertext_hiding``, ``page_swap_disabled``
      (default any); ``min_abi`` (major, minor), default (0, 0). Failures
      raise :class:`~blindbox.errors.InsecureGuestPolicyError`.
    - ``platform_info_required`` / ``platform_info_forbidden``: PLATFORM_INFO
      bits (an integer mask, or names such as "alias_check_complete") that
      must be set / clear. Bits this version does not know are accepted unless
      forbidden.
    - ``min_tcb`` (REPORTED_TCB, the TCB the signing key was derived for),
      ``min_current_tcb``, ``min_committed_tcb``, ``min_launch_tcb``: None, a
      mapping ``{Product.MILAN: {"bootloader": 4, "snp": 24, ...}}`` (or
      TcbVersion values) in each product's own layout, compared component by
      component, or ``"amd-recommended"`` (:mod:`blindbox.snp.bulletins`). A
      mapping refuses products it does not name: a Milan minimum never
      silently applies to Turin. Unless ``min_tcb`` is "amd-recommended",
      a reported TCB below AMD's recommendation is accepted with an
      :class:`~blindbox.errors.OutdatedTcbWarning` (and a WARNING on logger
      "blindbox.attest").
    - ``min_firmware``: minimum current firmware "major.minor.build",
      compared as a version (go-sev-guest's MinimumBuild/MinimumVersion
      compare build and version separately). ``allow_provisional_firmware``
      (default False): committed TCB and firmware must equal the current ones;
      when True they may be lower (the host could then roll back to them).
    - ``min_launch_mit_vector`` / ``min_current_mit_vector``: bits that must
      all be set in the v5 mitigation vectors (a report without them fails
      any non-zero minimum).

    Always on: the reported TCB must not exceed the current TCB (a key cannot
    come from firmware newer than the running one). go-sev-guest's
    ``ReportData`` has no field here: protocol v1's binding fixes REPORT_DATA
    exactly (TLS key, nonce, data-owner policy); its trusted ID/author key
    certificates are given here as the SHA-384 digests the report carries. TCB and firmware minimums
    raise :class:`~blindbox.errors.TcbTooLowError`; everything else
    :class:`~blindbox.errors.PolicyViolationError`.

    :meth:`to_dict` gives a JSON-friendly dict with every field, and
    :meth:`from_dict` reads one back (missing keys take their defaults):
    bytes as lowercase hex strings (sets as sorted lists), rules as
    "on"/"off"/"any", signing keys as "VCEK"/"VLEK", VMPLs, report versions,
    guest SVN, platform-info masks and mitigation vectors as integers,
    ``min_abi`` as "major.minor", ``min_firmware`` as "major.minor.build",
    and TCB minimums as null, "amd-recommended", or
    ``{"milan": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
    "turin": {"fmc": 0, ...}}``.
    """

    measurements: tuple[bytes, ...]
    host_data: bytes | None
    family_id: bytes | None
    image_id: bytes | None
    report_id: bytes | None
    report_id_ma: bytes | None
    chip_ids: frozenset[bytes] | None
    allow_masked_chip_id: bool
    id_key_digests: frozenset[bytes] | None
    require_id_block: bool
    author_key_digests: frozenset[bytes] | None
    require_author_key: bool
    signing_keys: frozenset[SigningKey]
    csp_ids: frozenset[str] | None
    vmpls: frozenset[int]
    report_versions: frozenset[int]
    min_guest_svn: int
    debug: Rule
    migrate_ma: Rule
    smt_allowed: Rule
    single_socket: Rule
    cxl_allowed: Rule
    mem_aes_256_xts: Rule
    rapl_disabled: Rule
    ciphertext_hiding: Rule
    page_swap_disabled: Rule
    min_abi: tuple[int, int]
    platform_info_required: int
    platform_info_forbidden: int
    min_tcb: TcbMinimum
    min_current_tcb: TcbMinimum
    min_committed_tcb: TcbMinimum
    min_launch_tcb: TcbMinimum
    min_firmware: FirmwareVersion | None
    allow_provisional_firmware: bool
    min_launch_mit_vector: int
    min_current_mit_vector: int

    def __init__(
        self,
        *,
        measurements: Iterable[str | bytes] | str | bytes,
        host_data: str | bytes | None = None,
        family_id: str | bytes | None = None,
        image_id: str | bytes | None = None,
        report_id: str | bytes | None = None,
        report_id_ma: str | bytes | None = None,
        chip_ids: Iterable[str | bytes] | str | bytes | None = None,
        allow_masked_chip_id: bool = True,
        id_key_digests: Iterable[str | bytes] | str | bytes | None = None,
        require_id_block: bool = False,
        author_key_digests: Iterable[str | bytes] | str | bytes | None = None,
        require_author_key: bool = False,
        signing_keys: Iterable[SigningKey | str] | SigningKey | str = (SigningKey.VCEK, SigningKey.VLEK),
        csp_ids: Iterable[str] | str | None = None,
        vmpls: Iterable[int] | int = (0,),
        report_versions: Iterable[int] | int = SUPPORTED_VERSIONS,
        min_guest_svn: int = 0,
        debug: Rule | str = Rule.FORBIDDEN,
        migrate_ma: Rule | str = Rule.FORBIDDEN,
        smt_allowed: Rule | str = Rule.ANY,
        single_socket: Rule | str = Rule.ANY,
        cxl_allowed: Rule | str = Rule.FORBIDDEN,
        mem_aes_256_xts: Rule | str = Rule.ANY,
        rapl_disabled: Rule | str = Rule.ANY,
        ciphertext_hiding: Rule | str = Rule.ANY,
        page_swap_disabled: Rule | str = Rule.ANY,
        min_abi: tuple[int, int] | str = (0, 0),
        platform_info_required: int | Iterable[str] = 0,
        platform_info_forbidden: int | Iterable[str] = 0,
        min_tcb: Mapping[Any, Any] | str | None = None,
        min_current_tcb: Mapping[Any, Any] | str | None = None,
        min_committed_tcb: Mapping[Any, Any] | str | None = None,
        min_launch_tcb: Mapping[Any, Any] | str | None = None,
        min_firmware: FirmwareVersion | tuple[int, int, int] | str | None = None,
        allow_provisional_firmware: bool = False,
        min_launch_mit_vector: int = 0,
        min_current_mit_vector: int = 0,
    ) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        parsed = tuple(dict.fromkeys(parse_measurement(m) for m in _values("measurements", measurements)))
        if not parsed:
            raise ConfigurationError("measurements: expected at least one accepted launch measurement")
        put("measurements", parsed)
        for name, size, given in (("host_data", 32, host_data), ("family_id", 16, family_id),
                                  ("image_id", 16, image_id), ("report_id", 32, report_id),
                                  ("report_id_ma", 32, report_id_ma)):
            put(name, None if given is None else _hex_bytes(name, given, (size,)))
        put("chip_ids", _hex_set("chip_ids", chip_ids, (_CHIP_ID_SIZE, _TURIN_HWID_SIZE), _CHIP_ID_SIZE))
        put("allow_masked_chip_id", _bool("allow_masked_chip_id", allow_masked_chip_id))
        put("id_key_digests", _hex_set("id_key_digests", id_key_digests, (_DIGEST_SIZE,)))
        put("require_id_block", _bool("require_id_block", require_id_block))
        put("author_key_digests", _hex_set("author_key_digests", author_key_digests, (_DIGEST_SIZE,)))
        put("require_author_key", _bool("require_author_key", require_author_key))

        keys: set[SigningKey] = set()
        for key in _values("signing_keys", signing_keys):
            if isinstance(key, SigningKey):
                keys.add(key)
            elif isinstance(key, str) and key.upper() in SigningKey.__members__:
                keys.add(SigningKey[key.upper()])
            else:
                raise ConfigurationError(f"signing_keys: expected VCEK or VLEK, got {key!r}")
        if not keys:
            raise ConfigurationError("signing_keys: an empty set accepts nothing")
        put("signing_keys", frozenset(keys))
        if csp_ids is None:
            put("csp_ids", None)
        else:
            csps = _values("csp_ids", csp_ids)
            printable = all(isinstance(c, str) and c and c.isascii() and c.isprintable() for c in csps)
            if not csps or not printable:
                raise ConfigurationError(
                    "csp_ids: expected non-empty printable ASCII strings such as "
                    "'CN=cc-us-east-2.amazonaws.com', "
                    f"got {csps!r}"
                )
            if SigningKey.VLEK not in keys:
                raise ConfigurationError("csp_ids: only VLEK-signed reports carry a csp_id, "
                                         "but signing_keys does not accept VLEK")
            put("csp_ids", frozenset(csps))
        put("vmpls", _int_set("vmpls", vmpls, range(4)))
        put("report_versions", _int_set("report_versions", report_versions, SUPPORTED_VERSIONS))
        put("min_guest_svn", _int("min_guest_svn", min_guest_svn, _U32))
        for name, rule in (("debug", debug), ("migrate_ma", migrate_ma), ("smt_allowed", smt_allowed),
                           ("single_socket", single_socket), ("cxl_allowed", cxl_allowed),
                           ("mem_aes_256_xts", mem_aes_256_xts), ("rapl_disabled", rapl_disabled),
                           ("ciphertext_hiding", ciphertext_hiding),
                           ("page_swap_disabled", page_swap_disabled)):
            put(name, Rule.parse(rule, name))
        abi = _dotted("min_abi", min_abi, 2)
        put("min_abi", (abi[0], abi[1]))
        required = _platform_mask("platform_info_required", platform_info_required)
        forbidden = _platform_mask("platform_info_forbidden", platform_info_forbidden)
        if required & forbidden:
            raise ConfigurationError(
                "platform_info_required and platform_info_forbidden both name "
                f"{_describe_mask(required & forbidden)}"
            )
        put("platform_info_required", required)
        put("platform_info_forbidden", forbidden)
        for name, minimum in (("min_tcb", min_tcb), ("min_current_tcb", min_current_tcb),
                              ("min_committed_tcb", min_committed_tcb), ("min_launch_tcb", min_launch_tcb)):
            put(name, _tcb_minimum(name, minimum))
        if min_firmware is None:
            put("min_firmware", None)
        else:
            major, minor, build = _dotted("min_firmware", min_firmware, 3)
            put("min_firmware", FirmwareVersion(major, minor, build))
        put("allow_provisional_firmware", _bool("allow_provisional_firmware", allow_provisional_firmware))
        put("min_launch_mit_vector", _int("min_launch_mit_vector", min_launch_mit_vector, _U64))
        put("min_current_mit_vector", _int("min_current_mit_vector", min_current_mit_vector, _U64))

    @classmethod
    def for_measurements(cls, measurements: Iterable[str | bytes] | str | bytes,
                         **kwargs: Any) -> AttestationPolicy:
        """A policy accepting ``measurements``, with any other field as a keyword."""
        return cls(measurements=measurements, **kwargs)

    # --- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field in JSON-friendly form (the format is in the class docstring)."""
        def hexes(values: Iterable[bytes] | None) -> list[str] | None:
            return None if values is None else sorted(v.hex() for v in values)

        def opt_hex(value: bytes | None) -> str | None:
            return None if value is None else value.hex()

        out: dict[str, Any] = {
            "measurements": [m.hex() for m in self.measurements],
            "host_data": opt_hex(self.host_data),
            "family_id": opt_hex(self.family_id),
            "image_id": opt_hex(self.image_id),
            "report_id": opt_hex(self.report_id),
            "report_id_ma": opt_hex(self.report_id_ma),
            "chip_ids": hexes(self.chip_ids),
            "allow_masked_chip_id": self.allow_masked_chip_id,
            "id_key_digests": hexes(self.id_key_digests),
            "require_id_block": self.require_id_block,
            "author_key_digests": hexes(self.author_key_digests),
            "require_author_key": self.require_author_key,
            "signing_keys": sorted(k.name for k in self.signing_keys),
            "csp_ids": None if self.csp_ids is None else sorted(self.csp_ids),
            "vmpls": sorted(self.vmpls),
            "report_versions": sorted(self.report_versions),
            "min_guest_svn": self.min_guest_svn,
        }
        out.update({name: getattr(self, name).value for name in _GUEST_FLAGS})
        out.update({
            "min_abi": f"{self.min_abi[0]}.{self.min_abi[1]}",
            "platform_info_required": self.platform_info_required,
            "platform_info_forbidden": self.platform_info_forbidden,
            "min_tcb": _tcb_minimum_to_json(self.min_tcb),
            "min_current_tcb": _tcb_minimum_to_json(self.min_current_tcb),
            "min_committed_tcb": _tcb_minimum_to_json(self.min_committed_tcb),
            "min_launch_tcb": _tcb_minimum_to_json(self.min_launch_tcb),
            "min_firmware": None if self.min_firmware is None else str(self.min_firmware),
            "allow_provisional_firmware": self.allow_provisional_firmware,
            "min_launch_mit_vector": self.min_launch_mit_vector,
            "min_current_mit_vector": self.min_current_mit_vector,
        })
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttestationPolicy:
        """Read :meth:`to_dict`'s format; unknown keys are a ``TypeError`` naming them."""
        if not isinstance(data, Mapping):
            raise TypeError(f"policy: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise TypeError(f"policy: unknown field(s) {', '.join(map(repr, unknown))}")
        return cls(**data)

    # --- appraisal -------------------------------------------------------------------------------

    def appraise(self, verified: VerifiedReport) -> None:
        """Raise the precise :class:`~blindbox.errors.AttestationError` subclass on the first failure.

        An accepted report below a recommendation (AMD's bulletins) is
        reported with an :class:`~blindbox.errors.OutdatedTcbWarning` and a
        WARNING on logger "blindbox.attest". Every check runs; the text of a
        check is built only when it fails or warns.
        """
        warned: list[Check] = []
        for clean, describe in self._evaluate(verified):
            if clean:
                continue
            check = describe()
            if not check.passed:
                raise check.error(check.message)
            warned.append(check)
        for check in warned:
            text = f"{check.name}: {check.warning}"
            log.warning("accepted enclave below recommendation: %s", text)
            warnings.warn(OutdatedTcbWarning(text), stacklevel=2)

    def checks(self, verified: VerifiedReport) -> list[Check]:
        """Every check, in order, evaluated without stopping (for display)."""
        return [describe() for _, describe in self._evaluate(verified)]

    def _evaluate(self, v: VerifiedReport) -> Iterator[_Outcome]:
        """Each check's outcome in order: (passed without a warning, its :class:`Check` on demand)."""
        for step in self._steps():
            yield from step(v)

    def _steps(self) -> tuple[Callable[[VerifiedReport], Iterable[_Outcome]], ...]:
        return (
            self._check_measurement, self._check_guest_policy, self._check_signing_key,
            self._check_report, self._check_identity, self._check_key_digests, self._check_chip,
            self._check_tcbs, self._check_firmware, self._check_platform_info,
            self._check_mitigations,
        )

    def _check_measurement(self, v: VerifiedReport) -> Iterable[_Outcome]:
        found = v.report.measurement
        ok = any(hmac.compare_digest(found, m) for m in self.measurements)
        yield ok, lambda: Check("measurement", ok,
                                f"one of [{', '.join(m.hex() for m in self.measurements)}]",
                                found.hex(), InvalidEnclaveCode, "measurements")

    def _check_guest_policy(self, v: VerifiedReport) -> Iterable[_Outcome]:
        policy = v.report.policy
        for name, why in _GUEST_FLAGS.items():
            yield self._guest_flag_check(name, why, getattr(self, name), policy)
        found = (policy.abi_major, policy.abi_minor)
        abi_ok = found >= self.min_abi
        yield abi_ok, lambda: Check("guest_policy.abi", abi_ok, f">= {self.min_abi[0]}.{self.min_abi[1]}",
                                    f"{found[0]}.{found[1]}", InsecureGuestPolicyError, "min_abi")

    @staticmethod
    def _guest_flag_check(name: str, why: str, rule: Rule, policy: GuestPolicy) -> _Outcome:
        value: bool = getattr(policy, name)
        ok = rule.admits(value)
        return ok, lambda: Check(f"guest_policy.{name}", ok, rule.value,
                                 f"{_onoff(value)} (policy {policy.raw:#x})",
                                 InsecureGuestPolicyError, name, "" if ok else why)

    def _check_signing_key(self, v: VerifiedReport) -> Iterable[_Outcome]:
        key = v.signing_key
        key_ok = key in self.signing_keys
        yield key_ok, lambda: Check("signing_key", key_ok, _one_of(sorted(k.name for k in self.signing_keys)),
                                    key.name, PolicyViolationError, "signing_keys")
        csp = v.extensions.csp_id
        if key is not SigningKey.VLEK:
            found = f"none ({key.name}-signed)"
            ok = True
        else:
            found = csp if csp is not None else "none"
            ok = self.csp_ids is None or csp in self.csp_ids
        yield ok, lambda: Check("csp_id", ok,
                                "any" if self.csp_ids is None else _one_of(sorted(self.csp_ids)),
                                found, PolicyViolationError, "csp_ids")

    def _check_report(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        version_ok = report.version in self.report_versions
        yield version_ok, lambda: Check("report_version", version_ok,
                                        _one_of(map(str, sorted(self.report_versions))), str(report.version),
                                        PolicyViolationError, "report_versions")
        vmpl_ok = report.vmpl in self.vmpls
        yield vmpl_ok, lambda: Check("vmpl", vmpl_ok, _one_of(map(str, sorted(self.vmpls))),
                                     str(report.vmpl), PolicyViolationError, "vmpls",
                                     "" if vmpl_ok else "less privileged code in the guest requested it")
        svn_ok = report.guest_svn >= self.min_guest_svn
        yield svn_ok, lambda: Check("guest_svn", svn_ok, f">= {self.min_guest_svn}", str(report.guest_svn),
                                    PolicyViolationError, "min_guest_svn")

    def _check_identity(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        for name in ("host_data", "family_id", "image_id", "report_id", "report_id_ma"):
            yield self._identity_check(name, getattr(self, name), getattr(report, name))

    @staticmethod
    def _identity_check(name: str, wanted: bytes | None, found: bytes) -> _Outcome:
        ok = wanted is None or hmac.compare_digest(found, wanted)
        return ok, lambda: Check(name, ok, "any" if wanted is None else wanted.hex(), found.hex(),
                                 PolicyViolationError, name)

    def _check_key_digests(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        id_digest = report.id_key_digest
        has_id = any(id_digest)
        id_ok = has_id or not self.require_id_block
        yield id_ok, lambda: Check("id_block", id_ok,
                                   "an ID block (non-zero id_key_digest)" if self.require_id_block else "any",
                                   id_digest.hex() if has_id else "none (id_key_digest is zero)",
                                   PolicyViolationError, "require_id_block")
        yield self._digest_check("id_key_digest", "id_key_digests", self.id_key_digests,
                                 id_digest if has_id else None, "none (id_key_digest is zero)")
        author = report.author_key_digest
        key_enabled = report.signer_info.author_key_enabled
        enabled = key_enabled and any(author)
        author_found = (author.hex() if enabled else
                        "none (AUTHOR_KEY_EN clear)" if not key_enabled
                        else "none (author_key_digest is zero)")
        author_ok = enabled or not self.require_author_key
        yield author_ok, lambda: Check("author_key", author_ok,
                                       "an author key (AUTHOR_KEY_EN set, non-zero digest)"
                                       if self.require_author_key else "any",
                                       author_found, PolicyViolationError, "require_author_key")
        yield self._digest_check("author_key_digest", "author_key_digests", self.author_key_digests,
                                 author if enabled else None, author_found)

    @staticmethod
    def _digest_check(name: str, setting: str, accepted: frozenset[bytes] | None,
                      found: bytes | None, absent: str) -> _Outcome:
        ok = accepted is None or (found is not None and any(hmac.compare_digest(found, d) for d in accepted))
        return ok, lambda: Check(name, ok,
                                 "any" if accepted is None else _one_of(sorted(d.hex() for d in accepted)),
                                 absent if found is None else found.hex(), PolicyViolationError, setting)

    def _check_chip(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        masked = report.chip_id_masked
        masked_ok = self.allow_masked_chip_id or not masked
        yield masked_ok, lambda: Check("chip_id_masked", masked_ok,
                                       "masked or not" if self.allow_masked_chip_id else "not masked",
                                       "masked (MASK_CHIP_ID set)" if masked else "not masked",
                                       PolicyViolationError, "allow_masked_chip_id")
        width = v.product.hwid_length
        identity: bytes | None = None
        source = ""
        if v.signing_key is SigningKey.VLEK:
            identity = None  # a VLEK is per cloud provider: it vouches for no chip identity
        elif not masked and any(report.chip_id):
            identity = report.chip_id
        elif v.signing_key is SigningKey.VCEK and v.extensions.hwid is not None:
            identity = v.extensions.hwid.ljust(_CHIP_ID_SIZE, b"\x00")
            source = " (VCEK hwID; the report masks its chip_id)"
        accepted = self.chip_ids
        ok = accepted is None or (identity is not None
                                  and any(hmac.compare_digest(identity, c) for c in accepted))

        def describe() -> Check:
            found = (identity[:width].hex() + source if identity is not None
                     else f"none ({v.signing_key.name}-signed report with an all-zero chip_id)")
            expected = "any" if accepted is None else _one_of(sorted(
                c[:_TURIN_HWID_SIZE].hex() if not any(c[_TURIN_HWID_SIZE:]) else c.hex() for c in accepted))
            return Check("chip_id", ok, expected, found, PolicyViolationError, "chip_ids")

        yield ok, describe

    def _check_tcbs(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        for name, setting, tcb in (
            ("reported_tcb", "min_tcb", report.reported_tcb),
            ("current_tcb", "min_current_tcb", report.current_tcb),
            ("committed_tcb", "min_committed_tcb", report.committed_tcb),
            ("launch_tcb", "min_launch_tcb", report.launch_tcb),
        ):
            yield self._tcb_check(f"{name}.minimum", setting, getattr(self, setting), tcb, v)
        if self.min_tcb != AMD_RECOMMENDED:
            advisory_ok, advise = self._tcb_check("reported_tcb.amd_recommended", "min_tcb", AMD_RECOMMENDED,
                                                  report.reported_tcb, v)

            def describe_advisory() -> Check:
                advisory = advise()
                warning = (f"expected {advisory.expected}, found {advisory.found}; {advisory.reason}; "
                           "set min_tcb='amd-recommended' to refuse such platforms")
                return Check(advisory.name, True, advisory.expected, advisory.found, TcbTooLowError,
                             "min_tcb", warning=None if advisory.passed else warning)

            yield advisory_ok, describe_advisory  # passes either way; only warns when below
        reported, current = report.reported_tcb, report.current_tcb
        ordered = current.at_least(reported)
        yield ordered, lambda: Check("reported_tcb.not_above_current", ordered,
                                     "reported_tcb <= current_tcb, component-wise",
                                     f"reported {reported}, current {current}", PolicyViolationError, None,
                                     "" if ordered else
                                     "the signing key cannot come from firmware newer than the running one")

    @staticmethod
    def _tcb_check(name: str, setting: str, minimum: TcbMinimum, tcb: TcbVersion,
                   v: VerifiedReport) -> _Outcome:
        product = v.product
        if minimum is None:
            return True, lambda: Check(name, True, "any", str(tcb), TcbTooLowError, setting)
        if isinstance(minimum, str):
            floor = bulletins.recommended_tcb(product, v.report.cpuid)
        elif product not in minimum:
            return False, lambda: Check(
                name, False, f"a {product.value} platform among "
                f"{', '.join(p.value for p in minimum)} (the products {setting} names)",
                f"{product.value} ({tcb})", TcbTooLowError, setting,
                f"add a {product.value} minimum to {setting} to accept it")
        else:
            floor = minimum[product]
        ok = tcb.at_least(floor)

        def describe() -> Check:
            sources: dict[str, list[str]] = {}
            if isinstance(minimum, str):
                for entry in bulletins.recommended_floors(product, v.report.cpuid):
                    for component, _ in entry.minimum:
                        sources.setdefault(component, []).append(entry.bulletin.id)
                label = f"AMD-recommended for {product.value} as of {bulletins.AS_OF.isoformat()}"
            else:
                label = product.value
            found_parts, floor_parts = tcb.components(), floor.components()
            below = [
                f"{k} {found_parts[k]} < {floor_parts[k]}"
                + (f" ({', '.join(sorted(set(sources[k])))})" if k in sources else "")
                for k in floor_parts if found_parts[k] < floor_parts[k]
            ]
            return Check(name, ok, f">= {floor} ({label})", str(tcb), TcbTooLowError, setting,
                         "" if ok else "below in " + ", ".join(below))

        return ok, describe

    def _check_firmware(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        current, committed = report.current_version, report.committed_version
        wanted = self.min_firmware
        firmware_ok = wanted is None or current.as_tuple() >= wanted.as_tuple()
        yield firmware_ok, lambda: Check("firmware.minimum", firmware_ok,
                                         "any" if wanted is None else f">= {wanted}", str(current),
                                         TcbTooLowError, "min_firmware")
        provisional = self.allow_provisional_firmware
        tcb_ok = (report.current_tcb.at_least(report.committed_tcb) if provisional
                  else report.committed_tcb == report.current_tcb)
        yield tcb_ok, lambda: Check(
            "committed_tcb.provisional", tcb_ok,
            "committed_tcb <= current_tcb" if provisional else "committed_tcb == current_tcb",
            f"committed {report.committed_tcb}, current {report.current_tcb}",
            PolicyViolationError, "allow_provisional_firmware",
            "" if tcb_ok else "provisional firmware: the host can roll back to the committed TCB")
        version_ok = (committed.as_tuple() <= current.as_tuple() if provisional
                      else committed == current)
        yield version_ok, lambda: Check(
            "committed_firmware.provisional", version_ok,
            "committed <= current" if provisional else "committed == current",
            f"committed {committed}, current {current}", PolicyViolationError,
            "allow_provisional_firmware",
            "" if version_ok else "provisional firmware: the host can roll back to the committed version")

    def _check_platform_info(self, v: VerifiedReport) -> Iterable[_Outcome]:
        raw = v.report.platform_info.raw
        required, forbidden = self.platform_info_required, self.platform_info_forbidden
        required_ok = raw & required == required
        yield required_ok, lambda: Check(
            "platform_info.required", required_ok,
            f"set: {_describe_mask(required)}" if required else "any",
            _describe_mask(raw), PolicyViolationError, "platform_info_required",
            "" if required_ok else f"missing {_describe_mask(required & ~raw)}")
        forbidden_ok = not raw & forbidden
        yield forbidden_ok, lambda: Check(
            "platform_info.forbidden", forbidden_ok,
            f"clear: {_describe_mask(forbidden)}" if forbidden else "any",
            _describe_mask(raw), PolicyViolationError, "platform_info_forbidden",
            "" if forbidden_ok else f"set {_describe_mask(raw & forbidden)}")

    def _check_mitigations(self, v: VerifiedReport) -> Iterable[_Outcome]:
        report = v.report
        for name, setting, found in (
            ("launch_mit_vector", "min_launch_mit_vector", report.launch_mit_vector),
            ("current_mit_vector", "min_current_mit_vector", report.current_mit_vector),
        ):
            yield self._mitigation_check(name, setting, getattr(self, setting), found, report.version)

    @staticmethod
    def _mitigation_check(name: str, setting: str, wanted: int, found: int | None, version: int) -> _Outcome:
        ok = wanted == 0 or (found is not None and found & wanted == wanted)
        return ok, lambda: Check(
            name, ok, f"all of {wanted:#x}" if wanted else "any",
            f"{found:#x}" if found is not None else f"not reported (v{version} report)",
            PolicyViolationError, setting)


#: A check's outcome: whether it passed without a warning, and its :class:`Check` built on demand.
_Outcome = tuple[bool, Callable[[], Check]]


__all__ = [
    "AMD_RECOMMENDED",
    "MEASUREMENT_SIZE",
    "AttestationPolicy",
    "Check",
    "ProductTcbs",
    "Rule",
    "parse_measurement",
]
