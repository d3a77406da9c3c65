"""The simulator report backend: the report-backend protocol on the software SNP platform.

Its reports are signed by test keys and verify only under
``platform.roots_pem()``, never under AMD's roots; the agent loads this module
only when ``--backend simulator`` is asked for, and
:func:`blindbox.server.backends.probe_backend` never chooses it. It behaves as
firmware does where tests need it to: the report carries the report_data and
VMPL asked for, and a VMPL below the one the guest "runs at" (the template's)
is refused as the firmware refuses it (INVALID_PARAM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from blindbox.attest.policy import parse_measurement
from blindbox.server.backends.base import MAX_VMPL, RawEvidence, check_request
from blindbox.server.backends.errors import ReportRequestError
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.testing.evidence import DEMO_MEASUREMENT
from blindbox.testing.platform import SoftwarePlatform
from blindbox.testing.report import ReportFields


@dataclass(frozen=True)
class SimulatedBackend:
    """Signs a fresh report per request; ``template`` fixes every field but REPORT_DATA and VMPL.

    ``template.vmpl`` is the VMPL the simulated guest runs at (the report's
    VMPL when none is asked). ``certificates`` says whether the host attaches
    a certificate table (VCEK/VLEK, ASK/ASVK, ARK).
    """

    platform: SoftwarePlatform
    template: ReportFields
    certificates: bool = True
    name: ClassVar[str] = "simulator"

    @classmethod
    def create(
        cls,
        measurement: str | bytes = DEMO_MEASUREMENT,
        *,
        product: Product = Product.MILAN,
        signing_key: SigningKey = SigningKey.VCEK,
        running_vmpl: int = 0,
        certificates: bool = True,
        platform: SoftwarePlatform | None = None,
    ) -> SimulatedBackend:
        """A guest running ``measurement`` at ``running_vmpl`` on ``platform`` (default: the test keys)."""
        template = ReportFields(product=product, signing_key=signing_key, vmpl=running_vmpl,
                                measurement=parse_measurement(measurement))
        return cls(platform=platform or SoftwarePlatform(), template=template, certificates=certificates)

    @property
    def roots_pem(self) -> str:
        """The test roots its reports verify under (pass as ``roots=``)."""
        return self.platform.roots_pem(self.template.product)

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        data = check_request(self.name, report_data, vmpl)
        level = self.template.vmpl if vmpl is None else vmpl
        if not self.template.vmpl <= level <= MAX_VMPL:
            raise ReportRequestError(
                f"simulator: the firmware refused the request (INVALID_PARAM): VMPL {level} is below "
                f"the VMPL {self.template.vmpl} the guest runs at"
            )
        signed = self.platform.sign(replace(self.template, report_data=data, vmpl=level))
        table = signed.cert_table() if self.certificates else b""
        return RawEvidence(report=signed.raw, cert_table=table, backend=self.name)
