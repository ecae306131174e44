"""
The two pieces of the protobuf wire format that Telegen writes by hand: varints and length-delimited
fields. Hot paths (pre-encoded spans, export requests) and the pprof encoder use them instead of
building message objects.
"""


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
