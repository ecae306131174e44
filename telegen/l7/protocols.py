"""
L7 protocol ids: the `proto` field of a capture event's header (bpf/telegen.h), set by the kernel
once it classified the connection, and the key of the decoder registry (telegen.ebpf.l7). The C
side defines the same numbers (PROTO_* in bpf/http_events.h); a new protocol takes the next one.
"""
PROTO_HTTP1 = 1
