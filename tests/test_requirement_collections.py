"""Keywords that take a collection mean what they say (issue 18 §4).

A mapping iterated as a collection yields its keys and drops its values: ``egress_subset_of=
{"api.example.com": [443]}`` used to admit the host on *any* port, so a policy allowing port 22
passed. Mappings are now either read for what they say ({host: [ports]}) or refused; every other
collection keyword is checked for the same trap.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from blindbox.attest.owner_policy import EgressRule, OwnerPolicy, PolicyRequirements
from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError, PolicyMismatchError
from blindbox.requests.config import build_policy, parse_expected_policy

SSH_TOO = OwnerPolicy(False, egress_allow=[EgressRule("api.example.com", [22, 443])])
HTTPS_ONLY = OwnerPolicy(False, egress_allow=[EgressRule("api.example.com", [443])])
MEASUREMENT = "ab" * 48
DIGEST = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("build", [
    lambda value: PolicyRequirements(egress_subset_of=value),
    lambda value: parse_expected_policy({"egress_subset_of": value}),  # expected_policy={...}
], ids=["PolicyRequirements", "expected_policy"])
def test_egress_mapping_is_host_to_ports_not_any_port(build: Any) -> None:
    requirements = build({"api.example.com": [443]})
    assert requirements.egress_destinations() == (("api.example.com", 443),)
    requirements.check(HTTPS_ONLY.to_bytes())
    with pytest.raises(PolicyMismatchError, match=r"found api\.example\.com:22 outside it"):
        requirements.check(SSH_TOO.to_bytes())  # the attack: port 22 used to pass
    several = build({"api.example.com": [443, 8443], "logs.example.com": (514,)})
    assert several.egress_destinations() == (
        ("api.example.com", 443), ("api.example.com", 8443), ("logs.example.com", 514))


@pytest.mark.parametrize("build", [
    lambda value: PolicyRequirements(egress_subset_of=value),
    lambda value: parse_expected_policy({"egress_subset_of": value}),
], ids=["PolicyRequirements", "expected_policy"])
def test_egress_json_pairs_are_accepted(build: Any) -> None:
    # What json.loads gives for [["api.example.com", 443], "logs.example.com"].
    requirements = build([["api.example.com", 443], "logs.example.com"])
    assert requirements == PolicyRequirements(egress_subset_of=[("api.example.com", 443), "logs.example.com"])
    with pytest.raises(PolicyMismatchError):
        requirements.check(SSH_TOO.to_bytes())


@pytest.mark.parametrize(("value", "message"), [
    ({"api.example.com": 443}, r"egress_subset_of\['api.example.com'\]: expected a non-empty list of ports"),
    ({"api.example.com": None}, r"egress_subset_of\['api.example.com'\]: expected a non-empty list"),
    ({"api.example.com": "443"}, r"egress_subset_of\['api.example.com'\]: expected a non-empty list"),
    ({"api.example.com": {443: True}}, r"egress_subset_of\['api.example.com'\]: expected a non-empty"),
    ({"api.example.com": []}, r"expected a non-empty list of ports, found \[\]"),
    ({"api.example.com": [0]}, r"expected a port number from 1 to 65535, found 0"),
    ({"*.example.com": [443]}, r"expected a lowercase DNS host name"),
    ({443: [443]}, r"expected a host name string"),
    ("api.example.com", r"egress_subset_of: expected a list of hosts"),
    (b"api.example.com", r"egress_subset_of: expected a list of hosts"),
    (["api.example.com", 443], r"egress_subset_of\[1\]: expected a host or a \(host, port\) pair, found 443"),
    ([["api.example.com", 443, 80]], r"egress_subset_of\[0\]: expected a host or a \(host, port\) pair"),
    ([["api.example.com", "443"]], r"egress_subset_of\[0\]: expected a port number"),
    ([{"host": "api.example.com"}], r"egress_subset_of\[0\]: expected a host or a \(host, port\) pair"),
    (iter(["api.example.com"]), r"egress_subset_of: expected a list of hosts"),
])
def test_ambiguous_egress_forms_are_refused(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PolicyRequirements(egress_subset_of=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), [
    ("measurements", {MEASUREMENT: "v1.0"}),
    ("chip_ids", {"22" * 64: True}),
    ("id_key_digests", {"44" * 48: True}),
    ("author_key_digests", {"55" * 48: True}),
    ("signing_keys", {"VCEK": True, "VLEK": False}),
    ("csp_ids", {"CN=example": True}),
    ("vmpls", {0: True, 1: False}),
    ("report_versions", {3: True, 5: False}),
    ("platform_info_required", {"smt_enabled": False}),
    ("platform_info_forbidden", {"smt_enabled": True}),
])
def test_attestation_policy_refuses_a_mapping_for_a_collection(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {"measurements": [MEASUREMENT], field: value}
    if field == "csp_ids":
        kwargs["signing_keys"] = ["VLEK"]
    with pytest.raises(TypeError, match=rf"{field}: expected a value or a list of values, got a mapping"):
        AttestationPolicy(**kwargs)
    # The same value through a manifest's policy / to_dict form is refused the same way.
    if field != "measurements":
        with pytest.raises(TypeError, match=field):
            AttestationPolicy.from_dict(kwargs)


def test_attestation_policy_collections_still_take_every_list_like_form() -> None:
    base = AttestationPolicy(measurements=[MEASUREMENT], vmpls=[0, 1], signing_keys=["VCEK"])
    assert AttestationPolicy(measurements=(MEASUREMENT,), vmpls={0, 1}, signing_keys="VCEK") == base
    assert AttestationPolicy(measurements=MEASUREMENT, vmpls=frozenset([1, 0]),
                             signing_keys=("vcek",)) == base
    assert AttestationPolicy(measurements=iter([MEASUREMENT]), vmpls=range(2), signing_keys=["VCEK"]) == base


def test_session_measurements_mapping_is_refused() -> None:
    with pytest.raises(TypeError, match="measurements: expected a value or a list of values, got a mapping"):
        build_policy({MEASUREMENT: "release 1"}, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="measurements is empty"):
        build_policy([], {})
    assert build_policy((m for m in [MEASUREMENT]), {}).measurements == (bytes.fromhex(MEASUREMENT),)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: OwnerPolicy(True, bearer_token_sha256={DIGEST: "alice"}),  # type: ignore[arg-type]
     r"authentication.bearer_token_sha256: expected a list of SHA-256 hex digests"),
    (lambda: OwnerPolicy(True, client_certificate_spki_sha256={DIGEST: 1}),  # type: ignore[arg-type]
     r"authentication.client_certificate_spki_sha256: expected a list of SHA-256"),
    (lambda: OwnerPolicy(True, bearer_token_sha256=DIGEST),
     r"authentication.bearer_token_sha256: expected a list of SHA-256 hex digests"),
    (lambda: OwnerPolicy(False, egress_allow={"api.example.com": [443]}),  # type: ignore[arg-type]
     r"egress.allow: expected a list of egress rules"),
    (lambda: EgressRule("api.example.com", {443: "https", 22: None}),  # type: ignore[arg-type]
     r"egress api.example.com ports: expected a non-empty list of ports"),
    (lambda: EgressRule("api.example.com", "443"),  # type: ignore[arg-type]
     r"egress api.example.com ports: expected a non-empty list of ports"),
    (lambda: EgressRule("api.example.com", b"\x01\xbb"),  # type: ignore[arg-type]
     r"egress api.example.com ports: expected a non-empty list of ports"),
])
def test_owner_policy_refuses_a_mapping_or_text_for_a_collection(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_policy_requirements_scalars_are_not_collections() -> None:
    with pytest.raises(ConfigurationError, match="exact_digest: expected 64 hex characters"):
        PolicyRequirements(exact_digest=[DIGEST])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="authentication_required: expected true, false or None"):
        PolicyRequirements(authentication_required=[True])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown requirement"):
        parse_expected_policy({"egress": {"api.example.com": [443]}})
