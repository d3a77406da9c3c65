"""The GHCB extended-report certificate table (SNP_GET_EXT_REPORT certificates buffer).

The table is a list of 24-byte entries, GUID(16) || offset u32 LE || length u32
LE, ended by an all-zero entry; offsets count from the start of the buffer and
point past the table. :func:`decode_cert_table` is strict and bounded: it
refuses a buffer that is too large, has too many entries, no terminator, a
range that overlaps the table or another entry or runs past the buffer, an
empty entry, or the same GUID twice. GUIDs are read in RFC 4122 byte order or
in the mixed-endian order some hosts (AWS) emit; unknown GUIDs are kept aside,
never mistaken for a known certificate. The bytes it returns are only
candidates: :func:`blindbox.snp.verify_report` decides what they are worth.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from blindbox.errors import NotAnEnclaveError

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

ENTRY_SIZE = 24
#: Largest buffer accepted (AMD's certificates take about 5 KiB).
MAX_TABLE_SIZE = 64 * 1024
#: Most entries accepted, terminator excluded.
MAX_ENTRIES = 32

_NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}
#: Both byte orders of each known GUID, to its canonical GUID.
_KNOWN: dict[bytes, uuid.UUID] = {
    **{guid.bytes: guid for guid in _NAMES},
    **{guid.bytes_le: guid for guid in _NAMES},
}
_ENCODE_ORDER = ("vcek", "vlek", "ask", "asvk", "ark")
_NAME_TO_GUID = {"vcek": VCEK_GUID, "vlek": VLEK_GUID, "ask": ASK_GUID, "asvk": ASK_GUID,
                 "ark": ARK_GUID}


@dataclass(frozen=True)
class CertTable:
    """A decoded certificate table.

    ``certificates`` maps "vcek", "vlek", "ask" (or "asvk" when a VLEK is
    present: AMD uses one GUID for both) and "ark" to the bytes of each entry,
    as :func:`~blindbox.snp.verify_report` takes them. ``unknown`` holds the
    entries whose GUID is none of those, by GUID (RFC 4122 reading).
    """

    certificates: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    unknown: Mapping[uuid.UUID, bytes] = field(default_factory=lambda: MappingProxyType({}))


def decode_cert_table(blob: bytes) -> CertTable:
    """Parse a certificate table buffer, refusing anything malformed or ambiguous.

    Raises :class:`NotAnEnclaveError` naming what was expected and what was found.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise NotAnEnclaveError(f"cert table: expected bytes, found {type(blob).__name__}")
    data = bytes(blob)
    if len(data) > MAX_TABLE_SIZE:
        raise NotAnEnclaveError(
            f"cert table: expected at most {MAX_TABLE_SIZE} bytes, found {len(data)}"
        )
    entries: list[tuple[int, bytes, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(data):
            raise NotAnEnclaveError(
                f"cert table: expected an all-zero terminator entry after {len(entries)} "
                f"entries, found the end of the {len(data)}-byte buffer"
            )
        raw_guid = data[pos : pos + 16]
        offset = int.from_bytes(data[pos + 16 : pos + 20], "little")
        length = int.from_bytes(data[pos + 20 : pos + 24], "little")
        pos += ENTRY_SIZE
        if not any(raw_guid):
            if offset or length:
                raise NotAnEnclaveError(
                    f"cert table entry {len(entries)}: all-zero GUID with offset {offset} and "
                    f"length {length}; expected a terminator (all zero) or a non-zero GUID"
                )
            break
        if len(entries) == MAX_ENTRIES:
            raise NotAnEnclaveError(
                f"cert table: expected at most {MAX_ENTRIES} entries before the terminator, "
                "found more"
            )
        entries.append((len(entries), raw_guid, offset, length))
    header_end = pos

    certificates: dict[str, bytes] = {}
    unknown: dict[uuid.UUID, bytes] = {}
    seen: dict[uuid.UUID, int] = {}
    ranges: list[tuple[int, int, int]] = []
    for index, raw_guid, offset, length in entries:
        canonical = _KNOWN.get(raw_guid)
        guid = canonical if canonical is not None else uuid.UUID(bytes=raw_guid)
        if guid in seen:
            raise NotAnEnclaveError(
                f"cert table entry {index}: expected each GUID once, found {guid} again "
                f"(first at entry {seen[guid]})"
            )
        seen[guid] = index
        if length == 0:
            raise NotAnEnclaveError(
                f"cert table entry {index} ({guid}): expected a non-empty certificate, found length 0"
            )
        if offset < header_end:
            raise NotAnEnclaveError(
                f"cert table entry {index} ({guid}): expected an offset at or past the end of the "
                f"table ({header_end}), found {offset}"
            )
        end = offset + length
        if end > len(data):
            raise NotAnEnclaveError(
                f"cert table entry {index} ({guid}): expected bytes within the {len(data)}-byte "
                f"buffer, found offset {offset} + length {length} = {end}"
            )
        for other, start, stop in ranges:
            if offset < stop and start < end:
                raise NotAnEnclaveError(
                    f"cert table entry {index} ({guid}): bytes {offset}..{end} overlap entry "
                    f"{other} (bytes {start}..{stop}); expected disjoint certificates"
                )
        ranges.append((index, offset, end))
        body = data[offset:end]
        if canonical is None:
            unknown[guid] = body
        else:
            certificates[_NAMES[canonical]] = body
    if "vlek" in certificates and "ask" in certificates:
        certificates["asvk"] = certificates.pop("ask")
    return CertTable(MappingProxyType(certificates), MappingProxyType(unknown))


def encode_cert_table(
    certificates: Mapping[str, bytes],
    unknown: Mapping[uuid.UUID, bytes] | None = None,
    *,
    mixed_endian: bool = False,
) -> bytes:
    """Build a certificate table buffer (RFC 4122 GUIDs unless ``mixed_endian``).

    ``certificates`` uses the names of :class:`CertTable` ("ask" and "asvk"
    share a GUID, so at most one of them may be given). Raises ``ValueError``
    for an unknown name, a clash or an empty certificate.
    """
    unknown = unknown or {}
    names = set(certificates)
    if names - set(_ENCODE_ORDER):
        raise ValueError(
            f"cert table: unknown names {sorted(names - set(_ENCODE_ORDER))}; "
            f"expected among {', '.join(_ENCODE_ORDER)}"
        )
    if {"ask", "asvk"} <= names:
        raise ValueError("cert table: 'ask' and 'asvk' share one GUID; give only one of them")
    items: list[tuple[uuid.UUID, bytes]] = [
        (_NAME_TO_GUID[name], bytes(certificates[name])) for name in _ENCODE_ORDER if name in names
    ]
    for guid, body in unknown.items():
        if guid in _NAMES:
            raise ValueError(f"cert table: {guid} is a known GUID; pass it by name")
        items.append((guid, bytes(body)))
    if len(items) > MAX_ENTRIES:
        raise ValueError(f"cert table: at most {MAX_ENTRIES} entries, got {len(items)}")
    header = bytearray()
    payload = bytearray()
    offset = (len(items) + 1) * ENTRY_SIZE
    for guid, body in items:
        if not body:
            raise ValueError(f"cert table: the certificate for {guid} is empty")
        header += guid.bytes_le if mixed_endian else guid.bytes
        header += (offset + len(payload)).to_bytes(4, "little") + len(body).to_bytes(4, "little")
        payload += body
    header += bytes(ENTRY_SIZE)
    out = bytes(header + payload)
    if len(out) > MAX_TABLE_SIZE:
        raise ValueError(f"cert table: {len(out)} bytes exceeds the {MAX_TABLE_SIZE}-byte limit")
    return out
