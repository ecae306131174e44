"""
Client sessions the database tests drive the same way whether the bytes go through the recording
relay (tests/integration/test_protocols_*.py) or are captured by the agent's kernel programs
(tests/integration/test_ebpf_db_agent.py).
"""
import mysql.connector
import psycopg
import pymysql
import pytest
import redis


def mysql_prepared_session(port, ids):
    """mysql-connector (pure Python, no TLS) with server-side prepared statements: one SELECT per
    id in `ids`, then a PREPARE that fails (no such table)."""
    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="telegen", password="telegen",
                                   database="telegen", use_pure=True, ssl_disabled=True, autocommit=True)
    cur = conn.cursor(prepared=True)
    for i in ids:
        cur.execute("SELECT name FROM orders WHERE id = %s", (i,))
        cur.fetchall()
    with pytest.raises(mysql.connector.errors.ProgrammingError):
        cur.execute("SELECT name FROM nope WHERE id = %s", (1,))
    cur.close()
    conn.close()


# The spans of redis_session() from its SELECT on (redis-py's connection set-up comes before).
REDIS_SESSION_SPANS = [
    ("SELECT", "SELECT 1", "1", None),
    ("SET", "SET order:1 ?", "1", None),
    ("GET", "GET order:1", "1", None),
    ("INCRBY", "INCRBY order:1 ?", "1", "ERR"),
    ("HSET", "HSET h ? ?", "1", None),
    ("HGET", "HGET h ?", "1", None),
    ("DEL", "DEL h", "1", None),
]


def redis_session(client):
    """redis-py `client` (db=1): SET, GET, an INCR that fails, a pipeline of three; closed after."""
    client.set("order:1", "new")
    assert client.get("order:1") == b"new"
    with pytest.raises(redis.ResponseError):
        client.incr("order:1")
    pipe = client.pipeline(transaction=False)
    pipe.hset("h", "x", 1).hget("h", "x").delete("h")
    assert pipe.execute() == [1, b"1", 1]
    client.close()


# The spans of postgres_session(), in order (executemany: one each).
POSTGRES_SESSION_SPANS = [
    ("CREATE orders", "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)", "telegen", None),
    ("DELETE orders", "DELETE FROM orders", "telegen", None),
    *[("INSERT orders", "INSERT INTO orders VALUES ($1, $2)", "telegen", None)] * 3,
    ("SELECT orders", "SELECT name FROM orders WHERE id = $1", "telegen", None),
    ("SELECT nope", "SELECT * FROM nope", "telegen", "42P01"),
]


def postgres_session(port, sslmode):
    """psycopg on database `telegen`: a table made and emptied, three inserts, a select, one failing; whether TLS was used."""
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="telegen",
                         sslmode=sslmode, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)")
        conn.execute("DELETE FROM orders")
        conn.cursor().executemany("INSERT INTO orders VALUES (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        assert conn.execute("SELECT name FROM orders WHERE id = %s", (2,)).fetchall() == [("b",)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
        return conn.pgconn.ssl_in_use


# The spans of mysql_session(), in order (PyMySQL opens with SET NAMES).
MYSQL_SESSION_SPANS = [
    ("SET", "SET NAMES utf8mb4", "telegen", None),
    ("CREATE orders", "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)", "telegen", None),
    ("DELETE orders", "DELETE FROM orders", "telegen", None),
    ("INSERT orders", "INSERT INTO orders VALUES (?, ?), (?, ?)", "telegen", None),
    ("SELECT orders", "SELECT name FROM orders WHERE id > ?", "telegen", None),
    ("SELECT nope", "SELECT * FROM nope", "telegen", "1146"),
]


def mysql_session(port, ssl=None):
    """PyMySQL (over TLS with an ssl.SSLContext): a table made and emptied, an insert, a select, one failing."""
    conn = pymysql.connect(host="127.0.0.1", port=port, user="telegen", password="telegen",
                           database="telegen", autocommit=True, ssl=ssl)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, name text)")
        cur.execute("DELETE FROM orders")
        cur.execute("INSERT INTO orders VALUES (%s, %s), (2, 'b')", (1, "a"))
        cur.execute("SELECT name FROM orders WHERE id > 1")
        assert cur.fetchall() == (("b",),)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM nope")
    conn.close()
