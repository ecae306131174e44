"""
The file sink's OTLP/JSON conversion in a worker process (telegen.workerproc), for the signals
whose requests are large.

Why: a window of CPU profiles is one export request of megabytes; json_format walks it in Python
for a second or more on a busy host, which on the reactor stalled the API (a /metrics scrape
waited 15 s) and in a thread would still hold the GIL the reactor needs.
"""
import sys

from telegen.workerproc import Worker


def start(reactor, name):
    """A started Worker answering ("otlp_json", signal, payload) with the request's JSON line."""
    worker = Worker(reactor, name, [sys.executable, "-m", "telegen.export.json_worker"])
    worker.start()
    return worker


def otlp_json(signal, payload):
    from telegen.export import otlpjson
    from telegen.export.kinds import KINDS
    return (otlpjson.encode(KINDS[signal].request_cls.FromString(payload)) + "\n").encode("utf-8")


def main():
    from telegen.workerproc import serve
    serve({"otlp_json": otlp_json})


if __name__ == "__main__":
    main()
