"""Bounded reads of HTTP responses fetched with ``requests`` (KDS, manifests)."""

from __future__ import annotations

import requests


def read_bounded(response: requests.Response, limit: int, chunk_size: int = 16 * 1024) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (never read past it).

    ``response`` must come from ``stream=True``, so nothing is read before this call.
    """
    declared = response.headers.get("Content-Length")
    # isascii(): str.isdigit() also admits e.g. "\u00b2", which int() refuses (headers are latin-1).
    if declared is not None and declared.strip().isascii() and declared.strip().isdigit() \
            and int(declared) > limit:
        return None
    body = bytearray()
    for chunk in response.iter_content(chunk_size=chunk_size):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
