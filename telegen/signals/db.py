# -*- test-case-name: tests.unit.test_db_signals -*-
"""
Database exchanges (telegen.protocols DbExchange records) -> OTLP client spans and the
db.client.operation.duration histogram, per the stable database semantic conventions as
telegen.protocols.semconv maps them (span name `SELECT orders`, db.* attributes, error.type and
db.response.status_code on errors, db.query.text sanitized or left out by configuration).

Templates are per exchange shape (the statement, its namespace, outcome and the server), so an
application repeating its statements costs a dictionary lookup per exchange, as HTTP does.
"""
from telegen.protocols.semconv import METRIC, metric_attributes, span_of, statement_shape  # noqa: F401 (METRIC: the sink's name for it)
from telegen.signals.exchanges import SpanTemplate, fixed_span

# The conventions' advice for db.client.operation.duration (seconds).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
DESCRIPTION = "Duration of database client operations."


def template_key(ex):
    """
    What spans of this exchange share (everything but times): the template's cache key. A
    statement sent with literals is keyed by its shape (integer literals as `?`), which is all its
    span keeps of it; text sent with bound parameters is kept as sent, so it keys as sent.
    """
    query = ex.query
    if query is not None and not ex.parameterized and ex.system != "redis":
        query = statement_shape(query)
    return (ex.system, query, ex.namespace, ex.command, ex.parameterized, ex.error_code, ex.error_message)


def span_template(ex, server_address, server_port, query_text):
    """(SpanTemplate, metric attributes as a hashable tuple) of an exchange's shape."""
    span = span_of(ex, server_address, server_port, query_text)
    fixed = fixed_span(span.name, False, span.attributes, error=ex.failed, message=span.status_message)
    return SpanTemplate(fixed, None), tuple(metric_attributes(span).items())
