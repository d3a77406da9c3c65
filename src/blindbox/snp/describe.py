"""One description of a report, as plain JSON data, and its human-readable view.

:func:`describe` is the single place that turns an
:class:`~blindbox.snp.report.AttestationReport` or a
:class:`~blindbox.snp.verify.VerifiedReport` into a JSON-compatible dict (byte
fields as lowercase hex in report order, signature r and s as big-endian hex
of the integers, TCBs decoded in the report's product layout, policy and
platform info as the raw integer plus named flags). :func:`render_text`
formats such a dict for people. Describing a report says nothing about whether
it is genuine: only a ``VerifiedReport`` carries the ``verification`` part.
"""

from __future__ import annotations

from typing import Any

from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.report import AttestationReport, Cpuid, FirmwareVersion
from blindbox.snp.tcb import TcbVersion
from blindbox.snp.verify import VerifiedReport

_SCALAR_WIDTH = 48  # bytes in one P-384 scalar (r, s)
_LABEL_WIDTH = len("mitigation vectors")  # the longest label, so that every view lines up alike


def _tcb(tcb: TcbVersion) -> dict[str, Any]:
    return {"raw": tcb.raw.hex(), **tcb.components()}


def _version(version: FirmwareVersion) -> dict[str, int]:
    return {"major": version.major, "minor": version.minor, "build": version.build}


def _cpuid(cpuid: Cpuid | None) -> dict[str, int] | None:
    if cpuid is None:
        return None
    return {"family": cpuid.family, "model": cpuid.model, "stepping": cpuid.stepping}


def _report(report: AttestationReport) -> dict[str, Any]:
    policy = report.policy
    platform = report.platform_info
    signer = report.signer_info
    return {
        "product": report.product.value if report.product is not None else None,
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": {
            "raw": policy.raw,
            "abi_major": policy.abi_major,
            "abi_minor": policy.abi_minor,
            "flags": policy.flags(),
        },
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "current_tcb": _tcb(report.current_tcb),
        "platform_info": {
            "raw": platform.raw,
            "flags": platform.flags(),
            "unknown_bits": platform.unknown_bits,
        },
        "signer_info": {
            "raw": signer.raw,
            "signing_key": signer.signing_key.name,
            "chip_id_masked": signer.chip_id_masked,
            "author_key_enabled": signer.author_key_enabled,
        },
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "reported_tcb": _tcb(report.reported_tcb),
        "cpuid": _cpuid(report.cpuid),
        "chip_id": report.chip_id.hex(),
        "committed_tcb": _tcb(report.committed_tcb),
        "current_version": _version(report.current_version),
        "committed_version": _version(report.committed_version),
        "launch_tcb": _tcb(report.launch_tcb),
        "launch_mit_vector": report.launch_mit_vector,
        "current_mit_vector": report.current_mit_vector,
        "signature": {
            "r": f"{report.signature_r:0{_SCALAR_WIDTH * 2}x}",
            "s": f"{report.signature_s:0{_SCALAR_WIDTH * 2}x}",
        },
    }


def _certificate(cert: AmdCertificate) -> dict[str, Any]:
    return {
        "subject": cert.common_name,
        "issuer": cert.issuer_common_name,
        "serial_number": format(cert.serial_number, "x"),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "sha256": cert.fingerprint_sha256,
    }


def _verification(verified: VerifiedReport) -> dict[str, Any]:
    ext = verified.extensions
    chain = verified.chain
    return {
        "product": verified.product.value,
        "signing_key": verified.signing_key.name,
        "verified_at": verified.verified_at.isoformat(),
        "roots_are_amd": verified.roots_are_amd,
        "revocation_checked": verified.revocation_checked,
        "certificate": {
            **_certificate(verified.certificate),
            "product_name": ext.product_name,
            "struct_version": ext.struct_version,
            "tcb": ext.spls(),
            "hwid": ext.hwid.hex() if ext.hwid is not None else None,
            "csp_id": ext.csp_id,
        },
        "intermediate": _certificate(chain.intermediate),
        "root": _certificate(chain.anchor.certificate),
    }


def describe(subject: AttestationReport | VerifiedReport) -> dict[str, Any]:
    """``{"report": {...}, "verification": {...} | None}`` as JSON-compatible data.

    ``verification`` is present only for a :class:`VerifiedReport`; a bare
    :class:`AttestationReport` is merely parsed and gets ``None``.
    """
    if isinstance(subject, VerifiedReport):
        return {"report": _report(subject.report), "verification": _verification(subject)}
    return {"report": _report(subject), "verification": None}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _tcb_line(tcb: dict[str, Any]) -> str:
    parts = " ".join(f"{k}={v}" for k, v in tcb.items() if k != "raw")
    return f"{tcb['raw']}  {parts}"


def _version_text(version: dict[str, int]) -> str:
    return f"{version['major']}.{version['minor']}.{version['build']}"


def _validity(cert: dict[str, Any]) -> str:
    return f"{cert['subject']!r} valid {cert['not_before']} to {cert['not_after']}"


def render_text(description: dict[str, Any]) -> str:
    """Format a :func:`describe` dict as an aligned, human-readable summary."""
    rows: list[tuple[str, str]] = []
    report = description.get("report")
    verification = description.get("verification")
    if report is not None:
        signer = report["signer_info"]
        policy = report["policy"]
        platform = report["platform_info"]
        cpuid = report["cpuid"]
        pflags = policy["flags"]
        platform_set = [name for name, on in platform["flags"].items() if on]
        if platform["unknown_bits"]:
            platform_set.append(f"unknown bits 0x{platform['unknown_bits']:x}")
        rows += [
            ("product", report["product"] or "unknown (v2 report, no CPUID)"),
            ("report version", str(report["version"])),
            ("signing key", signer["signing_key"]),
            ("measurement", report["measurement"]),
            ("chip id", "masked" if signer["chip_id_masked"] else report["chip_id"]),
            ("reported tcb", _tcb_line(report["reported_tcb"])),
            ("current tcb", _tcb_line(report["current_tcb"])),
            ("committed tcb", _tcb_line(report["committed_tcb"])),
            ("launch tcb", _tcb_line(report["launch_tcb"])),
            ("firmware", f"current {_version_text(report['current_version'])}, "
                         f"committed {_version_text(report['committed_version'])}"),
            ("policy", f"0x{policy['raw']:x} (ABI {policy['abi_major']}.{policy['abi_minor']}): "
                       f"debug {_yes(pflags['debug'])}, migrate_ma {_yes(pflags['migrate_ma'])}, "
                       f"smt {'allowed' if pflags['smt_allowed'] else 'not allowed'}"),
            ("policy flags", ", ".join(k for k, on in pflags.items() if on) or "none"),
            ("platform info", f"0x{platform['raw']:x}: " + (", ".join(platform_set) or "no flags")),
            ("vmpl", str(report["vmpl"])),
            ("guest svn", str(report["guest_svn"])),
            ("report data", report["report_data"]),
            ("host data", report["host_data"]),
        ]
        if cpuid is not None:
            rows.append(("cpuid", f"family 0x{cpuid['family']:02x} model 0x{cpuid['model']:02x} "
                                  f"stepping {cpuid['stepping']}"))
        if report["launch_mit_vector"] is not None:
            rows.append(("mitigation vectors", f"launch 0x{report['launch_mit_vector']:x}, "
                                               f"current 0x{report['current_mit_vector']:x}"))
    if verification is not None:
        cert = verification["certificate"]
        rows += [
            ("certificate", f"{_validity(cert)} (productName {cert['product_name']}"
                            + (f", csp_id {cert['csp_id']}" if cert["csp_id"] else "") + ")"),
            ("intermediate", _validity(verification["intermediate"])),
            ("root", _validity(verification["root"])),
            ("roots", "AMD's pinned roots" if verification["roots_are_amd"]
                      else "caller-supplied roots (NOT AMD's)"),
            ("revocation", "checked against AMD's CRL" if verification["revocation_checked"]
                           else "not checked"),
            ("checked at", verification["verified_at"]),
        ]
    lines = [f"  {name.ljust(_LABEL_WIDTH)}  {value}" for name, value in rows]
    if verification is not None:
        head = (f"GENUINE: {verification['product']} SEV-SNP report signed by a "
                f"{verification['signing_key']} chaining to "
                + ("AMD's pinned roots" if verification["roots_are_amd"] else "caller-supplied roots"))
    else:
        head = "PARSED ONLY: this report has not been verified"
    return "\n".join([head, *lines]) + "\n"
