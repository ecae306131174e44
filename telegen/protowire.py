"""
The pieces of the protobuf wire format that Telegen writes by hand: field tags, varints and
length-delimited fields. Hot paths (pre-encoded spans, export requests) use them instead of
building message objects; their tags are named constants made with tag() once, at import
(https://protobuf.dev/programming-guides/encoding/ describes the format).
"""

# Wire types (the low three bits of a tag), named as in the encoding guide.
VARINT = 0      # int32/64, uint32/64, sint32/64, bool, enum
I64 = 1         # fixed64, sfixed64, double
LEN = 2         # string, bytes, embedded messages, packed repeated fields
I32 = 5         # fixed32, sfixed32, float


def tag(field_number, wire_type):
    """The bytes that start a field on the wire: the varint of (field number << 3) | wire type."""
    return varint(field_number << 3 | wire_type)


def varint(n):
    """Base-128 varint of an int; negatives as their 64-bit two's complement, as protobuf does."""
    if 0 <= n < 0x4000:           # lengths and small values, the hot case: one or two bytes
        return bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag, payload):
    """A length-delimited field: its tag byte(s), the payload's length as a varint, the payload."""
    return tag + varint(len(payload)) + payload
