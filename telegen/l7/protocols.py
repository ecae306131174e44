"""
L7 protocol ids: the `proto` field of a capture event's header (bpf/telegen.h), set by the kernel
once it classified the connection, and the key of the decoder registry (telegen.ebpf.l7). The C
side defines the same numbers (PROTO_HTTP1 in bpf/http_events.h, the stream protocols' in
bpf/l7_stream.h); a new protocol takes the next one (below PROTO_MAX, 16, the kernel's switch array).
"""
PROTO_HTTP1 = 1
PROTO_POSTGRESQL = 2
PROTO_MYSQL = 3
PROTO_REDIS = 4
PROTO_HTTP2 = 5

# agent.ebpf.protocols key of each id.
NAMES = {PROTO_HTTP1: "http", PROTO_POSTGRESQL: "postgresql", PROTO_MYSQL: "mysql", PROTO_REDIS: "redis", PROTO_HTTP2: "http2"}
