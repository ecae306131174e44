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
import psycopg
import pytest
import redis

from tests.support.agent_process import wait_for
from tests.support.db_agent import (
    CLIENT, agent_config, db_spans, exactly, facts, metric_count, postgres_session_spans, redis_spans_from_select,
    running_agent)
from tests.support.db_clients import (
    MYSQL_SESSION_SPANS, REDIS_SESSION_SPANS, mysql_prepared_session, mysql_session, postgres_session, redis_session)
from tests.support.db_servers import MariaDB, Postgres, Redis, server_fixture
from tests.support.openapi_check import schema_validator

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

postgres = server_fixture(Postgres)
mariadb = server_fixture(MariaDB)
redis_server = server_fixture(Redis)



@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(request, tmp_path_factory, postgres, mariadb, redis_server):
    yield from running_agent(request.param, str(tmp_path_factory.mktemp(f"agent-{request.param}")),
                             postgres, mariadb, redis_server)


def test_postgresql_client_spans(agent, postgres):
    assert not postgres_session(postgres.port, sslmode="prefer")     # the server has no TLS: plaintext
    postgres_session_spans(agent, postgres.port)
    assert wait_for(lambda: metric_count(agent, "postgresql") == 7, timeout=30, message="7 operations in the histogram")


def test_mysql_client_spans(agent, mariadb):
    mysql_session(mariadb.port)
    spans = exactly(agent, "mariadb", mariadb.port, 6)
    assert facts(spans) == MYSQL_SESSION_SPANS
    assert all(s.kind == CLIENT for _, _, s in spans)
    assert spans[-1][2].status.code == 2 and spans[-1][1]["db.response.status_code"] == "1146"
    assert wait_for(lambda: metric_count(agent, "mariadb") == 6, timeout=30, message="6 operations in the histogram")


def test_mysql_prepared_statements(agent, mariadb):
    """Server-side prepared statements (mysql-connector): each execution is a span with the SQL of its PREPARE."""
    mysql_prepared_session(mariadb.port, (1, 2))
    texts = ("SELECT name FROM orders WHERE id = ?", "SELECT name FROM nope WHERE id = ?")

    def prepared():
        return [f for f in facts(db_spans(agent, "mariadb", mariadb.port)) if f[1] in texts]

    found = wait_for(lambda: len(prepared()) >= 3 and prepared(), timeout=30, message="3 prepared statement spans")
    assert found == [("SELECT orders", texts[0], "telegen", None)] * 2 + [("SELECT nope", texts[1], "telegen", "1146")]


def test_redis_client_spans_and_status(agent, redis_server):
    redis_session(redis.Redis(host="127.0.0.1", port=redis_server.port, db=1))
    assert redis_spans_from_select(agent, redis_server.port, 7) == REDIS_SESSION_SPANS

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


def test_a_protocol_switched_off_by_reload_gives_no_spans_and_recompiles_nothing(agent, postgres, mariadb, redis_server):
    """agent.ebpf.protocols.redis: false, reloaded: the kernel stops classifying new Redis
    connections (no events, no spans, no losses), the programs stay the same, /status/ebpf says so."""
    programs = {p["id"] for p in agent.get("/status/ebpf").json()["programs"]}
    agent.write_config(agent_config(agent.capture, postgres, mariadb, redis_server, redis=False))
    answer = agent.post("/admin/reload").json()
    assert "ebpf" in answer["reconfigured"], answer
    protocols = {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}
    assert not protocols["redis"]["enabled"] and protocols["postgresql"]["enabled"]
    before = len(db_spans(agent, "redis", redis_server.port))
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    r.set("off", "1")
    r.close()
    # A marker after it on the same ring: once its span is in, a Redis span would be too.
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="telegen", autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM orders WHERE id = 42")
    wait_for(lambda: any(a.get("db.query.text") == "SELECT count(*) FROM orders WHERE id = ?"
                         for _, a, _ in db_spans(agent, "postgresql", postgres.port)), timeout=30, message="the marker span")
    assert len(db_spans(agent, "redis", redis_server.port)) == before
    protocols = {p["name"]: p for p in agent.get("/status/ebpf").json()["protocols"]}
    assert "protocol_disabled" not in protocols["redis"]["losses"]      # never classified: nothing to drop
    assert {p["id"] for p in agent.get("/status/ebpf").json()["programs"]} == programs
