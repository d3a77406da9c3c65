"""Transcribe a WAV file on a confidential transcription service, only if it is an attested enclave.

    python examples/transcription/transcribe.py meeting.wav --addr 10.0.0.7:8443 --measurement <96 hex>

Before a byte of the audio leaves this machine, SecureSession checks the
server's SEV-SNP evidence: AMD hardware signed it, the enclave runs the
expected code (its launch measurement) and the evidence binds this very TLS
connection. If a check fails it raises and nothing is sent. ``--roots``
replaces AMD's root certificates: use it only with a SIMULATED enclave
(``python examples/transcription/app.py`` prints a complete command line).
The audio must be a 16 kHz mono 16-bit WAV: ``sox in.wav -r 16000 -c 1 -b 16 out.wav``.

The attestation table and progress go to stderr, the transcript to stdout.
Exit status: 0 transcribed, 1 refused or failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TextIO

import blindbox.requests as requests

PROGRESS_FROM = 1024 * 1024  # show upload progress for files larger than this many bytes


class AudioUpload:
    """A multipart/form-data body holding one WAV file, read from disk while it is sent.

    It has a length, so the request carries a Content-Length (the server can
    refuse an oversize upload from its headers alone), and for files over
    PROGRESS_FROM bytes it writes a progress line to ``progress``. The local
    file name is not sent.
    """

    def __init__(self, path: str | os.PathLike[str], *, field: str = "audio",
                 progress: TextIO | None = sys.stderr) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="audio.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        audio = Path(path).open("rb")
        self.size = os.fstat(audio.fileno()).st_size
        self._parts: list[BinaryIO] = [io.BytesIO(head), audio, io.BytesIO(tail)]
        self._length = len(head) + self.size + len(tail)
        self._sent = 0
        self._shown = -1
        self._progress = progress if self.size > PROGRESS_FROM else None

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        want = self._length if size is None or size < 0 else size
        out = bytearray()
        while len(out) < want and self._parts:
            chunk = self._parts[0].read(want - len(out))
            if chunk:
                out += chunk
            else:
                self._parts.pop(0).close()
        self._sent += len(out)
        self._report()
        return bytes(out)

    def _report(self) -> None:
        if self._progress is None:
            return
        percent = 100 * self._sent // self._length
        if percent != self._shown:
            self._shown = percent
            mb = 1024 * 1024
            self._progress.write(f"\r  uploading {self._sent / mb:.1f} / {self._length / mb:.1f} MiB "
                                 f"({percent}%)")
            if self._sent == self._length:
                self._progress.write("; transcribing…\n")
            self._progress.flush()

    def close(self) -> None:
        for part in self._parts:
            part.close()
        self._parts.clear()

    def __enter__(self) -> AudioUpload:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def attestation_table(summary: Mapping[str, str]) -> str:
    """What SecureSession verified, as a two-column table."""
    width = max(len(key) for key in summary)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in summary.items())


def transcribe(session: requests.SecureSession, path: str | os.PathLike[str], *,
               grammar: str | None = None, progress: TextIO | None = sys.stderr) -> requests.Response:
    """POST the WAV file to ``/transcribe`` over the attested session."""
    with AudioUpload(path, progress=progress) as body:
        return session.post("/transcribe", data=body, headers={"Content-Type": body.content_type},
                            params={"grammar": grammar} if grammar else None, timeout=(30, 900))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Transcribe a 16 kHz mono WAV on a confidential transcription service, sending "
        "it only after the server proves it is a genuine SEV-SNP enclave running the expected code.")
    parser.add_argument("audio", metavar="AUDIO.wav", help="16 kHz mono 16-bit PCM WAV file")
    parser.add_argument("--addr", required=True, metavar="HOST:PORT", help="the enclave's address")
    parser.add_argument("--measurement", action="append", metavar="HEX",
                        help="an accepted launch measurement, 96 hex characters (repeatable)")
    parser.add_argument("--manifest", metavar="FILE",
                        help="the vendor's enclave manifest: accepted measurements and policy")
    parser.add_argument("--roots", metavar="PEM",
                        help="trust these root certificates INSTEAD of AMD's (simulated enclaves only)")
    parser.add_argument("--no-nonce", action="store_true",
                        help="accept recorded evidence (no fresh nonce; for recorded fixtures only)")
    parser.add_argument("--grammar", choices=["demo", "none"],
                        help="the service's demo vocabulary, or none for its general language model "
                        "(default: the service's choice)")
    args = parser.parse_args(argv)

    audio = Path(args.audio)
    if not audio.is_file():
        print(f"transcribe.py: {audio}: no such file", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"measurements": args.measurement, "roots": args.roots,
                               "nonce": not args.no_nonce}
    if args.manifest:
        options["manifest"] = args.manifest
    print(f"attesting {args.addr}…", file=sys.stderr, flush=True)
    try:
        session = requests.SecureSession(args.addr, **options)
    except requests.ConfigurationError as exc:
        print(f"transcribe.py: {exc}", file=sys.stderr)
        return 2
    except requests.AttestationError as exc:
        print(f"refused, nothing was sent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"cannot reach {args.addr}: {exc}", file=sys.stderr)
        return 1
    with session:
        print("verified:", file=sys.stderr)
        print(attestation_table(session.attestation.summary()), file=sys.stderr, flush=True)
        try:
            response = transcribe(session, audio, grammar=args.grammar)
        except requests.AttestationError as exc:  # e.g. a replica whose evidence does not verify
            print(f"refused, audio not sent: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except requests.RequestException as exc:
            print(f"upload failed: {exc}", file=sys.stderr)
            return 1
    if response.status_code != 200:
        print(f"transcription failed: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    print(response.json()["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
