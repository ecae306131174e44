"""
A real OTLP receiver for tests: a grpcio server and an HTTP server on 127.0.0.1, built on the
official opentelemetry-proto stubs, storing every decoded export request.

Why: the export pipeline must be proven against servers that speak OTLP exactly as a collector
does (status codes, gzip, Retry-After, RetryInfo, partial success, TLS), not against fakes.
Both servers run in threads so tests on the reactor thread can drive the agent while the
receiver answers. Responses are programmable with `script()`; `restart()` reopens the same ports
so "collector went away and came back" can be tested.
"""
import datetime
import gzip
import http.server
import ipaddress
import os
import socket
import ssl
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Optional

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2, profiles_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

SIGNALS = {
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
    "profiles": (profiles_service_pb2.ExportProfilesServiceRequest, profiles_service_pb2.ExportProfilesServiceResponse,
                 "rejected_profiles"),
}
# The URL path of each signal on OTLP/HTTP (profiles are still v1development).
HTTP_PATHS = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs",
              "/v1development/profiles": "profiles"}

_HTTP_REASONS = {200: "OK", 400: "Bad Request", 413: "Payload Too Large", 429: "Too Many Requests",
                 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                 504: "Gateway Timeout"}


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.01, message="condition"):
    """Poll predicate() until it is truthy; return its value or raise AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def attrs_dict(key_values):
    """A KeyValue list as a plain dict of Python values (strings, ints, floats, bools)."""
    out = {}
    for kv in key_values:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@dataclass
class Reply:
    """
    One programmed answer. Defaults mean success. `grpc_code` is a grpc.StatusCode; `http_status`
    an int; `retry_after` seconds (HTTP Retry-After header); `retry_delay` seconds (gRPC RetryInfo);
    `rejected`/`error_message` fill partial_success; `signal` limits the reply to one signal;
    `delay` makes the server sleep before answering (for timeouts).
    """

    grpc_code: Optional[grpc.StatusCode] = None
    http_status: int = 200
    retry_after: Optional[str] = None
    retry_delay: Optional[float] = None
    rejected: int = 0
    error_message: str = ""
    signal: Optional[str] = None
    delay: float = 0.0


@dataclass
class Received:
    """One export request as the receiver saw it."""

    signal: str
    transport: str  # "grpc" or "http"
    request: object
    headers: dict
    compressed: Optional[bool]  # None over gRPC: grpcio does not tell the servicer
    reply: Reply = field(default_factory=Reply)
    at: float = field(default_factory=time.monotonic)  # arrival, for Retry-After/backoff gaps


@dataclass
class TlsMaterial:
    """PEM files of a CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""

    ca_file: str
    server_cert_file: str
    server_key_file: str
    client_cert_file: str
    client_key_file: str

    def read(self, name):
        with open(getattr(self, name), "rb") as f:
            return f.read()


def make_tls(directory):
    """Generate a throwaway CA plus server and client certificates under `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject, issuer, pub):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key = key()
    ca_name = name("telegen test CA")
    ca_cert = (builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn, usage, san):
        k = key()
        b = builder(name(cn), ca_name, k.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = leaf("telegen test client", ExtendedKeyUsageOID.CLIENT_AUTH, None)

    os.makedirs(directory, exist_ok=True)
    paths = {}
    for label, obj in (("ca_file", ca_cert), ("server_cert_file", server_cert), ("client_cert_file", client_cert),
                       ("server_key_file", server_key), ("client_key_file", client_key)):
        path = os.path.join(str(directory), label.replace("_file", ".pem"))
        if label.endswith("key_file"):
            data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        with open(path, "wb") as f:
            f.write(data)
        paths[label] = path
    return TlsMaterial(**paths)


class _GrpcServicer(trace_service_pb2_grpc.TraceServiceServicer,
                    metrics_service_pb2_grpc.MetricsServiceServicer,
                    logs_service_pb2_grpc.LogsServiceServicer,
                  profiles_service_pb2_grpc.ProfilesServiceServicer):
    """One servicer for the four services; the signal comes from the request type."""

    _BY_TYPE = {cls: signal for signal, (cls, _, _) in SIGNALS.items()}

    def __init__(self, receiver):
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        signal = self._BY_TYPE[type(request)]
        headers = {k: v for k, v in context.invocation_metadata()}
        # grpcio decompresses before the servicer and hides grpc-encoding: unknown here.
        compressed = None
        reply = self.receiver._record(signal, "grpc", request, headers, compressed)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.grpc_code is not None and reply.grpc_code != grpc.StatusCode.OK:
            if reply.retry_delay is not None:
                status = status_pb2.Status(code=reply.grpc_code.value[0], message=reply.error_message or "programmed")
                info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                    seconds=int(reply.retry_delay), nanos=int((reply.retry_delay % 1) * 1e9)))
                status.details.add().Pack(info)
                context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(reply.grpc_code, reply.error_message or "programmed failure")
        return self.receiver._response(signal, reply)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    """OTLP/HTTP binary protobuf on /v1/traces|metrics|logs and /v1development/profiles."""

    protocol_version = "HTTP/1.1"
    receiver = None  # set per server class

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.receiver._connections.add(self.connection)

    def finish(self):
        self.receiver._connections.discard(self.connection)
        super().finish()

    def do_POST(self):  # noqa: N802 (BaseHTTPRequestHandler hook)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        signal = HTTP_PATHS.get(self.path)
        if signal not in SIGNALS or self.headers.get("Content-Type") != "application/x-protobuf":
            return self._send(404 if signal not in SIGNALS else 415, b"")
        compressed = self.headers.get("Content-Encoding") == "gzip"
        if compressed:
            body = gzip.decompress(body)
        request = SIGNALS[signal][0].FromString(body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.receiver._record(signal, "http", request, headers, compressed)
        if reply.delay:
            time.sleep(reply.delay)
        extra = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        if reply.http_status != 200:
            status = status_pb2.Status(code=14, message=reply.error_message or "programmed failure")
            return self._send(reply.http_status, status.SerializeToString(), extra)
        return self._send(200, self.receiver._response(signal, reply).SerializeToString(), extra)

    def _send(self, code, body, extra=None):
        self.send_response(code, _HTTP_REASONS.get(code))
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _QuietHttpServer(http.server.ThreadingHTTPServer):
    """Clients that time out or go away mid-answer are normal in these tests: no traceback spam."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class OtlpReceiver:
    """
    gRPC + HTTP OTLP receiver on 127.0.0.1.

    `tls`: a TlsMaterial to serve TLS on both ports; `require_client_cert` turns on mTLS.
    Ports are chosen free at the first start and kept across restart().
    """

    def __init__(self, tls=None, require_client_cert=False):
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.grpc_port = None
        self.http_port = None
        self.received = []
        self._replies = []
        self._lock = threading.Lock()
        self._grpc = None
        self._http = None
        self._http_thread = None
        self._connections = set()  # open HTTP connections, closed by stop() like a dying collector

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Start both servers (on the same ports as before if restarted)."""
        self._start_grpc()
        self._start_http()
        return self

    def stop(self):
        """Stop both servers; connections are closed, ports released."""
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._http_thread.join(5)
            self._http = None

    def restart(self):
        """Stop then start again on the same ports."""
        self.stop()
        return self.start()

    def _start_grpc(self):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                             options=[("grpc.so_reuseport", 0)])
        servicer = _GrpcServicer(self)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(servicer, server)
        profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(servicer, server)
        address = f"127.0.0.1:{self.grpc_port or 0}"
        if self.tls:
            creds = grpc.ssl_server_credentials(
                [(self.tls.read("server_key_file"), self.tls.read("server_cert_file"))],
                root_certificates=self.tls.read("ca_file") if self.require_client_cert else None,
                require_client_auth=self.require_client_cert)
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"cannot bind gRPC receiver on {address}")
        self.grpc_port = port
        server.start()
        self._grpc = server

    def _start_http(self):
        handler = type("Handler", (_HttpHandler,), {"receiver": self})
        server = _QuietHttpServer(("127.0.0.1", self.http_port or 0), handler)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls.server_cert_file, self.tls.server_key_file)
            if self.require_client_cert:
                ctx.load_verify_locations(self.tls.ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.http_port = server.server_address[1]
        self._http = server
        self._http_thread = threading.Thread(target=server.serve_forever, name="otlp-http-receiver", daemon=True)
        self._http_thread.start()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def grpc_endpoint(self):
        """host:port for otlp.endpoint with protocol grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self):
        """Base URL for otlp.endpoint with protocol http."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def endpoint(self, protocol):
        """The endpoint string for `protocol` ("grpc" or "http")."""
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    # -- programmable answers ----------------------------------------------------------------

    def script(self, *replies):
        """Queue replies, used one per matching request in order; then success again."""
        with self._lock:
            self._replies.extend(replies)

    def clear(self):
        """Forget received requests and pending replies."""
        with self._lock:
            self.received.clear()
            self._replies.clear()

    def _record(self, signal, transport, request, headers, compressed):
        with self._lock:
            reply = Reply()
            for i, candidate in enumerate(self._replies):
                if candidate.signal in (None, signal):
                    reply = self._replies.pop(i)
                    break
            self.received.append(Received(signal, transport, request, headers, compressed, reply))
            return reply

    @staticmethod
    def _response(signal, reply):
        _, response_cls, field_name = SIGNALS[signal]
        response = response_cls()
        if reply.rejected or reply.error_message:
            setattr(response.partial_success, field_name, reply.rejected)
            response.partial_success.error_message = reply.error_message
        return response

    # -- what arrived ------------------------------------------------------------------------

    def requests(self, signal=None, accepted_only=True):
        """Received requests (of `signal`), by default only those answered with success."""
        with self._lock:
            items = list(self.received)
        return [r for r in items
                if (signal is None or r.signal == signal)
                and (not accepted_only or (r.reply.http_status == 200 and r.reply.grpc_code in (None, grpc.StatusCode.OK)))]

    def spans(self, accepted_only=True):
        """Flattened [(resource_attrs dict, Span)] of every accepted traces request."""
        return [(attrs_dict(rs.resource.attributes), span)
                for r in self.requests("traces", accepted_only)
                for rs in r.request.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def metrics(self, accepted_only=True):
        """Flattened [(resource_attrs dict, Metric)] of every accepted metrics request."""
        return [(attrs_dict(rm.resource.attributes), metric)
                for r in self.requests("metrics", accepted_only)
                for rm in r.request.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics]

    def logs(self, accepted_only=True):
        """Flattened [(resource_attrs dict, LogRecord)] of every accepted logs request."""
        return [(attrs_dict(rl.resource.attributes), record)
                for r in self.requests("logs", accepted_only)
                for rl in r.request.resource_logs for sl in rl.scope_logs for record in sl.log_records]

    def profiles(self, accepted_only=True):
        """Flattened [(resource_attrs dict, Profile, the request's ProfilesDictionary)] of every accepted profiles request."""
        return [(attrs_dict(rp.resource.attributes), profile, r.request.dictionary)
                for r in self.requests("profiles", accepted_only)
                for rp in r.request.resource_profiles for sp in rp.scope_profiles for profile in sp.profiles]

    def wait_for(self, predicate, timeout=10.0, message="receiver condition"):
        """Poll predicate(self) until truthy (see module-level wait_for)."""
        return wait_for(lambda: predicate(self), timeout, message=message)
