"""AttestationPolicy: every field each way, on built reports and on real ones; the AMD-recommended table.

Built reports come from the software SEV-SNP platform and are verified under its
test roots, so every appraisal here runs on a genuine ``VerifiedReport``. Real
reports come from tests/vectors/snp and verify under AMD's pinned roots.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import warnings
from typing import Any

import pytest

from blindbox.attest.policy import (
    AMD_RECOMMENDED,
    MEASUREMENT_SIZE,
    AttestationPolicy,
    Check,
    ProductTcbs,
    Rule,
    parse_measurement,
)
from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    OutdatedTcbWarning,
    PolicyViolationError,
    TcbTooLowError,
)
from blindbox.snp import (
    GuestPolicy,
    Product,
    SigningKey,
    TcbVersion,
    VerifiedReport,
    bulletins,
    verify_report,
)
from blindbox.snp.report import Cpuid, FirmwareVersion
from blindbox.testing import DEFAULT_CSP_ID, ReportFields, SoftwarePlatform, default_chip_id

from .conftest import VECTORS, cert_valid_at, load_index, report_vectors

MEAS = bytes(range(MEASUREMENT_SIZE))
OTHER = bytes(reversed(range(MEASUREMENT_SIZE)))
PLATFORM = SoftwarePlatform()
ROOTS = PLATFORM.roots_pem()


def tcb(product: Product, **parts: int) -> TcbVersion:
    base = {"bootloader": 4, "tee": 0, "snp": 27, "microcode": 222} if not product.has_fmc else {
        "fmc": 1, "bootloader": 1, "tee": 0, "snp": 4, "microcode": 0x51}
    if product is Product.GENOA:
        base = {"bootloader": 10, "tee": 0, "snp": 27, "microcode": 0x56}
    base.update(parts)
    return TcbVersion.from_components(**base)


def build(csp_id: str = DEFAULT_CSP_ID, **changes: Any) -> VerifiedReport:
    """A report signed by the software platform, verified under its roots (genuine by construction)."""
    product = changes.get("product", Product.MILAN)
    fields: dict[str, Any] = {"measurement": MEAS}
    if "reported_tcb" not in changes:
        fields.update(dict.fromkeys(("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"),
                                    tcb(product)))
    fields.update(changes)
    signed = PLATFORM.sign(ReportFields(**fields), csp_id=csp_id)
    return verify_report(signed.raw, certificates=signed.certificates, roots=ROOTS)


def policy(**kwargs: Any) -> AttestationPolicy:
    return AttestationPolicy(measurements=[MEAS], **kwargs)


def failures(p: AttestationPolicy, v: VerifiedReport) -> list[str]:
    return [c.name for c in p.checks(v) if not c.passed]


def refused(p: AttestationPolicy, v: VerifiedReport, error: type[AttestationError]) -> str:
    with pytest.raises(error) as info:
        p.appraise(v)
    assert type(info.value) is error
    return str(info.value)


def accepted(p: AttestationPolicy, v: VerifiedReport) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutdatedTcbWarning)
        p.appraise(v)
    assert all(c.verdict == "pass" for c in p.checks(v))


# --- every field, each way ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A report, a policy that does not care, one that accepts it, one that refuses it."""

    id: str
    report: dict[str, Any]
    accept: dict[str, Any]
    refuse: dict[str, Any]
    check: str
    error: type[AttestationError]
    message: tuple[str, ...]  # must all appear in the refusal (expected and found values)
    dont_care: dict[str, Any] | None = dataclasses.field(default_factory=dict)


H32, H16, D48 = bytes(range(1, 33)), bytes(range(1, 17)), bytes(range(100, 148))
ALL_FLAGS = GuestPolicy.build(abi_major=1, abi_minor=55, smt_allowed=True, migrate_ma=True, debug=True,
                              single_socket=True, cxl_allowed=True, mem_aes_256_xts=True,
                              rapl_disabled=True, ciphertext_hiding=True, page_swap_disabled=True).raw
NO_FLAGS = GuestPolicy.build(abi_major=1, abi_minor=55, smt_allowed=False).raw
MILAN_CHIP = default_chip_id(Product.MILAN)
TURIN_HWID = default_chip_id(Product.TURIN)[:8]
MIX_TCBS = {  # reported <= committed <= current; launch lower still (snp 24/25/26/23)
    "reported_tcb": tcb(Product.MILAN, snp=24), "committed_tcb": tcb(Product.MILAN, snp=25),
    "current_tcb": tcb(Product.MILAN, snp=26), "launch_tcb": tcb(Product.MILAN, snp=23),
}

CASES = [
    Case("measurement", {}, {"measurements": [OTHER, MEAS]}, {"measurements": [OTHER]}, "measurement",
         InvalidEnclaveCode, ("measurement: expected one of", OTHER.hex(), f"found {MEAS.hex()}"),
         dont_care=None),
    *[Case(name, {name: value}, {name: value.hex().upper()}, {name: bytes(len(value) - 1) + b"\x01"},
           name, PolicyViolationError, (f"found {value.hex()}", "expected 0000"))
      for name, value in (("host_data", H32), ("family_id", H16), ("image_id", H16),
                          ("report_id", H32), ("report_id_ma", H32))],
    Case("chip_ids", {}, {"chip_ids": [MILAN_CHIP.hex(), OTHER + OTHER[:16]]},
         {"chip_ids": [OTHER + OTHER[:16]]}, "chip_id", PolicyViolationError,
         (f"found {MILAN_CHIP.hex()}", (OTHER + OTHER[:16]).hex())),
    Case("chip_ids-turin-hwid", {"product": Product.TURIN}, {"chip_ids": [TURIN_HWID.hex()]},
         {"chip_ids": [bytes(7) + b"\x01"]}, "chip_id", PolicyViolationError,
         (f"found {TURIN_HWID.hex()}", "expected 0000000000000001")),
    Case("chip_ids-masked-uses-vcek-hwid", {"mask_chip_id": True}, {"chip_ids": [MILAN_CHIP]},
         {"chip_ids": [OTHER + OTHER[:16]]}, "chip_id", PolicyViolationError,
         (MILAN_CHIP.hex(), "VCEK hwID")),
    Case("chip_ids-vlek-has-none", {"signing_key": SigningKey.VLEK, "chip_id": bytes(64)}, {},
         {"chip_ids": [MILAN_CHIP]}, "chip_id", PolicyViolationError,
         ("found none (VLEK-signed report with an all-zero chip_id)",)),
    Case("allow_masked_chip_id", {"mask_chip_id": True}, {"allow_masked_chip_id": True},
         {"allow_masked_chip_id": False}, "chip_id_masked", PolicyViolationError,
         ("expected not masked", "found masked (MASK_CHIP_ID set)")),
    Case("id_key_digests", {"id_key_digest": D48}, {"id_key_digests": [D48.hex(), OTHER]},
         {"id_key_digests": [OTHER]}, "id_key_digest", PolicyViolationError, (OTHER.hex(), D48.hex())),
    Case("id_key_digests-no-id-block", {}, {}, {"id_key_digests": [D48]}, "id_key_digest",
         PolicyViolationError, (D48.hex(), "found none (id_key_digest is zero)")),
    Case("require_id_block", {}, {"require_id_block": False}, {"require_id_block": True}, "id_block",
         PolicyViolationError, ("expected an ID block", "found none (id_key_digest is zero)")),
    Case("author_key_digests", {"author_key_enabled": True, "author_key_digest": D48},
         {"author_key_digests": [D48], "require_author_key": True}, {"author_key_digests": [OTHER]},
         "author_key_digest", PolicyViolationError, (OTHER.hex(), f"found {D48.hex()}")),
    Case("author_key-not-enabled", {"author_key_digest": D48}, {}, {"author_key_digests": [D48]},
         "author_key_digest", PolicyViolationError, ("found none (AUTHOR_KEY_EN clear)",)),
    Case("require_author_key", {}, {}, {"require_author_key": True}, "author_key", PolicyViolationError,
         ("expected an author key", "found none (AUTHOR_KEY_EN clear)")),
    Case("signing_keys-vcek-refused", {}, {"signing_keys": ["vcek"]}, {"signing_keys": {SigningKey.VLEK}},
         "signing_key", PolicyViolationError, ("signing_key: expected VLEK, found VCEK",)),
    Case("signing_keys-vlek-refused", {"signing_key": SigningKey.VLEK}, {"signing_keys": "VLEK"},
         {"signing_keys": SigningKey.VCEK}, "signing_key", PolicyViolationError,
         ("expected VCEK, found VLEK",)),
    Case("csp_ids", {"signing_key": SigningKey.VLEK}, {"csp_ids": [DEFAULT_CSP_ID, "CN=b"]},
         {"csp_ids": "CN=cc-us-east-2.amazonaws.com"}, "csp_id", PolicyViolationError,
         ("expected CN=cc-us-east-2.amazonaws.com", f"found {DEFAULT_CSP_ID}")),
    Case("csp_ids-vcek-not-applicable", {}, {"csp_ids": ["CN=b"]}, {"signing_keys": ["VLEK"]},
         "signing_key", PolicyViolationError, ("found VCEK",)),
    Case("vmpls", {"vmpl": 1}, {"vmpls": {0, 1}}, {}, "vmpl", PolicyViolationError,
         ("vmpl: expected 0, found 1",), dont_care={"vmpls": range(4)}),
    Case("report_versions", {"version": 3}, {"report_versions": [3, 5]}, {"report_versions": 5},
         "report_version", PolicyViolationError, ("expected 5, found 3",)),
    Case("min_guest_svn", {"guest_svn": 5}, {"min_guest_svn": 5}, {"min_guest_svn": 6}, "guest_svn",
         PolicyViolationError, ("expected >= 6, found 5",)),
    Case("min_abi", {"policy": NO_FLAGS}, {"min_abi": "1.55"}, {"min_abi": (1, 56)}, "guest_policy.abi",
         InsecureGuestPolicyError, ("expected >= 1.56, found 1.55",)),
    Case("platform_info_required", {"platform_info": 0x25},
         {"platform_info_required": ["alias_check_complete", "ecc_enabled"]},
         {"platform_info_required": ["rapl_disabled"]}, "platform_info.required",
         PolicyViolationError, ("expected set: 0x8 (rapl_disabled)",
                                "found 0x25 (smt_enabled, ecc_enabled, alias_check_complete)")),
    Case("platform_info_forbidden", {"platform_info": 0x25}, {"platform_info_forbidden": 0x82},
         {"platform_info_forbidden": ["smt_enabled"]}, "platform_info.forbidden", PolicyViolationError,
         ("expected clear: 0x1 (smt_enabled)", "found 0x25")),
    Case("platform_info-unknown-bit", {"platform_info": 0x65}, {"platform_info_required": 0x40},
         {"platform_info_forbidden": 0x40}, "platform_info.forbidden", PolicyViolationError,
         ("expected clear: 0x40 (bit6)", "bit6)")),
    Case("min_tcb", {}, {"min_tcb": {Product.MILAN: {"snp": 27, "microcode": 222}}},
         {"min_tcb": {"milan": {"snp": 28}}}, "reported_tcb.minimum", TcbTooLowError,
         ("expected >= bootloader=0 tee=0 snp=28 microcode=0 (Milan)", "found bootloader=4 tee=0 snp=27",
          "below in snp 27 < 28")),
    Case("min_tcb-turin-fmc", {"product": Product.TURIN}, {"min_tcb": {Product.TURIN: {"fmc": 1}}},
         {"min_tcb": {Product.TURIN: {"fmc": 2}}}, "reported_tcb.minimum", TcbTooLowError,
         ("fmc=2", "found fmc=1 bootloader=1", "below in fmc 1 < 2")),
    Case("min_tcb-milan-minimum-never-applies-to-turin", {"product": Product.TURIN},
         {"min_tcb": {Product.MILAN: {"snp": 99}, Product.TURIN: {}}},
         {"min_tcb": {Product.MILAN: {"snp": 0}}}, "reported_tcb.minimum", TcbTooLowError,
         ("expected a Turin platform among Milan", "found Turin (fmc=1")),
    *[Case(f"{setting}-reads-{name}", MIX_TCBS,
           {setting: {Product.MILAN: {"snp": snp}}, "allow_provisional_firmware": True},
           {setting: {Product.MILAN: {"snp": snp + 1}}, "allow_provisional_firmware": True},
           f"{name}.minimum", TcbTooLowError, (f"snp={snp + 1}", f"found bootloader=4 tee=0 snp={snp} "),
           dont_care={"allow_provisional_firmware": True})
      for setting, name, snp in (("min_tcb", "reported_tcb", 24),
                                 ("min_committed_tcb", "committed_tcb", 25),
                                 ("min_current_tcb", "current_tcb", 26),
                                 ("min_launch_tcb", "launch_tcb", 23))],
    Case("min_firmware", {"current_version": FirmwareVersion(1, 55, 43),
                          "committed_version": FirmwareVersion(1, 55, 43)},
         {"min_firmware": "1.54.99"}, {"min_firmware": (1, 55, 44)}, "firmware.minimum", TcbTooLowError,
         ("expected >= 1.55.44, found 1.55.43",)),
    Case("min_firmware-version-not-build", {"current_version": FirmwareVersion(1, 55, 43),
                                            "committed_version": FirmwareVersion(1, 55, 43)},
         {"min_firmware": FirmwareVersion(1, 55, 43)}, {"min_firmware": "1.56.0"}, "firmware.minimum",
         TcbTooLowError, ("expected >= 1.56.0, found 1.55.43",)),
    Case("allow_provisional_firmware-tcb", MIX_TCBS, {"allow_provisional_firmware": True}, {},
         "committed_tcb.provisional", PolicyViolationError,
         ("expected committed_tcb == current_tcb", "found committed bootloader=4 tee=0 snp=25",
          "current bootloader=4 tee=0 snp=26"), dont_care={"allow_provisional_firmware": True}),
    Case("allow_provisional_firmware-version", {"current_version": FirmwareVersion(1, 55, 43),
                                                "committed_version": FirmwareVersion(1, 55, 40)},
         {"allow_provisional_firmware": True}, {}, "committed_firmware.provisional", PolicyViolationError,
         ("expected committed == current, found committed 1.55.40, current 1.55.43",),
         dont_care={"allow_provisional_firmware": True}),
    Case("min_launch_mit_vector", {"launch_mit_vector": 0b101, "current_mit_vector": 0b111},
         {"min_launch_mit_vector": 0b101, "min_current_mit_vector": 0b011},
         {"min_launch_mit_vector": 0b010}, "launch_mit_vector", PolicyViolationError,
         ("expected all of 0x2, found 0x5",)),
    Case("min_current_mit_vector", {"current_mit_vector": 0b001}, {"min_current_mit_vector": 1},
         {"min_current_mit_vector": 0b011}, "current_mit_vector", PolicyViolationError,
         ("expected all of 0x3, found 0x1",)),
    Case("mit_vector-absent-before-v5", {"version": 3}, {"min_launch_mit_vector": 0},
         {"min_launch_mit_vector": 1}, "launch_mit_vector", PolicyViolationError,
         ("expected all of 0x1, found not reported (v3 report)",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_policy_field_accepts_refuses_and_can_not_care(case: Case) -> None:
    v = build(**case.report)
    accepted(AttestationPolicy(**{"measurements": [MEAS], **case.accept}), v)
    if case.dont_care is not None:
        accepted(policy(**case.dont_care), v)
    bad = AttestationPolicy(**{"measurements": [MEAS], **case.refuse})
    message = refused(bad, v, case.error)
    assert failures(bad, v) == [case.check]
    assert message.startswith(f"{case.check}: expected ")
    assert ", found " in message
    for fragment in case.message:
        assert fragment in message


def test_committed_firmware_above_current_is_refused_even_when_provisional_is_allowed() -> None:
    v = build(current_version=FirmwareVersion(1, 55, 40), committed_version=FirmwareVersion(1, 55, 43))
    for allowed in (False, True):
        message = refused(policy(allow_provisional_firmware=allowed), v, PolicyViolationError)
        assert message.startswith("committed_firmware.provisional: expected committed "
                                  f"{'<=' if allowed else '=='} current, "
                                  "found committed 1.55.43, current 1.55.40")


def _flag_cases() -> list[tuple[str, bool, Rule, bool]]:
    out = []
    for name in GuestPolicy.build().flags():
        for on in (True, False):
            for rule in Rule:
                out.append((name, on, rule, rule.admits(on)))
    return out


@pytest.fixture(scope="module")
def flag_reports() -> dict[bool, VerifiedReport]:
    return {True: build(policy=ALL_FLAGS), False: build(policy=NO_FLAGS)}


@pytest.mark.parametrize(("flag", "on", "rule", "admitted"), _flag_cases())
def test_each_guest_policy_flag_must_be_on_off_or_any(
    flag_reports: dict[bool, VerifiedReport], flag: str, on: bool, rule: Rule, admitted: bool
) -> None:
    everything_any = {name: Rule.ANY for name in GuestPolicy.build().flags()}
    p = policy(**{**everything_any, flag: rule.value if on else rule})
    v = flag_reports[on]
    if admitted:
        accepted(p, v)
    else:
        message = refused(p, v, InsecureGuestPolicyError)
        assert failures(p, v) == [f"guest_policy.{flag}"]
        found = "on" if on else "off"
        assert message.startswith(f"guest_policy.{flag}: expected {rule.value}, found {found}")


def test_guest_policy_defaults_forbid_debug_migration_agent_and_cxl(flag_reports: dict[bool, VerifiedReport]
                                                                     ) -> None:
    p = policy()
    assert [c.name for c in p.checks(flag_reports[True]) if not c.passed] == [
        "guest_policy.debug", "guest_policy.migrate_ma", "guest_policy.cxl_allowed"]
    message = refused(p, flag_reports[True], InsecureGuestPolicyError)
    assert message.startswith("guest_policy.debug: expected off, found on")
    assert "memory and registers can be read" in message
    accepted(p, flag_reports[False])
    assert (p.debug, p.migrate_ma, p.cxl_allowed) == (Rule.FORBIDDEN,) * 3
    assert {p.smt_allowed, p.single_socket, p.mem_aes_256_xts, p.rapl_disabled, p.ciphertext_hiding,
            p.page_swap_disabled} == {Rule.ANY}


def test_reported_tcb_above_current_is_always_refused() -> None:
    v = build(reported_tcb=tcb(Product.MILAN, snp=28), current_tcb=tcb(Product.MILAN, snp=27),
              committed_tcb=tcb(Product.MILAN, snp=27), launch_tcb=tcb(Product.MILAN, snp=27))
    message = refused(policy(allow_provisional_firmware=True), v, PolicyViolationError)
    assert message.startswith("reported_tcb.not_above_current: expected reported_tcb <= current_tcb")
    assert "reported bootloader=4 tee=0 snp=28" in message and "current bootloader=4 tee=0 snp=27" in message


def test_checks_evaluates_everything_and_appraise_raises_the_first() -> None:
    v = build(vmpl=2, host_data=H32, platform_info=0x25)
    p = AttestationPolicy(measurements=[OTHER], host_data=bytes(32), platform_info_forbidden=1,
                          signing_keys=["VLEK"])
    checks = p.checks(v)
    assert [c.name for c in checks if not c.passed] == [
        "measurement", "signing_key", "vmpl", "host_data", "platform_info.forbidden"]
    assert len({c.name for c in checks}) == len(checks) > 30
    first = next(c for c in checks if not c.passed)
    with pytest.raises(InvalidEnclaveCode) as info:
        p.appraise(v)
    assert str(info.value) == first.message
    for check in checks:
        assert isinstance(check, Check) and issubclass(check.error, AttestationError)
        assert check.verdict == ("pass" if check.passed else "fail")
        assert check.setting is None or check.setting in p.to_dict()
    json.dumps([c.to_dict() for c in checks])
    by_name = {c.name: c for c in checks}
    assert by_name["vmpl"].to_dict()["verdict"] == "fail" and by_name["vmpl"].found == "2"
    assert by_name["reported_tcb.not_above_current"].setting is None


# --- the AMD-recommended table --------------------------------------------------------------------


def test_bulletin_entries_cite_their_bulletin_and_source() -> None:
    assert bulletins.AS_OF <= dt.date.today()
    assert {b.id for b in bulletins.BULLETINS} >= {"AMD-SB-3019", "AMD-SB-3020", "AMD-SB-3027"}
    for bulletin in bulletins.BULLETINS:
        assert re.fullmatch(r"AMD-SB-\d{4}", bulletin.id)
        assert bulletin.url == ("https://www.amd.com/en/resources/product-security/bulletin/"
                                f"{bulletin.id.lower()}.html")
        assert bulletin.published <= bulletins.AS_OF and bulletin.title and bulletin.cves
        assert all(re.fullmatch(r"CVE-\d{4}-\d{4,}", cve) for cve in bulletin.cves)
    for floor in bulletins.RECOMMENDED:
        assert floor.bulletin in bulletins.BULLETINS and len(floor.source) > 40
        assert floor.minimum and all(name in ("fmc", "bootloader", "tee", "snp", "microcode")
                                     for name, _ in floor.minimum)
        assert ("fmc" in floor.components()) <= floor.silicon.product.has_fmc
    assert {f.silicon.product for f in bulletins.RECOMMENDED} == set(Product)


@pytest.mark.parametrize(("product", "cpuid", "expected"), [
    (Product.MILAN, Cpuid(0x19, 0x01, 1), {"snp": 0x18, "microcode": 0xDB}),
    (Product.MILAN, Cpuid(0x19, 0x01, 2), {"snp": 0x18, "microcode": 0x44}),  # Milan-X line
    (Product.MILAN, None, {"snp": 0x18, "microcode": 0xDB}),  # v2: the strictest line
    (Product.GENOA, Cpuid(0x19, 0x11, 1), {"snp": 0x1B, "microcode": 0x56}),
    (Product.GENOA, Cpuid(0x19, 0x11, 2), {"snp": 0x1B, "microcode": 0x51}),  # Genoa-X line
    (Product.GENOA, Cpuid(0x19, 0xA0, 2), {"snp": 0, "microcode": 0x19}),  # Bergamo/Siena: own firmware
    (Product.TURIN, Cpuid(0x1A, 0x02, 1), {"fmc": 0, "snp": 0x04, "microcode": 0x51}),
    (Product.TURIN, Cpuid(0x1A, 0x11, 0), {"fmc": 0, "snp": 0, "microcode": 0}),  # Turin Dense: a gap
])
def test_recommended_tcb_follows_the_silicon_line(product: Product, cpuid: Cpuid | None,
                                                   expected: dict[str, int]) -> None:
    floor = bulletins.recommended_tcb(product, cpuid)
    assert (floor.fmc is not None) is product.has_fmc
    parts = floor.components()
    for name, value in expected.items():
        assert parts[name] == value, name


def test_amd_recommended_fails_below_the_table_and_names_the_bulletin() -> None:
    strict = policy(min_tcb=AMD_RECOMMENDED)
    accepted(strict, build(**dict.fromkeys(MIX_TCBS, tcb(Product.MILAN, snp=0x18, microcode=0xDB))))
    low = build(**dict.fromkeys(MIX_TCBS, tcb(Product.MILAN, snp=0x18, microcode=0xDA)))
    message = refused(strict, low, TcbTooLowError)
    assert message.startswith("reported_tcb.minimum: expected >= bootloader=0 tee=0 snp=24 microcode=219 "
                              "(AMD-recommended for Milan as of ")
    assert ("found bootloader=4 tee=0 snp=24 microcode=218; "
            "below in microcode 218 < 219 (AMD-SB-3019)") in message
    # The same microcode is fine on Milan-X, whose patch sequence is its own.
    accepted(strict, build(cpuid=Cpuid(0x19, 0x01, 2),
                           **dict.fromkeys(MIX_TCBS, tcb(Product.MILAN, snp=0x18, microcode=0x44))))
    genoa_x = dict.fromkeys(MIX_TCBS, tcb(Product.GENOA, microcode=0x51))
    accepted(strict, build(product=Product.GENOA, cpuid=Cpuid(0x19, 0x11, 2), **genoa_x))
    refused(strict, build(product=Product.GENOA, **genoa_x), TcbTooLowError)  # Genoa B1 needs 0x56
    turin = dict.fromkeys(MIX_TCBS, tcb(Product.TURIN, snp=3))
    assert "snp 3 < 4 (AMD-SB-3020)" in refused(strict, build(product=Product.TURIN, **turin), TcbTooLowError)
    # The other TCBs take the table too: MIX_TCBS launched at snp 23.
    p = policy(min_launch_tcb=AMD_RECOMMENDED, allow_provisional_firmware=True)
    assert failures(p, build(**MIX_TCBS)) == ["launch_tcb.minimum"]


def test_default_policy_warns_below_the_table(caplog: pytest.LogCaptureFixture) -> None:
    low = build(**dict.fromkeys(MIX_TCBS, tcb(Product.MILAN, snp=0x17)))
    p = policy()
    with caplog.at_level(logging.WARNING, logger="blindbox.attest"):
        with pytest.warns(OutdatedTcbWarning, match=r"snp 23 < 24 \(AMD-SB-3019\)") as record:
            p.appraise(low)
    assert len(record) == 1 and "min_tcb='amd-recommended'" in str(record[0].message)
    assert [r.levelno for r in caplog.records if r.name == "blindbox.attest"] == [logging.WARNING]
    (check,) = [c for c in p.checks(low) if c.verdict != "pass"]
    assert check.name == "reported_tcb.amd_recommended" and check.passed and check.warning
    # A user minimum below the table still warns; "amd-recommended" itself fails instead.
    with pytest.warns(OutdatedTcbWarning):
        policy(min_tcb={Product.MILAN: {"snp": 1}}).appraise(low)
    assert all(c.name != "reported_tcb.amd_recommended" for c in policy(min_tcb=AMD_RECOMMENDED).checks(low))


# --- real reports --------------------------------------------------------------------------------


REAL = {rv.name: rv for rv in report_vectors()}


def real(name: str) -> VerifiedReport:
    rv = REAL[name]
    return verify_report(rv.report, certificates=rv.cert, at=rv.at)


def tailored(v: VerifiedReport, **extra: Any) -> AttestationPolicy:
    """The policy a relying party on that platform would write: its measurement, VMPL and quirks."""
    report = v.report
    kwargs: dict[str, Any] = {
        "measurements": [report.measurement.hex()], "vmpls": {report.vmpl},
        "allow_provisional_firmware": report.committed_tcb != report.current_tcb,
        "debug": Rule.ANY if report.policy.debug else Rule.FORBIDDEN,
        "report_versions": [report.version], "signing_keys": [v.signing_key.name],
        "host_data": report.host_data, "family_id": report.family_id, "image_id": report.image_id,
        "min_guest_svn": report.guest_svn, "min_firmware": report.current_version,
        "min_tcb": {v.product: report.reported_tcb}, "min_launch_tcb": {v.product: report.launch_tcb},
        "min_abi": (report.policy.abi_major, report.policy.abi_minor),
        "platform_info_required": report.platform_info.raw,
    }
    if any(report.chip_id):
        kwargs["chip_ids"] = [report.chip_id[: v.product.hwid_length].hex()]
    if v.extensions.csp_id is not None:
        kwargs["csp_ids"] = [v.extensions.csp_id]
    if any(report.id_key_digest):
        kwargs.update(id_key_digests=[report.id_key_digest], require_id_block=True)
    kwargs.update(extra)
    return AttestationPolicy(**kwargs)


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_report_passes_a_policy_written_for_it_and_fails_one_that_is_not(name: str) -> None:
    v = real(name)
    p = tailored(v)
    assert [c.name for c in p.checks(v) if not c.passed] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedTcbWarning)
        p.appraise(v)
    assert refused(dataclasses.replace(p, measurements=(OTHER,)), v, InvalidEnclaveCode)
    bumped = {v.product: {k: x + (k == "snp") for k, x in v.report.reported_tcb.components().items()}}
    assert "reported_tcb.minimum" in refused(tailored(v, min_tcb=bumped), v, TcbTooLowError)
    assert failures(tailored(v, vmpls={v.report.vmpl ^ 1}), v) == ["vmpl"]


def test_go_sev_guest_report_has_debug_set_and_is_refused_by_default() -> None:
    v = real("milan_gsg_v2_vcek")
    message = refused(AttestationPolicy(measurements=[v.report.measurement]), v, InsecureGuestPolicyError)
    assert message.startswith("guest_policy.debug: expected off, found on (policy 0xb0000)")
    assert "memory and registers can be read" in message


def test_aws_vlek_report_needs_vmpl_1_and_its_csp() -> None:
    v = real("milan_aws-trustee_v3_vlek")
    assert v.signing_key is SigningKey.VLEK and v.report.vmpl == 1
    default = AttestationPolicy(measurements=[v.report.measurement])
    assert failures(default, v) == ["vmpl", "committed_tcb.provisional"]
    assert refused(default, v, PolicyViolationError).startswith("vmpl: expected 0, found 1")
    aws = dict(measurements=[v.report.measurement], vmpls={0, 1}, allow_provisional_firmware=True)
    with pytest.warns(OutdatedTcbWarning, match=r"microcode 217 < 219 \(AMD-SB-3019\)"):
        AttestationPolicy(**aws, csp_ids=["CN=cc-us-east-2.amazonaws.com"]).appraise(v)
    message = refused(AttestationPolicy(**aws, csp_ids=["CN=cc-eu-west-1.amazonaws.com"]), v,
                      PolicyViolationError)
    assert message == ("csp_id: expected CN=cc-eu-west-1.amazonaws.com, "
                       "found CN=cc-us-east-2.amazonaws.com")
    assert refused(AttestationPolicy(**aws, signing_keys={SigningKey.VCEK}), v, PolicyViolationError) == (
        "signing_key: expected VCEK, found VLEK")
    assert failures(AttestationPolicy(**aws, chip_ids=[MILAN_CHIP]), v) == ["chip_id"]


def test_genoa_v2_report_with_firmware_build_6_is_refused_by_a_minimum_firmware_policy() -> None:
    cert = (VECTORS / "peers/sev-attest-tool/sample_vcek.der").read_bytes()
    raw = (VECTORS / "peers/sev-attest-tool/sample_attestation.bin").read_bytes()
    v = verify_report(raw, certificates=cert, at=cert_valid_at(cert))
    assert (v.product, v.report.version, str(v.report.current_version)) == (Product.GENOA, 2, "1.54.6")
    base = dict(measurements=[v.report.measurement], vmpls={1})
    with pytest.warns(OutdatedTcbWarning):
        AttestationPolicy(**base).appraise(v)
    message = refused(AttestationPolicy(**base, min_firmware="1.54.21"), v, TcbTooLowError)
    assert message == "firmware.minimum: expected >= 1.54.21, found 1.54.6"
    assert "found bootloader=7 tee=0 snp=11 microcode=62" in refused(
        AttestationPolicy(**base, min_tcb=AMD_RECOMMENDED), v, TcbTooLowError)


def test_turin_report_unknown_platform_info_bit_is_accepted_unless_forbidden() -> None:
    v = real("turin_oak-oc_v5_vcek")
    assert v.report.platform_info.raw == 0x67 and v.report.platform_info.unknown_bits == 0x40
    base = dict(measurements=[v.report.measurement])
    below = r"snp 2 < 4 \(AMD-SB-3020\), microcode 71 < 81 \(AMD-SB-3027\)"
    with pytest.warns(OutdatedTcbWarning, match=below):
        AttestationPolicy(**base, platform_info_required=["alias_check_complete"]).appraise(v)
    message = refused(AttestationPolicy(**base, platform_info_forbidden=0x40), v, PolicyViolationError)
    assert message == ("platform_info.forbidden: expected clear: 0x40 (bit6), found 0x67 (smt_enabled, "
                       "tsme_enabled, ecc_enabled, alias_check_complete, bit6); set 0x40 (bit6)")
    hwid = v.report.chip_id[:8].hex()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedTcbWarning)
        turin_min = {"turin": {"fmc": 0, "snp": 2}}
        AttestationPolicy(**base, chip_ids=[hwid.upper()], min_tcb=turin_min).appraise(v)
    assert "below in fmc 0 < 1" in refused(AttestationPolicy(**base, min_tcb={Product.TURIN: {"fmc": 1}}), v,
                                           TcbTooLowError)
    assert "a Turin platform among Milan, Genoa" in refused(
        AttestationPolicy(**base, min_tcb={Product.MILAN: {}, Product.GENOA: {}}), v, TcbTooLowError)


OLD = ["milan_gsg_v2_vcek", "milan_virtee-sev_v2_vcek", "milan_azure-trustee-hcl_v2_vcek",
       "milan_aws-trustee_v3_vlek", "genoa_azure-trustee-ev-genoa_v3_vcek", "genoa_oak-oc_v5_vcek",
       "turin_oak-oc_v5_vcek"]
CURRENT = ["milan_gcp-teekit_v5_vcek", "milan_azure-trustee-ev0_v3_vcek", "milan_oak-oc-release_v3_vcek"]


@pytest.mark.parametrize("name", OLD)
def test_old_real_reports_fail_amd_recommended_and_warn_by_default(name: str) -> None:
    v = real(name)
    lenient = dict(vmpls=range(4), allow_provisional_firmware=True, debug=Rule.ANY)
    message = refused(tailored(v, min_tcb=AMD_RECOMMENDED, **lenient), v, TcbTooLowError)
    assert message.startswith("reported_tcb.minimum: expected >= ")
    assert f"(AMD-recommended for {v.product.value} as of {bulletins.AS_OF.isoformat()})" in message
    assert f"found {v.report.reported_tcb}; below in " in message and "AMD-SB-30" in message
    with pytest.warns(OutdatedTcbWarning, match=f"found {re.escape(str(v.report.reported_tcb))}"):
        AttestationPolicy(measurements=[v.report.measurement], **lenient).appraise(v)


@pytest.mark.parametrize("name", CURRENT)
def test_current_real_reports_meet_amd_recommended(name: str) -> None:
    v = real(name)
    accepted(tailored(v, min_tcb=AMD_RECOMMENDED, min_launch_tcb=AMD_RECOMMENDED), v)
    accepted(AttestationPolicy(measurements=[v.report.measurement]), v)


def test_every_index_report_is_covered() -> None:
    assert set(REAL) == {e["file"].split("/")[-1][:-4] for e in load_index() if e["verify"]["end_to_end"]}
    assert set(OLD + CURRENT) <= set(REAL)


# --- construction ------------------------------------------------------------------------------


def test_construction_normalises_hex_and_names() -> None:
    p = AttestationPolicy(measurements=MEAS.hex().upper(), host_data=f"  {H32.hex()}\n", chip_ids=TURIN_HWID,
                          signing_keys=["vlek", SigningKey.VCEK], csp_ids="CN=x", vmpls=1, debug="any",
                          report_versions=(3, 5), min_abi="1.55", min_firmware="1.55.21",
                          platform_info_required=["alias_check_complete", "ecc_enabled"])
    assert p.measurements == (MEAS,) and p.host_data == H32
    assert p.chip_ids == frozenset({TURIN_HWID + bytes(56)})
    assert p.signing_keys == {SigningKey.VCEK, SigningKey.VLEK} and p.csp_ids == {"CN=x"}
    assert (p.vmpls, p.debug, p.report_versions, p.min_abi) == ({1}, Rule.ANY, {3, 5}, (1, 55))
    assert p.min_firmware == FirmwareVersion(1, 55, 21) and p.platform_info_required == 0x24
    assert AttestationPolicy(measurements=[MEAS, MEAS.hex(), OTHER]).measurements == (MEAS, OTHER)
    assert parse_measurement(MEAS.hex().upper()) == MEAS


def test_defaults_are_the_secure_ones() -> None:
    p = policy()
    assert (p.vmpls, p.signing_keys, p.allow_provisional_firmware, p.allow_masked_chip_id) == (
        {0}, {SigningKey.VCEK, SigningKey.VLEK}, False, True)
    assert (p.min_tcb, p.chip_ids, p.csp_ids, p.report_versions) == (None, None, None, {2, 3, 4, 5})


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"measurements": []}, ConfigurationError, "at least one accepted launch measurement"),
    ({"measurements": ["ab" * 47]}, ConfigurationError, "96 hex characters"),
    ({"measurements": ["zz" * 48]}, ConfigurationError, "96 hex characters"),
    ({"measurements": [b"\x00" * 47]}, ConfigurationError, "expected 48 bytes, got 47"),
    ({"measurements": [48]}, TypeError, "expected hex text or bytes"),
    ({"host_data": "00" * 31}, ConfigurationError, "host_data: expected 64 hex characters"),
    ({"family_id": b"x" * 17}, ConfigurationError, "family_id: expected 16 bytes, got 17"),
    ({"chip_ids": ["00" * 64]}, ConfigurationError, "chip_ids: an all-zero value is not an identity"),
    ({"chip_ids": ["01" * 20]}, ConfigurationError, "chip_ids: expected 128 hex characters or 16"),
    ({"chip_ids": []}, ConfigurationError, "use None to accept any"),
    ({"id_key_digests": ["01" * 32]}, ConfigurationError, "id_key_digests: expected 96 hex characters"),
    ({"debug": "maybe"}, ConfigurationError, "debug: expected 'on', 'off' or 'any'"),
    ({"debug": True}, TypeError, "debug: expected a Rule"),
    ({"require_id_block": 1}, TypeError, "require_id_block: expected True or False"),
    ({"vmpls": [4]}, ConfigurationError, "vmpls: expected values among 0, 1, 2, 3, got 4"),
    ({"vmpls": []}, ConfigurationError, "vmpls: an empty set accepts nothing"),
    ({"report_versions": [6]}, ConfigurationError, "report_versions: expected values among 2, 3, 4, 5"),
    ({"signing_keys": ["ASK"]}, ConfigurationError, "signing_keys: expected VCEK or VLEK"),
    ({"signing_keys": ["VCEK"], "csp_ids": ["CN=a"]}, ConfigurationError, "does not accept VLEK"),
    ({"csp_ids": [""]}, ConfigurationError, "csp_ids: expected non-empty printable ASCII"),
    ({"csp_ids": ["CN=x\x1b[2J"], "signing_keys": ["VLEK"]}, ConfigurationError,
     "csp_ids: expected non-empty printable ASCII"),
    ({"min_guest_svn": -1}, ConfigurationError, "min_guest_svn: expected 0 <= value"),
    ({"min_guest_svn": 1.5}, TypeError, "min_guest_svn: expected an integer"),
    ({"min_abi": "1"}, ConfigurationError, "min_abi: expected 'N.N'"),
    ({"min_firmware": "1.55"}, ConfigurationError, "min_firmware: expected 'N.N.N'"),
    ({"min_firmware": (1, 55, 256)}, ConfigurationError, "min_firmware: expected 0 <= value < 0x100"),
    ({"platform_info_required": ["smt"]}, ConfigurationError, "expected an integer mask or names among"),
    ({"platform_info_required": 1, "platform_info_forbidden": ["smt_enabled"]}, ConfigurationError,
     "both name 0x1 (smt_enabled)"),
    ({"min_launch_mit_vector": 1 << 64}, ConfigurationError, "min_launch_mit_vector: expected 0 <= value"),
    ({"min_tcb": "latest"}, ConfigurationError, "min_tcb: expected 'amd-recommended'"),
    ({"min_tcb": {}}, ConfigurationError, "an empty mapping accepts no product"),
    ({"min_tcb": {"naples": {}}}, ConfigurationError, "unknown product 'naples'"),
    ({"min_tcb": {"milan": {"fmc": 1}}}, ConfigurationError, "Milan TCB components are bootloader"),
    ({"min_tcb": {"turin": {"ucode": 1}}}, ConfigurationError, "Turin TCB components are fmc, bootloader"),
    ({"min_tcb": {"milan": {"snp": 256}}}, ConfigurationError, "min_tcb[milan].snp: expected 0 <= value"),
    ({"min_tcb": {Product.MILAN: {}, "Milan": {}}}, ConfigurationError, "Milan is given twice"),
    ({"min_tcb": {Product.TURIN: TcbVersion.from_components(bootloader=1, tee=0, snp=1, microcode=1)}},
     ConfigurationError, "expected a TCB with fmc (Turin layout)"),
    ({"min_current_tcb": {Product.MILAN: TcbVersion.from_components(bootloader=1, tee=0, snp=1, microcode=1,
                                                                     fmc=0)}},
     ConfigurationError, "expected a TCB without fmc (Milan/Genoa layout)"),
    ({"min_tcb": 5}, TypeError, "min_tcb: expected a {product: TCB} mapping"),
])
def test_invalid_settings_are_refused_naming_the_field(kwargs: dict[str, Any], error: type[Exception],
                                                       message: str) -> None:
    with pytest.raises(error) as info:
        AttestationPolicy(**{"measurements": [MEAS], **kwargs})
    assert message in str(info.value)


def test_unknown_field_names_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="debugg"):
        AttestationPolicy(measurements=[MEAS], debugg=Rule.ANY)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'debugg', 'vmpl'"):
        AttestationPolicy.from_dict({"measurements": [MEAS.hex()], "vmpl": 0, "debugg": "any"})
    with pytest.raises(TypeError, match="expected a mapping"):
        AttestationPolicy.from_dict([("measurements", [MEAS.hex()])])  # type: ignore[arg-type]


def test_for_measurements_keeps_working_with_keywords() -> None:
    p = AttestationPolicy.for_measurements([MEAS.hex()], debug=Rule.ANY, min_tcb=AMD_RECOMMENDED)
    assert p == policy(debug="any", min_tcb="amd-recommended")
    with pytest.raises(ConfigurationError, match="at least one"):
        AttestationPolicy.for_measurements([])


def test_policy_is_frozen_hashable_and_comparable() -> None:
    p = policy(min_tcb={Product.MILAN: {"snp": 1}}, chip_ids=[MILAN_CHIP])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.debug = Rule.ANY  # type: ignore[misc]
    assert hash(p) == hash(policy(min_tcb={"milan": {"snp": 1}}, chip_ids=[MILAN_CHIP.hex()]))
    assert isinstance(p.min_tcb, ProductTcbs) and p.min_tcb[Product.MILAN].snp == 1
    assert dataclasses.replace(p, debug=Rule.ANY).debug is Rule.ANY
    assert p != policy()


# --- to_dict / from_dict --------------------------------------------------------------------------


def full_policy() -> AttestationPolicy:
    return AttestationPolicy(
        measurements=[MEAS, OTHER], host_data=H32, family_id=H16, image_id=H16, report_id=H32,
        report_id_ma=H32, chip_ids=[MILAN_CHIP, TURIN_HWID], allow_masked_chip_id=False,
        id_key_digests=[D48], require_id_block=True, author_key_digests=[D48, OTHER], require_author_key=True,
        signing_keys=["VLEK"], csp_ids=["CN=cc-us-east-2.amazonaws.com", "CN=b"], vmpls={0, 1},
        report_versions={3, 4, 5}, min_guest_svn=7, debug="any", migrate_ma=Rule.FORBIDDEN,
        smt_allowed=Rule.FORBIDDEN, single_socket="on", cxl_allowed="off", mem_aes_256_xts="on",
        rapl_disabled="on", ciphertext_hiding="on", page_swap_disabled="on", min_abi=(1, 58),
        platform_info_required=["alias_check_complete", "ecc_enabled"], platform_info_forbidden=0x41,
        min_tcb={Product.MILAN: {"bootloader": 4, "snp": 24, "microcode": 219},
                 Product.TURIN: {"fmc": 1, "snp": 4}},
        min_current_tcb=AMD_RECOMMENDED, min_committed_tcb={"genoa": {"snp": 27}}, min_launch_tcb=None,
        min_firmware="1.55.21", allow_provisional_firmware=True, min_launch_mit_vector=3,
        min_current_mit_vector=7,
    )


def test_to_dict_is_json_and_round_trips() -> None:
    for p in (full_policy(), policy()):
        data = json.loads(json.dumps(p.to_dict()))
        assert AttestationPolicy.from_dict(data) == p
        assert AttestationPolicy.from_dict(data).to_dict() == data
        assert list(data) == [f.name for f in dataclasses.fields(AttestationPolicy)]
    data = full_policy().to_dict()
    assert data["min_tcb"] == {"milan": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
                               "turin": {"fmc": 1, "bootloader": 0, "tee": 0, "snp": 4, "microcode": 0}}
    assert data["min_current_tcb"] == "amd-recommended" and data["min_launch_tcb"] is None
    assert data["debug"] == "any" and data["smt_allowed"] == "off" and data["single_socket"] == "on"
    assert data["chip_ids"] == sorted([MILAN_CHIP.hex(), (TURIN_HWID + bytes(56)).hex()])
    assert data["signing_keys"] == ["VLEK"] and data["vmpls"] == [0, 1]
    assert (data["min_abi"], data["min_firmware"]) == ("1.58", "1.55.21")
    assert data["platform_info_required"] == 0x24
    assert data["measurements"] == [MEAS.hex(), OTHER.hex()] and data["host_data"] == H32.hex()
    minimal = AttestationPolicy.from_dict({"measurements": [MEAS.hex().upper()],
                                           "min_tcb": "amd-recommended"})
    assert minimal == policy(min_tcb=AMD_RECOMMENDED)


def test_checks_name_settings_that_exist() -> None:
    v = build()
    settings = {c.setting for c in full_policy().checks(v)} - {None}
    assert settings == set(policy().to_dict())
