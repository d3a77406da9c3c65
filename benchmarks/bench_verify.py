"""How fast is verify_report compared with the cryptography it cannot avoid?

Run on demand (not part of the test suite)::

    python benchmarks/bench_verify.py [--seconds 10] [--report reports/genoa_oak-oc_v5_vcek.bin] [--json OUT]

Measured in the same run, in interleaved rounds (so that load from other
processes hits every line alike), reporting the best round of each:

* warm: ``verify_report`` on a real report with its VCEK, after a first call
  that fills the process caches (the steady state of a client that talks to
  the same enclaves again);
* bare: one ECDSA P-384 verify of the report signature plus one RSASSA-PSS-4096
  verify of the VCEK's TBS under AMD's ASK, keys loaded once, calling
  ``cryptography`` directly (the floor for a verifier that re-checks the leaf);
  and the same with both keys loaded from their SPKI on every call;
* full/bare, against the 1.5x target;
* cold: ``verify_report`` with every functools cache in ``blindbox.snp`` cleared
  before each call (pinned roots re-read and fingerprint-checked, all three
  chain signatures, certificates re-parsed);
* first call in a fresh interpreter (import plus one verification).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from blindbox.snp import AmdCertificate, AttestationReport, verify_report
from blindbox.snp.certificate import PSS_SALT_LENGTH

TARGET_RATIO = 1.5
ROUNDS = 7
VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "snp"


def _calibrate(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds``."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return max(calls, 3)


def _measure(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, tuple[float, int]]:
    """Best-of-ROUNDS seconds per call for each function, rounds interleaved; and total calls."""
    per_round = {name: _calibrate(fn, seconds / len(fns) / ROUNDS) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            n = per_round[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: (min(samples[name]), per_round[name] * ROUNDS) for name in fns}


def _process_caches() -> dict[str, Callable[[], None]]:
    """``cache_clear`` of every functools cache defined in blindbox.snp, by qualified name."""
    found: dict[str, Callable[[], None]] = {}
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("blindbox.snp"):
            continue
        for attr, value in vars(module).items():
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and getattr(value, "__module__", "") == module_name:
                found[f"{module_name.removeprefix('blindbox.snp.')}.{attr}"] = clear
    return found


def _fresh_process(report: Path, cert: Path, at: dt.datetime) -> float:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import datetime as dt\n"
        "from pathlib import Path\n"
        "from blindbox.snp import verify_report\n"
        f"verify_report(Path({str(report)!r}).read_bytes(), certificates=Path({str(cert)!r}).read_bytes(),"
        f" at=dt.datetime.fromisoformat({at.isoformat()!r}))\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="total time budget of the timed loops")
    parser.add_argument("--report", default="reports/genoa_oak-oc_v5_vcek.bin",
                        help="report under the vectors directory (with a key_cert in index.json)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to this file")
    args = parser.parse_args()

    entry = next(e for e in json.loads((VECTORS / "index.json").read_text()) if e["file"] == args.report)
    report_path, cert_path = VECTORS / entry["file"], VECTORS / entry["key_cert"]
    raw, cert_der = report_path.read_bytes(), cert_path.read_bytes()
    vcek = AmdCertificate.from_der(cert_der)
    at = vcek.not_before + dt.timedelta(days=1)
    verified = verify_report(raw, certificates=cert_der, at=at)  # also warms the caches

    report = AttestationReport.from_bytes(raw)
    ask = verified.chain.intermediate
    vcek_key, ask_key = vcek.public_key(), ask.public_key()
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey) and isinstance(ask_key, rsa.RSAPublicKey)
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    signed = report.signed_bytes
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH)
    caches = _process_caches()

    def warm() -> None:
        verify_report(raw, certificates=cert_der, at=at)

    def ecdsa_only() -> None:
        vcek_key.verify(signature, signed, ec.ECDSA(hashes.SHA384()))

    def rsa_only() -> None:
        ask_key.verify(vcek.signature, vcek.tbs, pss, hashes.SHA384())

    def bare() -> None:
        ecdsa_only()
        rsa_only()

    def bare_fresh_keys() -> None:
        leaf_key = serialization.load_der_public_key(vcek.spki)
        ca_key = serialization.load_der_public_key(ask.spki)
        assert isinstance(leaf_key, ec.EllipticCurvePublicKey) and isinstance(ca_key, rsa.RSAPublicKey)
        leaf_key.verify(signature, signed, ec.ECDSA(hashes.SHA384()))
        ca_key.verify(vcek.signature, vcek.tbs, pss, hashes.SHA384())

    def cold() -> None:
        for clear in caches.values():
            clear()
        verify_report(raw, certificates=cert_der, at=at)

    results = _measure(
        {
            "verify_report, warm": warm,
            "bare ECDSA P-384 + RSA-PSS-4096": bare,
            "  ECDSA P-384 verify alone": ecdsa_only,
            "  RSA-PSS-4096 verify alone": rsa_only,
            "bare, both keys loaded per call": bare_fresh_keys,
            "verify_report, cold": cold,
        },
        args.seconds,
    )
    warm()  # leave the caches warm
    fresh = statistics.median(_fresh_process(report_path, cert_path, at) for _ in range(5))
    results["fresh interpreter: import + verify"] = (fresh, 5)

    print(f"report      {entry['file']} ({verified.product.value} v{report.version}, "
          f"{verified.signing_key.name} {cert_path.name})")
    print(f"machine     {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.system()}, cryptography {__import__('cryptography').__version__}")
    print(f"cold clears {', '.join(caches)}")
    print(f"{'measurement (best of ' + str(ROUNDS) + ' rounds)':36} {'per call':>12} {'per second':>11} "
          f"{'calls':>7}")
    for name, (seconds, calls) in results.items():
        print(f"{name:36} {seconds * 1e3:9.3f} ms {1 / seconds:11,.0f} {calls:7}")
    ratio = results["verify_report, warm"][0] / results["bare ECDSA P-384 + RSA-PSS-4096"][0]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"full/bare   {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
    if args.json:
        _write_json(Path(args.json), {
            "benchmark": "bench_verify",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(),
            "report": entry["file"],
            "product": verified.product.value,
            "report_version": report.version,
            "signing_key": verified.signing_key.name,
            "rounds": ROUNDS,
            "cold_clears": list(caches),
            "results": [
                {"name": name.strip(), "part_of_bare": name.startswith("  "),
                 "seconds_per_call": seconds, "calls": calls}
                for name, (seconds, calls) in results.items()
            ],
            "ratio": ratio,
            "target_ratio": TARGET_RATIO,
        })


def _machine() -> dict[str, object]:
    return {
        "arch": platform.machine(), "cpus": os.cpu_count(), "system": platform.system(),
        "python": platform.python_version(),
        "cryptography": __import__("cryptography").__version__,
        "loadavg_1min": os.getloadavg()[0],
    }


def _write_json(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
