"""
OTLP/gRPC sender on grpcio's future API, bridged to the reactor.

Why futures + callFromThread: it works with the default reactor (no asyncio loop), the encode,
compression and I/O run in grpcio's C core off the reactor thread, and the result comes back to
the reactor as a Deferred. Channel reconnect backoff is capped low so a collector that comes back
is reached again within seconds instead of grpcio's default two minutes.
"""
import grpc
from google.rpc import error_details_pb2, status_pb2
from twisted.internet.defer import Deferred

from telegen.export.retry import SUCCESS, Outcome, grpc_outcome

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),  # retries are ours, by the OTLP rules
]


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(tls_config):
    """grpc.ChannelCredentials from otlp.tls (CA, client cert/key)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_config["ca_file"]),
        private_key=_read(tls_config["key_file"]),
        certificate_chain=_read(tls_config["cert_file"]))


def short_reason(details):
    """A short, secret-free reason from grpcio's error details text."""
    text = (details or "").lower()
    for needle, reason in (("connection refused", "connection refused"),
                           ("deadline", "deadline exceeded"),
                           ("handshake", "tls handshake failed"),
                           ("ssl", "tls handshake failed"),
                           ("certificate", "tls handshake failed"),
                           ("dns", "name resolution failed"),
                           ("name resolution", "name resolution failed"),
                           ("connection reset", "connection reset"),
                           ("socket closed", "connection closed"),
                           ("failed to connect", "connection failed")):
        if needle in text:
            return reason
    return None


def _retry_info(error):
    """(has RetryInfo, delay seconds) from the grpc-status-details-bin trailer."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return True, info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return False, None


# Codes grpcio reports when the call never reached a server.
_UNREACHED_CODES = frozenset(("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"))


def outcome_from_error(error):
    """Reduce a failed call (grpc.RpcError/grpc.Future exception) to an Outcome."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    reason = short_reason(error.details())
    reached = not (name in _UNREACHED_CODES and reason is not None)
    has_info, delay = _retry_info(error)
    error_type = reason.replace(" ", "_") if reason and not reached else f"grpc_{name}"
    outcome = grpc_outcome(name, has_info, delay, reason or f"grpc {name}", error_type, reached)
    if not reached:
        outcome.status = "unreachable"
    return outcome


class GrpcSender:
    """Sends one signal's export requests to one gRPC target."""

    def __init__(self, target, kind, otlp, reactor):
        self.target = target
        self.kind = kind
        self._reactor = reactor
        self._timeout = otlp["timeout"]
        self._metadata = tuple((k.lower(), v) for k, v in otlp["headers"].items())
        self._compression = grpc.Compression.Gzip if otlp["compression"] == "gzip" else grpc.Compression.NoCompression
        options = list(_CHANNEL_OPTIONS)
        if target.tls:
            self._channel = grpc.secure_channel(target.address, channel_credentials(otlp["tls"]), options)
        else:
            self._channel = grpc.insecure_channel(target.address, options)
        # Requests arrive already encoded (wire.py), so they pass through without a serializer.
        self._export = self._channel.unary_unary(kind.grpc_method, request_serializer=None,
                                                 response_deserializer=kind.response_cls.FromString)

    def send(self, payload):
        """Export the encoded request `payload`; fires with an Outcome (never errbacks)."""
        d = Deferred()
        future = self._export.future(payload, timeout=self._timeout, metadata=self._metadata,
                                     compression=self._compression)
        future.add_done_callback(lambda f: self._reactor.callFromThread(self._done, f, d))
        return d

    def _done(self, future, d):
        error = future.exception()
        if error is None:
            partial = future.result().partial_success
            d.callback(Outcome(SUCCESS, "OK", True, rejected=getattr(partial, self.kind.rejected_field),
                               message=partial.error_message))
        else:
            d.callback(outcome_from_error(error))

    def close(self):
        """Close the channel (cancels calls in flight)."""
        self._channel.close()
