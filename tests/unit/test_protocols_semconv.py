"""
SQL sanitizing, operation and collection extraction, and the mapping of exchanges to spans and
db.client.operation.duration attributes per the stable database conventions.
"""
import pytest

from telegen.protocols.common import DbExchange
from telegen.protocols.semconv import (
    SPAN_KIND_CLIENT, STATUS_ERROR, STATUS_UNSET, _facts, duration_seconds, metric_attributes, span_of, statement_shape)
from telegen.protocols.sql import operation_and_collection, sanitize


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM orders WHERE id = 1 AND name = 'bob'", "SELECT * FROM orders WHERE id = ? AND name = ?"),
    ("SELECT 'it''s', E'a\\'b', $$body$$, $t$ x $t$, 1.5e3, .5, x'ff', TRUE, NULL FROM t",
     "SELECT ?, ?, ?, ?, ?, ?, ?, ?, NULL FROM t"),
    ("SELECT t1.c2, \"Col 1\" FROM t1 WHERE a = $1 AND b = -42", "SELECT t1.c2, \"Col 1\" FROM t1 WHERE a = $1 AND b = -?"),
    ("/* app=shop */ SELECT 1 -- trailing\n", "SELECT ?"),
])
def test_sanitize_postgresql(sql, expected):
    assert sanitize(sql, "postgresql") == expected


def test_sanitize_mysql_strings_comments_and_hex():
    assert sanitize("SELECT \"secret\", 'it\\'s', `id` FROM t # note\nWHERE a=0x1F AND b IN (1, 2)", "mysql") == \
        "SELECT ?, ?, `id` FROM t  \nWHERE a=? AND b IN (?, ?)"


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM orders WHERE id = 1", ("SELECT", "orders")),
    ("select a from public.orders o join items i on true", ("SELECT", "public.orders")),
    ('INSERT INTO "Orders" VALUES ($1)', ("INSERT", '"Orders"')),
    ("UPDATE orders SET a = 1", ("UPDATE", "orders")),
    ("DELETE FROM orders", ("DELETE", "orders")),
    ("CREATE TABLE IF NOT EXISTS orders (id int)", ("CREATE", "orders")),
    ("CREATE FUNCTION f() RETURNS int", ("CREATE", None)),
    ("DROP TABLE orders", ("DROP", "orders")),
    ("TRUNCATE TABLE orders", ("TRUNCATE", "orders")),
    ("SELECT * FROM (SELECT 1) x", ("SELECT", None)),
    ("/* c */ (SELECT 1 FROM t)", ("SELECT", "t")),
    ("BEGIN", ("BEGIN", None)),
    ("", (None, None)),
])
def test_operation_and_collection(sql, expected):
    assert operation_and_collection(sql) == expected


def exchange(**kw):
    base = dict(system="postgresql", query="SELECT * FROM orders WHERE id = 7", namespace="shop",
                start_ns=1_000_000_000, end_ns=1_250_000_000)
    base.update(kw)
    return DbExchange(**base)


def test_select_span():
    span = span_of(exchange(), "127.0.0.1", 5432)
    assert (span.name, span.kind, span.status, span.status_message) == ("SELECT orders", SPAN_KIND_CLIENT, STATUS_UNSET, "")
    assert span.attributes == {
        "db.system.name": "postgresql", "db.namespace": "shop", "db.operation.name": "SELECT",
        "db.collection.name": "orders", "db.query.text": "SELECT * FROM orders WHERE id = ?",
        "server.address": "127.0.0.1", "server.port": 5432}
    assert duration_seconds(span) == 0.25
    assert "db.query.text" not in metric_attributes(span)
    assert metric_attributes(span)["db.operation.name"] == "SELECT"


def test_error_span_and_query_text_off():
    ex = exchange(query="SELECT * FROM nope", error_code="42P01", error_message='relation "nope" does not exist')
    span = span_of(ex, query_text=False)
    assert span.status == STATUS_ERROR and span.status_message == ""
    assert span.attributes["db.response.status_code"] == "42P01" == span.attributes["error.type"]
    assert "db.query.text" not in span.attributes
    assert metric_attributes(span)["error.type"] == "42P01"
    assert span_of(ex).status_message == 'relation "nope" does not exist'


def test_parameterized_text_is_kept_and_unknown_statement_named_by_namespace():
    assert span_of(exchange(query="SELECT * FROM t WHERE a = $1 AND b = 3", parameterized=True)).attributes[
        "db.query.text"] == "SELECT * FROM t WHERE a = $1 AND b = 3"
    span = span_of(exchange(query=None))
    assert span.name == "shop" and "db.operation.name" not in span.attributes
    assert span_of(exchange(query=None, namespace=None)).name == "postgresql"


def test_redis_span():
    span = span_of(DbExchange("redis", "HSET h x 1 y 2", "0", 1, 2, command="HSET"), "::1", 6379)
    assert span.name == "HSET"
    assert span.attributes["db.query.text"] == "HSET h ? ? ? ?"
    assert span.attributes["db.operation.name"] == "HSET" and span.attributes["db.namespace"] == "0"
    assert "db.collection.name" not in span.attributes
    error = span_of(DbExchange("redis", "LPUSH a x", None, 1, 2, command="LPUSH", error_code="WRONGTYPE",
                               error_message="WRONGTYPE Operation against a key"))
    assert error.attributes["error.type"] == "WRONGTYPE" and error.status == STATUS_ERROR


def test_mysql_span():
    span = span_of(DbExchange("mariadb", "INSERT INTO orders VALUES (1, 'a')", "shop", 1, 2))
    assert span.name == "INSERT orders"
    assert span.attributes["db.query.text"] == "INSERT INTO orders VALUES (?, ?)"


SHAPES = [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"),
    ("SELECT * FROM t1 WHERE a = 1.5 AND b IN (1,2,3) LIMIT 10", "SELECT * FROM t1 WHERE a = 1.5 AND b IN (?,?,?) LIMIT ?"),
    ("UPDATE x SET a = 'it''s 5' WHERE id = 3", "UPDATE x SET a = 'it''s 5' WHERE id = 3"),     # a quote: as it is
    ("SELECT $1, 7", "SELECT $1, 7"),
    ("select 1e5, 0x1F, 10", "select 1e5, 0x1F, ?"),
    ("SELECT a FROM b WHERE c = :1 AND d = ?1", "SELECT a FROM b WHERE c = :1 AND d = ?1"),
    ("SELECT 1 -- 2", "SELECT 1 -- 2"),
    ("INSERT INTO t2 VALUES (1, 2)", "INSERT INTO t2 VALUES (?, ?)"),
]


def test_statement_shapes_keep_every_fact_the_conventions_take():
    """Statements differing only in integer literals share a shape, and the shape's operation,
    collection and sanitized text are the statement's own (PostgreSQL and MySQL dialects)."""
    for sql, shape in SHAPES:
        assert statement_shape(sql) == shape
        for system in ("postgresql", "mysql"):
            assert _facts(shape, system) == _facts(sql, system), sql
