"""A confidential transcription service: the example's server side, as a WSGI app.

``POST /transcribe`` with a multipart/form-data file field ``audio`` (a 16 kHz
mono 16-bit PCM WAV) answers ``{"text": ..., "duration_s": ..., "model": ...}``.
Recognition runs in this process with pocketsphinx and the en-us model inside
its wheel: nothing is downloaded, and the audio goes nowhere else. A fresh
decoder serves each request, so one user's audio never influences another's
transcript. ``?grammar=demo`` (or ``make_app(grammar="demo")``) restricts
recognition to the demo vocabulary in ``demo.gram``; ``?grammar=none`` uses the
general en-us language model.

Every error is JSON ``{"error": ...}``: 404/405 for other routes, 411 without a
Content-Length, 413 over the size cap (refused from the header, before the
body is read), 415 when the request is not multipart/form-data or the part is
not audio/wav, 400 for malformed multipart or an unknown grammar, 422 when the
``audio`` field is missing or is not a 16 kHz mono 16-bit PCM WAV.

Run it behind a SIMULATED enclave (BlindBox's test kit, test roots, not AMD)::

    python examples/transcription/app.py [--port 8443] [--grammar demo]

In production the same app runs inside the SEV-SNP VM behind BlindBox's
enclave agent; clients do not change.
"""

from __future__ import annotations

import io
import json
import re
import struct
import urllib.parse
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pocketsphinx import Decoder

HERE = Path(__file__).resolve().parent
GRAMMARS = {"demo": HERE / "demo.gram"}  # names a request may select; never a path from the client
LANGUAGE_MODEL = "none"  # ?grammar=none: the general en-us language model

MAX_UPLOAD = 25 * 1024 * 1024  # bytes of request body; ~13 minutes of 16 kHz mono 16-bit audio
MAX_PARTS = 8
MAX_PART_HEADERS = 4096
SAMPLE_RATE = 16000
AUDIO_FIELD = "audio"
AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
                         "application/octet-stream"})
MODEL = f"pocketsphinx {version('pocketsphinx')} en-us"

# RFC 2046 boundary: 1-70 of these characters, not ending in a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Refusal(Exception):
    """A request the service refuses: an HTTP status and a message for the client."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Part:
    """One multipart/form-data part."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_form(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body (RFC 7578) into its parts, strictly and within bounds.

    No preamble is accepted, the closing delimiter is required, there are at
    most MAX_PARTS parts and each part's headers fit in MAX_PART_HEADERS bytes.
    """
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        raise Refusal("415 Unsupported Media Type",
                      f"expected Content-Type multipart/form-data with a file field {AUDIO_FIELD!r}, "
                      f"found {content_type or 'none'!r}")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY_RE.fullmatch(boundary):
        raise Refusal("400 Bad Request", "multipart: expected a boundary parameter of 1-70 RFC 2046 "
                      f"characters in the Content-Type, found {boundary!r}")
    delimiter = b"--" + boundary.encode("ascii")
    if not body.startswith(delimiter):
        raise Refusal("400 Bad Request", "multipart: expected the body to start with the boundary")
    separator = b"\r\n" + delimiter
    parts: list[Part] = []
    pos = len(delimiter)
    while not body.startswith(b"--", pos):
        if not body.startswith(b"\r\n", pos):
            raise Refusal("400 Bad Request", "multipart: expected CRLF after a boundary")
        end = body.find(separator, pos + 2)
        if end < 0:
            raise Refusal("400 Bad Request", "multipart: the closing boundary is missing (truncated body?)")
        if len(parts) == MAX_PARTS:
            raise Refusal("400 Bad Request", f"multipart: expected at most {MAX_PARTS} parts, found more")
        parts.append(_part(body[pos + 2:end]))
        pos = end + len(separator)
    return parts


def _part(raw: bytes) -> Part:
    split = raw.find(b"\r\n\r\n", 0, MAX_PART_HEADERS + 4)
    if split < 0:
        raise Refusal("400 Bad Request",
                      f"multipart: expected part headers of at most {MAX_PART_HEADERS} bytes ending in a "
                      "blank line")
    headers = BytesHeaderParser().parsebytes(raw[:split + 4])
    if headers.get_content_disposition() != "form-data":
        raise Refusal("400 Bad Request", "multipart: expected Content-Disposition: form-data in every part")
    name = _param(headers, "name")
    if name is None:
        raise Refusal("400 Bad Request", "multipart: a part has no name")
    content_type = headers.get_content_type() if "Content-Type" in headers else None
    return Part(name, _param(headers, "filename"), content_type, raw[split + 4:])


def _param(headers: Message, name: str) -> str | None:
    value = headers.get_param(name, header="content-disposition")
    return None if value is None else collapse_rfc2231_value(value)


def read_wav(data: bytes) -> tuple[bytes, float]:
    """The PCM samples and duration of a 16 kHz mono 16-bit PCM WAV; anything else is a 422."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate, frames = (wav.getnchannels(), wav.getsampwidth(),
                                             wav.getframerate(), wav.getnframes())
            pcm = wav.readframes(frames)
    except (wave.Error, EOFError, RuntimeError, struct.error, ValueError, OverflowError) as exc:
        raise Refusal("422 Unprocessable Entity",
                      f"{AUDIO_FIELD}: expected a 16 kHz mono 16-bit PCM WAV file, found data that is "
                      f"not a PCM WAV ({exc})") from None
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise Refusal("422 Unprocessable Entity",
                      f"{AUDIO_FIELD}: expected a 16 kHz mono 16-bit PCM WAV, found {rate} Hz, "
                      f"{channels} channel(s), {8 * width}-bit (convert it with: "
                      "sox IN.wav -r 16000 -c 1 -b 16 OUT.wav)")
    if frames == 0:
        raise Refusal("422 Unprocessable Entity", f"{AUDIO_FIELD}: expected audio, found an empty WAV")
    if len(pcm) != frames * 2:
        raise Refusal("422 Unprocessable Entity",
                      f"{AUDIO_FIELD}: expected {frames} samples in the WAV data chunk, found "
                      f"{len(pcm) // 2} (truncated file)")
    return pcm, frames / SAMPLE_RATE


def recognise(pcm: bytes, grammar: Path | None) -> str:
    """Transcribe 16 kHz mono 16-bit PCM with a decoder created for this call alone."""
    options: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "ERROR"}
    if grammar is not None:
        options["jsgf"] = str(grammar)
    decoder = Decoder(**options)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def make_app(*, grammar: str | None = None, max_upload: int = MAX_UPLOAD) -> WsgiApp:
    """The WSGI app; ``grammar`` names the default grammar (None: the en-us language model)."""
    if grammar is not None and grammar not in GRAMMARS:
        raise ValueError(f"grammar: expected one of {sorted(GRAMMARS)} or None, found {grammar!r}")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            if environ.get("PATH_INFO") != "/transcribe":
                raise Refusal("404 Not Found", "try POST /transcribe with a multipart file field 'audio'")
            if environ.get("REQUEST_METHOD") != "POST":
                raise Refusal("405 Method Not Allowed", "expected POST /transcribe")
            chosen = _grammar(environ.get("QUERY_STRING", ""), grammar)
            body = _read_body(environ, max_upload)
            result = _transcribe(body, environ.get("CONTENT_TYPE", ""), chosen)
        except Refusal as refusal:
            extra = [("Allow", "POST")] if refusal.status.startswith("405") else []
            return _json(start_response, refusal.status, {"error": str(refusal)}, extra)
        return _json(start_response, "200 OK", result)

    return app


def _grammar(query: str, default: str | None) -> str | None:
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("grammar")
    if values is None:
        return default
    choices = [*sorted(GRAMMARS), LANGUAGE_MODEL]
    if len(values) != 1 or values[0] not in choices:
        raise Refusal("400 Bad Request", f"grammar: expected one of {choices}, found {values}")
    return None if values[0] == LANGUAGE_MODEL else values[0]


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, refused (413) from Content-Length alone when it is over ``limit``."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        raise Refusal("411 Length Required", "expected a Content-Length header") from None
    if length < 0:
        raise Refusal("400 Bad Request", f"expected a non-negative Content-Length, found {length}")
    if length > limit:
        raise Refusal("413 Content Too Large",
                      f"expected a request body of at most {limit} bytes, found Content-Length {length}")
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    remaining = length
    while remaining:
        chunk = stream.read(min(remaining, 1024 * 1024))
        if not chunk:
            raise Refusal("400 Bad Request", f"expected {length} bytes of body, found {length - remaining}")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _transcribe(body: bytes, content_type: str, grammar: str | None) -> dict[str, Any]:
    parts = [part for part in parse_form(body, content_type) if part.name == AUDIO_FIELD]
    if len(parts) != 1:
        raise Refusal("422 Unprocessable Entity",
                      f"expected exactly one file field {AUDIO_FIELD!r}, found {len(parts)}")
    audio = parts[0]
    if audio.content_type is not None and audio.content_type not in AUDIO_TYPES:
        raise Refusal("415 Unsupported Media Type",
                      f"{AUDIO_FIELD}: expected audio/wav, found {audio.content_type!r}")
    pcm, duration = read_wav(audio.data)
    text = recognise(pcm, GRAMMARS[grammar] if grammar is not None else None)
    model = f"{MODEL}, JSGF grammar {grammar!r}" if grammar is not None else f"{MODEL}, language model"
    return {"text": text, "duration_s": round(duration, 3), "model": model}


def _json(start_response: StartResponse, status: str, doc: dict[str, Any],
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(doc).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *(extra or [])])
    return [body]


app = make_app()


def main() -> None:
    """Serve the app behind a SIMULATED enclave and print how to reach it."""
    import argparse
    import tempfile

    from blindbox.testing import EnclaveServer, LiveEvidence

    parser = argparse.ArgumentParser(description="Serve the transcription example behind a SIMULATED "
                                     "enclave (BlindBox test kit: test roots, not AMD hardware).")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free)")
    parser.add_argument("--grammar", choices=sorted(GRAMMARS),
                        help="default grammar (default: the general en-us language model)")
    args = parser.parse_args()
    server = EnclaveServer(make_app(grammar=args.grammar), evidence=LiveEvidence.create(), port=args.port)
    roots = Path(tempfile.mkdtemp(prefix="blindbox-test-roots-")) / "roots.pem"
    roots.write_text(server.roots_pem)
    print(f"SIMULATED enclave serving the transcription app at {server.address} (evidence signed by "
          f"BlindBox TEST roots, written to {roots}; NOT AMD hardware). Transcribe with:\n\n"
          f"  python {HERE / 'transcribe.py'} {HERE / 'hello.wav'} --addr {server.address} \\\n"
          f"      --measurement {server.measurement} --roots {roots}\n\nCtrl-C to stop.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
