"""
The PostgreSQL parser on the real bytes of Debian's PostgreSQL driven by psycopg through a
recording TCP relay (and by pgbench, libpq's three query modes): simple and extended queries,
named statements, a pipeline, errors, and a capture that starts mid-connection. Spans go through the semantic-convention mapping.
"""
import subprocess

import psycopg
import pytest

from telegen.protocols.common import LOSS_UNMATCHED
from telegen.protocols.postgres import PostgresParser, classify
from telegen.protocols.semconv import STATUS_ERROR, span_of
from tests.support.db_servers import Postgres, server_fixture
from tests.support.protocol_chunks import feed_all
from tests.support.tcp_relay import TcpRelay

pytestmark = pytest.mark.integration


server = server_fixture(Postgres)


@pytest.fixture(scope="module")
def session(server):
    """One psycopg connection's known operations, and the relay that carried them."""
    relay = TcpRelay(server.port).start()
    with psycopg.connect(host="127.0.0.1", port=relay.port, user="postgres", dbname="telegen",
                         sslmode="prefer", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, name text)")
        conn.cursor().executemany("INSERT INTO orders VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        conn.execute("SELECT name FROM orders WHERE id = 2").fetchall()
        for i in range(1, 7):     # psycopg prepares a named statement from the 5th run on
            conn.execute("SELECT name FROM orders WHERE id = %s", (i,)).fetchall()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO orders VALUES (%s, %s)", (1, "again"))
    relay.close()
    assert relay.connections() == 1
    return relay


def spans(exchanges, port=5432):
    return [(s.name, s.attributes.get("db.query.text"), s.attributes.get("db.namespace"),
             s.attributes.get("error.type"))
            for s in (span_of(e, "127.0.0.1", port) for e in exchanges)]


SELECT_BY_ID = ("SELECT orders", "SELECT name FROM orders WHERE id = $1", "telegen", None)
INSERT = ("INSERT orders", "INSERT INTO orders VALUES ($1, $2)", "telegen", None)
AFTER_SIMPLE_SELECT = [SELECT_BY_ID] * 6 + [
    ("SELECT nope", "SELECT * FROM nope", "telegen", "42P01"),
    ("INSERT orders", "INSERT INTO orders VALUES ($1, $2)", "telegen", "23505"),
]
EXPECTED = [
    ("CREATE orders", "CREATE TABLE orders (id int PRIMARY KEY, name text)", "telegen", None),
    INSERT, INSERT, INSERT,
    ("SELECT orders", "SELECT name FROM orders WHERE id = ?", "telegen", None),
] + AFTER_SIMPLE_SELECT


def test_every_operation_gives_one_exact_exchange(session):
    chunks = session.chunks(0)
    assert classify(chunks[0].data)                      # the SSLRequest
    assert any(b"_pg3_" in c.data for c in chunks if c.from_client)    # a named statement was used
    parser = PostgresParser()
    exchanges = feed_all(parser, chunks)
    assert spans(exchanges) == EXPECTED
    assert [e.rows for e in exchanges] == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, None, None]
    assert parser.database == "telegen" and parser.user == "postgres"
    assert not parser.losses
    errors = [span_of(e) for e in exchanges if e.failed]
    assert [s.status for s in errors] == [STATUS_ERROR, STATUS_ERROR]
    assert errors[0].status_message == 'relation "nope" does not exist'
    assert all(e.start_ns <= e.end_ns for e in exchanges)


def test_capture_starting_mid_connection(session):
    """Joining after the simple SELECT went out: its response is counted, the rest is exact."""
    chunks = session.chunks(0)
    at = next(i for i, c in enumerate(chunks) if c.from_client and b"WHERE id = 2" in c.data)
    parser = PostgresParser()
    exchanges = feed_all(parser, chunks[at + 1:])
    # The failing INSERT ran a statement psycopg had prepared (named) before the capture began:
    # its SQL is unknown, so the span has no text and falls back to the system's name.
    assert spans(exchanges) == [(n, q, None, e) for n, q, _, e in AFTER_SIMPLE_SELECT[:-1]] + [
        ("postgresql", None, None, "23505")]
    assert parser.losses == {LOSS_UNMATCHED: 1}


@pytest.fixture(scope="module")
def pgbench_tables(server):
    subprocess.run([f"{server.bindir}/pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(server.port),
                    "-U", "postgres", "telegen"], check=True, capture_output=True)
    return server


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pgbench_tables, mode):
    """libpq's three query modes (`pgbench -S -M ...`): one exact exchange per transaction."""
    relay = TcpRelay(pgbench_tables.port).start()
    subprocess.run([f"{pgbench_tables.bindir}/pgbench", "-n", "-S", "-t", "25", "-M", mode, "-h", "127.0.0.1", "-p", str(relay.port),
                    "-U", "postgres", "telegen"], check=True, capture_output=True)
    relay.close()
    exchanges = []
    for conn in range(relay.connections()):
        parser = PostgresParser()
        exchanges += feed_all(parser, relay.chunks(conn))
        assert not parser.losses
    accounts = [span_of(e) for e in exchanges if (e.query or "").startswith("SELECT abalance")]
    assert [s.name for s in accounts] == ["SELECT pgbench_accounts"] * 25
    assert {s.attributes["db.query.text"] for s in accounts} == {
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?;" if mode == "simple"
        else "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"}
