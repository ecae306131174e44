"""
OTLP/gRPC sender on grpcio's future API, bridged to the reactor.

Why futures + callFromThread: it works with the default reactor (no asyncio loop), the I/O runs
in grpcio's C core off the reactor thread, and the result comes back to the reactor as a Deferred.
(grpcio compresses the message inside future(), on the calling thread: 3-4 ms of gzip at zlib
level 6 for a 512-span batch here, which grpcio does not let us lower; see bench/README.md, "eBPF".)
Channel reconnect backoff is capped low so a collector that comes back is reached again within
seconds instead of grpcio's default two minutes.
"""
import ssl

import grpc
from google.rpc import error_details_pb2, status_pb2
from twisted.internet.defer import Deferred
from zope.interface import implementer

from telegen.contracts import ISender
from telegen.export.retry import RETRYABLE, SUCCESS, Outcome, grpc_outcome

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


def fetch_server_certificate(address, timeout):
    """
    The PEM certificate the server at host:port presents, unverified, and a DNS/IP name in it.
    Blocking: run it in a thread.
    """
    from cryptography import x509

    host, port = address.rsplit(":", 1)
    pem = ssl.get_server_certificate((host.strip("[]"), int(port)), timeout=timeout)
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    common = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]
    return pem.encode("ascii"), (names + common + [host])[0]


@implementer(ISender)
class GrpcSender:
    """
    Sends one signal's export requests to one gRPC target.

    otlp.tls.insecure_skip_verify: grpcio cannot skip verification, so the sender fetches the
    certificate the server presents (in a thread, unverified) and trusts exactly that one, with the
    name check pointed at a name it carries. When a handshake later fails (the server changed its
    certificate) the channel is dropped and the certificate fetched again on the next request.
    """

    def __init__(self, target, kind, otlp, reactor):
        self.target = target
        self.kind = kind
        self._reactor = reactor
        self._timeout = otlp["timeout"]
        self._tls = otlp["tls"]
        self._metadata = tuple((k.lower(), v) for k, v in otlp["headers"].items())
        self._compression = grpc.Compression.Gzip if otlp["compression"] == "gzip" else grpc.Compression.NoCompression
        self._pinned = target.tls and self._tls["insecure_skip_verify"]
        self._channel = self._export = None
        if not self._pinned:
            credentials = channel_credentials(self._tls) if target.tls else None
            self._open(credentials, [])

    def _open(self, credentials, extra_options):
        options = list(_CHANNEL_OPTIONS) + extra_options
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target.address, options)
        else:
            self._channel = grpc.secure_channel(self.target.address, credentials, options)
        # Requests arrive already encoded (wire.py), so they pass through without a serializer.
        self._export = self._channel.unary_unary(self.kind.grpc_method, request_serializer=None,
                                                 response_deserializer=self.kind.response_cls.FromString)

    def _open_pinned(self, fetched):
        if self._export is not None:  # another request fetched it first
            return
        pem, name = fetched
        credentials = grpc.ssl_channel_credentials(root_certificates=pem, private_key=_read(self._tls["key_file"]),
                                                   certificate_chain=_read(self._tls["cert_file"]))
        self._open(credentials, [("grpc.ssl_target_name_override", name)])

    def send(self, payload):
        """Export the encoded request `payload`; fires with an Outcome (never errbacks)."""
        if self._export is None:
            from twisted.internet.threads import deferToThreadPool
            d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fetch_server_certificate,
                                  self.target.address, self._timeout)
            d.addCallback(self._open_pinned)
            d.addCallbacks(lambda _: self.send(payload), self._fetch_failed)
            return d
        d = Deferred()
        future = self._export.future(payload, timeout=self._timeout, metadata=self._metadata,
                                     compression=self._compression)
        future.add_done_callback(lambda f: self._reactor.callFromThread(self._done, f, d))
        return d

    @staticmethod
    def _fetch_failed(failure):
        reason = short_reason(str(failure.value)) or "connection failed"
        return Outcome(RETRYABLE, "unreachable", False, reason, reason.replace(" ", "_"))

    def _done(self, future, d):
        error = future.exception()
        if error is None:
            partial = future.result().partial_success
            d.callback(Outcome(SUCCESS, "OK", True, rejected=getattr(partial, self.kind.rejected_field),
                               message=partial.error_message))
            return
        outcome = outcome_from_error(error)
        if self._pinned and outcome.error == "tls handshake failed":
            self.close()
        d.callback(outcome)

    def close(self):
        """Close the channel (cancels calls in flight)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = self._export = None
