"""
The agent's CPU at a fixed HTTP rate with the embedded default destination (the file sink,
OTLP/JSON lines under <data_dir>/otlp/) or OTLP/gRPC + gzip to a receiver in this process: the
real `twistd telegen` with eBPF capture (socket mode) on nginx-light, `h2load --h1 -c 2 --rps
rate/2` for --seconds, agent utime + stime over the load (/proc/PID/stat).

Usage (root): .venv/bin/python bench/export/file_sink_agent.py [--rate 1000] [--seconds 20] [--otlp] [--port 21001]
Run it from two checkouts (each with its .venv) to compare them; the script imports the agent's
test helpers from the checkout it lives in.
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.agent_process import AgentProcess, wait_for  # noqa: E402
from tests.support.http_apps import nginx, wait_listening  # noqa: E402
from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402


def cpu_seconds(pid):
    utime, stime = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--otlp", action="store_true", help="export OTLP/gRPC + gzip instead of the file sink")
    parser.add_argument("--port", type=int, default=21001)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="telegen-bench-sink-")
    server, port = nginx(tmp, port=args.port)
    receiver = agent = None
    try:
        wait_listening(port)
        config = {"agent": {"ebpf": {"enabled": True, "capture": "socket",
                                     "network": {"tcp": False, "include_ports": [port]}}}}
        if args.otlp:
            receiver = OtlpReceiver().start()
            config["otlp"] = {"endpoint": receiver.endpoint("grpc"), "protocol": "grpc", "insecure": True,
                              "compression": "gzip"}
        os.makedirs(os.path.join(tmp, "agent"))
        agent = AgentProcess(os.path.join(tmp, "agent"), config=config)
        agent.start()
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=180, message="ebpf ready")
        before = cpu_seconds(agent.process.pid)
        subprocess.run(["h2load", "--h1", "-n", str(args.rate * args.seconds), "-c", "2", "--rps", str(args.rate // 2),
                        f"http://127.0.0.1:{port}/ok"], check=True, capture_output=True)
        used = cpu_seconds(agent.process.pid) - before
        print(f"{'otlp grpc+gzip' if args.otlp else 'file sink'}: {args.rate * args.seconds} requests in "
              f"{args.seconds} s, agent CPU {used:.2f} s = {100 * used / args.seconds:.1f} % of a core, "
              f"{1e6 * used / (args.rate * args.seconds):.0f} us per request (2 spans)")
    finally:
        if agent is not None:
            agent.stop()
        if receiver is not None:
            receiver.stop()
        server.stop()


if __name__ == "__main__":
    main()
