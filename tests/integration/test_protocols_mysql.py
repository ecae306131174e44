"""
The MySQL/MariaDB parser on the real bytes of Debian's MariaDB, driven by PyMySQL (text protocol,
COM_INIT_DB) and mysql-connector-python (server-side prepared statements) through a recording TCP
relay: exact exchanges and spans, errors, and a capture that starts mid-connection.
"""
import pymysql
import pytest

from telegen.protocols.common import LOSS_UNMATCHED
from telegen.protocols.mysql import MySQLParser, classify
from telegen.protocols.semconv import span_of
from tests.support.db_clients import mysql_prepared_session
from tests.support.db_servers import MariaDB, server_fixture
from tests.support.protocol_chunks import feed_all
from tests.support.tcp_relay import TcpRelay

pytestmark = pytest.mark.integration


server = server_fixture(MariaDB)


@pytest.fixture(scope="module")
def text_session(server):
    relay = TcpRelay(server.port).start()
    conn = pymysql.connect(host="127.0.0.1", port=relay.port, user="telegen", password="telegen",
                           database="telegen", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, name text)")
        cur.execute("INSERT INTO orders VALUES (%s, %s), (2, 'b'), (3, 'c')", (1, "a"))
        cur.execute("SELECT name FROM orders WHERE id > 1")
        assert len(cur.fetchall()) == 2
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM nope")
        with pytest.raises(pymysql.err.IntegrityError):
            cur.execute("INSERT INTO orders VALUES (1, 'again')")
        conn.select_db("mysql")
        cur.execute("SELECT 1")
    conn.close()
    relay.close()
    return relay


@pytest.fixture(scope="module")
def prepared_session(server, text_session):
    relay = TcpRelay(server.port).start()
    mysql_prepared_session(relay.port, (1, 2, 9))
    relay.close()
    return relay


def spans(exchanges):
    return [(s.name, s.attributes.get("db.query.text"), s.attributes.get("db.namespace"),
             s.attributes.get("error.type"), s.attributes["db.system.name"])
            for s in (span_of(e, "127.0.0.1", 3306) for e in exchanges)]


TEXT_EXPECTED = [
    ("SET", "SET NAMES utf8mb4", "telegen", None, "mariadb"),
    ("CREATE orders", "CREATE TABLE orders (id int PRIMARY KEY, name text)", "telegen", None, "mariadb"),
    ("INSERT orders", "INSERT INTO orders VALUES (?, ?), (?, ?), (?, ?)", "telegen", None, "mariadb"),
    ("SELECT orders", "SELECT name FROM orders WHERE id > ?", "telegen", None, "mariadb"),
    ("SELECT nope", "SELECT * FROM nope", "telegen", "1146", "mariadb"),
    ("INSERT orders", "INSERT INTO orders VALUES (?, ?)", "telegen", "1062", "mariadb"),
    ("SELECT", "SELECT ?", "mysql", None, "mariadb"),
]


def test_text_protocol_exchanges(text_session):
    chunks = text_session.chunks(0)
    assert classify(chunks[0].data) and not chunks[0].from_client
    parser = MySQLParser()
    exchanges = feed_all(parser, chunks)
    assert spans(exchanges) == TEXT_EXPECTED
    assert [e.rows for e in exchanges] == [0, 0, 3, 2, None, None, 1]
    assert exchanges[4].error_message == "Table 'telegen.nope' doesn't exist"
    assert parser.user == "telegen" and not parser.losses


def test_prepared_statements(prepared_session):
    parser = MySQLParser()
    exchanges = feed_all(parser, prepared_session.chunks(0))
    prepared = [e for e in exchanges if e.parameterized]
    assert spans(prepared) == [("SELECT orders", "SELECT name FROM orders WHERE id = ?", "telegen", None, "mariadb")] * 3 + [
        ("SELECT nope", "SELECT name FROM nope WHERE id = ?", "telegen", "1146", "mariadb")]
    assert [e.rows for e in prepared] == [1, 1, 0, None]
    assert not parser.losses


def test_capture_starting_mid_connection(text_session):
    """Joining after the first SELECT went out: its result is counted, the rest is exact."""
    chunks = text_session.chunks(0)
    at = next(i for i, c in enumerate(chunks) if c.from_client and b"id > 1" in c.data)
    parser = MySQLParser()
    exchanges = feed_all(parser, chunks[at + 1:])
    assert spans(exchanges) == [(n, q, None, e, "mysql") for n, q, _, e, _ in TEXT_EXPECTED[4:6]] + [
        ("SELECT", "SELECT ?", "mysql", None, "mysql")]
    assert parser.losses == {LOSS_UNMATCHED: 1}
