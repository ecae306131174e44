"""
The Redis parser on hand-made RESP2/RESP3 bytes: commands, inline commands, pipelines, errors,
push messages, pub/sub, every split point, a capture joining mid-connection, large values.
"""
from hypothesis import given, settings
from hypothesis import strategies as st

from telegen.protocols.common import LOSS_DESYNC, LOSS_TRUNCATED, LOSS_UNMATCHED
from telegen.protocols.redis import RedisParser, classify
from tests.support.protocol_chunks import assert_chunking_invariant, feed_all, mutated


def cmd(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def conversation():
    pipeline = cmd(b"SET", b"a", b"1") + cmd(b"INCR", b"a") + cmd(b"GET", b"a") + cmd(b"HGETALL", b"h")
    return [
        (True, cmd(b"HELLO", b"3"), 1), (False, b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n", 2),
        (True, cmd(b"SELECT", b"2"), 3), (False, b"+OK\r\n", 4),
        (True, pipeline, 10),
        (False, b"+OK\r\n:2\r\n$1\r\n2\r\n%2\r\n$1\r\nx\r\n*2\r\n:1\r\n_\r\n$1\r\ny\r\n,1.5\r\n", 11),
        (True, cmd(b"LPUSH", b"a", b"x"), 20),
        (False, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n-WRONGTYPE Operation against a key\r\n", 21),
        (True, b"PING\r\n", 30), (False, b"+PONG\r\n", 31),
        (True, cmd(b"EVAL", b"x", b"0"), 40), (False, b"!21\r\nSYNTAX invalid syntax\r\n", 41),
    ]


def summary(exchanges):
    return [(e.command, e.query, e.namespace, e.start_ns, e.end_ns, e.error_code) for e in exchanges]


EXPECTED = [
    ("HELLO", "HELLO 3", None, 1, 2, None),
    ("SELECT", "SELECT 2", "2", 3, 4, None),
    ("SET", "SET a 1", "2", 10, 11, None),
    ("INCR", "INCR a", "2", 10, 11, None),
    ("GET", "GET a", "2", 10, 11, None),
    ("HGETALL", "HGETALL h", "2", 10, 11, None),
    ("LPUSH", "LPUSH a x", "2", 20, 21, "WRONGTYPE"),
    ("PING", "PING", "2", 30, 31, None),
    ("EVAL", "EVAL x 0", "2", 40, 41, "SYNTAX"),
]


def test_whole_conversation():
    parser = RedisParser()
    exchanges = feed_all(parser, conversation())
    assert summary(exchanges) == EXPECTED
    assert exchanges[6].error_message == "WRONGTYPE Operation against a key"
    assert not parser.losses


def test_every_split_point_and_byte_by_byte_give_the_same_exchanges():
    assert_chunking_invariant(RedisParser, conversation(), summary, EXPECTED)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_conversations_never_raise(data):
    feed_all(RedisParser(), mutated(conversation(), data.draw))


def test_resp2_pubsub_messages_are_not_paired():
    parser = RedisParser(at_connect=True)
    exchanges = feed_all(parser, [
        (True, cmd(b"SUBSCRIBE", b"a", b"b"), 1),
        (False, b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n", 2),
        (False, b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n", 3),
        (True, cmd(b"PING"), 4), (False, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", 5)])
    assert [(e.command, e.namespace, e.end_ns) for e in exchanges] == [("SUBSCRIBE", "0", 3), ("PING", "0", 5)]
    assert not parser.losses


def test_resp3_subscription_confirmations_are_replies_other_pushes_are_not():
    parser = RedisParser(at_connect=True)
    exchanges = feed_all(parser, [
        (True, cmd(b"SUBSCRIBE", b"ch"), 1),
        (False, b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", 2),
        (False, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", 3),
        (True, cmd(b"PING"), 4), (False, b"+PONG\r\n", 5)])
    assert [(e.command, e.end_ns) for e in exchanges] == [("SUBSCRIBE", 2), ("PING", 5)]
    assert not parser.losses


def test_capture_starting_mid_connection():
    """Joining inside a bulk value: that chunk is dropped; a reply with no command is counted."""
    chunks = conversation()
    late = [(True, chunks[4][1][5:], 10), (False, chunks[5][1], 11)] + chunks[6:]
    parser = RedisParser()
    exchanges = feed_all(parser, late)
    assert summary(exchanges) == [(c, q, None, s, e, x) for c, q, _, s, e, x in EXPECTED[6:]]
    assert parser.losses == {LOSS_DESYNC: 1, LOSS_UNMATCHED: 4}


def test_large_values_are_skipped_not_buffered():
    parser = RedisParser(limit=1024)
    value = b"v" * 100000
    request = cmd(b"SET", b"big", value)
    reply_get = b"$100000\r\n" + value + b"\r\n"
    exchanges = feed_all(parser, [(True, request[:5000], 1), (True, request[5000:], 1), (False, b"+OK\r\n", 2),
                                  (True, cmd(b"GET", b"big"), 3), (False, reply_get[:70000], 4), (False, reply_get[70000:], 5)])
    assert [(e.query, e.truncated, e.end_ns) for e in exchanges] == [("SET big", True, 2), ("GET big", False, 5)]
    assert parser.losses == {LOSS_TRUNCATED: 1}
    assert all(len(st.buf) == 0 and not st.parts for st in parser._dir)


def test_classifier():
    assert classify(cmd(b"GET", b"a"))
    assert classify(b"*12\r\n$3\r\nSET")
    assert not classify(b"PING\r\n")
    assert not classify(b"*x\r\n")
    assert not classify(b"GET / HTTP/1.1\r\n")
