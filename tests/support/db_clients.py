"""
Client sessions the database tests drive the same way whether the bytes go through the recording
relay (tests/integration/test_protocols_*.py) or are captured by the agent's kernel programs
(tests/integration/test_ebpf_db_agent.py).
"""
import mysql.connector
import pytest


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
