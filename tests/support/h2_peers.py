"""
HTTP/2 peers for the HTTP/2 parser's tests (telegen/protocols/http2.py):

- Conversation: the `h2` library's client and server connected in memory, each flush of one side
  recorded as one chunk (from_client, bytes, ts_ns), so unit tests get real HPACK encoder output
  (dynamic table, Huffman) in conversations they script stream by stream.
- H2Server: a threaded HTTP/2 server on loopback (h2c prior knowledge and h2c Upgrade, which
  nginx does not do) answering GET with a small body and POST with the body's size.
"""
import socket
import threading

import h2.config
import h2.connection
import h2.events

UPGRADE_RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


class Conversation:
    """A client and a server talking in memory; `chunks` is what the wire carried, in order."""

    def __init__(self, start=True):
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.chunks = []
        self.received = []            # the server's events
        self._ts = 0
        if start:
            self.client.initiate_connection()
            self.flush_client()
            self.server.initiate_connection()
            self.flush_server()
            self.flush_client()       # the SETTINGS ACK

    def _record(self, from_client, data):
        self._ts += 1
        self.chunks.append((from_client, data, self._ts))

    def raw(self, from_client, data):
        """Bytes one side writes by hand (HTTP/1.1 heads of an upgrade)."""
        self._record(from_client, data)

    def flush_client(self):
        data = self.client.data_to_send()
        if data:
            self._record(True, data)
            self.received += self.server.receive_data(data)
        return data

    def flush_server(self):
        data = self.server.data_to_send()
        if data:
            self._record(False, data)
            self.client.receive_data(data)
        return data

    def request(self, path, method="GET", body=None, headers=(), flush=True):
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                       (":authority", "example.test"), *headers], end_stream=body is None)
        if body is not None:
            self.client.send_data(sid, body, end_stream=True)
        if flush:
            self.flush_client()
        return sid

    def respond(self, sid, status=200, body=b"", headers=(), trailers=None, flush=True):
        self.server.send_headers(sid, [(":status", str(status)), *headers],
                                 end_stream=not body and trailers is None)
        size = self.server.max_outbound_frame_size
        for at in range(0, len(body), size):
            self.server.send_data(sid, body[at:at + size], end_stream=trailers is None and at + size >= len(body))
        if trailers is not None:
            self.server.send_headers(sid, list(trailers), end_stream=True)
        if flush:
            self.flush_server()


def _serve_connection(sock):
    """One connection: prior knowledge, or an HTTP/1.1 request with Upgrade: h2c answered with 101."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    bodies = {}

    def answer(sid, body):
        text = str(len(body)).encode() if body else b"hello over h2\n"
        conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain"), ("content-length", str(len(text)))])
        conn.send_data(sid, text, end_stream=True)

    first = sock.recv(65536)
    events = []
    if first.startswith(b"PRI "):
        conn.initiate_connection()
        events = conn.receive_data(first)
    else:
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        lines = first.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
        sock.sendall(UPGRADE_RESPONSE)
        conn.initiate_upgrade_connection(fields[b"http2-settings"])
        answer(1, b"")                # stream 1 is the upgraded request, complete already
    while True:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                answer(event.stream_id, bodies.pop(event.stream_id))
        data = conn.data_to_send()
        if data:
            sock.sendall(data)
        chunk = sock.recv(65536)
        if not chunk:
            return
        events = conn.receive_data(chunk)


class H2Server:
    """H2Server().start(); .port; close(). One thread per connection."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._threads = []

    def start(self):
        thread = threading.Thread(target=self._accept, name="h2-server", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._run, args=(sock,), name="h2-server-conn", daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _run(sock):
        try:
            _serve_connection(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def grpc_server():
    """A grpcio server on a free loopback port (call .stop(None) when done) with generic handlers of
    raw bytes, no generated code: demo.Echo/Unary (the request back), demo.Echo/Stream (three
    messages) and demo.Echo/Fail (NOT_FOUND, "no such item"). Returns (server, port)."""
    from concurrent import futures

    import grpc

    def unary(request, context):
        return request

    def stream(request, context):
        for i in range(3):
            yield request + bytes([i])

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

    handler = grpc.method_handlers_generic_handler("demo.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
