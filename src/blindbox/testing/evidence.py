"""Live simulated evidence: a fresh report per request, signed by the software platform."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from blindbox.attest.binding import expected_report_data
from blindbox.attest.evidence import Evidence
from blindbox.attest.policy import parse_measurement
from blindbox.server.tls import TlsIdentity
from blindbox.snp.certificate import pem_encode
from blindbox.snp.guest_policy import GuestPolicy
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.testing.fixture import RecordedEvidence
from blindbox.testing.platform import SoftwarePlatform
from blindbox.testing.report import DEFAULT_POLICY, ReportFields
from blindbox.testing.server import Fault

#: The measurement the simulated enclave "runs" unless told otherwise.
DEMO_MEASUREMENT = hashlib.sha384(b"BlindBox simulated enclave image v1").hexdigest()
_DEBUG_BIT = 1 << 19


@dataclass(frozen=True)
class LiveEvidence:
    """Signs a fresh report for each evidence request, binding the key and nonce asked for.

    ``template`` fixes every report field except report_data; faults alter it
    (debug policy, other measurement) the way a dishonest host would.
    :meth:`create` signs with the shared PUBLIC test keys unless given a
    ``platform`` (e.g. ``SoftwarePlatform.generate()``).
    """

    platform: SoftwarePlatform
    template: ReportFields
    identity: TlsIdentity = field(default_factory=TlsIdentity.generate)
    policy: bytes | None = None

    @classmethod
    def create(
        cls,
        measurement: str | bytes = DEMO_MEASUREMENT,
        *,
        product: Product = Product.MILAN,
        version: int = 5,
        signing_key: SigningKey = SigningKey.VCEK,
        guest_policy: int | GuestPolicy = DEFAULT_POLICY,
        policy: bytes | None = None,
        platform: SoftwarePlatform | None = None,
        identity: TlsIdentity | None = None,
    ) -> LiveEvidence:
        raw_policy = guest_policy.raw if isinstance(guest_policy, GuestPolicy) else guest_policy
        template = ReportFields(
            product=product,
            version=version,
            signing_key=signing_key,
            policy=raw_policy,
            measurement=parse_measurement(measurement),
        )
        source = cls(
            platform=platform or SoftwarePlatform(),
            template=template,
            identity=identity or TlsIdentity.generate(),
            policy=policy,
        )
        source.prepare()
        return source

    def prepare(self) -> None:
        """Load the keys and issue the VCEK or VLEK now, as an enclave has them before it serves.

        Without this, the first evidence request pays for them.
        """
        fields = self.template
        if fields.signing_key is SigningKey.VCEK:
            self.platform.vcek_der(fields.product, fields.chip_id, fields.reported_tcb)
        else:
            self.platform.vlek_der(fields.product, fields.reported_tcb)

    @property
    def measurement(self) -> str:
        return self.template.measurement.hex()

    @property
    def roots_pem(self) -> str:
        return self.platform.roots_pem(self.template.product)

    def evidence(self, *, spki_der: bytes, nonce: bytes | None, faults: frozenset[Fault]) -> Evidence:
        fields = replace(self.template, report_data=expected_report_data(spki_der, self.policy, nonce))
        if Fault.DEBUG_POLICY in faults:
            fields = replace(fields, policy=fields.policy | _DEBUG_BIT)
        if Fault.OTHER_MEASUREMENT in faults:
            fields = replace(fields, measurement=hashlib.sha384(b"other code" + fields.measurement).digest())
        signed = self.platform.sign(fields)
        certificates = {name: pem_encode(der) for name, der in signed.certificates.items()}
        return Evidence(report=signed.raw, certificates=certificates, policy=self.policy)

    def record(self) -> RecordedEvidence:
        """Freeze one nonce-less evidence document bound to this TLS identity."""
        evidence = self.evidence(spki_der=self.identity.spki_der, nonce=None, faults=frozenset())
        return RecordedEvidence(
            recorded=evidence,
            identity=self.identity,
            measurement=self.measurement,
            roots_pem=self.roots_pem,
            product=self.template.product.value.lower(),
        )
