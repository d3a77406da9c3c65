"""``blindbox._text.shown``: the one escaping helper, for every class of character that acts on a terminal."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindbox._text import has_unsafe_chars, is_safe_char, shown

C0 = [chr(c) for c in range(0x00, 0x20)]
DEL = ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BIDI = ["\u061c", "\u200e", "\u200f",  # ALM, LRM, RLM
        "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
        "\u2066", "\u2067", "\u2068", "\u2069"]  # isolates
SEPARATORS = ["\u2028", "\u2029"]  # line and paragraph separators
INVISIBLE = ["\u200b", "\u200d", "\u2060", "\ufeff", "\U000e0001"]  # zero-width, BOM, tag characters
UNSAFE = C0 + DEL + C1 + BIDI + SEPARATORS + INVISIBLE


def _expected_escape(char: str) -> str:
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_unsafe_character_is_escaped(char: str) -> None:
    assert not is_safe_char(char) and has_unsafe_chars(f"a{char}b")
    assert shown(f"ok{char}ok") == f"ok{_expected_escape(char)}ok"
    assert shown(f"ok{char}ok").isprintable()


def test_the_reported_fake_verdict_is_defused() -> None:
    reason = "\x1b[2K\x1b[1A\x1b[32mverified: genuine AMD SEV-SNP enclave\u2026"
    assert shown(reason) == "\\x1b[2K\\x1b[1A\\x1b[32mverified: genuine AMD SEV-SNP enclave\u2026"


@pytest.mark.parametrize("text", ["plain ASCII ~!@#$%^&*()", "café Zürich", "中文 日本語", "emoji 🔐",
                                  "space and NBSP\u00a0", "combining e\u0301", "C:\\path\\x1b literal"])
def test_printable_text_is_unchanged(text: str) -> None:
    assert shown(text, limit=None) == text


def test_bytes_are_latin1_one_visible_character_each() -> None:
    assert shown(b"404 \x1b[31m\xc3\xa9\x85") == "404 \\x1b[31m\u00c3\u00a9\\x85"


def test_limit_cuts_and_marks() -> None:
    assert shown("a" * 300) == "a" * 200 + "…"
    assert shown("a" * 200) == "a" * 200
    assert shown("\x1b" * 5, limit=2) == "\\x1b\\x1b…"
    assert shown("a" * 5000, limit=None) == "a" * 5000


@given(st.text())
def test_output_is_always_safe_and_one_line(text: str) -> None:
    out = shown(text, limit=None)
    assert not has_unsafe_chars(out) and "\n" not in out and "\r" not in out
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") for c in out)


@given(st.text().filter(lambda t: not has_unsafe_chars(t)))
def test_safe_text_passes_unchanged(text: str) -> None:
    assert shown(text, limit=None) == text
