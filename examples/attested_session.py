"""The BlindBox flow as a script: attest a (simulated) enclave, send it data, see two refusals.

Run:  python examples/attested_session.py

The enclave here is SIMULATED by BlindBox's test kit — its evidence is signed by
test roots, which this script passes explicitly. Against a real SEV-SNP VM you
leave out ``roots=`` (AMD's pinned roots are used) and give the measurement the
vendor publishes.
"""

from __future__ import annotations

import blindbox.requests as requests
from blindbox.testing import EnclaveServer, Fault, LiveEvidence
from blindbox.testing.demo import analyze_app

evidence = LiveEvidence.create()  # the simulated enclave's identity and launch measurement

with EnclaveServer(analyze_app, evidence=evidence) as enclave:
    # 1. Attest, then send. Construction raises unless the enclave is genuine and runs this code.
    with requests.SecureSession(enclave.address, measurements=[enclave.measurement],
                                roots=enclave.roots_pem) as session:
        for name, value in session.attestation.summary().items():  # type: ignore[union-attr]
            print(f"{name:>26}: {value}")
        response = session.post("/analyze", data="The numbers for the board, not for the host.")
        print(response.json())

# 2. A server that cannot show genuine SEV-SNP evidence.
with EnclaveServer(analyze_app, evidence=evidence, faults=[Fault.NO_EVIDENCE]) as impostor:
    try:
        requests.SecureSession(impostor.address, measurements=[evidence.measurement],
                               roots=impostor.roots_pem)
    except requests.NotAnEnclaveError as exc:
        print("NotAnEnclaveError:", exc)

# 3. A genuine enclave running other code.
with EnclaveServer(analyze_app, evidence=evidence, faults=[Fault.OTHER_MEASUREMENT]) as other:
    try:
        requests.post(f"{other.url}/analyze", data="never sent", measurements=[evidence.measurement],
                      roots=other.roots_pem)
    except requests.InvalidEnclaveCode as exc:
        print("InvalidEnclaveCode:", exc)
