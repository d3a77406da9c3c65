"""``blindbox demo --transcribe``: confidential audio transcription end to end, on a SIMULATED enclave.

It runs the repository's example, ``examples/transcription/``: the
transcription service (``app.py``, pocketsphinx with the en-us model inside its
wheel, so nothing is downloaded) behind a local enclave simulated by the test
kit (test roots, not AMD hardware), and the client code of ``transcribe.py``:
SecureSession attests, then the bundled ``hello.wav`` is uploaded and
transcribed. The two refusals of ``blindbox demo`` follow, with the audio as
the data that must not leave. The example is repository content (it is not in
the wheel), so the demo runs from a clone or an editable install.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from blindbox.attest.verifier import Attestation
from blindbox.errors import InvalidEnclaveCode, NotAnEnclaveError
from blindbox.testing.demo import _refusal, table
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer, Fault

#: examples/transcription/ of the source tree this package was loaded from (src layout).
EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "examples" / "transcription"
INSTALL = "pip install -e '.[examples]'"
EXIT_USAGE = 2


def load_example(name: str) -> ModuleType:
    """Import ``examples/transcription/<name>.py`` by path (the examples are scripts, not a package)."""
    module_name = f"blindbox_example_transcription_{name}"
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLE_DIR / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {EXAMPLE_DIR / f'{name}.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def missing_requirement() -> str | None:
    """Why the demo cannot run here (with how to fix it), or None."""
    if importlib.util.find_spec("pocketsphinx") is None:
        return ("blindbox demo --transcribe needs pocketsphinx (offline speech recognition; its en-us "
                "model ships inside the wheel). Install the examples extra from the repository root:\n"
                f"  {INSTALL}")
    if not all((EXAMPLE_DIR / name).is_file() for name in ("app.py", "transcribe.py", "hello.wav")):
        return ("blindbox demo --transcribe runs the example in examples/transcription/ of a BlindBox "
                f"source checkout, which is not beside this installation (looked in {EXAMPLE_DIR}). "
                f"Clone the repository and, from its root:\n  {INSTALL}")
    return None


def run(out: TextIO, err: TextIO) -> int:
    """Run the transcription demo, printing to ``out`` (progress to ``err``); return the exit status."""
    problem = missing_requirement()
    if problem is not None:
        print(problem, file=err)
        return EXIT_USAGE
    app = load_example("app")
    sample = EXAMPLE_DIR / "hello.wav"
    audio = sample.read_bytes()

    print("BlindBox transcription demo — SIMULATED enclave: a software SEV-SNP platform signs the\n"
          "evidence with TEST roots, passed explicitly below. Real deployments verify against AMD's\n"
          "pinned roots. Everything runs on this machine; nothing is downloaded.", file=out)
    source = LiveEvidence.create()
    service = app.make_app(grammar="demo")
    with EnclaveServer(service, evidence=source) as enclave:
        print(f"\n1. Simulated enclave running the transcription service (examples/transcription/app.py,\n"
              f"   {app.MODEL}) at {enclave.url}\n"
              f"   launch measurement {enclave.measurement}", file=out)
        ok = _attest_and_transcribe(out, err, enclave, sample)
    with EnclaveServer(service, evidence=source, faults=[Fault.NO_EVIDENCE]) as impostor:
        ok &= _refusal(out, "4. A plain HTTPS server that is not an enclave (no genuine evidence):",
                       impostor, source.measurement, NotAnEnclaveError, data=audio)
    with EnclaveServer(service, evidence=source, faults=[Fault.OTHER_MEASUREMENT]) as other:
        ok &= _refusal(out, "5. A genuine enclave running other code than the expected image:",
                       other, source.measurement, InvalidEnclaveCode, data=audio)
    print("\nDone: the audio went only to the attested enclave." if ok else "\nDemo FAILED", file=out)
    return 0 if ok else 1


def _attest_and_transcribe(out: TextIO, err: TextIO, enclave: EnclaveServer, sample: Path) -> bool:
    """Steps 2 and 3: attest through SecureSession, then upload the sample with transcribe.py's code."""
    from blindbox.requests import RequestException, SecureSession

    client = load_example("transcribe")
    spoken = sample.with_suffix(".txt").read_text(encoding="utf-8").strip()
    print("\n2. SecureSession(addr, measurements=[...], roots=<test roots>) attests before sending",
          file=out, flush=True)
    print("   attesting…", file=err, flush=True)
    started = time.monotonic()
    try:
        with SecureSession(enclave.address, measurements=[enclave.measurement],
                           roots=enclave.roots_pem) as session:
            attestation: Attestation | None = session.attestation
            if attestation is None:
                print("   UNEXPECTED: no attestation recorded", file=out)
                return False
            print(f"   verified in {(time.monotonic() - started) * 1000:.0f} ms:", file=out)
            print(table(attestation.summary()), file=out)
            print(f"\n3. Upload {sample.name} ({sample.stat().st_size // 1024} KiB) to POST /transcribe "
                  f"over the attested session\n   spoken:     {spoken}", file=out, flush=True)
            started = time.monotonic()
            response = client.transcribe(session, sample, progress=err)
            result: dict[str, Any] = response.json() if response.status_code == 200 else {}
    except (RequestException, ValueError) as exc:
        print(f"   FAILED: {type(exc).__name__}: {exc}", file=out)
        return False
    elapsed = time.monotonic() - started
    if not result.get("text"):
        print(f"   FAILED: {response.status_code} {response.text}", file=out)
        return False
    print(f"   transcript: {result['text']}\n"
          f"   {result['duration_s']} s of audio transcribed in {elapsed:.1f} s by {result['model']}",
          file=out)
    return True
