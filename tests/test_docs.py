"""The documentation site stays true to the code.

- every page in mkdocs.yml's nav exists, and every Markdown page under docs/ is in the nav;
- the CLI reference (generated at build time by docs/hooks/cli_reference.py) names every
  subcommand and every option that ``blindbox ... --help`` prints;
- every example failure message quoted in docs/attestation.md is exactly what the code raises
  today, reproduced here from the real vectors and the software platform (:data:`SCENARIOS`).

mkdocs itself is not run here; CI runs ``mkdocs build --strict`` separately.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from blindbox.attest.binding import check_binding, expected_report_data
from blindbox.attest.evidence import Evidence
from blindbox.attest.policy import AttestationPolicy
from blindbox.attest.verifier import verify_evidence
from blindbox.cli import main as cli_main
from blindbox.errors import AttestationError, ConfigurationError
from blindbox.requests.exchange import fetch_evidence
from blindbox.requests.origin import Origin
from blindbox.snp import verify_report
from blindbox.snp.kds import KdsClient
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport

from .conftest import VECTORS, manifest_validity

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: A time inside the validity of every certificate used below, except the AWS VLEK (2024-12-10 to
#: 2025-12-10), which is what the expired-certificate example needs.
AT = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
#: The P-256 SubjectPublicKeyInfo of protocol.md's binding vectors.
SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d030107034200048b96a7e7309389407751027b4f710ba36a9048c8"
    "20785e8e10f8d5c985da10797b5c469b5ddeb9e93940a1dca2b647aaed6e66015ed30aae2434cbd13536d700"
)
NONCE_SENT = bytes(range(32))
NONCE_EARLIER = bytes(range(32, 64))
OTHER_MEASUREMENT = hashlib.sha384(b"the image you expected").hexdigest()


def _vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


GENOA = "reports/genoa_oak-oc_v5_vcek.bin"
GENOA_VCEK = "certs/genoa_vcek_d2421d976f95ce0b_bl10_tee0_snp25_uc84.der"
MILAN = "reports/milan_oak-oc-release_v3_vcek.bin"
MILAN_VCEK = "certs/milan_vcek_a3fdc2c64dc299ab_bl4_tee0_snp24_uc219.der"
MILAN_OTHER_CHIP_VCEK = "certs/milan_vcek_66a5a7b4403a3006_bl4_tee0_snp24_uc219.der"  # same TCB
MILAN_OTHER_TCB_VCEK = "certs/milan_vcek_980cf7b61876cb37_bl4_tee0_snp27_uc222.der"
TURIN = "reports/turin_oak-oc_v5_vcek.bin"
TURIN_OTHER_VCEK = "certs/turin_vcek_1e550a8ee5cf9f4d_NOREPORT.der"  # another chip, another TCB
MILAN_VLEK_REPORT = "reports/milan_aws-trustee_v3_vlek.bin"
MILAN_VLEK = "certs/milan_vlek_cc-us-east-2_bl4_tee0_snp24_uc217.der"


def _patched(name: str, offset: int, data: bytes) -> bytes:
    raw = bytearray(_vector(name))
    raw[offset : offset + len(data)] = data
    return bytes(raw)


def _genoa(raw: bytes, cert: str = GENOA_VCEK) -> Any:
    return verify_report(raw, certificates=_vector(cert), at=AT)


def _milan(cert: str) -> Any:
    return verify_report(_vector(MILAN), certificates=_vector(cert), at=AT)


def _simulated(**policy: Any) -> Any:
    """Simulated Milan evidence bound to SPKI and NONCE_SENT, appraised under ``policy``."""
    from blindbox.testing import LiveEvidence, SoftwarePlatform

    source = LiveEvidence.create()
    fields = dataclasses.replace(source.template, report_data=expected_report_data(SPKI, None, NONCE_SENT))
    for name in ("vmpl", "policy"):
        if name in policy:
            fields = dataclasses.replace(fields, **{name: policy.pop(name)})
    signed = SoftwarePlatform().sign(fields)
    verified = verify_report(signed.raw, certificates=dict(signed.certificates),
                             roots=source.platform.roots_pem(Product.MILAN), at=AT)
    measurements = policy.pop("measurements", [source.measurement])
    AttestationPolicy.for_measurements(measurements, **policy).appraise(verified)
    return verified


def _replayed() -> None:
    """Genuine evidence recorded for an earlier nonce, replayed to a client that sent NONCE_SENT."""
    from blindbox.testing import LiveEvidence

    source = LiveEvidence.create()
    evidence = source.evidence(spki_der=SPKI, nonce=NONCE_EARLIER, faults=frozenset())
    policy = AttestationPolicy.for_measurements([source.measurement])
    verify_evidence(evidence, spki_der=SPKI, nonce=NONCE_SENT, policy=policy,
                    roots=source.roots_pem, at=AT)


def _under_amd_roots() -> None:
    from blindbox.testing import LiveEvidence

    evidence = LiveEvidence.create().evidence(spki_der=SPKI, nonce=None, faults=frozenset())
    verify_report(evidence.report, certificates=dict(evidence.certificates), at=AT)


def _revoked_ask() -> None:
    from blindbox.testing import SoftwarePlatform
    from blindbox.testing.report import ReportFields

    platform = SoftwarePlatform()
    signed = platform.sign(ReportFields(product=Product.MILAN))
    ask = verify_report(signed.raw, certificates=dict(signed.certificates),
                        roots=platform.roots_pem(Product.MILAN), at=AT).chain.intermediate
    crl = platform.crl(Product.MILAN, revoked=[ask.serial_number],
                       this_update=dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc),
                       next_update=dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc))
    with tempfile.TemporaryDirectory() as cache:
        path = Path(cache) / "kds" / "crl" / "vcek" / "Milan.crl"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"blindbox-kds-crl vcek Milan\n" + crl)  # the product and family it is for
        verify_report(signed.raw, certificates=dict(signed.certificates),
                      roots=platform.roots_pem(Product.MILAN), at=AT,
                      kds=KdsClient(cache_dir=cache, offline=True))


EGRESS_POLICY = (
    b'{"authentication":{"bearer_token_sha256":[],"client_certificate_spki_sha256":[],"required":false},'
    b'"egress":{"allow":[{"host":"api.example.com","ports":[443]}],"mode":"allowlist"},"version":1}'
)


def _egress_not_denied() -> None:
    """An enclave whose data-owner policy allows egress, for a client that requires deny-all."""
    from blindbox.attest.owner_policy import PolicyRequirements
    from blindbox.testing import LiveEvidence

    source = LiveEvidence.create(policy=EGRESS_POLICY)
    evidence = source.evidence(spki_der=SPKI, nonce=NONCE_SENT, faults=frozenset())
    verify_evidence(evidence, spki_der=SPKI, nonce=NONCE_SENT,
                    policy=AttestationPolicy.for_measurements([source.measurement]),
                    requirements=PolicyRequirements(egress_subset_of=[]), roots=source.roots_pem, at=AT)


def _tampered_manifest() -> None:
    """A manifest changed after its publisher signed it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from blindbox.attest.manifest import Manifest, sign_manifest

    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    entry = {"digest": "ab" * 48, "inputs": {"ovmf_sha256": "00" * 32, "vcpus": 1, "vmm": "qemu",
                                              "vcpu_type": "EPYC-Milan", "guest_features": "0x1"}}
    signed = json.dumps({"schema": "blindbox-manifest-v2", "name": "example", "version": "1",
                         **manifest_validity(), "measurements": [entry]}).encode()
    signature = sign_manifest(signed, key)
    Manifest.load(signed.replace(b'"version": "1"', b'"version": "2"'), signature=signature,
                  publisher_key=public_pem, name="example")


def _session(**kwargs: Any) -> None:
    """A SecureSession that is refused before it connects (configuration errors)."""
    from blindbox.requests import SecureSession

    SecureSession("10.0.0.7:8443", **kwargs)


class _CannedSocket:
    """A socket that answers the evidence request with fixed bytes."""

    def __init__(self, answer: bytes) -> None:
        self._answer = io.BytesIO(answer)

    def settimeout(self, value: float | None) -> None:
        return None

    def sendall(self, data: bytes) -> None:
        return None

    def recv(self, size: int) -> bytes:
        return self._answer.read(size)


def _evidence_404() -> None:
    fetch_evidence(_CannedSocket(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                   host="10.0.0.7:8443", nonce=None, timeout=5)


#: Every failure quoted in docs/attestation.md: (what it shows, how to provoke it).
SCENARIOS: dict[str, Callable[[], object]] = {
    # 0. the evidence document and the exchange
    "no evidence endpoint": _evidence_404,
    "report not base64": lambda: Evidence.from_json(b'{"version": 1, "tee": "sev-snp", "report": "AA="}'),
    # 1. report layout
    "truncated report": lambda: AttestationReport.from_bytes(_vector(GENOA)[:1000]),
    "reserved byte set": lambda: AttestationReport.from_bytes(_patched(GENOA, 0x4C, b"\x01")),
    "no signing key": lambda: AttestationReport.from_bytes(_patched(GENOA, 0x48, bytes([7 << 2, 0, 0, 0]))),
    "unknown CPU": lambda: AttestationReport.from_bytes(_patched(GENOA, 0x188, bytes([0x1A, 0x50]))),
    "policy bit 17 clear": lambda: AttestationReport.from_bytes(_patched(GENOA, 0x8, bytes([0x1F, 0, 0]))),
    # 2. the signing certificate
    "VLEK not supplied": lambda: verify_report(_vector(MILAN_VLEK_REPORT), at=AT),
    "VCEK not supplied": lambda: verify_report(_vector(GENOA), at=AT),
    # 3. certificate extensions against the report
    "wrong product": lambda: _genoa(_vector(GENOA), MILAN_VCEK),
    "TCB mismatch": lambda: _milan(MILAN_OTHER_TCB_VCEK),
    "other chip": lambda: _milan(MILAN_OTHER_CHIP_VCEK),
    "Turin TCB mismatch": lambda: verify_report(_vector(TURIN), certificates=_vector(TURIN_OTHER_VCEK),
                                                at=AT),
    # 4. chain
    "not AMD's roots": _under_amd_roots,
    "expired VLEK": lambda: verify_report(_vector(MILAN_VLEK_REPORT), certificates=_vector(MILAN_VLEK),
                                          at=AT),
    # 5. revocation (only with a KDS client)
    "revoked ASK": _revoked_ask,
    # 6. signature
    "signature": lambda: _genoa(_patched(GENOA, 0x50, b"\xff")),
    # 7. binding
    "replayed evidence": _replayed,
    "other TLS key": lambda: check_binding(expected_report_data(SPKI[:-1] + b"\x01", None, NONCE_SENT),
                                           SPKI, None, NONCE_SENT),
    # 8. appraisal
    "measurement": lambda: _simulated(measurements=[OTHER_MEASUREMENT]),
    "debug guest": lambda: _simulated(policy=0x3001F | 1 << 19),
    "vmpl": lambda: _simulated(vmpl=2),
    "tcb minimum": lambda: _simulated(min_tcb={"milan": {"bootloader": 4, "snp": 28, "microcode": 222}}),
    # 9. data-owner policy requirements
    "egress not denied": _egress_not_denied,
    # manifests
    "tampered manifest": _tampered_manifest,
    "manifest and measurements": lambda: _session(manifest={}, measurements=["ab" * 48]),
    # the session
    "other origin": lambda: Origin.parse("10.0.0.7:8443").check("https://example.com/upload?secret=1"),
    "plain http": lambda: Origin.parse("10.0.0.7:8443").check("http://10.0.0.7:8443/upload"),
    "no measurement": lambda: _session(),
}


def failure(name: str) -> str:
    """``ErrorClass: message`` of scenario ``name``, as quoted in the docs."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            SCENARIOS[name]()
    except (AttestationError, ConfigurationError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"scenario {name!r} raised nothing")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_quoted_failure_messages_are_current(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLINDBOX_MANIFEST", raising=False)  # else "no measurement" would load it
    page = (DOCS / "attestation.md").read_text()
    message = failure(name)
    assert message in page, f"docs/attestation.md does not quote the current message of {name!r}:\n{message}"


# --- nav ------------------------------------------------------------------------------------------


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    nav = nav[: re.search(r"\n\S", nav[1:]).start() + 1]  # type: ignore[union-attr]
    return re.findall(r":\s+(\S+\.md)\s*$", nav, re.MULTILINE)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages()
    assert "index.md" in pages and "protocol.md" in pages and "cli.md" in pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"pages in mkdocs.yml nav but not in docs/: {missing}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk - set(pages) == set(), f"pages in docs/ but not in the nav: {sorted(on_disk - set(pages))}"


# --- CLI reference --------------------------------------------------------------------------------


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main([*argv, "--help"]) == 0
    return out.getvalue()


def _commands(help_text: str) -> list[str]:
    """Subcommand names listed in a --help text's ``{a,b,c}`` / ``COMMAND`` section."""
    section = re.search(r"\n(?:positional arguments|commands?):?\n((?:  .*\n)+)", help_text)
    if section is None:
        return []
    return re.findall(r"^    (\w[\w-]*)\s", section.group(1), re.MULTILINE)


def test_cli_reference_covers_every_subcommand_and_option() -> None:
    hook = _hook()
    assert hook.MARKER in (DOCS / "cli.md").read_text()
    page = hook.render()
    pending: list[tuple[str, ...]] = [()]
    seen = 0
    while pending:
        argv = pending.pop()
        text = _help(*argv)
        heading = "`" + " ".join(("blindbox", *argv)) + "`"
        assert heading in page, f"no section {heading} in the CLI reference"
        # Option lines of the help: "  -o DIR, --output DIR   help...", "  --json   help...".
        invocations = re.findall(r"^  (-\S.*?)(?:\s{2,}|$)", text, re.MULTILINE)
        options = {o for line in invocations for o in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line)}
        assert "--help" in options
        for option in sorted(options - {"-h", "--help"}):
            assert f"`{option}" in page or f" {option}`" in page or f", {option}" in page, (
                f"{' '.join(argv) or 'blindbox'}: option {option} is missing from the CLI reference")
        for command in _commands(text):
            pending.append((*argv, command))
        seen += 1
    assert seen >= 5  # blindbox, verify, fixture, fixture create, fixture serve, demo...


# --- policy reference -----------------------------------------------------------------------------


def test_policy_reference_lists_every_field_and_the_current_defaults() -> None:
    page = (DOCS / "policy.md").read_text()
    for field in dataclasses.fields(AttestationPolicy):
        assert f"| `{field.name}`" in page or f", `{field.name}` |" in page, (
            f"AttestationPolicy.{field.name} is missing from the fields table in docs/policy.md")
    defaults = AttestationPolicy(measurements=["ab" * 48]).to_dict()
    block = page[page.index("## The default policy as a dict") :]
    block = block[block.index("```json") + len("```json") : block.index("```\n", block.index("```json") + 7)]
    assert json.loads(block) == defaults


def test_readme_commands_are_quoted_in_the_quick_tour() -> None:
    readme = (ROOT / "README.md").read_text()
    tour = (DOCS / "index.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme, re.DOTALL)
    assert len(commands) >= 3
    for command in commands:
        assert command in tour, f"docs/index.md does not quote the README command {command!r}"


def test_quick_tour_simulated_session_runs_as_printed() -> None:
    tour = (DOCS / "index.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.+?)```", tour, re.DOTALL) if "EnclaveServer(" in b]
    assert len(blocks) == 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "docs/index.md", "exec"), {})  # our own documentation
    printed = out.getvalue()
    shown = tour[tour.index("which prints") :]
    for line in printed.splitlines():
        label = line.split("  ", 1)[0]
        if label in ("TLS SPKI sha256", "nonce", "attested at"):
            continue  # fresh on every run, as the page says
        assert line in shown, f"docs/index.md shows different output for: {line}"


# --- the README's Python type-checks as written ---------------------------------------------------


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.+?)^```", page.read_text(), re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_python_examples_pass_mypy_strict(page: str, tmp_path: Path) -> None:
    """What a user copies from the README (and the quick tour) type-checks under ``mypy --strict``."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (pip install -e '.[dev]'): the README examples are type-checked")
    blocks = _python_blocks(ROOT / page)
    assert blocks, f"no python blocks in {page}"
    files = []
    for index, block in enumerate(blocks):
        path = tmp_path / f"example_{index}.py"
        path.write_text(block)
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), *files],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, (
        f"{page}: mypy --strict fails on its examples:\n{result.stdout}{result.stderr}")


# --- the README's commands run as printed, at a time that does not depend on today ----------------


def _verify_commands(page: Path) -> list[list[str]]:
    blocks = re.findall(r"^```sh\n(.+?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(".venv/bin/blindbox verify ")]


def test_readme_verify_commands_run_as_printed(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from blindbox.snp.certificate import AmdCertificate

    commands = _verify_commands(ROOT / "README.md")
    assert len(commands) >= 2 and any("--at" in argv for argv in commands)
    monkeypatch.chdir(ROOT)
    for argv in commands:
        certificate = AmdCertificate.from_der((ROOT / argv[argv.index("--cert") + 1]).read_bytes())
        if "--at" not in argv:
            # "now" is the point of the first example; the test pins a time inside the certificate's
            # validity so that it keeps passing after the certificate expires.
            argv = [*argv, "--at", (certificate.not_before + dt.timedelta(days=1)).isoformat()]
        assert cli_main(argv) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith("GENUINE: ")


def test_every_example_with_an_expired_vector_passes_at() -> None:
    """The AWS VLEKs expired on 2025-12-10: every documented command that uses one names ``--at``."""
    from blindbox.snp.certificate import AmdCertificate

    pages = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "examples").rglob("*.md")]
    seen = 0
    for page in pages:
        for argv in _verify_commands(page):
            cert = AmdCertificate.from_der((ROOT / argv[argv.index("--cert") + 1]).read_bytes())
            if cert.not_after < dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc):
                seen += 1
                assert "--at" in argv, f"{page.name}: {' '.join(argv)} depends on today's date"
    assert seen >= 2  # the README and the quick tour show the AWS VLEK


# --- the site builds offline: nothing is loaded from a CDN ----------------------------------------

#: A script, stylesheet or font that the browser would fetch from another host.
_REMOTE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"'](?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material not installed (pip install -e '.[docs]'): the site is built")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return out


def test_the_site_loads_nothing_from_another_host(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        remote = _REMOTE.search(text)
        assert remote is None, f"{page.relative_to(site)} loads {text[remote.start():remote.start() + 160]}"
        assert "shared/" not in text, f"{page.relative_to(site)} mentions shared/"
    config = (ROOT / "mkdocs.yml").read_text()
    assert "font: false" in config  # mkdocs-material would otherwise load Google Fonts


def test_the_diagram_renders_with_the_vendored_mermaid(site: Path) -> None:
    """mkdocs-material fetches mermaid from unpkg.com unless ``mermaid`` is already defined."""
    index = (site / "index.html").read_text()
    assert '<pre class="mermaid"><code>sequenceDiagram' in index
    scripts = re.findall(r'<script src="([^"]+)"', index)
    vendored = [s for s in scripts if "mermaid" in s]
    assert len(vendored) == 1 and not vendored[0].startswith(("http:", "https:", "//")), scripts
    script = (site / vendored[0]).read_text()
    assert re.search(r'globalThis\["mermaid"\] = [^\n]+;\s*$', script)  # the UMD build defines it
    assert (DOCS / "assets" / "vendor" / "mermaid-LICENSE.txt").read_text().startswith("The MIT License")


def test_api_signatures_are_formatted(site: Path) -> None:
    """mkdocstrings formats separate signatures with ruff (in the docs extra): one parameter a line."""
    page = (site / "api" / "requests" / "index.html").read_text()
    signature = re.search(r'<div class="doc-signature highlight"><pre>(.+?)</pre>', page, re.DOTALL)
    assert signature is not None
    text = re.sub(r"<[^>]+>", "", signature.group(1))
    assert "SecureSession(\n    addr: str,\n    *,\n" in text, text[:300]
