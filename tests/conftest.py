"""Shared test helpers: where the real SEV-SNP vectors live (tests/vectors/snp, in the repository)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent / "vectors" / "snp"


def load_index() -> list[dict[str, Any]]:
    """The vectors' index.json (expected values for every real report)."""
    return json.loads((VECTORS / "index.json").read_text())


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"SEV-SNP vectors not found at {VECTORS}")
    return VECTORS


# --- Real reports that verify end to end, with their signing certificate ------------------------
# (added for tests/test_vectors.py, test_negative.py, test_properties.py, test_cli.py)


@dataclasses.dataclass(frozen=True)
class ReportVector:
    """One genuine report from index.json with its VCEK/VLEK and a time inside the cert's validity."""

    name: str
    entry: dict[str, Any]
    report: bytes
    cert: bytes
    at: datetime.datetime

    @property
    def report_path(self) -> Path:
        return VECTORS / self.entry["file"]

    @property
    def cert_path(self) -> Path:
        return VECTORS / self.entry["key_cert"]

    @property
    def chain_path(self) -> Path:
        return VECTORS / self.entry["chain"]


def cert_valid_at(cert_der: bytes) -> datetime.datetime:
    """A time one day after the certificate's notBefore (VLEKs in the set expired 2025-12-10)."""
    from blindbox.snp.certificate import AmdCertificate

    return AmdCertificate.from_der(cert_der).not_before + datetime.timedelta(days=1)


def report_vectors() -> list[ReportVector]:
    """Every report whose index entry says verify.end_to_end, in index order."""
    out = []
    for entry in load_index():
        if not entry["verify"]["end_to_end"]:
            continue
        cert = (VECTORS / entry["key_cert"]).read_bytes()
        out.append(ReportVector(
            name=Path(entry["file"]).stem,
            entry=entry,
            report=(VECTORS / entry["file"]).read_bytes(),
            cert=cert,
            at=cert_valid_at(cert),
        ))
    return out


# --- CI runs everything: a skip there is a failure ------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With BLINDBOX_REQUIRE_ALL=1 (set by .ci/run) a skipped test fails, naming why it skipped.

    Locally a test that needs root or a Debian package skips with a message naming it; in CI the
    same skip would hide an untested path, so it is turned into a failure.
    """
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("BLINDBOX_REQUIRE_ALL") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where everything must run (BLINDBOX_REQUIRE_ALL=1): {reason}"


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own user state directory (the manifest rollback marks live there)."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def manifest_validity(sequence: int = 1, *, days: int = 365) -> dict[str, Any]:
    """The v2 manifest members ``sequence``, ``issued`` (a day ago) and ``expires`` (``days`` from now)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {"sequence": sequence, "issued": (now - datetime.timedelta(days=1)).strftime(stamp),
            "expires": (now + datetime.timedelta(days=days)).strftime(stamp)}
