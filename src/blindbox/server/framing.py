"""Request-head checks on the raw bytes, for what h11 tolerates but a proxy must refuse.

h11 parses every request; this module only refuses, before h11 sees a head,
the constructs that let two HTTP parsers disagree about where a request ends
(request smuggling). h11 itself already refuses: differing duplicate
``Content-Length``, a ``Content-Length`` that is not digits, any
``Transfer-Encoding`` but ``chunked``, repeated ``Transfer-Encoding``,
whitespace before a header colon, control characters in values, a missing or
repeated ``Host`` in HTTP/1.1, and chunk sizes that are not 1-20 hex digits.
Added here, because h11 accepts them:

- a bare LF anywhere in the head (h11 takes LF as a line end);
- obs-fold, a header line starting with SP or HTAB (h11 unfolds it);
- ``Content-Length`` repeated, even with one value, or as a list (``3, 3``);
- ``Content-Length`` together with ``Transfer-Encoding`` (h11 ignores the length);
- ``Transfer-Encoding`` in an HTTP/1.0 request;
- empty lines before the request line.

Security property: the agent re-frames every body it forwards (h11 writes the
upstream's framing), so the upstream never sees the client's framing bytes; a
head refused here is answered ``400`` and its connection closed.
"""

from __future__ import annotations

#: Largest request head accepted (request line and headers), as nginx's default large buffers.
MAX_HEAD_BYTES = 32 * 1024

_TERMINATOR = b"\r\n\r\n"


class Refusal(Exception):
    """A request the agent refuses: ``status`` to answer, ``reason`` (BlindBox's own text) to show."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def head_end(buffer: bytes | bytearray, scanned_before: int = 0) -> int | None:
    """Offset just past the request head in ``buffer``, or None while it is incomplete.

    Raises :class:`Refusal` as soon as the bytes so far cannot start a valid
    head: a bare LF, an empty first line, or a head longer than
    :data:`MAX_HEAD_BYTES`. ``scanned_before`` is the length of ``buffer`` at an
    earlier call that returned None: only what came after is scanned again, so
    a head that arrives one byte at a time costs linear time, not quadratic.
    """
    end = buffer.find(_TERMINATOR, max(0, scanned_before - (len(_TERMINATOR) - 1)))
    scanned = len(buffer) if end < 0 else end + len(_TERMINATOR)
    if buffer.startswith(b"\r\n") or buffer.startswith(b"\n"):
        raise Refusal(400, "empty line before the request line")
    lf = buffer.find(b"\n", scanned_before, scanned)
    while lf >= 0:
        if lf == 0 or buffer[lf - 1] != 0x0D:
            raise Refusal(400, "bare LF in the request head (lines must end with CRLF)")
        lf = buffer.find(b"\n", lf + 1, scanned)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
        return None
    if scanned > MAX_HEAD_BYTES:
        raise Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
    return scanned


def check_head(head: bytes) -> None:
    """Refuse framing h11 would accept ambiguously; ``head`` ends with the blank line.

    Only the constructs listed in the module docstring are checked here; h11
    parses (and refuses the rest of) the same bytes afterwards.
    """
    lines = head[: -len(_TERMINATOR)].split(b"\r\n")
    request_line, fields = lines[0], lines[1:]
    lengths = 0
    chunked = False
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            raise Refusal(400, "obsolete line folding in a header")
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # h11 refuses it
        name = name.lower()
        if name == b"content-length":
            lengths += 1
            if b"," in value:
                raise Refusal(400, "Content-Length given as a list")
        elif name == b"transfer-encoding":
            chunked = True
    if lengths > 1:
        raise Refusal(400, "Content-Length given more than once")
    if lengths and chunked:
        raise Refusal(400, "both Content-Length and Transfer-Encoding given")
    if chunked and request_line.endswith(b" HTTP/1.0"):
        raise Refusal(400, "Transfer-Encoding in an HTTP/1.0 request")
