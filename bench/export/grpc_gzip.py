"""
What gzip costs per OTLP/gRPC request, and what zlib levels would cost: one 512-span traces request
made of the HTTP probe's real span bytes (bench/ebpf/consumer.py's nginx-like exchanges), sent with
grpcio's future() to a gRPC server in another process (so only the sender's CPU is counted), with
and without grpc.Compression.Gzip; then Python's zlib on the same bytes at levels 1 and 6 (the
OTLP/HTTP sender uses level 1, grpcio's C core level 6 with no setting). CPU per request, best of
--repeats batches of --calls. Run from the checkout:

    .venv/bin/python bench/export/grpc_gzip.py [--calls 100] [--repeats 3]
"""
import argparse
import os
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench", "ebpf"))

import grpc  # noqa: E402

from consumer import NoClock, events  # noqa: E402
from telegen.config.loader import defaults  # noqa: E402
from telegen.ebpf.http_probe import HttpProbe  # noqa: E402
from telegen.export.queue import BoundedQueue  # noqa: E402
from telegen.export.wire import ResourceCache, encode_request  # noqa: E402
from telegen.selfmetrics import SelfMetrics  # noqa: E402
from tests.support.otlp_receiver import free_port  # noqa: E402

SPANS = 512
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def serve(port):
    """A gRPC server answering every unary call with an empty message (the other process)."""
    from concurrent import futures

    class Empty(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((Empty(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class Collect:
    """The probe's pipeline: keeps the encoded spans."""

    def __init__(self):
        self.spans = []

    def submit(self, signal, resource, records):
        self.spans.extend(records)
        return len(records)


def request_bytes():
    """One ExportTraceServiceRequest of SPANS spans as the agent builds it."""
    collect = Collect()
    probe = HttpProbe(defaults(), collect, None, SelfMetrics(), reactor=NoClock())
    for event in events(SPANS):
        probe._decoder.handle_bytes(event)
    probe.submit_spans()
    queue = BoundedQueue(SPANS, 1 << 30)
    queue.offer("nginx", {"service.name": "nginx"}, collect.spans, None)
    return encode_request(queue.take(SPANS), ResourceCache())


def cpu_ms_per_call(fn, calls, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    payload = request_bytes()
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(port)])
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        export = channel.unary_unary(METHOD)
        print(f"grpcio {grpc.__version__}, one request of {SPANS} spans: {len(payload):,} bytes")
        print("| what | CPU ms per request | compressed size (bytes) |")
        print("|---|---|---|")
        for name, compression in (("grpcio, no compression", grpc.Compression.NoCompression),
                                  ("grpcio, gzip", grpc.Compression.Gzip)):
            ms = cpu_ms_per_call(lambda: export.future(payload, compression=compression).result(), args.calls, args.repeats)
            print(f"| {name} | {ms:.2f} | |")
        for level in (1, 6):
            size = len(zlib.compress(payload, level))
            ms = cpu_ms_per_call(lambda: zlib.compress(payload, level), args.calls, args.repeats)
            print(f"| Python zlib, level {level} (no call) | {ms:.2f} | {size:,} |")
        channel.close()
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
