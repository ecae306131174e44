"""
Database wire protocols seen from the bytes of a connection: PostgreSQL, MySQL/MariaDB, Redis.

Each protocol is three parts the L7 capture framework (telegen/ebpf/) plugs together: a classifier
over the first bytes of a connection (the kernel rule, `classify_*`), a stateful per-connection
parser fed each direction's bytes as they arrive (`*Parser.feed`, giving DbExchange records), and
the semantic-convention mapping of an exchange to a span (telegen.protocols.semconv). Nothing here
touches the kernel or the network: it is pure byte handling, tested against real servers through
a TCP relay (docs/protocols.md).
"""
