"""
A TCP relay for protocol tests: listens on loopback, forwards each accepted connection to a real
server, and records every chunk each direction carried, in the order the relay saw them.

The recorded chunks are exactly what recv() returned, so a parser fed from them sees the real
bytes in real chunking (a client's request is recorded before it is forwarded, so it always comes
before the response it causes). One thread per connection, select() over both sockets: the clients
under test are blocking drivers, and the relay must not depend on the reactor. When a client call
returns, the response it read has been recorded: tests need no waiting.
"""
import select
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    conn: int          # the relay's connection number, from 0 in accept order
    from_client: bool
    data: bytes
    ts_ns: int


class TcpRelay:
    """Start with TcpRelay(server_port).start(); connect clients to .port; read .chunks(conn)."""

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._chunks = []
        self._connections = 0
        self._threads = []
        self._closing = False

    def start(self):
        thread = threading.Thread(target=self._accept, name="tcp-relay-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self):
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)     # wakes the accept() (close() alone does not)
        except OSError:
            pass
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def connections(self):
        with self._lock:
            return self._connections

    def chunks(self, conn=None):
        """Recorded chunks, all or of one connection, in order."""
        with self._lock:
            return [c for c in self._chunks if conn is None or c.conn == conn]

    def _accept(self):
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                conn = self._connections
                self._connections += 1
            thread = threading.Thread(target=self._pump, args=(conn, client, server),
                                      name=f"tcp-relay-{conn}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, conn, client, server):
        peers = {client: server, server: client}
        try:
            while peers:
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                if self._closing:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:     # either side closing ends the relayed connection
                        return
                    with self._lock:
                        self._chunks.append(Chunk(conn, sock is client, data, time.time_ns()))
                    peers[sock].sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()
