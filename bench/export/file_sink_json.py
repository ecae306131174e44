"""
CPU per span of the file sink (the embedded default destination, OTLP/JSON lines): the direct
encoder (telegen/export/otlpjson.py) against json_format's MessageToDict + hex ids, which it
replaced, on the same export requests, in the same run.

The requests are what the eBPF capture exports: batches of HTTP server spans with 10 attributes
(the peer port differs per span, the rest repeats as it does for one service), one resource.
Each round times FileSink.send() of every request (decode the wire bytes, encode, append the line
to a file in a temporary folder) in this thread's CPU time; best of --rounds.

Usage: .venv/bin/python bench/export/file_sink_json.py [--spans 20000] [--batch 512] [--rounds 5]
"""
import argparse
import os
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.export import otlpjson  # noqa: E402
from telegen.export.file_sink import FileSink  # noqa: E402
from telegen.export.kinds import KINDS  # noqa: E402
from tests.unit.test_export_otlpjson import reference  # noqa: E402

ATTRIBUTES = (("http.request.method", "GET"), ("url.path", "/ok"), ("url.scheme", "http"),
              ("http.response.status_code", 200), ("network.protocol.version", "1.1"),
              ("client.address", "127.0.0.1"), ("server.address", "127.0.0.1"), ("server.port", 8080),
              ("user_agent.original", "curl/7.88.1"))


def add_attribute(attributes, key, value):
    kv = attributes.add(key=key)
    if isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value


def requests(spans, batch):
    """Serialized trace export requests holding `spans` spans, `batch` per request."""
    out = []
    for first in range(0, spans, batch):
        request = KINDS["traces"].request_cls()
        rs = request.resource_spans.add()
        for key, value in (("service.name", "nginx"), ("process.pid", 4242), ("host.name", "bench")):
            add_attribute(rs.resource.attributes, key, value)
        scope = rs.scope_spans.add()
        scope.scope.name = "telegen"
        for i in range(first, min(first + batch, spans)):
            span = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="GET", kind=2, flags=0x301,
                                   start_time_unix_nano=1_700_000_000_000_000_000 + i * 1000,
                                   end_time_unix_nano=1_700_000_000_000_050_000 + i * 1000)
            for key, value in ATTRIBUTES + (("network.peer.port", 32768 + i % 28000),):
                add_attribute(span.attributes, key, value)
        out.append(request.SerializeToString())
    return out


def cpu_per_span(payloads, spans, rounds, encode):
    """Best-of-rounds thread CPU seconds per span of FileSink.send over every payload."""
    best = None
    with mock.patch.object(otlpjson, "encode", encode), tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            sink = FileSink(tmp, KINDS["traces"], {"max_bytes": 1 << 30, "max_files": 1})
            started = time.thread_time()
            for payload in payloads:
                sink.send(payload)
            took = time.thread_time() - started
            best = took if best is None else min(best, took)
            os.unlink(sink.path)
    return best / spans


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    payloads = requests(args.spans, args.batch)
    old = cpu_per_span(payloads, args.spans, args.rounds, reference)
    new = cpu_per_span(payloads, args.spans, args.rounds, otlpjson.encode)
    print(f"| encoder | us CPU per span (FileSink.send) |\n|---|---|\n| json_format + hex ids (before) | {old * 1e6:.1f} |\n"
          f"| direct (otlpjson.encode) | {new * 1e6:.1f} |\n\nratio before / direct: {old / new:.1f}x")


if __name__ == "__main__":
    main()
