"""Structure-aware mutations: the shapes that make parsers slow or make them fail untyped.

Each mutator takes ``(data, rng, max_size)`` and returns new bytes. Beyond byte-level noise they
grow what parsers are most often wrong about: INTEGER and OID arc widths (int-to-str limits),
element lengths, runs of one repeated character (regular-expression backtracking), nesting depth
(recursion), repeated members and header lines (quadratic joins), and the numbers in JSON and in
HTTP headers. They stay structure-preserving where they can (re-encoding DER lengths, PEM, JSON
and base64) so a mutation reaches the deep parser instead of failing at the first byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from collections.abc import Callable

from fuzz import der_tree

Mutator = Callable[[bytes, random.Random, int], bytes]

#: Characters whose long runs defeat backtracking patterns and naive scanners.
RUN_CHARS = (b" ", b"\t", b"\r\n", b"\n", b"0", b"9", b"=", b"A", b"/", b"[", b"{", b"-", b"\\", b"\"",
             b":", b",", b"\x00", b"\x80", b"\xff", b"\r\n\r", b"-----BEGIN CERTIFICATE-----")


def run_length(rng: random.Random, max_size: int) -> int:
    """Mostly short, sometimes up to the whole budget: lengths spread over orders of magnitude."""
    return min(max_size, int(2 ** rng.uniform(0, 17)))


def _clip(data: bytes, max_size: int) -> bytes:
    return data[:max_size]


# -- bytes ---------------------------------------------------------------------------------------
def flip(data: bytes, rng: random.Random, max_size: int) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_byte(data: bytes, rng: random.Random, max_size: int) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice((0, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    return bytes(out)


def insert_run(data: bytes, rng: random.Random, max_size: int) -> bytes:
    at = rng.randrange(len(data) + 1)
    unit = rng.choice(RUN_CHARS)
    count = max(1, run_length(rng, max(1, max_size - len(data))) // len(unit))
    return _clip(data[:at] + unit * count + data[at:], max_size)


def delete_range(data: bytes, rng: random.Random, max_size: int) -> bytes:
    if len(data) < 2:
        return data
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, min(len(data) - start, 256)):]


def duplicate_range(data: bytes, rng: random.Random, max_size: int) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    piece = data[start:start + rng.randint(1, 512)]
    times = rng.choice((1, 2, 16, 256, 4096))
    at = rng.randrange(len(data) + 1)
    return _clip(data[:at] + piece * times + data[at:], max_size)


def truncate(data: bytes, rng: random.Random, max_size: int) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


BYTES: tuple[Mutator, ...] = (flip, set_byte, insert_run, delete_range, duplicate_range, truncate)


# -- DER -----------------------------------------------------------------------------------------
def _grow_integer(node: der_tree.Node, rng: random.Random, room: int) -> None:
    width = min(room, rng.choice((8, 9, 16, 17, 21, 64, 512, 2000, 4096)))
    node.children = None
    node.content = b"\x7f" + bytes(rng.randrange(256) for _ in range(max(0, width - 1)))


def _grow_oid_arc(node: der_tree.Node, rng: random.Random, room: int) -> None:
    width = min(room, rng.choice((10, 19, 20, 64, 600, 2000)))
    at = rng.randrange(len(node.content) + 1) if node.content else 0
    node.content = node.content[:at] + b"\x81" + b"\xff" * max(0, width - 2) + b"\x7f" + node.content[at:]


def _grow_string(node: der_tree.Node, rng: random.Random, room: int) -> None:
    node.children = None
    node.content = node.content + rng.choice(RUN_CHARS) * max(1, min(room, run_length(rng, room)) // 2)


def mutate_der(data: bytes, rng: random.Random, max_size: int) -> bytes:
    """Change one node of a DER tree (grow an INTEGER or an OID arc, lengthen, repeat, drop,
    retag, nest) and re-encode every enclosing length; bytes that are not DER get byte noise."""
    nodes = der_tree.parse(data)
    if not nodes:
        return rng.choice(BYTES)(data, rng, max_size)
    flat = der_tree.walk(nodes)
    node = rng.choice(flat)
    room = max(1, max_size - len(data))
    action = rng.randrange(9)
    if action == 0 or (node.tag == 0x02 and action < 4):
        _grow_integer(node, rng, room)
        node.tag = 0x02
    elif action == 1 or (node.tag == 0x06 and action < 4):
        _grow_oid_arc(node, rng, room)
        node.tag = 0x06
    elif action == 2:
        _grow_string(node, rng, room)
    elif action == 3 and node.children:
        child = rng.choice(node.children)
        # Never build more than the size budget allows (the tree is encoded in full before clipping).
        fits = room // (len(der_tree.encode(child)) + 4) + 1
        count = min(rng.choice((1, 2, 64, 1024, 10_000, 20_000)), fits)
        if child.children and child.children[0].tag == 0x06 and rng.random() < 0.5:
            # Distinct copies (another OID arc each): many extensions that are not duplicates.
            base = child.children[0].content
            for index in range(count):
                arc = der_tree.oid(f"0.0.{index}")[1:] or b"\x00"
                parts = [der_tree.Node(0x06, base + arc), *child.children[1:]]
                node.children.append(der_tree.Node(child.tag, children=parts))
        else:
            node.children.extend([child] * count)
    elif action == 4 and node.children:
        node.children.pop(rng.randrange(len(node.children)))
    elif action == 5:
        node.tag = rng.choice((0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x30,
                               0x31, 0xA0, 0xA3, rng.randrange(256)))
        if not node.tag & 0x20 and node.tag not in (0x03, 0x04):
            node.content, node.children = der_tree.encode(node)[2:], None
    elif action == 6:
        inner = der_tree.encode(node)
        for _ in range(rng.choice((1, 16, 200, 2000))):
            if len(inner) > max_size:
                break
            inner = der_tree.tlv(0x30, inner)
        node.tag, node.children, node.content = 0x30, None, inner
    elif action == 7:
        node.children = None
        node.content = rng.choice(BYTES)(node.content, rng, room)
    else:
        node.children = None
        node.content = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 3, 7, 8, 9, 13, 15))))
    return _clip(b"".join(der_tree.encode(n) for n in nodes), max_size)


# -- PEM -----------------------------------------------------------------------------------------
_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def pem(der: bytes, line: int = 64, eol: bytes = b"\n") -> bytes:
    body = base64.b64encode(der)
    lines = eol.join(body[i:i + line] for i in range(0, len(body), line))
    return _BEGIN + eol + lines + eol + _END + eol


def mutate_pem(data: bytes, rng: random.Random, max_size: int) -> bytes:
    """Mutate a certificate inside PEM (then re-encode), or the PEM framing and whitespace itself."""
    begin = data.find(_BEGIN)
    end = data.find(_END, begin + 1) if begin >= 0 else -1
    if begin < 0 or end < 0:
        return rng.choice((insert_run, *BYTES))(data, rng, max_size)
    body = data[begin + len(_BEGIN):end]
    choice = rng.randrange(6)
    if choice < 3:
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        new = pem(mutate_der(der, rng, max_size), rng.choice((64, 76, 1, 1 << 20)),
                  rng.choice((b"\n", b"\r\n", b" ")))
        return _clip(data[:begin] + new + data[end + len(_END):], max_size)
    if choice == 3:  # a long whitespace run inside the block, END line kept
        at = begin + len(_BEGIN) + rng.randrange(len(body) + 1)
        run = rng.choice((b" ", b"\n", b"\t", b"\r\n", b"=", b"A")) * run_length(rng, max_size)
        return _clip(data[:at] + run + data[at:], max_size)
    if choice == 4:  # a BEGIN line and spaces, and no END line
        return _clip(data[:end] + b" " * run_length(rng, max_size), max_size)
    return rng.choice(BYTES)(data, rng, max_size)


# -- JSON ----------------------------------------------------------------------------------------
def _grow_value(value: object, rng: random.Random, max_size: int, room: int) -> object:
    """``value`` with one part grown; growth stays within about ``room`` more bytes of JSON."""
    if isinstance(value, bool) or value is None:
        return rng.choice((0, 1, -1, "", [], {}, 10 ** rng.choice((19, 20, 21, 400, 4300)), 1e308))
    if isinstance(value, int):
        return rng.choice((value + 1, -value, 2 ** 63, 2 ** 64, 10 ** rng.choice((20, 21, 200, 4299)),
                           str(value)))
    if isinstance(value, float):
        return rng.choice((0, 1e308, -0.0, 10 ** 20))
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        if _BEGIN in raw:
            return mutate_pem(raw, rng, min(max_size, len(raw) + room)).decode("latin-1")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            decoded = None
        if decoded and rng.random() < 0.6:
            limit = min(max_size, len(decoded) + room)
            changed = mutate_der(decoded, rng, limit) if decoded[:1] == b"\x30" else flip(decoded, rng, 0)
            return base64.b64encode(changed).decode("ascii")
        return rng.choice((*BYTES, insert_run))(raw, rng, min(max_size, len(raw) + room)).decode("latin-1")
    if isinstance(value, list):
        if value and rng.random() < 0.5:
            index = rng.randrange(len(value))
            value[index] = _grow_value(value[index], rng, max_size, room)
        elif value and all(type(v) is int for v in value) and rng.random() < 0.5:
            # Many distinct numbers (ports...): what a quadratic duplicate check chokes on.
            top = max(value)
            value.extend(range(top + 1, top + 1 + min(rng.choice((10, 1000, 70000)), room // 7 + 1)))
        elif value:
            size = len(json.dumps(value[0])) + 2
            value.extend(value[:1] * min(rng.choice((1, 2, 1000, 20000)), room // size + 1))
        else:
            value.append(rng.randrange(65536))
        return value
    if isinstance(value, dict):
        if value and rng.random() < 0.8:
            nested = [k for k, v in value.items() if isinstance(v, (list, dict))]
            key = rng.choice(nested if nested and rng.random() < 0.5 else list(value))
            value[key] = _grow_value(value[key], rng, max_size, room)
        else:
            value[rng.choice(("x", "version", "certificates", "policy", "vcek", "ports"))] = rng.choice(
                (None, 1, "x", [], {}))
        return value
    return value


def mutate_json(data: bytes, rng: random.Random, max_size: int) -> bytes:
    """Mutate a JSON document's values (grow numbers, strings, lists; mutate embedded DER, PEM and
    base64), nest it deeply, repeat a member, or fall back to text-level noise."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return rng.choice((insert_run, *BYTES))(data, rng, max_size)
    choice = rng.randrange(8)
    if choice == 0:
        depth = rng.choice((100, 1000, 5000, 30000))
        return _clip(b"[" * depth + data + b"]" * depth, max_size)
    if choice == 1 and data.startswith(b"{") and len(data) > 2:
        # A repeated member name (the strict parser must refuse, never pick one).
        first = data[1:data.find(b",") if b"," in data else -1]
        return _clip(data[:1] + first + b"," + data[1:], max_size)
    if choice == 2:
        return rng.choice((insert_run, *BYTES))(data, rng, max_size)
    try:
        grown = _grow_value(doc, rng, max_size, max(0, max_size - len(data)))
        out = json.dumps(grown, separators=rng.choice(((",", ":"), (", ", ": "))))
    except (ValueError, RecursionError):  # 10 ** 4300 and friends: json refuses to print them
        return data
    return _clip(out.encode("utf-8", "surrogatepass"), max_size)


# -- HTTP ----------------------------------------------------------------------------------------
def mutate_http(data: bytes, rng: random.Random, max_size: int) -> bytes:
    """Mutate an HTTP/1.1 response: status line, repeated or long header lines, Content-Length
    digits, the blank line, and the body (as JSON)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    choice = rng.randrange(7)
    if choice == 0 and len(lines) > 1:
        index = rng.randrange(1, len(lines))
        lines[index:index] = [lines[index]] * rng.choice((2, 100, 3000))
    elif choice == 1:
        lines[0] = rng.choice((b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 404 ", b"HTTP/2 200",
                               lines[0] + rng.choice(RUN_CHARS) * run_length(rng, max_size)))
    elif choice == 2:
        digits = rng.choice((b"0", b"1" * 13, b"9" * 4000, str(len(body)).encode() + b"\x0b", b"-1", b"+5",
                             str(len(body)).encode(), b"\xb2"))
        lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
        lines.append(b"Content-Length: " + digits)
    elif choice == 3:
        lines.append(rng.choice((b"Transfer-Encoding: chunked", b"Connection: close", b"X: \x1b[2K",
                                 b"bad header", b" folded", b"Content-Length: 1")))
    elif choice == 4:
        body = mutate_json(body, rng, max_size)
        lines = [ln for ln in lines if not ln.lower().startswith(b"content-length:")]
        lines.append(b"Content-Length: " + str(len(body)).encode())
    elif choice == 5:
        sep = rng.choice((b"", b"\r\n", b"\n\n", b"\r\n\r\n"))
    else:
        return rng.choice((insert_run, *BYTES))(data, rng, max_size)
    return _clip(b"\r\n".join(lines) + sep + body, max_size)


# -- OVMF ----------------------------------------------------------------------------------------
def mutate_ovmf(data: bytes, rng: random.Random, max_size: int) -> bytes:
    """Mutate the SEV metadata of an OVMF image: section count, GPAs and sizes (up to 4 GiB)."""
    at = data.find(b"ASEV")
    if at < 0 or rng.random() < 0.3:
        return flip(data, rng, max_size)
    out = bytearray(data)
    count = int.from_bytes(out[at + 12:at + 16], "little")
    choice = rng.randrange(4)
    if choice == 0:
        value = rng.choice((0, 1, 64, 65, 300, 0xFFFFFFFF, (count + 1) & 0xFFFFFFFF))
        out[at + 12:at + 16] = value.to_bytes(4, "little")
    elif count:
        item = at + 16 + 12 * rng.randrange(min(count, 300))
        if item + 12 <= len(out):
            field = rng.choice((0, 4, 8))
            value = rng.choice((0, 0x1000, 0xFFFFF000, 0x80000000, 0x7FFFF000, rng.randrange(1 << 32)))
            out[item + field:item + field + 4] = value.to_bytes(4, "little")
    return bytes(out)
