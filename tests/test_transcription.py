"""The confidential transcription example (examples/transcription/) end to end, offline.

Speech is synthesised here with espeak-ng and sox (make_sample.sh's recipe), sent through an
attested SecureSession to the example service behind a simulated enclave, and transcribed by
pocketsphinx. Needs the ``examples`` extra and the Debian packages espeak-ng and sox (.ci/run
installs both); when they are missing the tests fail and say so.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import blindbox.requests as requests
from blindbox.cli import main as cli_main
from blindbox.testing import EnclaveServer, LiveEvidence
from blindbox.testing.transcribe_demo import EXAMPLE_DIR, load_example

from .conftest import manifest_validity

INSTALL_EXAMPLES = "pip install -e '.[examples]'"

# Sentences of the demo vocabulary (demo.gram) with different content words.
REVENUE = "revenue grew four percent this quarter"
MEETING = "the board meeting is on friday at three o'clock"
OPEN_VOCABULARY = "good morning everyone"  # none of these words is in demo.gram


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def share_recognised(expected: str, transcript: str) -> float:
    """The fraction of the expected words found, in order, in the transcript."""
    want, got = words(expected), words(transcript)
    found, position = 0, 0
    for word in want:
        if word in got[position:]:
            position = got.index(word, position) + 1
            found += 1
    return found / len(want)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    try:
        return load_example("app")
    except ImportError as exc:
        pytest.fail(f"the transcription example needs the examples extra ({INSTALL_EXAMPLES}): {exc}")


@pytest.fixture(scope="module")
def client_module() -> ModuleType:
    return load_example("transcribe")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Synthesise a sentence to a 16 kHz mono WAV with make_sample.sh (espeak-ng + sox)."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the transcription tests synthesise speech with "
                    "the Debian packages espeak-ng and sox. Install with: apt-get install -y espeak-ng sox "
                    "(.ci/run does, and there this skip fails)")
    folder = tmp_path_factory.mktemp("speech")
    made: dict[str, Path] = {}

    def make(text: str) -> Path:
        if text not in made:
            stem = f"s{len(made)}"
            (folder / f"{stem}.txt").write_text(text + "\n")
            subprocess.run(["bash", str(EXAMPLE_DIR / "make_sample.sh"), str(folder / f"{stem}.txt"),
                            str(folder / f"{stem}.wav")], check=True, capture_output=True, timeout=60)
            made[text] = folder / f"{stem}.wav"
        return made[text]

    return make


@pytest.fixture(scope="module")
def enclave(app_module: ModuleType) -> Iterator[EnclaveServer]:
    with EnclaveServer(app_module.make_app(grammar="demo"), evidence=LiveEvidence.create()) as server:
        yield server


@pytest.fixture(scope="module")
def session(enclave: EnclaveServer) -> Iterator[requests.SecureSession]:
    with requests.SecureSession(enclave.address, measurements=[enclave.measurement],
                                roots=enclave.roots_pem) as attested:
        yield attested


def wav_bytes(*, rate: int = 16000, channels: int = 1, width: int = 2, frames: int = 1600) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(b"\x01\x00" * (frames * channels * width // 2))
    return out.getvalue()


def post_audio(session: requests.SecureSession, data: bytes, content_type: str | None = None,
               field: str = "audio") -> requests.Response:
    file = ("audio.wav", data) if content_type is None else ("audio.wav", data, content_type)
    return session.post("/transcribe", files={field: file})


# --- transcription through the attested session ---------------------------------------------------
def test_generated_speech_is_transcribed_through_the_attested_session(
        session: requests.SecureSession, enclave: EnclaveServer, client_module: ModuleType,
        speech: Callable[[str], Path]) -> None:
    audio = speech(REVENUE)
    assert session.attestation is not None and session.attestation.measurement == enclave.measurement
    response = client_module.transcribe(session, audio, progress=None)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"text", "duration_s", "model"}
    assert share_recognised(REVENUE, result["text"]) >= 0.8, result
    assert "four" in words(result["text"]), result
    with wave.open(str(audio)) as wav:
        assert result["duration_s"] == pytest.approx(wav.getnframes() / 16000, abs=0.001)
    assert result["model"].startswith("pocketsphinx 5.") and "grammar 'demo'" in result["model"]
    # The audio travelled inside the attested TLS session: the server saw this very upload.
    assert audio.read_bytes() in enclave.received[-1].body


def test_each_request_gets_its_own_decoder_and_transcript(
        session: requests.SecureSession, app_module: ModuleType, client_module: ModuleType,
        speech: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Any] = []
    real_decoder = app_module.Decoder

    def counting_decoder(**options: Any) -> Any:
        created.append(real_decoder(**options))
        return created[-1]

    monkeypatch.setattr(app_module, "Decoder", counting_decoder)
    texts = [client_module.transcribe(session, speech(sentence), progress=None).json()["text"]
             for sentence in (REVENUE, MEETING, REVENUE)]
    assert len(created) == 3 and len({id(decoder) for decoder in created}) == 3
    assert texts[0] == texts[2], texts
    assert share_recognised(REVENUE, texts[0]) >= 0.8 and "friday" not in words(texts[0]), texts
    assert share_recognised(MEETING, texts[1]) >= 0.8, texts
    assert {"friday", "three"} <= set(words(texts[1])) and "percent" not in words(texts[1]), texts


def test_general_language_model_without_grammar(session: requests.SecureSession,
                                                 speech: Callable[[str], Path]) -> None:
    with speech(OPEN_VOCABULARY).open("rb") as audio:
        response = session.post("/transcribe", params={"grammar": "none"}, files={"audio": audio})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"].endswith("language model")
    # Words the demo grammar cannot produce: the general model decoded this. It is weak on
    # synthetic speech ("good" comes out as "oh"), but most of the sentence comes through.
    assert "morning everyone" in result["text"], result
    assert share_recognised(OPEN_VOCABULARY, result["text"]) >= 0.6, result


def test_bundled_sample_is_the_reproducible_output_of_make_sample(speech: Callable[[str], Path]) -> None:
    committed = EXAMPLE_DIR / "hello.wav"
    assert committed.stat().st_size < 200 * 1024
    with wave.open(str(committed)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert 2 < wav.getnframes() / 16000 < 10
    regenerated = speech((EXAMPLE_DIR / "hello.txt").read_text().strip())
    assert regenerated.read_bytes() == committed.read_bytes(), (
        "hello.wav differs from make_sample.sh's output: regenerate it with "
        "examples/transcription/make_sample.sh")


# --- refusals by the service ----------------------------------------------------------------------
@pytest.mark.parametrize(("content_type", "body"), [
    ("audio/wav", wav_bytes()),
    ("application/json", b'{"audio": "..."}'),
    ("text/plain", b"hello"),
])
def test_a_body_that_is_not_multipart_is_415(session: requests.SecureSession, content_type: str,
                                             body: bytes) -> None:
    response = session.post("/transcribe", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": "expected Content-Type multipart/form-data with a file field "
                                         f"'audio', found {content_type!r}"}


def test_a_part_that_is_not_wav_is_415(session: requests.SecureSession) -> None:
    response = post_audio(session, b"ID3\x03\x00" + b"\x00" * 100, "audio/mpeg")
    assert response.status_code == 415
    assert response.json() == {"error": "audio: expected audio/wav, found 'audio/mpeg'"}


@pytest.mark.parametrize(("data", "field", "message"), [
    (wav_bytes(rate=44100), "audio", "expected a 16 kHz mono 16-bit PCM WAV, found 44100 Hz, 1 channel(s), "
     "16-bit"),
    (wav_bytes(channels=2), "audio", "found 16000 Hz, 2 channel(s), 16-bit"),
    (wav_bytes(width=1), "audio", "found 16000 Hz, 1 channel(s), 8-bit"),
    (wav_bytes(frames=0), "audio", "audio: expected audio, found an empty WAV"),
    (wav_bytes()[:-1000], "audio", "(truncated file)"),
    (b"ID3\x03\x00" + b"\x00" * 100, "audio", "found data that is not a PCM WAV"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\xfe\xff" + b"\x00" * 14, "audio", "not a PCM WAV"),
    (wav_bytes(), "file", "expected exactly one file field 'audio', found 0"),
])
def test_audio_that_is_not_16khz_mono_wav_is_422(session: requests.SecureSession, data: bytes, field: str,
                                                  message: str) -> None:
    response = post_audio(session, data, field=field)
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_two_audio_fields_are_422(session: requests.SecureSession) -> None:
    response = session.post("/transcribe", files=[("audio", ("a.wav", wav_bytes())),
                                                  ("audio", ("b.wav", wav_bytes()))])
    assert response.status_code == 422
    assert response.json() == {"error": "expected exactly one file field 'audio', found 2"}


def test_oversize_upload_is_413_with_upload_progress(app_module: ModuleType, client_module: ModuleType,
                                                     tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(wav_bytes(frames=800_000))  # 1.6 MB, 50 s of audio
    small_cap = app_module.make_app(max_upload=1024 * 1024)
    with EnclaveServer(small_cap, evidence=LiveEvidence.create()) as server, \
            requests.SecureSession(server.address, measurements=[server.measurement],
                                   roots=server.roots_pem) as attested:
        progress = io.StringIO()
        response = client_module.transcribe(attested, big, progress=progress)
    assert response.status_code == 413
    length = int(server.received[-1].headers["Content-Length"])
    assert response.json() == {"error": f"expected a request body of at most {1024 * 1024} bytes, found "
                                        f"Content-Length {length}"}
    shown = progress.getvalue()
    assert len(re.findall(r"\r  uploading \d+\.\d / 1\.5 MiB \(\d+%\)", shown)) > 10, shown
    assert shown.endswith(f"uploading {length / 1024 / 1024:.1f} / 1.5 MiB (100%); transcribing…\n")


def test_oversize_body_is_refused_before_it_is_read(app_module: ModuleType) -> None:
    class Unread(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the app read the body of an oversize request")

    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/transcribe", "QUERY_STRING": "",
               "CONTENT_TYPE": "multipart/form-data; boundary=x", "CONTENT_LENGTH": str(25 * 1024 * 1024 + 1),
               "wsgi.input": Unread()}
    body = b"".join(app_module.app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["413 Content Too Large"]
    cap = 25 * 1024 * 1024
    assert json.loads(body)["error"].startswith(f"expected a request body of at most {cap} bytes")


def test_small_uploads_show_no_progress(client_module: ModuleType, tmp_path: Path) -> None:
    small = tmp_path / "small.wav"
    small.write_bytes(wav_bytes())
    progress = io.StringIO()
    with client_module.AudioUpload(small, progress=progress) as upload:
        assert len(upload.read()) == len(upload)
    assert progress.getvalue() == ""


@pytest.mark.parametrize(("body", "message"), [
    (b"--b\r\nContent-Disposition: form-data; name=\"audio\"\r\n\r\nRIFF", "the closing boundary is missing"),
    (b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"audio\"\r\n\r\nx\r\n--b--\r\n",
     "expected the body to start with the boundary"),
    (b"--b\r\nContent-Disposition: attachment; name=\"audio\"\r\n\r\nx\r\n--b--\r\n",
     "expected Content-Disposition: form-data"),
    (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n", "a part has no name"),
    (b"--b\r\nX: " + b"y" * 5000 + b"\r\n\r\nx\r\n--b--\r\n", "part headers of at most 4096 bytes"),
    (b"--b" + b"\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--b" * 9 + b"--\r\n",
     "expected at most 8 parts"),
])
def test_malformed_multipart_is_400(session: requests.SecureSession, body: bytes, message: str) -> None:
    response = session.post("/transcribe", data=body,
                            headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_other_routes_unknown_grammar_and_missing_boundary(session: requests.SecureSession) -> None:
    assert session.get("/transcribe").status_code == 405
    assert session.get("/transcribe").headers["Allow"] == "POST"
    assert session.post("/upload", files={"audio": wav_bytes()}).status_code == 404
    response = session.post("/transcribe", params={"grammar": "../../etc/passwd"},
                            files={"audio": wav_bytes()})
    assert response.status_code == 400
    assert response.json() == {
        "error": "grammar: expected one of ['demo', 'none'], found ['../../etc/passwd']"}
    response = session.post("/transcribe", data=b"x", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400 and "boundary" in response.json()["error"]


# --- the client script, the notebook and the one-command demo ---------------------------------------
def test_transcribe_script_attests_then_prints_the_transcript(
        enclave: EnclaveServer, client_module: ModuleType, speech: Callable[[str], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_text(enclave.roots_pem)
    audio = str(speech(MEETING))
    assert client_module.main([audio, "--addr", enclave.address, "--measurement", enclave.measurement,
                               "--roots", str(roots)]) == 0
    captured = capsys.readouterr()
    assert share_recognised(MEETING, captured.out) >= 0.8, captured.out
    assert captured.err.startswith(f"attesting {enclave.address}…\nverified:\n")
    assert re.search(rf"^  measurement +{enclave.measurement}$", captured.err, re.MULTILINE), captured.err

    before = len(enclave.received)
    other = "ab" * 48
    assert client_module.main([audio, "--addr", enclave.address, "--measurement", other,
                               "--roots", str(roots)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "refused, nothing was sent: InvalidEnclaveCode: measurement: expected one of" in captured.err
    assert len(enclave.received) == before
    assert client_module.main([str(tmp_path / "missing.wav"), "--addr", enclave.address]) == 2


def test_transcribe_script_takes_the_vendors_manifest(
        enclave: EnclaveServer, client_module: ModuleType, speech: Callable[[str], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    def manifest(digest: str) -> str:
        inputs = {"ovmf_sha256": "0" * 64, "vcpus": 1, "vcpu_type": "EPYC-v4", "vmm": "qemu",
                  "guest_features": "0x1"}
        path = tmp_path / f"manifest-{digest[:8]}.json"
        path.write_text(json.dumps({"schema": "blindbox-manifest-v2", "name": "transcription", "version": "1",
                                    **manifest_validity(),
                                    "measurements": [{"digest": digest, "inputs": inputs}]}))
        return str(path)

    roots = tmp_path / "roots.pem"
    roots.write_text(enclave.roots_pem)
    audio = str(speech(REVENUE))
    common = ["--addr", enclave.address, "--roots", str(roots)]
    assert client_module.main([audio, "--manifest", manifest(enclave.measurement), *common]) == 0
    assert share_recognised(REVENUE, capsys.readouterr().out) >= 0.8
    assert client_module.main([audio, "--manifest", manifest("cd" * 48), *common]) == 1
    assert "refused, nothing was sent: InvalidEnclaveCode: " in capsys.readouterr().err
    # A manifest lists the accepted measurements itself: both together are refused as ambiguous.
    assert client_module.main([audio, "--manifest", manifest(enclave.measurement), "--measurement",
                               enclave.measurement, *common]) == 2
    assert "both measurements and a manifest were given" in capsys.readouterr().err


def test_notebook_runs_clean_and_shows_transcript_and_both_refusals() -> None:
    import nbformat
    from nbclient import NotebookClient

    path = EXAMPLE_DIR / "transcribe.ipynb"
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        "commit the notebook without outputs"
    source = "\n".join(cell.source for cell in code)
    assert "import blindbox.requests as requests" in source and "requests.SecureSession(" in source
    NotebookClient(notebook, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(EXAMPLE_DIR)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"] == []
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    upload = next(cell for cell in code if 'session.post("/transcribe"' in cell.source)
    transcript = upload.outputs[0]["text"]
    assert share_recognised((EXAMPLE_DIR / "hello.txt").read_text(), transcript) >= 0.8, transcript
    assert "refused: NotAnEnclaveError: " in text and "uploads the impostor received: 0" in text
    assert "refused: InvalidEnclaveCode: measurement: expected one of" in text
    assert "uploads the other enclave received: 0" in text
    table = next(o for o in outputs if "text/markdown" in o.get("data", {}))["data"]["text/markdown"]
    assert "| roots | `caller-supplied (NOT AMD)` |" in table


def test_demo_transcribe_runs_the_whole_story(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--transcribe"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "SIMULATED" in out and re.search(r"^  roots +caller-supplied \(NOT AMD\)$", out, re.MULTILINE)
    transcript = re.search(r"^   transcript: (.*)$", out, re.MULTILINE)
    assert transcript is not None, out
    assert share_recognised((EXAMPLE_DIR / "hello.txt").read_text(), transcript.group(1)) >= 0.8, out
    assert "refused: NotAnEnclaveError: " in out and "refused: InvalidEnclaveCode: " in out
    assert out.count("bytes of your data the server received: none") == 2
    assert out.rstrip().endswith("Done: the audio went only to the attested enclave.")
    assert "attesting…" in captured.err


def test_demo_transcribe_without_pocketsphinx_says_how_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # as if it were not installed
    assert cli_main(["demo", "--transcribe"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "needs pocketsphinx" in captured.err and INSTALL_EXAMPLES in captured.err
