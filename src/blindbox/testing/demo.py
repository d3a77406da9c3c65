"""``blindbox demo``: the whole idea in one run, on a SIMULATED enclave.

It starts a local enclave from the test kit (software SEV-SNP platform signing
with the shared PUBLIC test keys — not AMD hardware), talks to it through :class:`SecureSession` with
those roots passed explicitly, prints what was verified, sends data, then
shows the two refusals the original BlindBox documented: a server without
genuine evidence (``NotAnEnclaveError``) and an enclave running other code
(``InvalidEnclaveCode``). It reports what attestation costs: the first one in
the process (test keys loaded, roots parsed and checked) and a further one
(every check of the new evidence again, over work already done on the same
trusted bytes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from blindbox.attest.verifier import Attestation
from blindbox.errors import AttestationError, InvalidEnclaveCode, NotAnEnclaveError
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer, Fault

if TYPE_CHECKING:
    from blindbox.requests import SecureSession

CONFIDENTIAL_NOTE = "Q3 numbers: revenue 4.2M, do not share before the board meeting"


def analyze_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The demo's confidential service: ``POST /analyze`` counts words and characters."""
    if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/analyze":
        body = json.dumps({"error": "try POST /analyze"}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body)))])
        return [body]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    text = environ["wsgi.input"].read(length).decode("utf-8", "replace")
    body = json.dumps({"words": len(text.split()), "characters": len(text)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def table(rows: Mapping[str, str]) -> str:
    """A two-column text table."""
    width = max(len(k) for k in rows)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows.items())


def timed_session(enclave: EnclaveServer) -> tuple[SecureSession, float]:
    """A new SecureSession to ``enclave`` (connect, fresh evidence, verification) and its seconds."""
    from blindbox.requests import SecureSession

    started = time.perf_counter()
    session = SecureSession(enclave.address, measurements=[enclave.measurement], roots=enclave.roots_pem)
    return session, time.perf_counter() - started


def _refusal(out: TextIO, title: str, server: EnclaveServer, measurement: str,
             expected: type[AttestationError], data: bytes = CONFIDENTIAL_NOTE.encode()) -> bool:
    """Show that SecureSession refuses ``server`` and that none of ``data`` reached it."""
    from blindbox.requests import SecureSession

    print(f"\n{title}", file=out)
    try:
        SecureSession(server.address, measurements=[measurement], roots=server.roots_pem)
    except expected as exc:
        print(f"  refused: {type(exc).__name__}: {exc}", file=out)
        sent = data in server.raw_bytes_received()
        print(f"  bytes of your data the server received: {'SOME' if sent else 'none'}", file=out)
        return not sent and not server.received
    print(f"  UNEXPECTED: the session was accepted (expected {expected.__name__})", file=out)
    return False


def run(out: TextIO) -> int:
    """Run the demo, printing to ``out``; return the exit status (0 when all went as shown)."""
    print("BlindBox demo — SIMULATED enclave: a software SEV-SNP platform signs the evidence with\n"
          "blindbox's PUBLIC test keys (anyone can sign what their roots accept), whose roots are\n"
          "passed explicitly below. Real deployments verify against AMD's pinned roots.",
          file=out)
    source = LiveEvidence.create()
    with EnclaveServer(analyze_app, evidence=source) as enclave:
        print(f"\n1. Simulated enclave listening at {enclave.url}", file=out)
        print(f"   it runs the image with launch measurement {enclave.measurement}", file=out)
        print("\n2. SecureSession(addr, measurements=[...], roots=<PUBLIC test roots>) attests before "
              "sending", file=out, flush=True)
        session, first = timed_session(enclave)
        with session:
            attestation: Attestation | None = session.attestation
            if attestation is None:
                print("   UNEXPECTED: no attestation recorded", file=out)
                return 1
            again, steady = timed_session(enclave)
            again.close()
            print(f"   verified in {first * 1000:.0f} ms (the first attestation in this process; "
                  f"a further one took {steady * 1000:.0f} ms):", file=out)
            print(table(attestation.summary()), file=out)
            print("\n3. session.post('/analyze', data=<a confidential note>)", file=out)
            response = session.post("/analyze", data=CONFIDENTIAL_NOTE.encode())
            print(f"   {response.status_code} {response.json()}", file=out)
            ok = response.status_code == 200
    with EnclaveServer(analyze_app, evidence=source, faults=[Fault.NO_EVIDENCE]) as impostor:
        ok &= _refusal(out, "4. A plain HTTPS server that is not an enclave (no genuine evidence):",
                       impostor, source.measurement, NotAnEnclaveError)
    with EnclaveServer(analyze_app, evidence=source, faults=[Fault.OTHER_MEASUREMENT]) as other:
        ok &= _refusal(out, "5. A genuine enclave running other code than the expected image:",
                       other, source.measurement, InvalidEnclaveCode)
    print("\nDone: data went only to the attested enclave." if ok else "\nDemo FAILED", file=out)
    return 0 if ok else 1
