"""OTLP export: per-signal bounded queues, batching, retry policy and the gRPC, HTTP and file senders."""
