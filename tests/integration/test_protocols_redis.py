"""
The Redis parser on the real bytes of Debian's redis-server driven by redis-py through a
recording TCP relay, in RESP2 and RESP3: commands, a pipeline, a MULTI/EXEC transaction, errors,
pub/sub, a capture that starts mid-connection, and redis-benchmark's pipelines.
"""
import subprocess
from collections import Counter

import pytest
import redis

from telegen.protocols.common import LOSS_UNMATCHED
from telegen.protocols.redis import RedisParser, classify
from telegen.protocols.semconv import span_of
from tests.support.db_servers import Redis, server_fixture
from tests.support.protocol_chunks import feed_all
from tests.support.tcp_relay import TcpRelay

pytestmark = pytest.mark.integration


server = server_fixture(Redis)


def run_session(server, protocol):
    relay = TcpRelay(server.port).start()
    r = redis.Redis(host="127.0.0.1", port=relay.port, protocol=protocol, db=1)
    r.set("k", "v")
    assert r.get("k") == b"v"
    with pytest.raises(redis.ResponseError):
        r.lpush("k", 1)
    pipe = r.pipeline(transaction=False)
    pipe.set("a", 1).incr("a").get("a").hset("h", mapping={"x": 1, "y": 2}).hgetall("h")
    assert pipe.execute()[:3] == [True, 2, b"2"]
    tx = r.pipeline(transaction=True)
    tx.incr("a").incr("a")
    assert tx.execute() == [3, 4]
    r.close()
    relay.close()
    return relay


@pytest.fixture(scope="module", params=[2, 3], ids=["resp2", "resp3"])
def session(request, server):
    return request.param, run_session(server, request.param)


def names(exchanges):
    return [(s.name, s.attributes.get("db.query.text"), s.attributes.get("db.namespace"), s.attributes.get("error.type"))
            for s in (span_of(e, "127.0.0.1", 6379) for e in exchanges)]


AFTER_SELECT = [
    ("SET", "SET k ?", "1", None),
    ("GET", "GET k", "1", None),
    ("LPUSH", "LPUSH k ?", "1", "WRONGTYPE"),
    ("SET", "SET a ?", "1", None),
    ("INCRBY", "INCRBY a ?", "1", None),
    ("GET", "GET a", "1", None),
    ("HSET", "HSET h ? ? ? ?", "1", None),
    ("HGETALL", "HGETALL h", "1", None),
    ("MULTI", "MULTI", "1", None),
    ("INCRBY", "INCRBY a ?", "1", None),
    ("INCRBY", "INCRBY a ?", "1", None),
    ("EXEC", "EXEC", "1", None),
]


def test_commands_pipelines_and_errors(session):
    protocol, relay = session
    chunks = relay.chunks(0)
    assert classify(chunks[0].data)
    parser = RedisParser()
    exchanges = feed_all(parser, chunks)
    start = [n for n, *_ in names(exchanges)].index("SELECT")
    assert names(exchanges)[start] == ("SELECT", "SELECT 1", "1", None)
    # Before SELECT only the client's own set-up (HELLO 3 in RESP3; newer redis-py adds CLIENT calls).
    assert {n for n, *_ in names(exchanges)[:start]} <= {"HELLO", "CLIENT"}
    assert ("HELLO" in [n for n, *_ in names(exchanges)]) == (protocol == 3)
    assert names(exchanges)[start + 1:] == AFTER_SELECT
    assert exchanges[start + 3].error_message.startswith("WRONGTYPE Operation against a key")
    assert not parser.losses


def test_capture_starting_mid_connection(session):
    """Joining after the pipeline went out: its five replies are counted, the transaction is exact."""
    _, relay = session
    chunks = relay.chunks(0)
    at = next(i for i, c in enumerate(chunks) if c.from_client and b"HGETALL" in c.data)
    parser = RedisParser()
    exchanges = feed_all(parser, chunks[at + 1:])
    assert names(exchanges) == [(n, q, None, e) for n, q, _, e in AFTER_SELECT[-4:]]
    assert parser.losses == {LOSS_UNMATCHED: 5}


def test_pubsub_messages_are_not_paired(server):
    relay = TcpRelay(server.port).start()
    r = redis.Redis(host="127.0.0.1", port=relay.port)
    pubsub = r.pubsub()
    pubsub.subscribe("ch")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    assert redis.Redis(host="127.0.0.1", port=server.port).publish("ch", "hi") == 1
    assert pubsub.get_message(timeout=5)["data"] == b"hi"
    pubsub.ping()
    assert pubsub.get_message(timeout=5)["type"] == "pong"
    pubsub.close()
    relay.close()
    parser = RedisParser(at_connect=True)
    exchanges = feed_all(parser, relay.chunks())
    assert [(n, q) for n, q, *_ in names(exchanges) if n not in ("HELLO", "CLIENT")] == [("SUBSCRIBE", "SUBSCRIBE ch"), ("PING", "PING")]
    assert not parser.losses


def test_redis_benchmark_pipelines(server):
    """redis-benchmark sends 16 commands per write (-P 16): every one is paired, none is lost."""
    relay = TcpRelay(server.port).start()
    subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(relay.port), "-c", "1", "-n", "200", "-P", "16",
                    "-t", "set,get", "-q"], check=True, capture_output=True)
    relay.close()
    commands = Counter()
    for conn in range(relay.connections()):
        parser = RedisParser()
        commands.update(e.command for e in feed_all(parser, relay.chunks(conn)))
        assert not parser.losses
    # redis-benchmark fills its last pipeline (200 rounds up to 13 x 16): count what went over the wire.
    sent = b"".join(c.data for c in relay.chunks() if c.from_client)
    assert commands["SET"] == sent.count(b"$3\r\nSET\r\n$16\r\nkey:") >= 200
    assert commands["GET"] == sent.count(b"$3\r\nGET\r\n$16\r\nkey:") >= 200
