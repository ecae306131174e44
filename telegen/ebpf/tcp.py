"""
The `tcp` probe: connection lifecycle from sock:inet_sock_set_state (bpf/tcp.c), decoded into
TcpConnection records for telegen.signals.tcp.

Who owns a connection: for outgoing ones the kernel records the tgid of the task inside
connect(). Incoming ones are established in softirq, where the current task is unrelated, so
the kernel leaves the pid at 0 until the owner's close()/shutdown() (the FIN_WAIT1/LAST_ACK
transitions run in its context); until then, and for the `accepted` event, user space asks the
process table which single process listens on the local port (none or several: pid stays 0 and
the data points carry the host resource only). The agent's own connections are dropped: the
kernel skips its connects, this module skips connections whose owner is the agent.
"""
import functools
import os
import socket
import struct

from twisted.internet.task import LoopingCall

from telegen.ebpf.probe import Probe, excluded_ports
from telegen.ebpf.process_events import small_ringbuf_size
from telegen.signals import tcp as signals

# struct tcp_event: telegen_event_header {u64 ts; u32 pid, tid, kind; pad}, u64 start, u64 established,
# u16 family, sport, dport, u8 direction, error, u8 saddr[16], daddr[16].
EVENT = struct.Struct("<QIII4xQQHHHBB16s16s")

_KINDS = {1: signals.OPENED, 2: signals.ACCEPTED, 3: signals.CLOSED, 4: signals.FAILED, 5: signals.RETRANSMIT}
_DIRECTIONS = {0: "", 1: signals.OUTGOING, 2: signals.INCOMING}
_ERRORS = {0: "", 1: "connection_refused", 2: "connect_failed"}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"

METRIC_INTERVAL = 15.0   # seconds between metric flushes (docs/tcp.md)


@functools.lru_cache(maxsize=4096)
def _address(family, raw):
    """(network.type, text) of a tracepoint address; IPv4-mapped IPv6 reads as IPv4. Cached: peers repeat."""
    if family == socket.AF_INET:
        return "ipv4", socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw.startswith(_V4_MAPPED):
        return "ipv4", socket.inet_ntop(socket.AF_INET, raw[12:])
    return "ipv6", socket.inet_ntop(socket.AF_INET6, raw)


def decode(data):
    """A TcpConnection from the bytes of one struct tcp_event."""
    ts, pid, _, kind, start, established, family, sport, dport, direction, error, saddr, daddr = EVENT.unpack_from(data)
    network_type, peer = _address(family, daddr)
    _, local = _address(family, saddr)
    return signals.TcpConnection(
        kind=_KINDS[kind], pid=pid, direction=_DIRECTIONS[direction], network_type=network_type,
        local_address=local, local_port=sport, peer_address=peer, peer_port=dport,
        start_ns=start, established_ns=established, end_ns=ts, error_type=_ERRORS[error],
    )


def _in_ranges(port, ranges):
    return any(lo <= port <= hi for lo, hi in ranges)


class TcpProbe(Probe):
    """TCP connections opened, accepted, closed, failed and retransmitting, as metrics and spans."""

    name = "tcp"
    source = "tcp.c"

    def __init__(self, config, pipeline, processes, metrics, reactor=None, interval=METRIC_INTERVAL, max_series=1000):
        self.processes = processes
        self.metrics = metrics
        self._reactor = reactor
        self.interval = interval
        self.reconfigure(config)
        self.telemetry = signals.TcpTelemetry(pipeline, processes, metrics, max_series=max_series)
        self._self_pid = os.getpid()
        self._bpf = None
        self._untracked = 0
        self._loop = None

    def enabled(self, config):
        ebpf = config["agent"]["ebpf"]
        return ebpf["enabled"] and ebpf["network"]["enabled"] and ebpf["network"]["tcp"]

    def ringbuf_size(self, config):
        return small_ringbuf_size(config)

    def tracepoints(self):
        return [(f"{category}:{event}", f"tracepoint__{category}__{event}") for category, event in (
            ("sock", "inet_sock_set_state"), ("tcp", "tcp_receive_reset"), ("tcp", "tcp_retransmit_skb"))]

    def ring_buffers(self):
        return {"tcp_events": self.on_event}

    def reconfigure(self, config):
        """The port filter lives in user space here: a reload replaces it in place."""
        self.include_ports = config["agent"]["ebpf"]["network"]["include_ports"]
        self.exclude_ports = excluded_ports(config)

    def attached(self, bpf):
        self._bpf = bpf
        self._loop = LoopingCall(self.flush)
        if self._reactor is not None:           # else LoopingCall's default: the global reactor
            self._loop.clock = self._reactor
        self._loop.start(self.interval, now=False)

    def detached(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()
        self._bpf = None

    # -- events --------------------------------------------------------------------------------

    def on_event(self, raw):
        """Decode, attribute to a process, filter, and account one event (reactor thread)."""
        self.handle(decode(raw))

    def handle(self, conn):
        """Filter one decoded connection by port and owner, then hand it to the signal builder."""
        server_port = conn.server[1]
        if (self.include_ports and not _in_ranges(server_port, self.include_ports)) or (
                self.exclude_ports and _in_ranges(server_port, self.exclude_ports)):
            return
        if conn.pid == 0 and conn.direction == signals.INCOMING:
            owner = self.processes.listener_pid(conn.local_port)
            if owner is not None:
                conn = conn._replace(pid=owner)
        if conn.pid == self._self_pid or not self.processes.selected(conn.pid):
            return
        self.telemetry.record(conn)

    def flush(self):
        """Send the interval's metrics and count connections the kernel could not track."""
        self._count_untracked()
        return self.telemetry.flush()

    def _count_untracked(self):
        if self._bpf is None:
            return
        total = sum(self._bpf[b"tcp_untracked"][0])
        if total > self._untracked:
            self.metrics.ebpf_events_dropped.labels(reason="tcp_conn_table_full").inc(total - self._untracked)
        self._untracked = total
