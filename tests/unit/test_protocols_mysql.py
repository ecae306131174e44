"""
The MySQL/MariaDB parser on hand-made packets: handshake, COM_QUERY result sets (with and without
the intermediate EOF), ERR, prepared statements, COM_INIT_DB, every split point, a capture joining
mid-connection.
"""
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from telegen.protocols.common import LOSS_DESYNC, LOSS_ENCRYPTED, LOSS_TRUNCATED, LOSS_UNMATCHED
from telegen.protocols.mysql import MySQLParser, classify
from tests.support.protocol_chunks import assert_chunking_invariant, feed_all, mutated


def pkt(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


HANDSHAKE = pkt(0, b"\x0a5.5.5-10.11.19-MariaDB-0+deb12u1\0" + b"\x01\0\0\0" + b"12345678\0" + b"\xff\xf7\x21\x02\0" + b"\0" * 13)
CAPS = 0x8 | 0x200 | 0x8000 | 0x80000      # CONNECT_WITH_DB, PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH
RESPONSE = pkt(1, struct.pack("<IIB", CAPS, 1 << 24, 45) + b"\0" * 23 + b"app\0" + b"\x14" + b"a" * 20 + b"shop\0" + b"mysql_native_password\0")
OK = b"\x00\x00\x00\x02\x00\x00\x00"
EOF_ = b"\xfe\x00\x00\x02\x00"


def column(name):
    return b"\x03def\x04shop\x06orders\x06orders" + bytes([len(name)]) + name + bytes([len(name)]) + name + b"\x0c" + b"\0" * 12


def result(rows, eof_between=True):
    """A text result set of one column: count, definition, [EOF], rows, EOF."""
    packets = [b"\x01", column(b"id")] + ([EOF_] if eof_between else []) + [bytes([len(r)]) + r for r in rows]
    packets.append(EOF_ if eof_between else b"\xfe\x00\x00\x02\x00\x00\x00")
    return b"".join(pkt(i + 1, p) for i, p in enumerate(packets))


def err(code, state, message):
    return pkt(1, b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + message.encode())


def command(code, body):
    return pkt(0, bytes([code]) + body)


def prepare_ok(stmt_id, columns, params):
    packets = [b"\x00" + struct.pack("<IHHxH", stmt_id, columns, params, 0)]
    if params:
        packets += [column(b"?")] * params + [EOF_]
    if columns:
        packets += [column(b"c")] * columns + [EOF_]
    return b"".join(pkt(i + 1, p) for i, p in enumerate(packets))


def conversation():
    return [
        (False, HANDSHAKE, 1), (True, RESPONSE, 2), (False, pkt(2, OK), 3),
        (True, command(3, b"SELECT id FROM orders WHERE id > 1"), 10), (False, result([b"2", b"3"]), 11),
        (True, command(3, b"SELECT * FROM nope"), 20), (False, err(1146, "42S02", "Table 'shop.nope' doesn't exist"), 21),
        (True, command(0x16, b"SELECT id FROM orders WHERE id = ?"), 30), (False, prepare_ok(7, 1, 1), 31),
        (True, command(0x17, struct.pack("<IBI", 7, 0, 1) + b"\0\x01\x03\0" + struct.pack("<i", 2)), 40),
        (False, b"".join(pkt(i + 1, p) for i, p in enumerate([b"\x01", column(b"id"), EOF_, b"\x00\x00\x02\x00\x00\x00", EOF_])), 41),
        (True, command(0x19, struct.pack("<I", 7)), 50),
        (True, command(2, b"other"), 60), (False, pkt(1, OK), 61),
        (True, command(3, b"INSERT INTO t VALUES (1), (2)"), 70), (False, pkt(1, b"\x00\x02\x00\x02\x00\x00\x00"), 71),
    ]


def summary(exchanges):
    return [(e.system, e.query, e.namespace, e.start_ns, e.end_ns, e.rows, e.error_code, e.parameterized) for e in exchanges]


EXPECTED = [
    ("mariadb", "SELECT id FROM orders WHERE id > 1", "shop", 10, 11, 2, None, False),
    ("mariadb", "SELECT * FROM nope", "shop", 20, 21, None, "1146", False),
    ("mariadb", "SELECT id FROM orders WHERE id = ?", "shop", 40, 41, 1, None, True),
    ("mariadb", "INSERT INTO t VALUES (1), (2)", "other", 70, 71, 2, None, False),
]


def test_whole_conversation():
    parser = MySQLParser()
    exchanges = feed_all(parser, conversation())
    assert summary(exchanges) == EXPECTED
    assert exchanges[1].error_message == "Table 'shop.nope' doesn't exist"
    assert parser.user == "app" and not parser.losses
    assert parser._statements == {}        # closed by COM_STMT_CLOSE


def test_every_split_point_and_byte_by_byte_give_the_same_exchanges():
    assert_chunking_invariant(MySQLParser, conversation(), summary, EXPECTED)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_conversations_never_raise(data):
    feed_all(MySQLParser(), mutated(conversation(), data.draw))


def test_result_set_without_intermediate_eof():
    """CLIENT_DEPRECATE_EOF: no EOF after the definitions, an OK (0xfe) ends the rows."""
    parser = MySQLParser()
    feed_all(parser, conversation()[:3])
    exchanges = feed_all(parser, [(True, command(3, b"SELECT id FROM orders"), 5), (False, result([b"1"], eof_between=False), 6),
                                  (True, command(3, b"SELECT id FROM orders"), 7), (False, result([], eof_between=False), 8)])
    assert [e.rows for e in exchanges] == [1, 0]


def test_multiple_results_end_at_the_last():
    parser = MySQLParser()
    feed_all(parser, conversation()[:3])
    more = pkt(1, b"\x00\x01\x00\x0a\x00\x00\x00")      # OK with SERVER_MORE_RESULTS_EXISTS
    exchanges = feed_all(parser, [(True, command(3, b"UPDATE a SET x=1; UPDATE b SET x=1"), 5),
                                  (False, more + pkt(2, b"\x00\x01\x00\x02\x00\x00\x00"), 6)])
    assert [(e.rows, e.end_ns) for e in exchanges] == [(2, 6)]


def test_capture_starting_mid_connection():
    chunks = conversation()
    late = [(False, chunks[4][1][6:], 11), (False, chunks[4][1], 12)] + chunks[5:]
    parser = MySQLParser()
    exchanges = feed_all(parser, late)
    assert [(e.system, e.query, e.namespace) for e in exchanges] == [
        ("mysql", "SELECT * FROM nope", None), ("mysql", "SELECT id FROM orders WHERE id = ?", None),
        ("mysql", "INSERT INTO t VALUES (1), (2)", "other")]
    assert parser.losses[LOSS_UNMATCHED] >= 1


def test_client_bytes_that_are_no_command_are_dropped():
    parser = MySQLParser()
    feed_all(parser, conversation()[:3])
    assert feed_all(parser, [(True, b"\x05\x00\x00\x07garbage", 5)]) == []
    assert parser.losses == {LOSS_DESYNC: 1}
    assert summary(feed_all(parser, conversation()[3:5])) == EXPECTED[:1]


SSL = pkt(1, struct.pack("<IIB", CAPS | 0x800, 1 << 24, 45) + b"\0" * 23)


def test_ssl_request_without_plaintext_is_one_encrypted_loss_at_the_end():
    parser = MySQLParser()
    assert feed_all(parser, [(False, HANDSHAKE, 1), (True, SSL, 2), (True, b"\x16\x03\x01tls", 3)]) == []
    assert not parser.losses
    parser.finish()
    assert parser.losses == {LOSS_ENCRYPTED: 1}


def test_ssl_request_then_the_tls_plaintext_is_the_conversation():
    """After start_tls() the HandshakeResponse41 comes with sequence id 2, the server's OK with 3."""
    parser = MySQLParser()
    assert feed_all(parser, [(False, HANDSHAKE, 1), (True, SSL, 2), (True, b"\x16\x03\x01\x02\x00tls", 3),
                             (False, b"\x16\x03\x03\x00\x7aserver", 4)]) == []
    parser.start_tls()
    response = pkt(2, RESPONSE[4:])
    exchanges = feed_all(parser, [(True, response, 5), (False, pkt(3, OK), 6)] + conversation()[3:])
    parser.finish()
    assert summary(exchanges) == EXPECTED and not parser.losses


def test_classifier():
    assert classify(HANDSHAKE)
    assert not classify(RESPONSE)
    assert not classify(b"HTTP/1.1 200 OK\r\n")
    assert not classify(pkt(0, b"\x0aabc"))


def test_query_longer_than_a_packet_and_rows_longer_than_the_limit():
    """A 16 MiB+ COM_QUERY continues in a second packet: one truncated exchange; big rows are skipped."""
    parser = MySQLParser(limit=4096)
    feed_all(parser, conversation()[:3])
    sql = b"INSERT INTO blobs VALUES ('" + b"x" * (0xffffff + 100) + b"')"
    payload = b"\x03" + sql
    first, rest = payload[:0xffffff], payload[0xffffff:]
    request = struct.pack("<I", 0xffffff)[:3] + b"\0" + first + pkt(1, rest)
    big_row = b"\xfd" + (200000).to_bytes(3, "little") + b"y" * 200000
    answer = b"".join(pkt(i + 1, p) for i, p in enumerate([b"\x01", column(b"b"), EOF_, big_row, EOF_]))
    exchanges = feed_all(parser, [(True, request[k:k + 65536], 5) for k in range(0, len(request), 65536)] + [
        (True, command(3, b"SELECT b FROM blobs"), 6), (False, pkt(1, OK), 7),
        (False, answer[:1000], 8), (False, answer[1000:], 9)])
    assert [(e.query[:30], len(e.query), e.truncated, e.rows) for e in exchanges] == [
        ("INSERT INTO blobs VALUES ('xxx", 4096 - 5, True, 0), ("SELECT b FROM blobs", 19, False, 1)]
    assert parser.losses == {LOSS_TRUNCATED: 1}
