"""The TCB values AMD's security bulletins name as fixing known SEV-SNP vulnerabilities.

``AttestationPolicy(min_tcb="amd-recommended")`` refuses a report whose
REPORTED_TCB (the TCB its VCEK/VLEK was derived for) is below this table, and
the default policy accepts it with an :class:`~blindbox.errors.OutdatedTcbWarning`.

The table is as of :data:`AS_OF`. AMD publishes no machine-readable "up to
date" verdict for SEV-SNP, so this table must be raised by hand as bulletins
appear. AMD's bulletin pages were not reachable from where it was compiled:
every value is as quoted from the bulletin by the public source named in its
``source`` (two independent sources wherever they exist), and publication
dates come from the CVE records AMD filed as CNA. Re-check against amd.com
when updating.

Microcode values are the TCB microcode SPL, which AMD's bulletins give as the
low byte of the fixed patch level ("TCB Value for Attestation"). Patch levels
are per silicon line, not per KDS product: Milan and Milan-X, Genoa, Genoa-X
and Bergamo/Siena each have their own sequence, so microcode floors are keyed
by CPUID family, model and stepping. A v2 report carries no CPUID; it is held
to the strictest floor of its product.

Known gaps, where a bulletin names an SEV-SNP fix but no attestable value could
be cited, so nothing is enforced here:

- AMD-SB-3020 (CVE-2025-0033) on Milan (fixed in MilanPI 1.0.0.H per the CVE
  record) and AMD-SB-3027 (CVE-2025-29943) on Milan and Bergamo/Siena.
- SB-3019/3020 SNP firmware floors for Bergamo/Siena and Turin Dense, which
  run their own SEV firmware.
- AMD-SB-3015 (BadRAM, CVE-2024-21944): attested by PLATFORM_INFO
  ALIAS_CHECK_COMPLETE rather than a TCB value; require it with
  ``platform_info_required=["alias_check_complete"]``.
- Earlier SEV-SNP bulletins (AMD-SB-3005 CacheWarp, AMD-SB-3007, AMD-SB-3011,
  AMD-SB-3014): no attestable values found; the floors above supersede the
  firmware they fixed on Milan and Genoa.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass

from blindbox.snp.product import Product
from blindbox.snp.report import Cpuid
from blindbox.snp.tcb import COMPONENTS, TcbVersion

#: The date this table was last compiled and checked.
AS_OF = _dt.date(2026, 11, 30)


@dataclass(frozen=True)
class Bulletin:
    """An AMD product security bulletin; ``title`` is AMD's summary from its CVE record."""

    id: str
    title: str
    published: _dt.date
    url: str
    cves: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.id} ({', '.join(self.cves)}, {self.published.isoformat()})"


@dataclass(frozen=True)
class Silicon:
    """A silicon line, by CPUID: family, an inclusive model range, and a stepping (None: any)."""

    name: str
    product: Product
    family: int
    models: tuple[int, int]
    stepping: int | None = None

    def matches(self, cpuid: Cpuid) -> bool:
        return (
            cpuid.family == self.family
            and self.models[0] <= cpuid.model <= self.models[1]
            and (self.stepping is None or cpuid.stepping == self.stepping)
        )


@dataclass(frozen=True)
class TcbFloor:
    """One bulletin's minimum for some TCB components on one silicon line, with its source."""

    bulletin: Bulletin
    silicon: Silicon
    minimum: tuple[tuple[str, int], ...]
    source: str

    def components(self) -> dict[str, int]:
        return dict(self.minimum)

    def applies_to(self, product: Product, cpuid: Cpuid | None) -> bool:
        """Whether this floor binds a report of ``product`` (CPUID None: v2, strictest)."""
        if self.silicon.product is not product:
            return False
        return cpuid is None or self.silicon.matches(cpuid)


SB_3019 = Bulletin(
    id="AMD-SB-3019",
    title="Improper signature verification in AMD CPU ROM microcode patch loader may allow an "
          "attacker with local administrator privilege to load malicious CPU microcode resulting in "
          "loss of confidentiality and integrity of a confidential guest running under AMD SEV-SNP",
    published=_dt.date(2025, 2, 3),
    url="https://www.amd.com/en/resources/product-security/bulletin/amd-sb-3019.html",
    cves=("CVE-2024-56161",),
)
SB_3020 = Bulletin(
    id="AMD-SB-3020",
    title="Improper access control within AMD SEV-SNP could allow an admin privileged attacker to "
          "write to the RMP during SNP initialization, potentially resulting in a loss of SEV-SNP "
          "guest memory integrity",
    published=_dt.date(2025, 10, 14),
    url="https://www.amd.com/en/resources/product-security/bulletin/amd-sb-3020.html",
    cves=("CVE-2025-0033",),
)
SB_3027 = Bulletin(
    id="AMD-SB-3027",
    title="Write what were condition within AMD CPUs may allow an admin-privileged attacker to "
          "modify the configuration of the CPU pipeline potentially resulting in the corruption of "
          "the stack pointer inside an SEV-SNP guest",
    published=_dt.date(2026, 1, 16),
    url="https://www.amd.com/en/resources/product-security/bulletin/amd-sb-3027.html",
    cves=("CVE-2025-29943",),
)
BULLETINS: tuple[Bulletin, ...] = (SB_3019, SB_3020, SB_3027)

MILAN = Silicon("Milan (EPYC 7003)", Product.MILAN, 0x19, (0x00, 0x0F))
MILAN_B1 = Silicon("Milan B1 (CPUID 00A00F11)", Product.MILAN, 0x19, (0x01, 0x01), 1)
MILAN_X_B2 = Silicon("Milan-X B2 (CPUID 00A00F12)", Product.MILAN, 0x19, (0x01, 0x01), 2)
GENOA = Silicon("Genoa (EPYC 9004, models 10h-1Fh)", Product.GENOA, 0x19, (0x10, 0x1F))
GENOA_B1 = Silicon("Genoa B1 (CPUID 00A10F11)", Product.GENOA, 0x19, (0x11, 0x11), 1)
GENOA_X_B2 = Silicon("Genoa-X B2 (CPUID 00A10F12)", Product.GENOA, 0x19, (0x11, 0x11), 2)
BERGAMO_SIENA_A2 = Silicon("Bergamo/Siena A2 (CPUID 00AA0F02)", Product.GENOA, 0x19, (0xA0, 0xA0), 2)
TURIN = Silicon("Turin (EPYC 9005, models 00h-0Fh)", Product.TURIN, 0x1A, (0x00, 0x0F))
TURIN_C1 = Silicon("Turin C1 (CPUID 00B00F21)", Product.TURIN, 0x1A, (0x02, 0x02), 1)

_CCF = ("microsoft/CCF issue #6812 (2025-02-13) quoting AMD-SB-3019: 'at least TCB[SNP] version "
        "0x18 on Milan and 0x17 on Genoa'")
_FWUPD = ("fixed patch level {patch} for {cpuid}: fwupd plugins/cpu/fu-cpu-common.c "
          "(fu_cpu_amd_model_id_to_entry_sign_fixed_ucode_version) and aleph-im/aleph-vm's "
          "SB-3019 floors; SPL is the patch level's low byte")
_PI_TEE = ("ariofrio/pi-tee review of 520f0ae quoting {bulletin} (fetched 2026-10-08): {quote}; the "
           "same value in its per-CPUID floor table")

#: Every floor, in bulletin order. The effective minimum is the component-wise maximum.
RECOMMENDED: tuple[TcbFloor, ...] = (
    TcbFloor(SB_3019, MILAN, (("snp", 0x18),), _CCF),
    TcbFloor(SB_3019, MILAN_B1, (("microcode", 0xDB),),
             _FWUPD.format(patch="0x0A0011DB", cpuid="00A00F11")),
    TcbFloor(SB_3019, MILAN_X_B2, (("microcode", 0x44),),
             _FWUPD.format(patch="0x0A001244", cpuid="00A00F12")),
    TcbFloor(SB_3019, GENOA, (("snp", 0x17),),
             _CCF + "; also " + _PI_TEE.format(bulletin="AMD-SB-3019",
                                               quote="'Genoa fix: SEV FW 1.55.40, TCB[SNP] = 0x17'")),
    TcbFloor(SB_3019, GENOA_B1, (("microcode", 0x54),),
             _FWUPD.format(patch="0x0A101154", cpuid="00A10F11")),
    TcbFloor(SB_3019, GENOA_X_B2, (("microcode", 0x4F),),
             _FWUPD.format(patch="0x0A10124F", cpuid="00A10F12")),
    TcbFloor(SB_3019, BERGAMO_SIENA_A2, (("microcode", 0x19),),
             _FWUPD.format(patch="0x0AA00219", cpuid="00AA0F02")),
    TcbFloor(SB_3020, GENOA, (("snp", 0x1B),),
             _PI_TEE.format(bulletin="AMD-SB-3020", quote="'Genoa fix: SEV FW 1.55.49 (SPL=0x1B)'")),
    TcbFloor(SB_3020, TURIN, (("snp", 0x04),),
             _PI_TEE.format(bulletin="AMD-SB-3020", quote="'Turin fix: SPL=0x04'")),
    TcbFloor(SB_3027, GENOA_B1, (("microcode", 0x56),),
             _PI_TEE.format(bulletin="AMD-SB-3027", quote="'Genoa TCB[MICROCODE] >= 56' (hex)")),
    TcbFloor(SB_3027, GENOA_X_B2, (("microcode", 0x51),),
             _PI_TEE.format(bulletin="AMD-SB-3027", quote="'Genoa-X >= 51' (hex)")),
    TcbFloor(SB_3027, TURIN_C1, (("microcode", 0x51),),
             _PI_TEE.format(bulletin="AMD-SB-3027", quote="'Turin >= 51' (hex)")),
)


@functools.lru_cache(maxsize=64)
def recommended_floors(product: Product, cpuid: Cpuid | None) -> tuple[TcbFloor, ...]:
    """The floors that bind a report of ``product`` with ``cpuid`` (None for v2: all of them)."""
    return tuple(floor for floor in RECOMMENDED if floor.applies_to(product, cpuid))


@functools.lru_cache(maxsize=64)
def recommended_tcb(product: Product, cpuid: Cpuid | None) -> TcbVersion:
    """The component-wise maximum of the binding floors, in ``product``'s TCB layout."""
    values = dict.fromkeys(COMPONENTS, 0)
    for floor in recommended_floors(product, cpuid):
        for name, value in floor.minimum:
            values[name] = max(values[name], value)
    return TcbVersion.from_components(
        bootloader=values["bootloader"],
        tee=values["tee"],
        snp=values["snp"],
        microcode=values["microcode"],
        fmc=values["fmc"] if product.has_fmc else None,
    )


__all__ = [
    "AS_OF",
    "BULLETINS",
    "RECOMMENDED",
    "Bulletin",
    "Silicon",
    "TcbFloor",
    "recommended_floors",
    "recommended_tcb",
]
