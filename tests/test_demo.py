"""`blindbox demo` and the example script run clean and show what they claim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from blindbox.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_attests_sends_and_shows_both_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "PUBLIC test keys" in out and "roots=<PUBLIC test roots>" in out
    assert re.search(r"verified in \d+ ms \(the first attestation in this process; "
                     r"a further one took \d+ ms\):", out)
    assert "roots                     caller-supplied (NOT AMD)" in out
    assert "200 {'words': 11, 'characters': 63}" in out
    assert "refused: NotAnEnclaveError: " in out
    assert "refused: InvalidEnclaveCode: measurement: expected one of" in out
    assert out.count("bytes of your data the server received: none") == 2
    assert out.rstrip().endswith("Done: data went only to the attested enclave.")


def test_example_script_runs_clean() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "attested_session.py")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "{'words': 9, 'characters': 44}" in result.stdout
    assert "NotAnEnclaveError:" in result.stdout and "InvalidEnclaveCode:" in result.stdout
    assert result.stderr == ""
