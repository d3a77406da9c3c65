"""A lenient DER tree for mutation: parse what looks like DER, change a node, re-encode valid lengths.

This is a fuzzing tool, not a verifier: it accepts long-form and non-minimal lengths on input
and always writes minimal definite lengths, so a mutated certificate stays well-formed DER
around the node that was changed and reaches deep into the parser under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Node:
    tag: int
    content: bytes = b""
    children: list[Node] | None = None
    parent: Node | None = field(default=None, repr=False, compare=False)


def _read(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the element at ``pos``, or None."""
    if pos + 2 > len(data):
        return None
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        return None
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            return None
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        return None
    return tag, pos, pos + length


def parse(data: bytes, depth: int = 0) -> list[Node] | None:
    """Every element filling ``data``, constructed ones parsed recursively; None if not DER-like."""
    nodes: list[Node] = []
    pos = 0
    while pos < len(data):
        head = _read(data, pos)
        if head is None:
            return None
        tag, start, end = head
        node = Node(tag, data[start:end])
        if tag & 0x20 and depth < 24:
            node.children = parse(node.content, depth + 1)
            for child in node.children or ():
                child.parent = node
        elif (tag == 0x04 or (tag == 0x03 and node.content[:1] == b"\x00")) and depth < 24:
            # BIT/OCTET STRINGs that wrap DER (extension values, keys) are mutated inside too.
            inner = node.content[1:] if tag == 0x03 else node.content
            wrapped = parse(inner, depth + 1) if inner else None
            if wrapped is not None and len(wrapped) == 1:
                node.children = wrapped
                wrapped[0].parent = node
        nodes.append(node)
        pos = end
    return nodes


def length_bytes(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(node: Node) -> bytes:
    if node.children is not None:
        inner = b"".join(encode(child) for child in node.children)
        if node.tag == 0x03:
            inner = b"\x00" + inner
        content = inner
    else:
        content = node.content
    return bytes([node.tag]) + length_bytes(len(content)) + content


def walk(nodes: list[Node]) -> list[Node]:
    out: list[Node] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        out.append(node)
        if node.children:
            stack.extend(reversed(node.children))
    return out


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element (minimal length)."""
    return bytes([tag]) + length_bytes(len(content)) + content


def oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (arcs of any size)."""
    arcs = [int(a) for a in dotted.split(".")]
    values = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for value in values:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)
