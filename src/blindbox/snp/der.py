"""A strict, minimal DER reader for the AMD certificates and CRLs.

Only definite-length, minimally encoded DER is accepted; every parse error is a
:class:`DerError`. This exists because AMD's VCEK and VLEK carry serial number 0,
which general-purpose X.509 loaders deprecate, so BlindBox reads the few
structures it needs itself and never depends on that code path.
"""

from __future__ import annotations

from dataclasses import dataclass

# Universal tags used by the AMD certificate profile.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31

#: The widest INTEGER read by default: the AMD profile has no integer wider than 64 bits.
MAX_INT_BITS = 64
#: Serial numbers may have up to 20 octets (RFC 5280, section 4.1.2.2).
MAX_SERIAL_BITS = 160
#: The longest OBJECT IDENTIFIER accepted (content octets) and the widest arc (a UUID arc is 128 bits).
MAX_OID_BYTES = 64
MAX_OID_ARC_BITS = 128


class DerError(ValueError):
    """Raised for anything that is not strict DER of the expected shape."""


@dataclass(frozen=True)
class Tlv:
    """One DER element: its tag, its content bytes and its whole encoding."""

    tag: int
    content: bytes
    encoded: bytes

    def children(self) -> list[Tlv]:
        """Parse the content as a sequence of elements (for constructed types)."""
        if not self.tag & 0x20:
            raise DerError(f"tag 0x{self.tag:02x} is not constructed")
        return read_all(self.content)

    def expect(self, tag: int) -> Tlv:
        if self.tag != tag:
            raise DerError(f"expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self


def read_one(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Read the element at ``offset``; return it and the offset just past it."""
    if offset + 2 > len(data):
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used by this profile")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4:
            raise DerError(f"length of {count} bytes is too large")
        if pos + count > len(data):
            raise DerError("truncated length")
        length_bytes = data[pos : pos + count]
        if length_bytes[0] == 0:
            raise DerError("non-minimal length encoding")
        length = int.from_bytes(length_bytes, "big")
        if length < 0x80:
            raise DerError("non-minimal length encoding")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError(f"element claims {length} bytes, only {len(data) - pos} remain")
    return Tlv(tag, bytes(data[pos:end]), bytes(data[offset:end])), end


def read_all(data: bytes) -> list[Tlv]:
    """Read consecutive elements filling ``data`` exactly."""
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        tlv, pos = read_one(data, pos)
        out.append(tlv)
    return out


def read_single(data: bytes, tag: int | None = None) -> Tlv:
    """Read exactly one element that spans all of ``data``."""
    tlv, end = read_one(data, 0)
    if end != len(data):
        raise DerError(f"{len(data) - end} trailing bytes after element")
    if tag is not None:
        tlv.expect(tag)
    return tlv


def as_int(tlv: Tlv, max_bits: int = MAX_INT_BITS) -> int:
    """Decode a minimally encoded INTEGER (any sign) whose magnitude fits in ``max_bits`` bits.

    The bound keeps attacker-sized integers out of every later comparison and message
    (Python refuses to print an integer of more than 4300 decimal digits).
    """
    tlv.expect(INTEGER)
    c = tlv.content
    if not c:
        raise DerError("empty INTEGER")
    if len(c) > 1 and ((c[0] == 0 and c[1] < 0x80) or (c[0] == 0xFF and c[1] >= 0x80)):
        raise DerError("non-minimal INTEGER")
    if len(c) > max_bits // 8 + 1:
        raise DerError(f"INTEGER of {len(c)} bytes; expected at most {max_bits} bits")
    value = int.from_bytes(c, "big", signed=True)
    if abs(value).bit_length() > max_bits:
        raise DerError(f"INTEGER of {abs(value).bit_length()} bits; expected at most {max_bits} bits")
    return value


def as_oid(tlv: Tlv) -> str:
    """Decode an OBJECT IDENTIFIER to dotted form."""
    tlv.expect(OID)
    c = tlv.content
    if not c or c[-1] & 0x80:
        raise DerError("malformed OBJECT IDENTIFIER")
    if len(c) > MAX_OID_BYTES:
        raise DerError(f"OBJECT IDENTIFIER of {len(c)} bytes; expected at most {MAX_OID_BYTES}")
    arcs: list[int] = []
    value = 0
    start = True
    for byte in c:
        if start and byte == 0x80:
            raise DerError("non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        if value.bit_length() > MAX_OID_ARC_BITS:
            raise DerError(f"OBJECT IDENTIFIER arc wider than {MAX_OID_ARC_BITS} bits")
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def as_bool(tlv: Tlv) -> bool:
    tlv.expect(BOOLEAN)
    if tlv.content == b"\xff":
        return True
    if tlv.content == b"\x00":
        return False
    raise DerError("BOOLEAN must be 0x00 or 0xff")


def as_bit_string(tlv: Tlv) -> bytes:
    """Decode a BIT STRING with no unused bits (signatures, keys)."""
    tlv.expect(BIT_STRING)
    if not tlv.content or tlv.content[0] != 0:
        raise DerError("BIT STRING with unused bits")
    return tlv.content[1:]


def as_string(tlv: Tlv) -> str:
    """Decode an IA5, Printable or UTF8 string."""
    if tlv.tag == UTF8_STRING:
        try:
            return tlv.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DerError("invalid UTF8String") from exc
    if tlv.tag in (IA5_STRING, PRINTABLE_STRING):
        if any(b > 0x7F for b in tlv.content):
            raise DerError("non-ASCII byte in ASCII string")
        return tlv.content.decode("ascii")
    raise DerError(f"tag 0x{tlv.tag:02x} is not a string type")
