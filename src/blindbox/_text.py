"""One escaping helper for text that a server, a file or the network chose.

Every string that did not come from BlindBox itself (an HTTP reason phrase, a manifest's name, a
fixture's metadata, a certificate's subject) passes through :func:`shown` before it reaches an
exception message, a log record or the terminal, so it can never move the cursor, erase a line,
reorder text (bidi overrides) or fake a verdict.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

# Unicode categories that never print as themselves: controls (C0, DEL, C1), format characters
# (bidi embeddings, overrides and isolates, zero-width joiners, the BOM), line and paragraph
# separators, surrogates, private use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def is_safe_char(char: str) -> bool:
    """True for a character that prints as itself (no control, format or separator effect)."""
    return unicodedata.category(char) not in _UNSAFE_CATEGORIES


def has_unsafe_chars(text: str) -> bool:
    """True if ``text`` holds any character that :func:`shown` would escape."""
    return not all(is_safe_char(char) for char in text)


def _escape(char: str) -> str:
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def shown(text: str | bytes, limit: int | None = 200) -> str:
    """``text`` made safe to print: every unsafe character escaped, at most ``limit`` characters.

    Bytes are decoded as latin-1 (each byte stays one visible character). Text longer than
    ``limit`` is cut and marked, so a peer cannot flood a message either.
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    cut = limit is not None and len(text) > limit
    if cut:
        assert limit is not None
        text = text[:limit]
    out = "".join(char if is_safe_char(char) else _escape(char) for char in text)
    return out + "…" if cut else out


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, escaped: enough to say where, nothing of what.

    No path, query, fragment or ``user:password@``: a pre-signed or capability URL carries its
    token there, and messages and logs never echo it.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "an unparsable URL"
    if not parts.scheme and not netloc:
        return "a relative URL"
    return shown(f"{parts.scheme}://{netloc}" if parts.scheme else f"//{netloc}")
