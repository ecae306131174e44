"""
HTTP/2 capture end to end: spans, losses and agent CPU for h2load against nginx h2c, from the
real agent (`twistd telegen`, file sink) in one capture mode, capturing only nginx's port.

Reports the requests h2load made, the http2 exchanges the agent made spans of (server side from
nginx and client side from h2load: 2 per request when nothing is lost), the losses by reason
(/status/ebpf) and their sum over the reasons that count exchanges (EXCHANGE_LOSSES: spans + that
sum is 2 per request when the accounting is exact), the events the ring buffer lost, and the agent's CPU (utime + stime from /proc) from the start of the load until
the span count stops moving.

Usage (root): .venv/bin/python bench/protocols/http2_capture.py MODE REQUESTS [STREAMS]
  MODE socket|syscalls; STREAMS: h2load -m (streams in flight per connection, 4 connections; 10)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.protocols.http2 import EXCHANGE_LOSSES  # noqa: E402
from tests.support.agent_process import capture_agent  # noqa: E402
from tests.support.http_apps import nginx, wait_listening  # noqa: E402


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http2_status(agent):
    return {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}["http2"]


def main(mode, n, streams):
    tmp = tempfile.mkdtemp(prefix="h2bench-")
    os.makedirs(os.path.join(tmp, "agent"))
    child, port = nginx(tmp, http2=True)
    try:
        wait_listening(port)
        agent = capture_agent(os.path.join(tmp, "agent"), mode, [port])
        try:
            pid = agent.process.pid
            before, cpu0 = http2_status(agent)["exchanges"], cpu_seconds(pid)
            out = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", str(streams),
                                  f"http://127.0.0.1:{port}/index.html"], capture_output=True, text=True).stdout
            last, still = -1, 0
            while still < 4:                 # until all are accounted for or the count stands still for 12 s
                status = http2_status(agent)
                now = status["exchanges"] + sum(v for r, v in status["losses"].items() if r in EXCHANGE_LOSSES)
                if now - before >= 2 * n:
                    break
                still = still + 1 if now == last else 0
                last = now
                time.sleep(3)
            status = http2_status(agent)
            spans = status["exchanges"] - before
            ring = agent.get("/status/ebpf").json()["ringbuf"]
            used = cpu_seconds(pid) - cpu0
            print(json.dumps({"mode": mode, "requests": n, "streams": streams,
                              "h2load": [line for line in out.splitlines() if line.startswith("finished in")],
                              "spans": spans, "agent_cpu_s": round(used, 2),
                              "agent_cpu_us_per_span": round(used * 1e6 / spans, 1) if spans else None,
                              "losses": status["losses"],
                              "exchange_losses": sum(n for r, n in status["losses"].items() if r in EXCHANGE_LOSSES),
                              "open_connections": status["open_connections"],
                              "ringbuf_events_lost": ring["events_lost"]}))
        finally:
            agent.stop()
    finally:
        child.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 10)
