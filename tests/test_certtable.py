"""The GHCB extended-report certificate table: exact round trips and every malformed shape refused."""

from __future__ import annotations

import base64
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindbox.errors import NotAnEnclaveError
from blindbox.snp import verify_report
from blindbox.snp.certtable import (
    ARK_GUID,
    ASK_GUID,
    ENTRY_SIZE,
    MAX_ENTRIES,
    MAX_TABLE_SIZE,
    VCEK_GUID,
    VLEK_GUID,
    decode_cert_table,
    encode_cert_table,
)

from .conftest import VECTORS, cert_valid_at

GUIDS = {"vcek": VCEK_GUID, "vlek": VLEK_GUID, "ask": ASK_GUID, "ark": ARK_GUID}


def entry(guid: bytes, offset: int, length: int) -> bytes:
    return guid + offset.to_bytes(4, "little") + length.to_bytes(4, "little")


def table(*entries: tuple[bytes, int, int], terminator: bool = True, payload: bytes = b"") -> bytes:
    head = b"".join(entry(*e) for e in entries) + (bytes(ENTRY_SIZE) if terminator else b"")
    return head + payload


def pem_to_der(path: str) -> bytes:
    text = (VECTORS / path).read_text()
    body = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S)
    assert body is not None
    return base64.b64decode("".join(body.group(1).split()))


def test_guids_are_amds_and_unambiguous_in_both_byte_orders() -> None:
    assert str(VCEK_GUID) == "63da758d-e664-4564-adc5-f4b93be8accd"
    assert str(VLEK_GUID) == "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
    assert str(ASK_GUID) == "4ab7b379-bbac-4fe4-a02f-05aef327c782"
    assert str(ARK_GUID) == "c0b406a4-a803-4952-9743-3fb6014cd0ae"
    forms = [g.bytes for g in GUIDS.values()] + [g.bytes_le for g in GUIDS.values()]
    assert len(set(forms)) == 8


def test_layout_is_rfc4122_entries_then_terminator_then_certificates() -> None:
    blob = encode_cert_table({"vcek": b"V" * 10, "ask": b"A" * 5, "ark": b"R" * 7})
    header_end = 4 * ENTRY_SIZE
    assert blob[0:16] == VCEK_GUID.bytes
    assert blob[16:24] == header_end.to_bytes(4, "little") + (10).to_bytes(4, "little")
    assert blob[24:40] == ASK_GUID.bytes
    assert blob[40:48] == (header_end + 10).to_bytes(4, "little") + (5).to_bytes(4, "little")
    assert blob[48:64] == ARK_GUID.bytes
    assert blob[72:96] == bytes(24)
    assert blob[96:] == b"V" * 10 + b"A" * 5 + b"R" * 7


@pytest.mark.parametrize("mixed_endian", [False, True])
def test_real_amd_certificates_round_trip_and_verify(mixed_endian: bool) -> None:
    vcek = (VECTORS / "certs/milan_vcek_3ac3fe21e13fb099_bl2_tee0_snp5_uc68.der").read_bytes()
    ask, ark = pem_to_der("ca/milan/ask.pem"), pem_to_der("ca/milan/ark.pem")
    blob = encode_cert_table({"vcek": vcek, "ask": ask, "ark": ark}, mixed_endian=mixed_endian)
    assert blob[0:16] == (VCEK_GUID.bytes_le if mixed_endian else VCEK_GUID.bytes)
    decoded = decode_cert_table(blob)
    assert dict(decoded.certificates) == {"vcek": vcek, "ask": ask, "ark": ark}
    assert dict(decoded.unknown) == {}
    report = (VECTORS / "reports/milan_gsg_v2_vcek.bin").read_bytes()
    verified = verify_report(report, certificates=decoded.certificates, at=cert_valid_at(vcek))
    assert verified.roots_are_amd
    assert verified.chain.intermediate.der == ask


def test_ask_guid_is_named_asvk_beside_a_vlek() -> None:
    decoded = decode_cert_table(encode_cert_table({"vlek": b"L", "asvk": b"S", "ark": b"R"}))
    assert dict(decoded.certificates) == {"vlek": b"L", "asvk": b"S", "ark": b"R"}
    decoded = decode_cert_table(encode_cert_table({"vcek": b"C", "ask": b"S"}))
    assert dict(decoded.certificates) == {"vcek": b"C", "ask": b"S"}


def test_unknown_guids_are_kept_apart_not_refused() -> None:
    other = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
    decoded = decode_cert_table(encode_cert_table({"vcek": b"C"}, {other: b"extra"}))
    assert dict(decoded.certificates) == {"vcek": b"C"}
    assert dict(decoded.unknown) == {other: b"extra"}


def test_trailing_padding_after_the_certificates_is_accepted() -> None:
    blob = encode_cert_table({"vcek": b"C" * 100})
    padded = blob + bytes(4096 - len(blob))  # hosts hand over whole zeroed pages
    assert dict(decode_cert_table(padded).certificates) == {"vcek": b"C" * 100}


def test_terminator_only_is_an_empty_table() -> None:
    decoded = decode_cert_table(bytes(ENTRY_SIZE))
    assert dict(decoded.certificates) == {} and dict(decoded.unknown) == {}


names = st.sets(st.sampled_from(["vcek", "vlek", "ask", "ark"]))
bodies = st.binary(min_size=1, max_size=300)
unknown_guids = st.dictionaries(
    st.uuids().filter(lambda g: g not in GUIDS.values()),
    bodies,
    max_size=4,
)


@settings(max_examples=50, deadline=None)
@given(chosen=names, data=st.data(), unknown=unknown_guids, mixed_endian=st.booleans())
def test_round_trip(chosen: set[str], data: st.DataObject, unknown: dict[uuid.UUID, bytes],
                    mixed_endian: bool) -> None:
    certs = {name: data.draw(bodies) for name in chosen}
    if "vlek" in certs and "ask" in certs:
        certs["asvk"] = certs.pop("ask")
    blob = encode_cert_table(certs, unknown, mixed_endian=mixed_endian)
    decoded = decode_cert_table(blob)
    assert dict(decoded.certificates) == certs
    if not mixed_endian:  # an unknown GUID's byte order cannot be told, so it is read as RFC 4122
        assert dict(decoded.unknown) == unknown
    else:
        assert sorted(decoded.unknown.values()) == sorted(unknown.values())


VCEK = VCEK_GUID.bytes


def refused(blob: bytes, pattern: str) -> None:
    with pytest.raises(NotAnEnclaveError, match=pattern):
        decode_cert_table(blob)


def test_empty_buffer_is_refused() -> None:
    refused(b"", r"expected an all-zero terminator entry after 0 entries, found the end of the 0-byte")


@pytest.mark.parametrize("cut", [1, 23, 24, 40, 47])
def test_truncated_header_is_refused(cut: int) -> None:
    blob = encode_cert_table({"vcek": b"C" * 64})
    refused(blob[:cut], r"expected an all-zero terminator entry")


def test_truncated_certificate_is_refused() -> None:
    blob = encode_cert_table({"vcek": b"C" * 64})
    refused(blob[:-1], r"expected bytes within the 111-byte buffer, found offset 48 \+ length 64 = 112")


def test_missing_terminator_is_refused() -> None:
    # One entry and its certificate, but no all-zero entry: the certificate is read as entry 1.
    blob = table((VCEK, 24, 24), terminator=False, payload=b"\x01" * 24)
    refused(blob, r"terminator entry after 2 entries, found the end")


def test_zero_guid_with_a_range_is_refused() -> None:
    refused(table((bytes(16), 48, 4), payload=b"abcd"),
            r"entry 0: all-zero GUID with offset 48 and length 4; expected a terminator")


def test_offset_into_the_table_is_refused() -> None:
    refused(table((VCEK, 24, 8), payload=b"x" * 16),
            r"expected an offset at or past the end of the table \(48\), found 24")
    refused(table((VCEK, 0, 8), payload=b"x" * 16), r"found 0")


def test_out_of_bounds_is_refused() -> None:
    refused(table((VCEK, 48, 9), payload=b"x" * 8), r"offset 48 \+ length 9 = 57")
    # A 32-bit wrap-around (a bug class of u32 arithmetic) is still out of bounds.
    refused(table((VCEK, 0xFFFFFFF0, 0x20), payload=b"x" * 8), r"= 4294967312")


def test_overlapping_certificates_are_refused() -> None:
    blob = table((VCEK, 72, 8), (ARK_GUID.bytes, 76, 8), payload=b"x" * 12)
    refused(blob, r"entry 1 \(c0b406a4-.*\): bytes 76\.\.84 overlap entry 0 \(bytes 72\.\.80\)")


def test_empty_certificate_is_refused() -> None:
    refused(table((VCEK, 48, 0), payload=b"x"), r"expected a non-empty certificate, found length 0")


@pytest.mark.parametrize("second", [VCEK_GUID.bytes, VCEK_GUID.bytes_le], ids=["same-order", "other-order"])
def test_duplicate_guid_is_refused(second: bytes) -> None:
    blob = table((VCEK, 72, 4), (second, 76, 4), payload=b"x" * 8)
    refused(blob, r"entry 1: expected each GUID once, found 63da758d-e664-4564-adc5-f4b93be8accd again")


def test_duplicate_unknown_guid_is_refused() -> None:
    other = uuid.uuid4().bytes
    refused(table((other, 72, 4), (other, 76, 4), payload=b"x" * 8), r"expected each GUID once")


def test_too_many_entries_are_refused() -> None:
    count = MAX_ENTRIES + 1
    header = (count + 1) * ENTRY_SIZE
    entries = [(uuid.UUID(int=i + 1).bytes, header + i, 1) for i in range(count)]
    refused(table(*entries, payload=b"x" * count), rf"expected at most {MAX_ENTRIES} entries")
    header = (MAX_ENTRIES + 1) * ENTRY_SIZE
    fitting = [(uuid.UUID(int=i + 1).bytes, header + i, 1) for i in range(MAX_ENTRIES)]
    assert len(decode_cert_table(table(*fitting, payload=b"x" * MAX_ENTRIES)).unknown) == MAX_ENTRIES


def test_oversize_buffer_is_refused() -> None:
    blob = encode_cert_table({"vcek": b"C" * 100})
    assert decode_cert_table(blob.ljust(MAX_TABLE_SIZE, b"\x00")).certificates["vcek"] == b"C" * 100
    refused(blob.ljust(MAX_TABLE_SIZE + 1, b"\x00"), rf"expected at most {MAX_TABLE_SIZE} bytes, found 65537")


def test_non_bytes_is_refused() -> None:
    with pytest.raises(NotAnEnclaveError, match="expected bytes, found str"):
        decode_cert_table("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("certs", "unknown", "message"),
    [
        ({"vcek": b"C", "root": b"R"}, None, "unknown names"),
        ({"ask": b"A", "asvk": b"B"}, None, "share one GUID"),
        ({"vcek": b""}, None, "is empty"),
        ({}, {VCEK_GUID: b"C"}, "is a known GUID"),
    ],
)
def test_encode_refuses_what_decode_would(certs: dict[str, bytes], unknown: dict[uuid.UUID, bytes] | None,
                                          message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_cert_table(certs, unknown)
