# -*- test-case-name: tests.unit.test_protocols_semconv -*-
"""
A DbExchange as the stable database semantic conventions describe it: span name, kind CLIENT,
attributes, status, and the attribute set of the db.client.operation.duration histogram.

Span name: `{db.operation.name} {db.collection.name}` (`SELECT orders`), the operation alone when
there is no collection (`BEGIN`, Redis `GET`), else the namespace, else `db.system.name`.
db.query.text is the statement with literals replaced by `?` (telegen.protocols.sql), except text
sent with bound parameters, which the conventions keep as sent; Redis keeps the command and its key
and replaces the other arguments. With query_text off there is no db.query.text at all, and no
status description either (an error message can quote a value).
"""
import re
from dataclasses import dataclass
from functools import lru_cache

from telegen.protocols.sql import operation_and_collection, sanitize

SPAN_KIND_CLIENT = 3                       # OTLP Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2          # OTLP Status.StatusCode
METRIC = "db.client.operation.duration"    # histogram, seconds
_CACHED_TEXT = 2048                        # statements up to this length have their facts cached
_METRIC_KEYS = ("db.system.name", "db.namespace", "db.operation.name", "db.collection.name",
                "db.response.status_code", "error.type", "server.address", "server.port")


@dataclass(frozen=True, slots=True)
class DbSpan:
    name: str
    kind: int
    attributes: dict
    status: int
    status_message: str
    start_ns: int
    end_ns: int


def span_of(ex, server_address=None, server_port=None, query_text=True):
    """The span of one exchange (see the module docstring); server_* come from the connection."""
    if ex.system == "redis":
        operation, collection = ex.command, None
    elif ex.query is not None:
        operation, collection, _ = _sql_facts(ex.query, ex.system)
    else:
        operation = collection = None       # a statement prepared before the capture began
    attrs = {"db.system.name": ex.system}
    if ex.namespace is not None:
        attrs["db.namespace"] = ex.namespace
    if operation:
        attrs["db.operation.name"] = operation
    if collection:
        attrs["db.collection.name"] = collection
    if query_text and ex.query is not None:
        attrs["db.query.text"] = query_text_of(ex)
    if ex.failed:
        code = ex.error_code or "_OTHER"
        attrs["db.response.status_code"] = code
        attrs["error.type"] = code
    if server_address is not None:
        attrs["server.address"] = server_address
    if server_port is not None:
        attrs["server.port"] = server_port
    if operation and collection:
        name = f"{operation} {collection}"
    else:
        name = operation or ex.namespace or ex.system
    message = (ex.error_message or "") if ex.failed and query_text else ""
    return DbSpan(name, SPAN_KIND_CLIENT, attrs, STATUS_ERROR if ex.failed else STATUS_UNSET, message,
                  ex.start_ns, ex.end_ns)


def query_text_of(ex):
    """db.query.text of an exchange: sanitized unless sent with bound parameters."""
    if ex.system == "redis":
        words = ex.query.split(" ")
        return " ".join(words[:2] + ["?"] * (len(words) - 2))
    if ex.parameterized:
        return ex.query
    return _sql_facts(ex.query, ex.system)[2]


def statement_shape(sql):
    """
    `sql` with its integer literals replaced by `?` where that cannot change what the conventions
    take from it (operation, collection, sanitized text): statements built with literals (pgbench
    -S, ORMs that inline ids) then share one cache entry and one span template instead of a
    tokenizer pass each. Text with quotes, `$`, backslashes or comment marks is left as it is
    (there a digit may be inside a string or comment): sanitized the long way.
    """
    if _CONTEXTUAL.search(sql):
        return sql
    return _INTEGER.sub("?", sql)


_CONTEXTUAL = re.compile(r"['\"`$\\#/-]")
_INTEGER = re.compile(r"(?<![\w.?:])\d+(?![\w.])")


def _sql_facts(sql, system):
    """(operation, collection, sanitized text): applications repeat their statements, so short
    ones are worked out once (the cache holds at most 4096 x 2 KiB of text)."""
    if len(sql) <= _CACHED_TEXT:
        return _cached_facts(statement_shape(sql), system)
    return _facts(sql, system)


def _facts(sql, system):
    return operation_and_collection(sql, system) + (sanitize(sql, system),)


_cached_facts = lru_cache(maxsize=4096)(_facts)


def metric_attributes(span):
    """The db.client.operation.duration attributes of a span (never db.query.text: unbounded)."""
    return {k: span.attributes[k] for k in _METRIC_KEYS if k in span.attributes}


def duration_seconds(span):
    return (span.end_ns - span.start_ns) / 1e9
