# -*- test-case-name: tests.unit.test_http_signals -*-
"""
The records a protocol's decoder hands to the signals: one per observed exchange. Neutral
(telegen.l7): the capture builds them, telegen.signals turns them into spans and metrics.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(slots=True)
class HttpExchange:
    """One observed request and its response, times in ns since the epoch."""

    server_side: bool
    pid: int
    start_ns: int
    end_ns: int
    method: str
    target: str
    version: str
    headers: dict                    # request headers the parser kept (bytes keys/values)
    request_body_size: Optional[int]
    status: Optional[int]
    response_body_size: Optional[int]
    peer_address: Optional[str]
    peer_port: Optional[int]
    local_address: Optional[str]
    local_port: Optional[int]
    tls: bool = False                # over TLS (url.scheme https)

    @classmethod
    def of(cls, conn, request, status, response_body_size, start_ns, end_ns):
        """The exchange HttpDecoder reports as parts (see its on_exchange)."""
        return cls(conn.server_side, conn.pid, start_ns, end_ns, request.first, request.second, request.version,
                   request.headers, request.content_length, status, response_body_size,
                   conn.peer, conn.peer_port, conn.local, conn.local_port, conn.tls)
