"""
Feeding recorded or hand-made conversations to a protocol parser (telegen/protocols), whole, split
at every byte, or from a point in the middle.

A conversation is a list of (from_client, bytes, ts_ns) chunks in the order the connection carried
them: TcpRelay.chunks() gives the same shape (tests/support/tcp_relay.py).
"""


def as_triples(chunks):
    """(from_client, data, ts_ns) triples from relay Chunks or triples."""
    return [(c.from_client, c.data, c.ts_ns) if hasattr(c, "data") else tuple(c) for c in chunks]


def feed_all(parser, chunks):
    """Every exchange the parser gives for the conversation."""
    out = []
    for from_client, data, ts in as_triples(chunks):
        out.extend(parser.feed(from_client, data, ts))
    return out


def every_split(make_parser, chunks):
    """For each chunk and each byte position inside it, the exchanges when it arrives in two parts.

    Yields (chunk index, position, exchanges, parser); a correct parser gives the same exchanges
    (times included: both parts carry the chunk's time) for every split.
    """
    triples = as_triples(chunks)
    for i, (from_client, data, ts) in enumerate(triples):
        for cut in range(1, len(data)):
            parser = make_parser()
            split = triples[:i] + [(from_client, data[:cut], ts), (from_client, data[cut:], ts)] + triples[i + 1:]
            yield i, cut, feed_all(parser, split), parser


def byte_by_byte(chunks):
    """The conversation with every chunk cut into one-byte chunks."""
    return [(c, d[k:k + 1], t) for c, d, t in as_triples(chunks) for k in range(len(d))]


def assert_chunking_invariant(make_parser, chunks, summary, expected):
    """The parser gives `expected` (through `summary`) without losses however the chunks are cut."""
    for i, cut, exchanges, parser in every_split(make_parser, chunks):
        assert summary(exchanges) == expected, (i, cut)
        assert not parser.losses, (i, cut)
    parser = make_parser()
    assert summary(feed_all(parser, byte_by_byte(chunks))) == expected
    assert not parser.losses


def mutated(chunks, draw):
    """The conversation with one chunk changed as hypothesis draws it: a byte flipped, bytes cut
    out, or a tail repeated (what a lossy or out-of-protocol capture looks like)."""
    from hypothesis import strategies as st
    triples = as_triples(chunks)
    i = draw(st.integers(0, len(triples) - 1))
    from_client, data, ts = triples[i]
    at = draw(st.integers(0, len(data) - 1))
    mutation = draw(st.sampled_from(["flip", "cut", "repeat"]))
    if mutation == "flip":
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif mutation == "cut":
        data = data[:at] + data[at + draw(st.integers(1, 8)):]
    else:
        data = data + data[at:]
    return triples[:i] + [(from_client, data, ts)] + triples[i + 1:]
