"""
Export throughput and CPU: Telegen's ExportPipeline vs the official OpenTelemetry Python SDK
(BatchSpanProcessor + OTLP exporter), same spans, same receiver, same run; plus a memory soak.

Each sender runs in its own fresh process; the receiver (tests/support/otlp_receiver.py in
counting mode) runs in another, so its CPU is not charged to the sender. A sender builds N HTTP
server spans (8 attributes, random ids) as fast as it can into a queue big enough to hold them
all, then flushes; wall time and process CPU (all threads, getrusage) run from the first span to
the receiver having counted all N. Usage (from the repo root):

    .venv/bin/python bench/export/bench_export.py                      # both protocols, 200k spans
    .venv/bin/python bench/export/bench_export.py --spans 500000 --repeat 3
    .venv/bin/python bench/export/bench_export.py --soak-seconds 600 --rate 5000   # 10-minute soak
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SERVICE = {"service.name": "bench", "host.name": "bench-host"}


def span_attributes(i):
    return {"http.request.method": "GET", "url.path": f"/users/{i % 1000}", "http.route": "/users/{id}",
            "http.response.status_code": 200, "server.address": "10.0.0.1", "server.port": 8080,
            "client.address": "10.0.0.2", "network.peer.address": "10.0.0.2"}


def attribute_dicts(i):
    """The span's attributes in the dict form the protobuf constructor takes (2.5x faster than KeyValue objects)."""
    return [{"key": k, "value": {"string_value": v} if type(v) is str else {"int_value": v}}
            for k, v in span_attributes(i).items()]


def make_spans(base, count, rand=random.getrandbits):
    """`count` OTLP Spans equivalent to what the SDK run creates (same name, kind, attributes, random ids)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    now = time.time_ns()
    return [Span(trace_id=rand(128).to_bytes(16, "big"), span_id=rand(64).to_bytes(8, "big"), name="GET /users/{id}",
                 kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now, end_time_unix_nano=now + 1000,
                 attributes=attribute_dicts(i)) for i in range(base, base + count)]


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the receiver process ----------------------------------------------------------------------

def run_receiver():
    """Counts spans; answers "count" lines on stdin with the running total."""
    import threading

    from tests.support.otlp_receiver import OtlpReceiver, Reply

    class CountingReceiver(OtlpReceiver):
        total = 0
        lock = threading.Lock()

        def _record(self, signal, transport, request, headers, compressed):
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with self.lock:
                self.total += n
            return Reply()

    receiver = CountingReceiver().start()
    print(json.dumps({"grpc": receiver.grpc_endpoint, "http": receiver.http_endpoint}), flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(receiver.total, flush=True)
        elif line.strip() == "reset":
            receiver.total = 0
            print(0, flush=True)
    receiver.stop()


class Receiver:
    """Driver-side handle of the receiver process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", "receiver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.endpoints = json.loads(self.proc.stdout.readline())

    def ask(self, what):
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


# -- senders -----------------------------------------------------------------------------------

def wait_count(control, n, timeout=300):
    deadline = time.monotonic() + timeout
    while control() < n:
        if time.monotonic() > deadline:
            raise SystemExit("receiver did not get every span")
        time.sleep(0.005)


def run_telegen(protocol, endpoint, n, control):
    from twisted.internet import reactor, task
    from twisted.internet.defer import inlineCallbacks

    from telegen.config import defaults
    from telegen.export.pipeline import ExportPipeline
    from telegen.selfmetrics import SelfMetrics

    config = defaults()
    config["otlp"].update(endpoint=endpoint, protocol=protocol, insecure=True, compression="gzip")
    config["queues"]["traces"].update(capacity=n, max_bytes=1 << 30, batch_size=512, batch_timeout=0.2)
    pipeline = ExportPipeline(config, SelfMetrics(), reactor=reactor)
    result = {}

    @inlineCallbacks
    def produce():
        start_wall, start_cpu = time.monotonic(), cpu_seconds()
        for base in range(0, n, 512):
            pipeline.submit("traces", SERVICE, make_spans(base, min(512, n - base)))
        yield pipeline.flush(timeout=120)
        while pipeline.status()["queues"]["traces"]["exported"] < n:
            yield task.deferLater(reactor, 0.005, lambda: None)
        result.update(wall=time.monotonic() - start_wall, cpu=cpu_seconds() - start_cpu)
        assert pipeline.status()["queues"]["traces"]["dropped"] == 0

    def main():
        d = produce()
        d.addBoth(lambda r: (reactor.stop(), r)[1])
        d.addErrback(lambda f: (result.update(error=str(f.value)), f.printTraceback()))

    reactor.callWhenRunning(main)
    reactor.run()
    wait_count(control, n)
    return result


def run_sdk(protocol, endpoint, n, control):
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    if protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, compression=grpc.Compression.Gzip)
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=endpoint + "/v1/traces", compression=Compression.Gzip)
    provider = TracerProvider(resource=Resource.create(SERVICE))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=n, max_export_batch_size=512,
                                                   schedule_delay_millis=200))
    tracer = provider.get_tracer("bench")
    start_wall, start_cpu = time.monotonic(), cpu_seconds()
    for i in range(n):
        tracer.start_span("GET /users/{id}", kind=SpanKind.SERVER, attributes=span_attributes(i)).end()
    provider.force_flush(120_000)
    wait_count(control, n)
    result = {"wall": time.monotonic() - start_wall, "cpu": cpu_seconds() - start_cpu}
    provider.shutdown()
    return result


def run_soak(protocol, endpoint, seconds, rate):
    """A steady `rate` spans/s through our pipeline; RSS sampled every 5 s."""
    from twisted.internet import reactor, task

    from telegen.config import defaults
    from telegen.export.pipeline import ExportPipeline
    from telegen.selfmetrics import SelfMetrics

    config = defaults()
    config["otlp"].update(endpoint=endpoint, protocol=protocol, insecure=True)
    config["queues"]["traces"].update(batch_timeout=0.2)
    pipeline = ExportPipeline(config, SelfMetrics(), reactor=reactor)
    samples, started = [], time.monotonic()
    per_tick = max(1, rate // 100)

    def tick():
        pipeline.submit("traces", SERVICE, make_spans(0, per_tick))
        if time.monotonic() - started > seconds:
            reactor.stop()

    def sample():
        samples.append((round(time.monotonic() - started), rss_bytes()))

    task.LoopingCall(tick).start(0.01)
    task.LoopingCall(sample).start(5.0)
    reactor.run()
    q = pipeline.status()["queues"]["traces"]
    return {"samples": samples, "exported": q["exported"], "dropped": q["dropped"]}


# -- the driver --------------------------------------------------------------------------------

def child(role, protocol, endpoint, n, extra=()):
    out = subprocess.run([sys.executable, __file__, "--role", role, "--protocol", protocol, "--endpoint", endpoint,
                          "--spans", str(n), *extra], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{role} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="driver")
    ap.add_argument("--protocol", default="grpc")
    ap.add_argument("--endpoint")
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--soak-seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--only", choices=["throughput", "soak"], default=None)
    args = ap.parse_args()

    if args.role == "receiver":
        return run_receiver()
    if args.role in ("telegen", "sdk", "soak"):
        import socket  # control channel: ask the receiver's count through the driver-given port
        host, port = os.environ["BENCH_CONTROL"].split(":")

        def control():
            with socket.create_connection((host, int(port))) as s:
                return int(s.makefile().readline())

        if args.role == "soak":
            print(json.dumps(run_soak(args.protocol, args.endpoint, args.soak_seconds, args.rate)))
        else:
            fn = run_telegen if args.role == "telegen" else run_sdk
            print(json.dumps(fn(args.protocol, args.endpoint, args.spans, control)))
        return None

    receiver = Receiver()
    server = control_server(receiver)
    os.environ["BENCH_CONTROL"] = f"127.0.0.1:{server.server_address[1]}"
    try:
        if args.only != "soak":
            print("| protocol | sender | spans | wall s | spans/s | CPU s per 100k | CPU us/span |")
            print("|---|---|---|---|---|---|---|")
            ratios = {}
            for protocol in ("grpc", "http"):
                best = {}
                for _ in range(args.repeat):
                    for role in ("sdk", "telegen"):
                        receiver.ask("reset")
                        r = child(role, protocol, receiver.endpoints[protocol], args.spans)
                        if role not in best or r["cpu"] < best[role]["cpu"]:
                            best[role] = r
                for role in ("sdk", "telegen"):
                    r = best[role]
                    print(f"| {protocol}+gzip | {role} | {args.spans} | {r['wall']:.2f} | {args.spans / r['wall']:,.0f} "
                          f"| {r['cpu'] * 100_000 / args.spans:.2f} | {r['cpu'] * 1e6 / args.spans:.1f} |")
                ratios[protocol] = (best["sdk"]["cpu"] / best["telegen"]["cpu"], best["sdk"]["wall"] / best["telegen"]["wall"])
            for protocol, (cpu, wall) in ratios.items():
                print(f"\n{protocol}: telegen uses {cpu:.1f}x less CPU per span than the SDK; {wall:.1f}x the spans/s")
        if args.only != "throughput":
            r = child("soak", "grpc", receiver.endpoints["grpc"], 0,
                      ["--soak-seconds", str(args.soak_seconds), "--rate", str(args.rate)])
            rss = [b for _, b in r["samples"]]
            settled = rss[len(rss) // 4:] or rss
            print(f"\nsoak grpc {args.rate} spans/s for {args.soak_seconds}s: exported {r['exported']}, dropped "
                  f"{r['dropped']}; RSS MiB at " + ", ".join(f"{t}s={b / 2**20:.1f}" for t, b in r["samples"]))
            print(f"RSS after the first quarter: min {min(settled) / 2**20:.1f} MiB, max {max(settled) / 2**20:.1f} MiB, "
                  f"last-first {(settled[-1] - settled[0]) / 2**20:+.1f} MiB")
    finally:
        server.shutdown()
        receiver.close()


def control_server(receiver):
    """A tiny TCP server answering the receiver's span count, so senders can wait for delivery."""
    import socketserver
    import threading

    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            with lock:
                self.wfile.write(f"{receiver.ask('count')}\n".encode())

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    main()
