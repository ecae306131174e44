# -*- test-case-name: tests.unit.test_protocols_registry -*-
"""
The protocols as the L7 capture framework plugs them in: for each, the classifier and which
side's first bytes it reads, the parser class, and the span mapping (the database protocols share
one; HTTP/2 and gRPC have theirs, which also needs to know whether the process is the server).

`identify(client_first, server_first)` is the user-space twin of the kernel rules: the protocol a
connection speaks, from whichever first bytes are known, or None.
"""
from dataclasses import dataclass
from typing import Callable

from telegen.l7.protocols import PROTO_HTTP2, PROTO_MYSQL, PROTO_POSTGRESQL, PROTO_REDIS
from telegen.protocols import http2, http2_semconv, mysql, postgres, redis
from telegen.protocols.semconv import span_of

CLIENT_FIRST, SERVER_FIRST = "client", "server"


@dataclass(frozen=True)
class Protocol:
    name: str                  # the per-protocol switch (agent.ebpf.protocols) and loss label
    classify: Callable         # first bytes -> bool
    classifies: str            # whose first bytes: CLIENT_FIRST or SERVER_FIRST
    parser: type               # one instance per connection: parser.feed(from_client, data, ts_ns, gap)
    proto: int                 # the kernel's protocol id (telegen/l7/protocols.py, PROTO_* in bpf/l7_stream.h)
    span: Callable = span_of
    open_kwargs: tuple = ()    # parser arguments for a connection captured from its first byte

    def new_parser(self):
        """The parser of a connection the capture saw open (the kernel classifies on first bytes)."""
        return self.parser(**dict(self.open_kwargs))


PROTOCOLS = (
    Protocol("postgresql", postgres.classify, CLIENT_FIRST, postgres.PostgresParser, PROTO_POSTGRESQL),
    Protocol("mysql", mysql.classify, SERVER_FIRST, mysql.MySQLParser, PROTO_MYSQL),
    Protocol("redis", redis.classify, CLIENT_FIRST, redis.RedisParser, PROTO_REDIS, open_kwargs=(("at_connect", True),)),
    Protocol("http2", http2.classify, CLIENT_FIRST, http2.Http2Parser, PROTO_HTTP2, http2_semconv.span_of),
)


def identify(client_first=b"", server_first=b""):
    """The Protocol whose rule the first bytes match, or None."""
    for protocol in PROTOCOLS:
        first = client_first if protocol.classifies == CLIENT_FIRST else server_first
        if first and protocol.classify(first):
            return protocol
    return None
