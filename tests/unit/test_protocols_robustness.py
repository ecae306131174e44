"""
The protocol parsers never raise on bytes that are not their protocol: random bytes in random
chunks, with uncaptured gaps, only give exchanges or counted losses. (Each parser's test module
also feeds it mutated valid conversations.)
"""
from hypothesis import given, settings
from hypothesis import strategies as st

from telegen.protocols.http2 import Http2Parser
from telegen.protocols.mysql import MySQLParser
from telegen.protocols.postgres import PostgresParser
from telegen.protocols.redis import RedisParser

chunks = st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=64)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(chunks)
def test_random_bytes(stream):
    for make_parser in (PostgresParser, MySQLParser, RedisParser, Http2Parser):
        parser = make_parser(limit=256)
        for i, (from_client, data) in enumerate(stream):
            for ex in parser.feed(from_client, data, i, gap=i % 3):
                assert ex.start_ns <= ex.end_ns
