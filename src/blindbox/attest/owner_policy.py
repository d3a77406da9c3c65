"""The data-owner policy document (v1): who may call the enclave, and where it may connect.

Protocol v1 binds SHA-256 of the document's exact bytes into report_data, so
the bytes must be unambiguous: :meth:`OwnerPolicy.from_bytes` accepts only the
canonical serialisation (members sorted, no whitespace, lists sorted and free
of duplicates, lowercase hex) and refuses unknown members, since an ignored
member would be a rule the client believes in and the enclave does not keep.
:class:`PolicyRequirements` is the client's side: what the served policy must
say, checked after the evidence verified (and so after its bytes are known to
be the ones the enclave attested). Format reference: ``docs/owner-policy.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blindbox.attest import strict_json
from blindbox.errors import ConfigurationError, PolicyMismatchError

POLICY_VERSION = 1
MAX_POLICY_BYTES = 16 * 1024
"""Upper bound of a policy document (it travels inside the 64 KiB evidence document)."""
DENY_ALL = "deny-all"
ALLOWLIST = "allowlist"

_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_AUTH_MEMBERS = ("bearer_token_sha256", "client_certificate_spki_sha256", "required")


def check_host(host: object, where: str = "host") -> str:
    """``host`` if it is a lowercase DNS name (LDH labels, no trailing dot) or a canonical IP literal.

    No wildcards: an egress rule names exactly the hosts it admits.
    """
    if not isinstance(host, str):
        raise ConfigurationError(f"{where}: expected a host name string, found {_show(host)}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        # IPv4-mapped IPv6 is refused: its text form differs between Python versions.
        mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
        if "%" in host or mapped or str(address) != host:
            raise ConfigurationError(
                f"{where}: expected an IP literal in canonical form, without a zone and not "
                f"IPv4-mapped ({address}), found {_show(host)}"
            )
        return host
    labels = host.split(".")
    if (
        not 1 <= len(host) <= 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ConfigurationError(
            f"{where}: expected a lowercase DNS host name (letters, digits and hyphens; no wildcard, "
            f"no trailing dot) or an IP address, found {_show(host)}"
        )
    return host


def _check_port(port: object, where: str) -> int:
    if type(port) is not int or not 1 <= port <= 65535:
        raise ConfigurationError(f"{where}: expected a port number from 1 to 65535, found {_show(port)}")
    return port


def _items(values: object, where: str, expected: str) -> list[Any]:
    """The items of a list-like ``values``; a str, bytes or mapping is refused, not iterated.

    (Iterating ``{"host": [443]}`` would yield its keys and silently drop what the values said.)
    """
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Collection):
        raise ConfigurationError(f"{where}: expected {expected}, found {_show(values)}")
    return list(values)


def _check_digests(values: object, where: str) -> tuple[str, ...]:
    out: list[str] = []
    for index, value in enumerate(_items(values, where, "a list of SHA-256 hex digests")):
        if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
            raise ConfigurationError(
                f"{where}[{index}]: expected 64 lowercase hex characters (a SHA-256 digest), "
                f"found {_show(value)}"
            )
        out.append(value)
    if len(set(out)) != len(out):
        raise ConfigurationError(f"{where}: expected distinct digests, found a duplicate")
    return tuple(sorted(out))


@dataclass(frozen=True)
class EgressRule:
    """Outbound connections the enclave may open: to ``host`` on each of ``ports``."""

    host: str
    ports: Sequence[int]

    def __post_init__(self) -> None:
        check_host(self.host, "egress host")
        where = f"egress {self.host} ports"
        items = _items(self.ports, where, "a non-empty list of ports")
        if not items:
            raise ConfigurationError(f"{where}: expected a non-empty list of ports, found []")
        ports = [_check_port(p, where) for p in items]
        if len(set(ports)) != len(ports):
            raise ConfigurationError(f"egress {self.host} ports: expected distinct ports, found a duplicate")
        object.__setattr__(self, "ports", tuple(sorted(ports)))


@dataclass(frozen=True)
class OwnerPolicy:
    """A data-owner policy, v1. Order of list items is not meaningful (they are kept sorted).

    ``authentication_required`` with the accepted bearer-token SHA-256 digests
    and client-certificate SPKI SHA-256 digests (at least one accepted
    credential when required; none when not, so a listed credential always
    means it is enforced). ``egress_allow`` empty means deny-all.
    """

    authentication_required: bool
    bearer_token_sha256: Sequence[str] = ()
    client_certificate_spki_sha256: Sequence[str] = ()
    egress_allow: Sequence[EgressRule] = ()

    def __post_init__(self) -> None:
        if type(self.authentication_required) is not bool:
            raise ConfigurationError(
                "authentication.required: expected true or false, "
                f"found {_show(self.authentication_required)}"
            )
        tokens = _check_digests(self.bearer_token_sha256, "authentication.bearer_token_sha256")
        spkis = _check_digests(
            self.client_certificate_spki_sha256, "authentication.client_certificate_spki_sha256"
        )
        if self.authentication_required and not (tokens or spkis):
            raise ConfigurationError(
                "authentication: expected at least one accepted bearer-token or client-certificate digest "
                "when authentication is required, found none (nobody could call the enclave)"
            )
        if not self.authentication_required and (tokens or spkis):
            raise ConfigurationError(
                f"authentication: expected no accepted credentials when authentication is not required, "
                f"found {len(tokens) + len(spkis)} (a listed credential must mean it is enforced)"
            )
        rules = _items(self.egress_allow, "egress.allow", "a list of egress rules")
        for rule in rules:
            if not isinstance(rule, EgressRule):
                raise ConfigurationError(f"egress.allow: expected EgressRule items, found {_show(rule)}")
        hosts = [rule.host for rule in rules]
        if len(set(hosts)) != len(hosts):
            raise ConfigurationError("egress.allow: expected one rule per host, found a host twice")
        object.__setattr__(self, "bearer_token_sha256", tokens)
        object.__setattr__(self, "client_certificate_spki_sha256", spkis)
        object.__setattr__(self, "egress_allow", tuple(sorted(rules, key=lambda r: r.host)))
        size = len(self.to_bytes())
        if size > MAX_POLICY_BYTES:
            raise ConfigurationError(f"policy: expected at most {MAX_POLICY_BYTES} bytes, found {size}")

    @property
    def deny_all_egress(self) -> bool:
        return not self.egress_allow

    def to_dict(self) -> dict[str, Any]:
        """The document as JSON-ready data."""
        egress: dict[str, Any] = {"mode": DENY_ALL}
        if self.egress_allow:
            allow = [{"host": rule.host, "ports": list(rule.ports)} for rule in self.egress_allow]
            egress = {"mode": ALLOWLIST, "allow": allow}
        return {
            "version": POLICY_VERSION,
            "authentication": {
                "required": self.authentication_required,
                "bearer_token_sha256": list(self.bearer_token_sha256),
                "client_certificate_spki_sha256": list(self.client_certificate_spki_sha256),
            },
            "egress": egress,
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes: what the enclave serves and protocol v1 binds."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return text.encode("ascii")

    def digest(self) -> str:
        """SHA-256 of the canonical bytes, lowercase hex (what ``PolicyRequirements.exact_digest`` pins)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> OwnerPolicy:
        """Parse served policy bytes: valid v1 content **and** the canonical serialisation, or an error."""
        policy = cls.from_json(data)
        canonical = policy.to_bytes()
        if canonical != data:
            at = next(
                (i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b),
                min(len(canonical), len(data)),
            )
            raise ConfigurationError(
                "policy: expected the canonical serialisation (sorted members, no whitespace, sorted "
                f"lists), found different bytes (first difference at byte {at}); a digest must identify "
                "exactly one document"
            )
        return policy

    @classmethod
    def from_json(cls, data: str | bytes) -> OwnerPolicy:
        """Parse a policy written by a person (any formatting, any list order); content rules as strict.

        Use this to load an operator's file; serve :meth:`to_bytes` of the result.
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        if not isinstance(data, bytes):
            raise ConfigurationError(f"policy: expected bytes, found {type(data).__name__}")
        if len(data) > MAX_POLICY_BYTES:
            raise ConfigurationError(f"policy: expected at most {MAX_POLICY_BYTES} bytes, found {len(data)}")
        try:
            doc = strict_json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigurationError(f"policy: expected a JSON object, found invalid JSON ({exc})") from None
        return _from_document(doc)


def _from_document(doc: object) -> OwnerPolicy:
    version = doc.get("version", POLICY_VERSION) if isinstance(doc, dict) else POLICY_VERSION
    if type(version) is not int or version != POLICY_VERSION:  # first: a newer document says so
        raise ConfigurationError(f"policy.version: expected {POLICY_VERSION}, found {_show(version)}")
    top = _members(doc, "policy", ("authentication", "egress", "version"))
    auth = _members(top["authentication"], "authentication", _AUTH_MEMBERS)
    for name in ("bearer_token_sha256", "client_certificate_spki_sha256"):
        if not isinstance(auth[name], list):
            raise ConfigurationError(f"authentication.{name}: expected a list, found {_show(auth[name])}")
    egress = top["egress"]
    mode = egress.get("mode") if isinstance(egress, dict) else None
    rules: list[EgressRule] = []
    if mode == ALLOWLIST:
        egress = _members(egress, "egress", ("allow", "mode"))
        allow = egress["allow"]
        if not isinstance(allow, list) or not allow:
            raise ConfigurationError(
                f"egress.allow: expected a non-empty list (use mode {DENY_ALL!r} to allow nothing), "
                f"found {_show(allow)}"
            )
        for index, item in enumerate(allow):
            entry = _members(item, f"egress.allow[{index}]", ("host", "ports"))
            if not isinstance(entry["ports"], list):
                raise ConfigurationError(
                    f"egress.allow[{index}].ports: expected a list, found {_show(entry['ports'])}"
                )
            try:
                rules.append(EgressRule(host=entry["host"], ports=entry["ports"]))
            except ConfigurationError as exc:
                raise ConfigurationError(f"egress.allow[{index}]: {exc}") from None
    elif mode == DENY_ALL:
        _members(egress, "egress", ("mode",))
    else:
        raise ConfigurationError(
            f"egress.mode: expected {DENY_ALL!r} or {ALLOWLIST!r}, found "
            f"{_show(mode) if isinstance(egress, dict) else 'no egress object'}"
        )
    return OwnerPolicy(
        authentication_required=auth["required"],
        bearer_token_sha256=auth["bearer_token_sha256"],
        client_certificate_spki_sha256=auth["client_certificate_spki_sha256"],
        egress_allow=rules,
    )


def _members(value: object, where: str, names: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as an object with exactly the members ``names`` (all required, nothing else)."""
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: expected a JSON object, found {_show(value)}")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown member {unknown[0]!r} (v1 allows only {', '.join(names)}); "
            "a security document is never read partially"
        )
    for name in names:
        if name not in value:
            raise ConfigurationError(f"{where}.{name}: required member is missing")
    return value




def _show(value: object) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------- client side

Destination = tuple[str, int | None]


@dataclass(frozen=True)
class PolicyRequirements:
    """What the enclave's served data-owner policy must say; ``None`` means "don't care".

    - ``exact_digest``: the policy's SHA-256 (hex) must be exactly this;
    - ``authentication_required``: the policy must (True) or must not (False) require authentication;
    - ``egress_subset_of``: the destinations the policy may allow; it must deny all egress or allow
      only these (an empty collection requires deny-all). Either a collection of hosts (any port)
      and ``(host, port)`` pairs (``[host, port]`` lists too, as JSON gives them), or a mapping
      ``{host: [ports]}``, read as those ports of each host (never as "the keys, any port").

    Evidence without a policy fails every requirement. At least one requirement must be given.
    """

    exact_digest: str | None = None
    authentication_required: bool | None = None
    egress_subset_of: Collection[str | tuple[str, int]] | None = None

    def __post_init__(self) -> None:
        if (self.exact_digest, self.authentication_required, self.egress_subset_of) == (None, None, None):
            raise ConfigurationError(
                "policy requirements: expected at least one of exact_digest, authentication_required, "
                "egress_subset_of, found none"
            )
        if self.exact_digest is not None:
            digest = self.exact_digest.lower() if isinstance(self.exact_digest, str) else self.exact_digest
            if not isinstance(digest, str) or not _HEX64_RE.fullmatch(digest):
                raise ConfigurationError(
                    f"exact_digest: expected 64 hex characters (SHA-256 of the policy bytes), found "
                    f"{_show(self.exact_digest)}"
                )
            object.__setattr__(self, "exact_digest", digest)
        if self.authentication_required is not None and type(self.authentication_required) is not bool:
            raise ConfigurationError(
                "authentication_required: expected true, false or None, "
                f"found {_show(self.authentication_required)}"
            )
        if self.egress_subset_of is not None:
            object.__setattr__(self, "egress_subset_of", _normalise_destinations(self.egress_subset_of))

    def check(self, policy: bytes | None) -> None:
        """Raise :class:`~blindbox.errors.PolicyMismatchError` unless the served policy bytes meet them."""
        if policy is None:
            raise PolicyMismatchError(
                f"data-owner policy: expected a policy document ({self._describe()}), found none: the "
                "enclave serves no data-owner policy"
            )
        if self.exact_digest is not None:
            found = hashlib.sha256(policy).hexdigest()
            if not hmac.compare_digest(found, self.exact_digest):
                raise PolicyMismatchError(
                    f"data-owner policy sha256: expected {self.exact_digest}, found {found}"
                )
        try:
            parsed = OwnerPolicy.from_bytes(policy)
        except ConfigurationError as exc:
            raise PolicyMismatchError(
                f"data-owner policy: expected a canonical v1 policy document, found an invalid one ({exc})"
            ) from None
        wanted = self.authentication_required
        if wanted is not None and parsed.authentication_required is not wanted:
            raise PolicyMismatchError(
                f"data-owner policy authentication.required: expected {str(wanted).lower()}, "
                f"found {str(parsed.authentication_required).lower()}"
            )
        if self.egress_subset_of is not None:
            admitted = set(self.egress_subset_of)  # a set: membership per served port stays O(1)
            outside = [
                (rule.host, port)
                for rule in parsed.egress_allow
                for port in rule.ports
                if rule.host not in admitted and (rule.host, port) not in admitted
            ]
            if outside:
                allowed = ", ".join(_destination(d) for d in self.egress_destinations()) or "nothing"
                raise PolicyMismatchError(
                    f"data-owner policy egress: expected deny-all or destinations within [{allowed}], "
                    f"found {', '.join(_destination(d) for d in outside)} outside it"
                )

    def egress_destinations(self) -> tuple[Destination, ...]:
        """``egress_subset_of`` as ``(host, port or None for any port)`` pairs, sorted."""
        if self.egress_subset_of is None:
            return ()
        return tuple(
            (item, None) if isinstance(item, str) else (item[0], item[1]) for item in self.egress_subset_of
        )

    def _describe(self) -> str:
        parts = []
        if self.exact_digest is not None:
            parts.append(f"sha256 {self.exact_digest}")
        if self.authentication_required is not None:
            parts.append(f"authentication {'required' if self.authentication_required else 'not required'}")
        if self.egress_subset_of is not None:
            within = ", ".join(_destination(d) for d in self.egress_destinations())
            parts.append(f"egress within [{within}]")
        return "; ".join(parts)


def _normalise_destinations(items: object) -> tuple[str | tuple[str, int], ...]:
    hosts: set[str] = set()
    pairs: set[tuple[str, int]] = set()
    valid: set[str] = set()

    def check(host: object, where: str) -> str:  # each distinct host is checked once, not once per port
        checked = host if isinstance(host, str) and host in valid else check_host(host, where)
        valid.add(checked)
        return checked

    if isinstance(items, Mapping):
        for host, ports in items.items():
            where = f"egress_subset_of[{_show(host)}]"
            check_host(host, where)
            listed = _items(ports, where, "a non-empty list of ports for this host (a plain host in a "
                            "list means any port)")
            if not listed:
                raise ConfigurationError(f"{where}: expected a non-empty list of ports, found []")
            pairs.update((host, _check_port(port, where)) for port in listed)
        return tuple(sorted(pairs))
    expected = "a list of hosts and (host, port) pairs, or a mapping {host: [ports]}"
    for index, item in enumerate(_items(items, "egress_subset_of", expected)):
        where = f"egress_subset_of[{index}]"
        if isinstance(item, str):
            hosts.add(check(item, where))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.add((check(item[0], where), _check_port(item[1], where)))
        else:
            raise ConfigurationError(
                f"{where}: expected a host or a (host, port) pair, found {_show(item)}"
            )
    out: list[str | tuple[str, int]] = list(hosts)
    out.extend(pair for pair in pairs if pair[0] not in hosts)
    return tuple(sorted(out, key=lambda d: (d, 0) if isinstance(d, str) else d))


def _destination(destination: tuple[str, int | None]) -> str:
    host, port = destination
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{'*' if port is None else port}"
