"""
The HTTP consumer's Python cost per exchange, without a kernel: synthetic nginx-like exchange
events (one EV_EXCHANGE per request and response, bytes exactly as bpf/http.c lays them out) through HttpDecoder alone (baseline),
then through HttpProbe (decode + span encoding + RED histogram + submit to a null pipeline).
CPU time (process_time), best of --repeats.

    .venv/bin/python bench/ebpf/consumer.py [--exchanges 5000] [--repeats 7]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.config.loader import defaults  # noqa: E402
from telegen.ebpf.http_decoder import HttpDecoder  # noqa: E402
from telegen.ebpf.http_probe import CAPTURE_BYTES, HttpProbe  # noqa: E402
from telegen.selfmetrics import SelfMetrics  # noqa: E402
from tests.support.http_events import exchange  # noqa: E402

REQUEST = b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 01:45:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n")


class NullPipeline:
    def submit(self, signal, resource, records):
        return len(records)


class NoClock:
    """Spans are submitted explicitly at the end instead of on the next reactor turn."""

    def callLater(self, delay, fn):  # noqa: N802 (Twisted's name)
        return None


def events(n):
    return [exchange(105 + i * 10, RESPONSE, REQUEST, 100 + i * 10, rx=(i + 1) * len(REQUEST), tx=i * len(RESPONSE))
            for i in range(n)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exchanges", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    evs = events(args.exchanges)
    best = {"decode only (baseline)": float("inf"), "decode + span + RED + submit": float("inf")}
    for _ in range(args.repeats):
        decoder = HttpDecoder(lambda *parts: None, lambda reason: None, 0, CAPTURE_BYTES)
        t = time.process_time()
        for e in evs:
            decoder.handle_bytes(e)
        best["decode only (baseline)"] = min(best["decode only (baseline)"], time.process_time() - t)
        probe = HttpProbe(defaults(), NullPipeline(), None, SelfMetrics(), reactor=NoClock())
        t = time.process_time()
        for e in evs:
            probe._decoder.handle_bytes(e)
        probe.submit_spans()
        best["decode + span + RED + submit"] = min(best["decode + span + RED + submit"], time.process_time() - t)
    base = best["decode only (baseline)"]
    print("| path | us per exchange (1 event) | vs baseline |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds / args.exchanges * 1e6:.1f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
