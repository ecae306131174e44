"""
Database client spans from the kernel capture, end to end: the real `twistd telegen` with eBPF in
each capture mode (socket-level tp_btf and syscall tracepoints), Debian's PostgreSQL, MariaDB and
redis-server on loopback, driven from this test process by psycopg, PyMySQL and redis-py. The
kernel classifies each connection by its first bytes, sends its reads and writes as data events,
a parser per connection in the agent makes exchanges, and the file sink gets CLIENT spans named
and attributed per the database conventions, errors included, plus the
db.client.operation.duration histogram; /status/ebpf lists the protocols with their counts.

One server of each kind for the module, one agent per capture mode.
"""
import os

import psycopg
import pymysql
import pytest
import redis

from tests.support.agent_process import capture_agent, wait_for
from tests.support.db_servers import MariaDB, Postgres, Redis, server_fixture
from tests.support.openapi_check import schema_validator
from tests.support.otlp_files import read_metrics, read_spans

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

postgres = server_fixture(Postgres)
mariadb = server_fixture(MariaDB)
redis_server = server_fixture(Redis)

CLIENT = 3      # Span.SPAN_KIND_CLIENT


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(request, tmp_path_factory, postgres, mariadb, redis_server):
    """
    The agent in one capture mode, capturing only the servers' ports: the host's other traffic
    (other tests' load generators) must not fill its ring buffer or spend its CPU budget.
    """
    tmp = str(tmp_path_factory.mktemp(f"agent-{request.param}"))
    agent = capture_agent(tmp, request.param, [s.port for s in (postgres, mariadb, redis_server)])
    try:
        yield agent
    finally:
        agent.stop()


def db_spans(agent, system, port):
    """[(name, attributes, span)] of this process's CLIENT spans to the server on `port`."""
    out = []
    for resource, span in read_spans(agent.data_dir):
        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
        if (resource.get("process.pid") == os.getpid() and attrs.get("db.system.name") == system
                and attrs.get("server.port") == port):
            out.append((span.name, attrs, span))
    return out


def exactly(agent, system, port, n):
    """The spans once there are n, checked to stay n after another export interval."""
    found = wait_for(lambda: len(db_spans(agent, system, port)) >= n and db_spans(agent, system, port), timeout=30,
                     message=f"{n} {system} spans (have {len(db_spans(agent, system, port))})")
    assert len(found) == n, [name for name, _, _ in found]
    return found


def facts(spans):
    return [(name, a.get("db.query.text"), a.get("db.namespace"), a.get("error.type")) for name, a, _ in spans]


def metric_count(agent, system):
    """Operations the db.client.operation.duration histogram of this process counted for `system`."""
    total = 0
    for resource, metric in read_metrics(agent.data_dir):
        if metric.name == "db.client.operation.duration" and resource.get("process.pid") == os.getpid():
            total = max(total, sum(p.count for p in metric.histogram.data_points
                                   if any(kv.key == "db.system.name" and kv.value.string_value == system
                                          for kv in p.attributes)))
    return total


def test_postgresql_client_spans(agent, postgres):
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="telegen",
                         sslmode="prefer", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)")
        conn.execute("DELETE FROM orders")
        conn.cursor().executemany("INSERT INTO orders VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        assert conn.execute("SELECT name FROM orders WHERE id = %s", (2,)).fetchall() == [("b",)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
    spans = exactly(agent, "postgresql", postgres.port, 7)
    assert facts(spans) == [
        ("CREATE orders", "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)", "telegen", None),
        ("DELETE orders", "DELETE FROM orders", "telegen", None),
        *[("INSERT orders", "INSERT INTO orders VALUES ($1, $2)", "telegen", None)] * 3,     # executemany: one each
        ("SELECT orders", "SELECT name FROM orders WHERE id = $1", "telegen", None),
        ("SELECT nope", "SELECT * FROM nope", "telegen", "42P01"),
    ]
    for name, attrs, span in spans:
        assert span.kind == CLIENT and span.start_time_unix_nano <= span.end_time_unix_nano
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["db.operation.name"] == name.split()[0]
    error = spans[-1]
    assert error[1]["db.response.status_code"] == "42P01" and error[2].status.code == 2
    assert error[2].status.message == 'relation "nope" does not exist'
    assert wait_for(lambda: metric_count(agent, "postgresql") == 7, timeout=30, message="7 operations in the histogram")


def test_mysql_client_spans(agent, mariadb):
    conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="telegen", password="telegen",
                           database="telegen", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)")
        cur.execute("DELETE FROM orders")
        cur.execute("INSERT INTO orders VALUES (%s, %s), (2, 'b')", (1, "a"))
        cur.execute("SELECT name FROM orders WHERE id > 1")
        assert cur.fetchall() == (("b",),)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM nope")
    conn.close()
    spans = exactly(agent, "mariadb", mariadb.port, 6)
    assert facts(spans) == [
        ("SET", "SET NAMES utf8mb4", "telegen", None),
        ("CREATE orders", "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)", "telegen", None),
        ("DELETE orders", "DELETE FROM orders", "telegen", None),
        ("INSERT orders", "INSERT INTO orders VALUES (?, ?), (?, ?)", "telegen", None),
        ("SELECT orders", "SELECT name FROM orders WHERE id > ?", "telegen", None),
        ("SELECT nope", "SELECT * FROM nope", "telegen", "1146"),
    ]
    assert all(s.kind == CLIENT for _, _, s in spans)
    assert spans[-1][2].status.code == 2 and spans[-1][1]["db.response.status_code"] == "1146"
    assert wait_for(lambda: metric_count(agent, "mariadb") == 6, timeout=30, message="6 operations in the histogram")


def test_redis_client_spans_and_status(agent, redis_server):
    r = redis.Redis(host="127.0.0.1", port=redis_server.port, db=1)
    r.set("order:1", "new")
    assert r.get("order:1") == b"new"
    with pytest.raises(redis.ResponseError):
        r.incr("order:1")
    pipe = r.pipeline(transaction=False)
    pipe.hset("h", "x", 1).hget("h", "x").delete("h")
    assert pipe.execute() == [1, b"1", 1]
    r.close()

    def after_setup():
        """The spans from SELECT on: redis-py opens with HELLO and CLIENT SETINFO calls of its own."""
        names = facts(db_spans(agent, "redis", redis_server.port))
        start = next((i for i, f in enumerate(names) if f[0] == "SELECT"), None)
        assert start is None or {f[0] for f in names[:start]} <= {"HELLO", "CLIENT"}
        return names[start:] if start is not None and len(names) - start >= 7 else None

    found = wait_for(after_setup, timeout=30, message="7 redis spans from SELECT on")
    assert found == [
        ("SELECT", "SELECT 1", "1", None),
        ("SET", "SET order:1 ?", "1", None),
        ("GET", "GET order:1", "1", None),
        ("INCRBY", "INCRBY order:1 ?", "1", "ERR"),
        ("HSET", "HSET h ? ?", "1", None),
        ("HGET", "HGET h ?", "1", None),
        ("DEL", "DEL h", "1", None),
    ]

    status = agent.get("/status/ebpf").json()
    spec = agent.get("/openapi.json").json()
    schema_validator(spec, "/status/ebpf", "get", 200).validate(status)
    protocols = {p["name"]: p for p in status["protocols"]}
    assert set(protocols) == {"http", "postgresql", "mysql", "redis", "http2"}
    assert all(p["enabled"] for p in protocols.values())
    assert protocols["redis"]["exchanges"] >= 7
    # The connection's close freed its parser.
    wait_for(lambda: {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}["redis"]["open_connections"] == 0,
             timeout=30, message="the closed redis connection forgotten")


def test_a_result_longer_than_the_capture_is_a_counted_loss_and_the_next_query_is_exact(agent, postgres):
    """
    A result set of ~50 KiB reaches the parser as the first 4 KiB of each read plus gaps: its
    exchange cannot be completed, so it is counted (never a made-up span), and the connection's
    next query, starting in a read of its own, gives its exact span.
    """
    def lost():
        protocols = {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}
        return sum(protocols["postgresql"]["losses"].values())

    before = lost()
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="telegen",
                         autocommit=True) as conn:
        assert len(conn.execute("SELECT repeat('x', 100) FROM generate_series(1, 500) AS big").fetchall()) == 500
        assert conn.execute("SELECT count(*) FROM orders").fetchone() is not None
    wait_for(lambda: any(name == "SELECT orders" and a.get("db.query.text") == "SELECT count(*) FROM orders"
                         for name, a, _ in db_spans(agent, "postgresql", postgres.port)), timeout=30,
             message="the span of the query after the big result")
    assert not [a for _, a, _ in db_spans(agent, "postgresql", postgres.port)
                if "generate_series" in a.get("db.query.text", "")]
    assert lost() > before
    metrics = agent.get("/metrics").body.decode()
    assert 'telegen_ebpf_decoder_losses_total{protocol="postgresql",reason="gap"}' in metrics
