"""AMD's VCEK/VLEK certificate extensions (OID arc 1.3.6.1.4.1.3704.1) and their rules.

The extensions tie a certificate to a chip (hwID), a cloud provider (csp_id for
VLEKs) and one exact TCB. :func:`check_against_report` enforces every rule that
links them to a report, failing closed when an extension is missing or unknown.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from blindbox.errors import NotAnEnclaveError
from blindbox.snp import der
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.product import Product, product_from_certificate_name
from blindbox.snp.report import AttestationReport, SigningKey

ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{ARC}.1"
OID_PRODUCT_NAME = f"{ARC}.2"
OID_BL_SPL = f"{ARC}.3.1"
OID_TEE_SPL = f"{ARC}.3.2"
OID_SNP_SPL = f"{ARC}.3.3"
OID_SPL_4 = f"{ARC}.3.4"
OID_SPL_5 = f"{ARC}.3.5"
OID_SPL_6 = f"{ARC}.3.6"
OID_SPL_7 = f"{ARC}.3.7"
OID_UCODE_SPL = f"{ARC}.3.8"
OID_FMC_SPL = f"{ARC}.3.9"
OID_HWID = f"{ARC}.4"
OID_CSP_ID = f"{ARC}.5"

_INTEGER_OIDS = {
    OID_STRUCT_VERSION: "structVersion",
    OID_BL_SPL: "blSPL",
    OID_TEE_SPL: "teeSPL",
    OID_SNP_SPL: "snpSPL",
    OID_SPL_4: "spl_4",
    OID_SPL_5: "spl_5",
    OID_SPL_6: "spl_6",
    OID_SPL_7: "spl_7",
    OID_UCODE_SPL: "ucodeSPL",
    OID_FMC_SPL: "fmcSPL",
}
_KNOWN_OIDS = set(_INTEGER_OIDS) | {OID_PRODUCT_NAME, OID_HWID, OID_CSP_ID}
#: Standard extensions tolerated on a VCEK/VLEK when not critical.
_TOLERATED_STANDARD = {"2.5.29.14", "2.5.29.35", "2.5.29.15", "2.5.29.19", "2.5.29.31"}


@dataclass(frozen=True)
class KdsExtensions:
    """The decoded AMD extensions of a VCEK or VLEK."""

    struct_version: int
    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None
    reserved_spls: dict[str, int]
    hwid: bytes | None
    csp_id: str | None

    @property
    def product(self) -> Product:
        return product_from_certificate_name(self.product_name)

    def spls(self) -> dict[str, int]:
        """The SPLs by TCB component name, in report order."""
        out: dict[str, int] = {}
        if self.fmc_spl is not None:
            out["fmc"] = self.fmc_spl
        out.update(bootloader=self.bl_spl, tee=self.tee_spl, snp=self.snp_spl,
                   microcode=self.ucode_spl)
        return out


def _decode_hwid(value: bytes) -> bytes:
    if len(value) in (8, 64):
        return value
    # Tolerate a DER OCTET STRING wrapper around the raw bytes.
    if len(value) in (10, 66) and value[0] == der.OCTET_STRING and value[1] == len(value) - 2:
        return value[2:]
    raise NotAnEnclaveError(f"hwID: expected 8 or 64 raw bytes, found {len(value)} bytes")


def parse_extensions(cert: AmdCertificate) -> KdsExtensions:
    """Decode the AMD extensions, refusing unknown, duplicate or malformed ones."""
    ints: dict[str, int] = {}
    strings: dict[str, str] = {}
    hwid: bytes | None = None
    for ext in cert.extensions:
        if ext.oid.startswith(ARC + "."):
            if ext.oid not in _KNOWN_OIDS:
                raise NotAnEnclaveError(f"certificate: unknown AMD extension {ext.oid}")
            try:
                if ext.oid in _INTEGER_OIDS:
                    value = der.as_int(der.read_single(ext.value))
                    if value < 0:
                        raise der.DerError("negative")
                    ints[ext.oid] = value
                elif ext.oid == OID_HWID:
                    hwid = _decode_hwid(ext.value)
                else:
                    strings[ext.oid] = der.as_string(der.read_single(ext.value, der.IA5_STRING))
            except der.DerError as exc:
                name = _INTEGER_OIDS.get(ext.oid, ext.oid)
                raise NotAnEnclaveError(f"certificate extension {name}: malformed ({exc})") from None
        elif ext.critical or ext.oid not in _TOLERATED_STANDARD:
            raise NotAnEnclaveError(
                f"certificate: unexpected {'critical ' if ext.critical else ''}extension {ext.oid}"
            )
    for oid in (OID_STRUCT_VERSION, OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL):
        if oid not in ints:
            raise NotAnEnclaveError(f"certificate: required extension {_INTEGER_OIDS[oid]} is missing")
    if OID_PRODUCT_NAME not in strings:
        raise NotAnEnclaveError("certificate: required extension productName is missing")
    for oid in (OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL, OID_FMC_SPL):
        if oid in ints and ints[oid] > 0xFF:
            raise NotAnEnclaveError(
                f"certificate extension {_INTEGER_OIDS[oid]}: expected 0..255, found {ints[oid]}"
            )
    reserved = {_INTEGER_OIDS[o]: ints[o] for o in (OID_SPL_4, OID_SPL_5, OID_SPL_6, OID_SPL_7) if o in ints}
    return KdsExtensions(
        struct_version=ints[OID_STRUCT_VERSION],
        product_name=strings[OID_PRODUCT_NAME],
        bl_spl=ints[OID_BL_SPL],
        tee_spl=ints[OID_TEE_SPL],
        snp_spl=ints[OID_SNP_SPL],
        ucode_spl=ints[OID_UCODE_SPL],
        fmc_spl=ints.get(OID_FMC_SPL),
        reserved_spls=reserved,
        hwid=hwid,
        csp_id=strings.get(OID_CSP_ID),
    )


def check_against_report(ext: KdsExtensions, report: AttestationReport) -> None:
    """Enforce every rule that binds a VCEK/VLEK's extensions to this report.

    ``report.product`` must already be resolved. The chip-id rule is skipped
    only when the report says MASK_CHIP_ID; whether that is acceptable is an
    appraisal-policy decision.
    """
    product = report.product
    if product is None:
        raise NotAnEnclaveError("product: unknown for this report; cannot check the certificate")
    if ext.product is not product:
        raise NotAnEnclaveError(
            f"certificate productName: expected {product.value} for this report, "
            f"found {ext.product_name!r}"
        )
    expected_struct = 1 if product is Product.TURIN else 0
    if ext.struct_version != expected_struct:
        raise NotAnEnclaveError(
            f"certificate structVersion: expected {expected_struct} for {product.value}, "
            f"found {ext.struct_version}"
        )
    if product.has_fmc and ext.fmc_spl is None:
        raise NotAnEnclaveError("certificate: required extension fmcSPL is missing (Turin)")
    if not product.has_fmc and ext.fmc_spl is not None:
        raise NotAnEnclaveError(f"certificate: fmcSPL is not expected on {product.value}")
    for name, value in ext.reserved_spls.items():
        if value != 0:
            raise NotAnEnclaveError(f"certificate extension {name}: expected 0, found {value}")
    reported = report.reported_tcb.components()
    spls = ext.spls()
    for name, found in spls.items():
        if reported[name] != found:
            raise NotAnEnclaveError(
                f"certificate TCB: {name} SPL {found} does not equal the report's "
                f"reported_tcb {name} {reported[name]} (certificate TCB {_fmt(spls)}, "
                f"reported_tcb {_fmt(reported)})"
            )
    if report.signing_key is SigningKey.VCEK:
        if ext.csp_id is not None:
            raise NotAnEnclaveError("certificate: a VCEK must not carry csp_id (found one: a VLEK?)")
        if ext.hwid is None:
            raise NotAnEnclaveError("certificate: required extension hwID is missing (VCEK)")
        if len(ext.hwid) != product.hwid_length:
            raise NotAnEnclaveError(
                f"certificate hwID: expected {product.hwid_length} bytes on {product.value}, "
                f"found {len(ext.hwid)}"
            )
        if not report.chip_id_masked:
            chip = report.chip_id[: product.hwid_length]
            if not hmac.compare_digest(chip, ext.hwid):
                raise NotAnEnclaveError(
                    f"certificate hwID: expected the report's chip_id {chip.hex()[:32]}..., "
                    f"found {ext.hwid.hex()[:32]}..."
                )
    else:
        if ext.csp_id is None:
            raise NotAnEnclaveError("certificate: required extension csp_id is missing (VLEK)")
        if ext.hwid is not None:
            raise NotAnEnclaveError("certificate: a VLEK must not carry hwID (found one: a VCEK?)")


def _fmt(tcb: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in tcb.items())
