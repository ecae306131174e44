"""
The cost of a CPU profile on a live agent: /healthz throughput (wrk, 2 connections, 1 thread)
without a profile and while /debug/pprof/profile samples, alternated A B A B in one run.

Usage: .venv/bin/python bench/debug/agent_profile.py [--seconds 5] [--rounds 2]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.agent_process import AgentProcess  # noqa: E402


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t1", "-c2", f"-d{seconds}s", url], capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(tmp, {"self_telemetry": {"debug": {"enabled": True}}})
        agent.start()
        try:
            base, profiled = [], []
            for _ in range(args.rounds):
                base.append(wrk(agent.url + "/healthz", args.seconds))
                result = {}
                taker = threading.Thread(target=lambda: result.update(
                    answer=agent.get(f"/debug/pprof/profile?seconds={args.seconds + 2}", timeout=60)))
                taker.start()
                profiled.append(wrk(agent.url + "/healthz", args.seconds))
                taker.join()
                assert result["answer"].code == 200
        finally:
            agent.stop()
    b, p = sum(base) / len(base), sum(profiled) / len(profiled)
    print(f"/healthz requests/s without a profile: {b:.0f} (rounds {[round(x) for x in base]})")
    print(f"/healthz requests/s while profiling:   {p:.0f} (rounds {[round(x) for x in profiled]}) -> {p / b:.2f}x")


if __name__ == "__main__":
    main()
