"""Protobuf wire format by hand, for requests no well-behaved client library would build."""

from __future__ import annotations

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
# protobuf refuses to parse messages nested deeper than this.
RECURSION_LIMIT = 100


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes, or an embedded message."""
    return tag(number, LENGTH) + varint(len(payload)) + payload


def nested_struct(levels: int) -> bytes:
    """A google.protobuf.Struct {"a": {"a": ...}} `levels` deep; each level is three messages
    (Struct, its map entry, Value), so 35 levels pass the recursion limit."""
    inner = b""
    for _ in range(levels):
        value = field(5, inner)  # Value.struct_value
        inner = field(1, field(1, b"a") + field(2, value))  # Struct.fields map entry
    return inner


def nested_groups(levels: int) -> bytes:
    """Unknown group fields inside each other: every message type has to parse them."""
    return tag(1, START_GROUP) * levels + tag(1, END_GROUP) * levels
