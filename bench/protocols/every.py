"""
Every protocol end to end in one run of one agent (issue 18's benchmark): HTTP/1.x, HTTP/2, gRPC,
PostgreSQL, Redis and MariaDB, each at a fixed rate the agent should keep up with, so that spans ==
operations is the expectation. The measurement (agent per capture mode, span counts by server port,
agent CPU, BPF run time, losses) is bench/protocols/capture.py's; this script only adds the loads:

- HTTP/1.x: nginx-light, `h2load --h1 -c 2 --rps rate/2` for /ok (a `return 200`: /index.html
  over h2c waits on delayed ACKs, ~45 requests/s, with or without the agent) (SERVER and CLIENT spans);
- HTTP/2: nginx-light h2c (prior knowledge), `h2load -c 2 -m 1 --rps rate/2` (SERVER and CLIENT);
- gRPC: the tests' grpcio generic-handler server (demo.Echo/Unary) and a paced unary-call loop on
  one channel (a new one per run), both in this process (SERVER and CLIENT);
- PostgreSQL: `pgbench -S -c 2 -R rate` (CLIENT); Redis: `redis-benchmark -t get -c 2` (CLIENT; it
  has no rate limit, so it runs as fast as it can); MariaDB: a paced PyMySQL `SELECT 1` loop (CLIENT).

Usage (root): .venv/bin/python bench/protocols/every.py [--rate 1000] [--seconds 10] [--modes socket,syscalls]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import grpc  # noqa: E402
import pymysql  # noqa: E402

from bench.protocols.capture import Load, measure, pgbench, redis_bench, setup_pgbench  # noqa: E402
from tests.support.db_servers import MariaDB, Postgres, Redis  # noqa: E402
from tests.support.h2_peers import grpc_server  # noqa: E402
from tests.support.http_apps import nginx, wait_listening  # noqa: E402


def paced(ops, rate, call):
    """call() `ops` times, the i-th no earlier than i/rate s after the start; seconds it took."""
    started = time.monotonic()
    for i in range(ops):
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        call()
    return time.monotonic() - started


def h2load(port, ops, rate, *options):
    started = time.monotonic()
    out = subprocess.run(["h2load", "-n", str(ops), "-c", "2", "--rps", str(rate // 2), *options,
                          f"http://127.0.0.1:{port}/ok"], capture_output=True, text=True, check=True).stdout
    assert f"{ops} succeeded" in out, out
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--modes", default="socket,syscalls")
    parser.add_argument("--base-port", type=int, default=29000, help="nginx listens on this port and the next")
    args = parser.parse_args()
    ops, rate = args.rate * args.seconds, args.rate
    h1, h1_port = nginx(tempfile.mkdtemp(prefix="telegen-bench-h1-"), port=args.base_port)
    h2, h2_port = nginx(tempfile.mkdtemp(prefix="telegen-bench-h2-"), port=args.base_port + 1, http2=True)
    grpc_srv, grpc_port = grpc_server()
    pg, redis, maria = Postgres(), Redis(), MariaDB()
    try:
        wait_listening(h1_port)
        wait_listening(h2_port)
        setup_pgbench(pg)

        def grpc_loop():
            # A new channel per run: a connection opened before the agent started is not classified.
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                unary = channel.unary_unary("/demo.Echo/Unary")
                return paced(ops, rate, lambda: unary(b"ping"))

        def mariadb_loop():
            conn = pymysql.connect(host="127.0.0.1", port=maria.port, user="telegen", password="telegen",
                                   database="telegen")
            try:
                cursor = conn.cursor()
                return paced(ops, rate, lambda: cursor.execute("SELECT 1"))
            finally:
                conn.close()

        measure([Load("h2load --h1 (nginx)", "http", h1_port, ops, lambda: h2load(h1_port, ops, rate, "--h1")),
                 Load("h2load h2c (nginx)", "http2", h2_port, ops, lambda: h2load(h2_port, ops, rate, "-m", "1")),
                 Load("grpcio unary loop", "http2", grpc_port, ops, grpc_loop),
                 Load("pgbench -S -R", "postgresql", pg.port, ops, lambda: pgbench(pg, ops, rate)),
                 Load("redis-benchmark GET (unpaced)", "redis", redis.port, ops, lambda: redis_bench(redis, ops)),
                 Load("PyMySQL SELECT 1 loop", "mysql", maria.port, ops, mariadb_loop)],
                args.modes.split(","))
    finally:
        grpc_srv.stop(None)
        h1.stop()
        h2.stop()
        pg.stop()
        redis.stop()
        maria.stop()


if __name__ == "__main__":
    main()
