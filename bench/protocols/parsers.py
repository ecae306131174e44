"""
User-space cost of the protocol parsers, per exchange, on real traffic.

Each protocol's server (Debian's PostgreSQL, MariaDB, redis-server, started as in the tests;
nginx-light over h2c; a grpcio server) is driven by its usual client through the recording relay
with a read-only loop like `pgbench -S` (a primary-key SELECT of one row; GET for Redis; h2load
with 10 streams in flight for HTTP/2; unary calls of 16 bytes for gRPC), one connection, N
operations. The recorded chunks are then fed to a fresh parser, best of 5 rounds of this
thread's CPU time: microseconds per exchange for the parser alone and with the semantic-convention
mapping (span_of, with sanitizing for SQL), next to a baseline of the same loop over the chunks
that only calls len() on them.

Usage (root: PostgreSQL runs as the postgres user): .venv/bin/python bench/protocols/parsers.py [--ops 5000] [--only http2 grpc]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from telegen.protocols import http2_semconv  # noqa: E402
from telegen.protocols.http2 import Http2Parser  # noqa: E402
from telegen.protocols.mysql import MySQLParser  # noqa: E402
from telegen.protocols.postgres import PostgresParser  # noqa: E402
from telegen.protocols.redis import RedisParser  # noqa: E402
from telegen.protocols.semconv import span_of  # noqa: E402
from tests.support.db_servers import MariaDB, Postgres, Redis  # noqa: E402
from tests.support.h2_peers import grpc_server  # noqa: E402
from tests.support.http_apps import nginx, wait_listening  # noqa: E402
from tests.support.tcp_relay import TcpRelay  # noqa: E402


def postgres_load(port, ops):
    import psycopg
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="telegen", autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (aid int PRIMARY KEY, abalance int)")
        conn.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 1000) g")
        for i in range(ops):
            conn.execute("SELECT abalance FROM accounts WHERE aid = %s", (i % 1000 + 1,)).fetchall()


def mysql_load(port, ops):
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=port, user="telegen", password="telegen", database="telegen", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE accounts (aid int PRIMARY KEY, abalance int)")
        cur.executemany("INSERT INTO accounts VALUES (%s, 0)", [(i,) for i in range(1, 1001)])
        for i in range(ops):
            cur.execute("SELECT abalance FROM accounts WHERE aid = %s", (i % 1000 + 1,))
            cur.fetchall()
    conn.close()


def redis_load(port, ops):
    import redis
    r = redis.Redis(host="127.0.0.1", port=port)
    r.set("key:1", "x" * 100)
    for _ in range(ops):
        r.get("key:1")
    r.close()


def h2load(port, ops):
    subprocess.run(["h2load", "-n", str(ops), "-c", "1", "-m", "10", f"http://127.0.0.1:{port}/ok"],
                   check=True, capture_output=True)


def grpc_load(port, ops):
    import grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/demo.Echo/Unary")
        for _ in range(ops):
            call(b"x" * 16)


class NginxH2c:
    """nginx-light on an h2c (prior knowledge) port, as the tests start it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="telegen-nginx-")
        self.child, self.port = nginx(self.dir, http2=True)
        wait_listening(self.port)

    def stop(self):
        self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class GrpcServer:
    """The tests' grpcio server (generic handlers, raw bytes)."""

    def __init__(self):
        self.server, self.port = grpc_server()

    def stop(self):
        self.server.stop(None)


CASES = [("postgresql", Postgres, postgres_load, PostgresParser, span_of),
         ("mariadb", MariaDB, mysql_load, MySQLParser, span_of),
         ("redis", Redis, redis_load, RedisParser, span_of),
         ("http2", NginxH2c, h2load, Http2Parser, http2_semconv.span_of),
         ("grpc", GrpcServer, grpc_load, Http2Parser, http2_semconv.span_of)]


def best_of(rounds, fn):
    """The least CPU time of this thread over the rounds: on a shared machine, wall time counts the
    time other processes had the CPU."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def measure(chunks, make_parser, span):
    triples = [(c.from_client, c.data, c.ts_ns) for c in chunks]

    def baseline():
        for _, data, _ in triples:
            len(data)

    def parse():
        p = make_parser()
        for from_client, data, ts in triples:
            p.feed(from_client, data, ts)

    def parse_and_map():
        p = make_parser()
        for from_client, data, ts in triples:
            for ex in p.feed(from_client, data, ts):
                span(ex, "127.0.0.1", 5432)

    p = make_parser()
    exchanges = sum(len(p.feed(c, d, t)) for c, d, t in triples)
    return exchanges, len(triples), p.losses, [best_of(5, f) for f in (baseline, parse, parse_and_map)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--only", nargs="+", choices=[c[0] for c in CASES], help="these protocols only")
    args = parser.parse_args()
    print(f"{'protocol':<11} {'exchanges':>9} {'chunks':>7} {'baseline us/ex':>15} {'parse us/ex':>12} {'parse+span us/ex':>17}  losses")
    for name, server_class, load, make_parser, span in CASES:
        if args.only and name not in args.only:
            continue
        server = server_class()
        try:
            relay = TcpRelay(server.port).start()
            load(relay.port, args.ops)
            relay.close()
            exchanges, chunks, losses, times = measure(relay.chunks(0), make_parser, span)
            per = [t / exchanges * 1e6 for t in times]
            print(f"{name:<11} {exchanges:>9} {chunks:>7} {per[0]:>15.2f} {per[1]:>12.2f} {per[2]:>17.2f}  {dict(losses)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
