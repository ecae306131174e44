"""
Database client spans over TLS, end to end, in both capture modes: Debian's PostgreSQL with
ssl=on, MariaDB with a certificate and redis-server on a tls-port (one self-signed certificate),
driven from this test process by psycopg (sslmode=require: libpq's SSLRequest in clear, then TLS
on the same socket, through the libssl psycopg[binary] vendors), PyMySQL (its SSL request packet
after the greeting, then Python's ssl) and redis-py (ssl=True, TLS from the first byte).

The OpenSSL uprobes hand the plaintext to the stream parser of the connection the kernel
classified from its clear start (PostgreSQL, MySQL), or classify it from the plaintext's first
bytes (Redis); the ciphertext is no longer sent once the connection is tied to its SSL*. So the
spans are exactly those of the same session in clear, and the decoders lose nothing (no
`encrypted`, no `gap`, no `desync`).
"""
import ssl

import pytest
import redis

from tests.support.db_agent import (
    CLIENT, exactly, facts, postgres_session_spans, redis_spans_from_select, running_agent, settled_losses)
from tests.support.db_clients import (
    MYSQL_SESSION_SPANS, REDIS_SESSION_SPANS, mysql_session, postgres_session, redis_session)
from tests.support.db_servers import MariaDB, Postgres, Redis, server_fixture
from tests.support.http_apps import self_signed

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

postgres = server_fixture(Postgres, tls=True)
mariadb = server_fixture(MariaDB, tls=True)
redis_server = server_fixture(Redis, tls=True)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module", params=["socket", "syscalls"])
def agent(request, tmp_path_factory, postgres, mariadb, redis_server):
    yield from running_agent(request.param, str(tmp_path_factory.mktemp(f"agent-{request.param}")),
                             postgres, mariadb, redis_server)


def test_postgresql_over_tls_gives_the_exact_spans_and_loses_nothing(agent, postgres):
    assert postgres_session(postgres.port, sslmode="require")
    postgres_session_spans(agent, postgres.port)
    assert settled_losses(agent, "postgresql") == {}
    [http_probe] = [p for p in agent.get("/status/ebpf").json()["probes"] if p["name"] == "http"]
    libraries = [lib["path"] for lib in http_probe["tls"]["libraries"]]
    assert any("psycopg_binary.libs/libssl-" in path for path in libraries), libraries     # the wheel's own copy


def test_mariadb_over_tls_gives_the_exact_spans_and_loses_nothing(agent, mariadb):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    mysql_session(mariadb.port, ssl=context)
    spans = exactly(agent, "mariadb", mariadb.port, 6)
    assert facts(spans) == MYSQL_SESSION_SPANS
    assert all(s.kind == CLIENT for _, _, s in spans)
    assert settled_losses(agent, "mysql") == {}


def test_redis_over_tls_gives_the_exact_spans_and_loses_nothing(agent, redis_server):
    redis_session(redis.Redis(host="127.0.0.1", port=redis_server.port, db=1, ssl=True, ssl_cert_reqs=None))
    assert redis_spans_from_select(agent, redis_server.port, 7) == REDIS_SESSION_SPANS
    assert settled_losses(agent, "redis") == {}
