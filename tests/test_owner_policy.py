"""The data-owner policy document (blindbox.attest.owner_policy): canonical bytes and client requirements."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from blindbox.attest.binding import expected_report_data
from blindbox.attest.owner_policy import MAX_POLICY_BYTES, EgressRule, OwnerPolicy, PolicyRequirements
from blindbox.errors import AttestationError, ConfigurationError, PolicyMismatchError

TOKEN = hashlib.sha256(b"token-1").hexdigest()
TOKEN2 = hashlib.sha256(b"token-2").hexdigest()
SPKI = hashlib.sha256(b"client-spki").hexdigest()

EXAMPLE = OwnerPolicy(
    authentication_required=True,
    bearer_token_sha256=[TOKEN2, TOKEN],
    client_certificate_spki_sha256=[SPKI],
    egress_allow=[EgressRule("logs.example.com", [6514]), EgressRule("api.example.com", [443, 80])],
)
# The canonical form, written out by hand from docs/owner-policy.md.
EXAMPLE_BYTES = (
    '{"authentication":{"bearer_token_sha256":["' + min(TOKEN, TOKEN2) + '","' + max(TOKEN, TOKEN2) + '"],'
    '"client_certificate_spki_sha256":["' + SPKI + '"],"required":true},'
    '"egress":{"allow":[{"host":"api.example.com","ports":[80,443]},{"host":"logs.example.com","ports":[6514]}],'
    '"mode":"allowlist"},"version":1}'
).encode()
DENY_ALL_OPEN = (
    b'{"authentication":{"bearer_token_sha256":[],"client_certificate_spki_sha256":[],"required":false},'
    b'"egress":{"mode":"deny-all"},"version":1}'
)


def test_canonical_bytes() -> None:
    assert EXAMPLE.to_bytes() == EXAMPLE_BYTES
    assert EXAMPLE.digest() == hashlib.sha256(EXAMPLE_BYTES).hexdigest()
    assert OwnerPolicy.from_bytes(EXAMPLE_BYTES) == EXAMPLE
    assert OwnerPolicy(authentication_required=False).to_bytes() == DENY_ALL_OPEN
    assert OwnerPolicy.from_bytes(DENY_ALL_OPEN).deny_all_egress


def test_order_of_python_inputs_does_not_matter() -> None:
    same = OwnerPolicy(
        authentication_required=True,
        bearer_token_sha256=(TOKEN, TOKEN2),
        client_certificate_spki_sha256=(SPKI,),
        egress_allow=(EgressRule("api.example.com", (80, 443)), EgressRule("logs.example.com", (6514,))),
    )
    assert same == EXAMPLE and hash(same) == hash(EXAMPLE)
    assert same.to_bytes() == EXAMPLE_BYTES


def test_binding_covers_exact_bytes() -> None:
    pretty = json.dumps(EXAMPLE.to_dict(), indent=1).encode()
    assert OwnerPolicy.from_json(pretty) == EXAMPLE
    spki = b"\x30\x00"
    assert expected_report_data(spki, pretty, None) != expected_report_data(spki, EXAMPLE_BYTES, None)
    with pytest.raises(ConfigurationError, match="expected the canonical serialisation"):
        OwnerPolicy.from_bytes(pretty)


# --------------------------------------------------------------------------- hypothesis

_label = st.from_regex(r"[a-z](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses().filter(lambda a: a.version == 4 or a.ipv4_mapped is None).map(str),
)
_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
_rules = st.dictionaries(
    _hosts, st.lists(st.integers(1, 65535), min_size=1, max_size=4, unique=True), max_size=4
).map(lambda d: [EgressRule(host, ports) for host, ports in d.items()])


@st.composite
def policies(draw: st.DrawFn) -> OwnerPolicy:
    required = draw(st.booleans())
    tokens = draw(st.lists(_hex, unique=True, max_size=3)) if required else []
    spkis = draw(st.lists(_hex, unique=True, max_size=3, min_size=0 if tokens or not required else 1))
    return OwnerPolicy(
        authentication_required=required,
        bearer_token_sha256=tokens,
        client_certificate_spki_sha256=spkis if required else [],
        egress_allow=draw(_rules),
    )


@settings(max_examples=150, deadline=None)
@given(policies())
def test_round_trip(policy: OwnerPolicy) -> None:
    data = policy.to_bytes()
    assert OwnerPolicy.from_bytes(data) == policy
    assert OwnerPolicy.from_bytes(data).to_bytes() == data
    assert OwnerPolicy.from_json(json.dumps(policy.to_dict(), indent=2)) == policy


def _reorderings(doc: dict[str, Any]) -> list[bytes]:
    """Serialisations of ``doc`` that differ from the canonical one only in order or whitespace."""
    compact = {"sort_keys": True, "separators": (",", ":")}
    out = [
        json.dumps(doc, sort_keys=True).encode(),  # spaces after , and :
        json.dumps(doc, **compact).encode() + b"\n",  # type: ignore[arg-type]
        b" " + json.dumps(doc, **compact).encode(),  # type: ignore[arg-type]
        json.dumps(dict(reversed(list(doc.items()))), separators=(",", ":")).encode(),
    ]
    auth = doc["authentication"]
    for name in ("bearer_token_sha256", "client_certificate_spki_sha256"):
        if len(auth[name]) > 1:
            changed = {**doc, "authentication": {**auth, name: list(reversed(auth[name]))}}
            out.append(json.dumps(changed, **compact).encode())  # type: ignore[arg-type]
    allow = doc["egress"].get("allow", [])
    if len(allow) > 1:
        out.append(json.dumps({**doc, "egress": {**doc["egress"], "allow": allow[::-1]}}, **compact).encode())  # type: ignore[arg-type]
    for index, rule in enumerate(allow):
        if len(rule["ports"]) > 1:
            swapped = [dict(r) for r in allow]
            swapped[index]["ports"] = rule["ports"][::-1]
            out.append(json.dumps({**doc, "egress": {**doc["egress"], "allow": swapped}}, **compact).encode())  # type: ignore[arg-type]
    return out


@settings(max_examples=150, deadline=None)
@given(policies())
def test_any_other_serialisation_is_refused(policy: OwnerPolicy) -> None:
    canonical = policy.to_bytes()
    for variant in _reorderings(policy.to_dict()):
        assert variant != canonical
        assert OwnerPolicy.from_json(variant) == policy
        with pytest.raises(ConfigurationError, match="canonical serialisation"):
            OwnerPolicy.from_bytes(variant)


# --------------------------------------------------------------------------- strict parsing


def _doc(**changes: Any) -> dict[str, Any]:
    doc = json.loads(EXAMPLE_BYTES)
    for path, value in changes.items():
        target = doc
        *parents, last = path.split("__")
        for parent in parents:
            target = target[int(parent)] if isinstance(target, list) else target[parent]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("changes", "message"), [
    ({"extra": 1}, r"policy: unknown member 'extra'"),
    ({"authentication__optional": True}, r"authentication: unknown member 'optional'"),
    ({"egress__allow__0__note": "x"}, r"egress.allow\[0\]: unknown member 'note'"),
    ({"version": _DELETE}, r"policy.version: required member is missing"),
    ({"authentication": _DELETE}, r"policy.authentication: required member is missing"),
    ({"egress": _DELETE}, r"policy.egress: required member is missing"),
    ({"authentication__required": _DELETE}, r"authentication.required: required member is missing"),
    ({"authentication__bearer_token_sha256": _DELETE}, r"authentication.bearer_token_sha256: required"),
    ({"version": 2}, r"policy.version: expected 1, found 2"),
    ({"version": "1"}, r"policy.version: expected 1, found '1'"),
    ({"version": True}, r"policy.version: expected 1, found True"),
    ({"authentication__required": "yes"}, r"authentication.required: expected true or false, found 'yes'"),
    ({"authentication__required": 1}, r"authentication.required: expected true or false, found 1"),
    ({"authentication__bearer_token_sha256": TOKEN}, r"bearer_token_sha256: expected a list"),
    ({"authentication__bearer_token_sha256": [TOKEN.upper()]}, r"sha256\[0\]: expected 64 lowercase"),
    ({"authentication__bearer_token_sha256": [TOKEN[:-2]]}, r"sha256\[0\]: expected 64 lowercase"),
    ({"authentication__bearer_token_sha256": [TOKEN, TOKEN]}, r"expected distinct digests"),
    ({"authentication__client_certificate_spki_sha256": [1]}, r"spki_sha256\[0\]: expected 64 lowercase"),
    ({"authentication__bearer_token_sha256": [], "authentication__client_certificate_spki_sha256": []},
     r"at least one accepted bearer-token or client-certificate digest"),
    ({"authentication__required": False}, r"expected no accepted credentials when"),
    ({"egress": {"mode": "open"}}, r"egress.mode: expected 'deny-all' or 'allowlist', found 'open'"),
    ({"egress": {"allow": []}}, r"egress.mode: expected 'deny-all' or 'allowlist', found null"),
    ({"egress": "deny-all"}, r"egress.mode: .* found no egress object"),
    ({"egress": {"mode": "deny-all", "allow": []}}, r"egress: unknown member 'allow'"),
    ({"egress": {"mode": "allowlist", "allow": []}}, r"egress.allow: expected a non-empty list"),
    ({"egress": {"mode": "allowlist"}}, r"egress.allow: required member is missing"),
    ({"egress__allow__0__ports": []}, r"egress.allow\[0\]: .*ports: expected a non-empty list"),
    ({"egress__allow__0__ports": 443}, r"egress.allow\[0\].ports: expected a list"),
    ({"egress__allow__0__ports": [0]}, r"port number from 1 to 65535, found 0"),
    ({"egress__allow__0__ports": [65536]}, r"found 65536"),
    ({"egress__allow__0__ports": ["443"]}, r"found '443'"),
    ({"egress__allow__0__ports": [True]}, r"found True"),
    ({"egress__allow__0__ports": [443, 443]}, r"expected distinct ports"),
    ({"egress__allow__0__host": "API.example.com"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "*.example.com"}, r"no wildcard"),
    ({"egress__allow__0__host": "example.com."}, r"no trailing dot"),
    ({"egress__allow__0__host": ""}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "a..b"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "-a.com"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": ("a" * 64) + ".com"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "01.2.3.4"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "256.1.1.1"}, r"expected a lowercase DNS host name"),
    ({"egress__allow__0__host": "0:0::1"}, r"canonical form, .*\(::1\)"),
    ({"egress__allow__0__host": "::ffff:10.0.0.1"}, r"not IPv4-mapped"),
    ({"egress__allow__0__host": "::ffff:a00:1"}, r"not IPv4-mapped"),
    ({"egress__allow__0__host": "FE80::1"}, r"canonical form"),
    ({"egress__allow__0__host": "fe80::1%eth0"}, r"without a zone"),
    ({"egress__allow__0__host": 7}, r"expected a host name string, found 7"),
    ({"egress__allow__1__host": "api.example.com"}, r"one rule per host"),
])
def test_invalid_documents_are_refused(changes: dict[str, Any], message: str) -> None:
    data = json.dumps(_doc(**changes), sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ConfigurationError, match=message):
        OwnerPolicy.from_bytes(data)
    with pytest.raises(ConfigurationError, match=message):
        OwnerPolicy.from_json(data)


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"invalid JSON"),
    (b"[]", r"policy: expected a JSON object, found \[\]"),
    (b"null", r"policy: expected a JSON object, found null"),
    (b'{"version":1,"version":1}', r"duplicate member 'version'"),
    (b'{"version":NaN}', r"NaN is not JSON"),
    (b'{"version":1.0}', r"policy.version: expected 1, found 1.0"),
    (b"\xff{}", r"invalid JSON"),
    (b"\xef\xbb\xbf" + DENY_ALL_OPEN, r"invalid JSON"),
    (b"[" * 100_000, r"expected at most 16384 bytes"),
    (b"[" * 10_000, r"invalid JSON"),
])
def test_malformed_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        OwnerPolicy.from_bytes(data)


def test_hosts_and_ip_literals() -> None:
    for host in ("example.com", "a-b.c-d.example", "xn--bcher-kva.example", "localhost", "10.0.0.1", "::1",
                 "2001:db8::8a2e:370:7334", "1a.2b", "a1"):
        assert OwnerPolicy(False, egress_allow=[EgressRule(host, [443])]).egress_allow[0].host == host


def test_size_is_bounded() -> None:
    many = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
    with pytest.raises(ConfigurationError, match=f"expected at most {MAX_POLICY_BYTES} bytes"):
        OwnerPolicy(True, bearer_token_sha256=many)
    assert len(OwnerPolicy(True, bearer_token_sha256=many[:200]).to_bytes()) <= MAX_POLICY_BYTES


def test_python_construction_is_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"egress\.allow: expected EgressRule items"):
        OwnerPolicy(False, egress_allow=[("api.example.com", [443])])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="expected a list of SHA-256 hex digests"):
        OwnerPolicy(True, bearer_token_sha256=TOKEN)
    with pytest.raises(ConfigurationError, match="ports: expected a non-empty list"):
        EgressRule("api.example.com", "443")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"authentication\.required: expected true or false"):
        OwnerPolicy(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- requirements

OPEN_DENY = OwnerPolicy(authentication_required=False)
AUTH_DENY = OwnerPolicy(authentication_required=True, bearer_token_sha256=[TOKEN])
OPEN_API = OwnerPolicy(False, egress_allow=[EgressRule("api.example.com", [443])])
OPEN_TWO = OwnerPolicy(False, egress_allow=[EgressRule("api.example.com", [443, 8443]),
                                            EgressRule("10.0.0.7", [53])])


@pytest.mark.parametrize("requirements", [
    PolicyRequirements(exact_digest=EXAMPLE.digest()),
    PolicyRequirements(authentication_required=True),
    PolicyRequirements(authentication_required=False),
    PolicyRequirements(egress_subset_of=["api.example.com"]),
    PolicyRequirements(egress_subset_of=[]),
])
def test_evidence_without_policy_fails_every_requirement(requirements: PolicyRequirements) -> None:
    with pytest.raises(PolicyMismatchError, match=r"expected a policy document .* found none"):
        requirements.check(None)


def test_exact_digest() -> None:
    PolicyRequirements(exact_digest=EXAMPLE.digest()).check(EXAMPLE_BYTES)
    PolicyRequirements(exact_digest=EXAMPLE.digest().upper()).check(EXAMPLE_BYTES)
    other = OPEN_DENY.to_bytes()
    with pytest.raises(PolicyMismatchError) as info:
        PolicyRequirements(exact_digest=EXAMPLE.digest()).check(other)
    assert f"expected {EXAMPLE.digest()}, found {hashlib.sha256(other).hexdigest()}" in str(info.value)
    pretty = json.dumps(EXAMPLE.to_dict(), indent=1).encode()
    with pytest.raises(PolicyMismatchError, match="sha256: expected"):
        PolicyRequirements(exact_digest=EXAMPLE.digest()).check(pretty)
    # A pinned digest of bytes that are not a valid canonical policy still fails closed.
    junk = b'{"version":1}'
    with pytest.raises(PolicyMismatchError, match="expected a canonical v1 policy document"):
        PolicyRequirements(exact_digest=hashlib.sha256(junk).hexdigest()).check(junk)


def test_authentication_required_each_way() -> None:
    PolicyRequirements(authentication_required=True).check(AUTH_DENY.to_bytes())
    PolicyRequirements(authentication_required=False).check(OPEN_DENY.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"authentication\.required: expected true, found false"):
        PolicyRequirements(authentication_required=True).check(OPEN_DENY.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"authentication\.required: expected false, found true"):
        PolicyRequirements(authentication_required=False).check(AUTH_DENY.to_bytes())
    # Don't care: only the other requirement is checked.
    PolicyRequirements(egress_subset_of=[]).check(AUTH_DENY.to_bytes())
    PolicyRequirements(egress_subset_of=[]).check(OPEN_DENY.to_bytes())


def test_egress_subset() -> None:
    for subset in ([], ["x.example"], [("api.example.com", 443)]):
        PolicyRequirements(egress_subset_of=subset).check(OPEN_DENY.to_bytes())  # deny-all is within anything
    PolicyRequirements(egress_subset_of=["api.example.com"]).check(OPEN_API.to_bytes())
    PolicyRequirements(egress_subset_of=[("api.example.com", 443)]).check(OPEN_API.to_bytes())
    PolicyRequirements(egress_subset_of=["api.example.com", ("10.0.0.7", 53)]).check(OPEN_TWO.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"found api.example.com:8443 outside it"):
        PolicyRequirements(egress_subset_of=[("api.example.com", 443), "10.0.0.7"]).check(OPEN_TWO.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"found 10.0.0.7:53 outside it"):
        PolicyRequirements(egress_subset_of=["api.example.com"]).check(OPEN_TWO.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"within \[nothing\], found api.example.com:443"):
        PolicyRequirements(egress_subset_of=[]).check(OPEN_API.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"within \[\[::1\]:443\], found api.example.com:443"):
        PolicyRequirements(egress_subset_of=[("::1", 443)]).check(OPEN_API.to_bytes())


def test_requirements_combine() -> None:
    requirements = PolicyRequirements(exact_digest=EXAMPLE.digest(), authentication_required=True,
                                      egress_subset_of=["api.example.com", "logs.example.com"])
    requirements.check(EXAMPLE_BYTES)
    with pytest.raises(PolicyMismatchError, match="egress"):
        PolicyRequirements(authentication_required=True, egress_subset_of=["api.example.com"]).check(
            EXAMPLE_BYTES
        )


def test_invalid_served_bytes_fail_as_mismatch() -> None:
    pretty = json.dumps(AUTH_DENY.to_dict(), indent=1).encode()
    with pytest.raises(PolicyMismatchError, match="canonical serialisation") as info:
        PolicyRequirements(authentication_required=True).check(pretty)
    assert isinstance(info.value, AttestationError)
    assert isinstance(info.value, requests.exceptions.ConnectionError)
    with pytest.raises(PolicyMismatchError, match="invalid JSON"):
        PolicyRequirements(authentication_required=True).check(b"")


def test_requirements_are_validated_and_normalised() -> None:
    with pytest.raises(ConfigurationError, match="at least one of exact_digest"):
        PolicyRequirements()
    with pytest.raises(ConfigurationError, match="exact_digest: expected 64 hex characters"):
        PolicyRequirements(exact_digest="abc")
    with pytest.raises(ConfigurationError, match="authentication_required: expected true, false or None"):
        PolicyRequirements(authentication_required="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"subset_of\[0\]: expected a lowercase DNS host"):
        PolicyRequirements(egress_subset_of=["*.example.com"])
    with pytest.raises(ConfigurationError, match=r"egress_subset_of\[0\]: expected a port number"):
        PolicyRequirements(egress_subset_of=[("a.example", 0)])
    with pytest.raises(ConfigurationError, match=r"subset_of\[0\]: expected a host or a \(host, port"):
        PolicyRequirements(egress_subset_of=[["a.example", 443, 80]])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="egress_subset_of: expected a list"):
        PolicyRequirements(egress_subset_of="a.example")
    a = PolicyRequirements(exact_digest=TOKEN.upper(),
                           egress_subset_of=[("b.example", 443), "a.example", ("a.example", 80),
                                             ("b.example", 443)])
    b = PolicyRequirements(exact_digest=TOKEN, egress_subset_of=["a.example", ("b.example", 443)])
    assert a == b and hash(a) == hash(b)
    assert a.egress_destinations() == (("a.example", None), ("b.example", 443))


def test_documented_example_is_canonical() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "owner-policy.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith('{"authentication"'))
    assert line.encode() == OPEN_DENY.to_bytes() == DENY_ALL_OPEN
    assert f"{len(DENY_ALL_OPEN)} bytes" in doc
