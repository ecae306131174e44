"""
The PostgreSQL parser on hand-made protocol bytes: startup, SSLRequest, simple and extended query,
named statements, errors, every split point, a capture joining mid-connection, bounded buffers.
"""
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from telegen.protocols.common import LOSS_DESYNC, LOSS_ENCRYPTED, LOSS_TRUNCATED, LOSS_UNMATCHED
from telegen.protocols.postgres import PostgresParser, classify
from tests.support.protocol_chunks import assert_chunking_invariant, feed_all, mutated


def msg(kind, body=b""):
    return kind + struct.pack(">i", len(body) + 4) + body


def startup(**params):
    body = struct.pack(">i", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">i", len(body) + 4) + body


SSL_REQUEST = struct.pack(">ii", 8, 80877103)
READY = msg(b"Z", b"I")
AUTH_OK = msg(b"R", struct.pack(">i", 0)) + msg(b"S", b"server_version\x0015\0") + msg(b"K", b"\0" * 8) + READY


def row(*values):
    return msg(b"D", struct.pack(">h", len(values)) + b"".join(struct.pack(">i", len(v)) + v for v in values))


def error(code, message):
    return msg(b"E", b"SERROR\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0")


def query(sql):
    return msg(b"Q", sql.encode() + b"\0")


def parse(sql, name=""):
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")


def bind(statement="", portal=""):
    return msg(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + b"\0\0" + b"\0\x01" + struct.pack(">i", 1) + b"7" + b"\0\0")


def execute(portal=""):
    return msg(b"E", portal.encode() + b"\0" + struct.pack(">i", 0))


SYNC = msg(b"S")
DESCRIBE = msg(b"D", b"P\0")
COMPLETE = msg(b"1") + msg(b"2")


def conversation():
    """Startup with SSL refused, a simple query, a named statement run twice, a failing query."""
    return [
        (True, SSL_REQUEST, 1), (False, b"N", 2),
        (True, startup(user="app", database="shop"), 3), (False, AUTH_OK, 4),
        (True, query("SELECT * FROM orders WHERE id = 1"), 10),
        (False, msg(b"T", b"\0\0") + row(b"1") + msg(b"C", b"SELECT 1\0") + READY, 11),
        (True, parse("SELECT name FROM orders WHERE id = $1", "s1") + DESCRIBE + SYNC, 20),
        (False, msg(b"1") + msg(b"t", b"\0\0") + msg(b"T", b"\0\0") + READY, 21),
        (True, bind("s1") + execute() + SYNC, 30),
        (False, msg(b"2") + row(b"a") + row(b"b") + msg(b"C", b"SELECT 2\0") + READY, 31),
        (True, bind("s1") + execute() + SYNC, 40),
        (False, msg(b"2") + msg(b"C", b"SELECT 0\0") + READY, 41),
        (True, query("SELECT * FROM nope"), 50),
        (False, error("42P01", 'relation "nope" does not exist') + READY, 51),
    ]


def summary(exchanges):
    return [(e.query, e.namespace, e.start_ns, e.end_ns, e.rows, e.error_code, e.parameterized) for e in exchanges]


EXPECTED = [
    ("SELECT * FROM orders WHERE id = 1", "shop", 10, 11, 1, None, False),
    ("SELECT name FROM orders WHERE id = $1", "shop", 30, 31, 2, None, True),
    ("SELECT name FROM orders WHERE id = $1", "shop", 40, 41, 0, None, True),
    ("SELECT * FROM nope", "shop", 50, 51, None, "42P01", False),
]


def test_whole_conversation():
    parser = PostgresParser()
    exchanges = feed_all(parser, conversation())
    assert summary(exchanges) == EXPECTED
    assert exchanges[3].error_message == 'relation "nope" does not exist'
    assert parser.user == "app" and not parser.losses


def test_every_split_point_and_byte_by_byte_give_the_same_exchanges():
    assert_chunking_invariant(PostgresParser, conversation(), summary, EXPECTED)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_conversations_never_raise(data):
    feed_all(PostgresParser(), mutated(conversation(), data.draw))


def test_extended_pipeline_error_stops_the_batch():
    """Three Executes before one Sync; the second fails: the third never ran, so gives nothing."""
    parser = PostgresParser()
    feed_all(parser, conversation()[:4])
    pipeline = (parse("INSERT INTO t VALUES ($1)") + bind() + execute()) * 3 + SYNC
    answer = COMPLETE + msg(b"C", b"INSERT 0 1\0") + COMPLETE + error("23505", "duplicate key") + READY
    exchanges = feed_all(parser, [(True, pipeline, 5), (False, answer, 6)])
    assert [(e.query, e.rows, e.error_code) for e in exchanges] == [
        ("INSERT INTO t VALUES ($1)", 1, None), ("INSERT INTO t VALUES ($1)", None, "23505")]


def test_failed_parse_gives_one_exchange_with_its_sql():
    parser = PostgresParser()
    feed_all(parser, conversation()[:4])
    exchanges = feed_all(parser, [(True, parse("SELEC 1") + DESCRIBE + SYNC, 5),
                                  (False, error("42601", "syntax error") + READY, 6)])
    assert [(e.query, e.error_code) for e in exchanges] == [("SELEC 1", "42601")]


def test_capture_starting_mid_connection():
    """The first chunk is the middle of a response: dropped and counted; later queries are exact."""
    chunks = conversation()
    response = chunks[5][1]
    late = [(False, response[3:], 11), (False, response, 12)] + chunks[6:]
    parser = PostgresParser()
    exchanges = feed_all(parser, late)
    assert summary(exchanges) == [(q, None, s, e, r, c, p) for q, _, s, e, r, c, p in EXPECTED[1:]]
    assert parser.losses == {LOSS_DESYNC: 1, LOSS_UNMATCHED: 1}


def test_named_statement_prepared_before_the_capture_has_no_text():
    parser = PostgresParser()
    exchanges = feed_all(parser, [(True, bind("s9") + execute() + SYNC, 1),
                                  (False, msg(b"2") + msg(b"C", b"UPDATE 3\0") + READY, 2)])
    assert [(e.query, e.rows) for e in exchanges] == [(None, 3)]


def test_long_query_is_truncated_and_large_rows_are_skipped_unbuffered():
    parser = PostgresParser(limit=1024)
    feed_all(parser, conversation()[:4])
    sql = "SELECT '" + "x" * 5000 + "'"
    big_row = row(b"y" * 100000)
    request = query(sql)
    exchanges = feed_all(parser, [(True, request[:3000], 5), (True, request[3000:], 5),
                                  (False, big_row[:2000], 6), (False, big_row[2000:] + msg(b"C", b"SELECT 1\0") + READY, 7)])
    assert len(exchanges) == 1 and exchanges[0].query == sql[:1024 - 5] and exchanges[0].rows == 1
    assert exchanges[0].truncated
    assert parser.losses == {LOSS_TRUNCATED: 1}
    assert max(len(b) for b in parser._buf) == 0


def test_ssl_accepted_without_plaintext_is_one_encrypted_loss_at_the_end():
    parser = PostgresParser()
    assert feed_all(parser, [(True, SSL_REQUEST, 1), (False, b"S", 2), (True, b"\x16\x03\x01 tls", 3)]) == []
    assert not parser.losses
    parser.finish()
    assert parser.losses == {LOSS_ENCRYPTED: 1}


def test_ssl_accepted_then_the_tls_plaintext_is_the_conversation():
    """The handshake's ciphertext is ignored; start_tls(): the StartupMessage and queries in the plaintext."""
    parser = PostgresParser()
    handshake = [(True, SSL_REQUEST, 1), (False, b"S", 2), (True, b"\x16\x03\x01\x02\x00 hello", 3),
                 (False, b"\x16\x03\x03\x00\x7a server", 4), (True, b"\x14\x03\x03\x00\x01\x01 part", 5)]
    assert feed_all(parser, handshake) == []
    parser.start_tls()
    exchanges = feed_all(parser, conversation()[2:])
    parser.finish()
    assert summary(exchanges) == EXPECTED and not parser.losses


def test_classifier():
    assert classify(startup(user="a"))
    assert classify(SSL_REQUEST)
    assert classify(struct.pack(">iiii", 16, 80877102, 1, 2))
    assert not classify(query("SELECT 1"))
    assert not classify(b"GET / HTTP/1.1\r\n")
    assert not classify(struct.pack(">ii", 8, 196607))


def test_uncaptured_bytes_inside_a_skipped_row_cost_nothing_elsewhere_they_break_framing():
    parser = PostgresParser()
    feed_all(parser, conversation()[:4])
    big_row = row(b"y" * 10000)
    parser.feed(True, query("SELECT y FROM t"), 5)
    assert parser.feed(False, big_row[:100], 6, gap=len(big_row) - 100) == []
    [exchange] = parser.feed(False, msg(b"C", b"SELECT 1\0") + READY, 7)
    assert (exchange.query, exchange.rows) == ("SELECT y FROM t", 1)
    parser.feed(True, query("SELECT 1"), 8)
    assert parser.feed(False, READY[:2], 9, gap=3) == []
    assert parser.losses == {"gap": 2, "request_without_response": 1}
    assert summary(feed_all(parser, conversation()[4:6])) == EXPECTED[:1]     # framing is back
