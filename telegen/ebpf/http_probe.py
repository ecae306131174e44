# -*- test-case-name: tests.unit.test_http_probe -*-
"""
The L7 capture probe (named "http", its first protocol): its kernel half, bpf/http_sock.c
(socket-level tp_btf tracepoints) or bpf/http.c (syscall tracepoints) as agent.ebpf.capture says,
plus its user-space half, which is the same for both: they send the same events. One ring
buffer carries every protocol's events; the DecoderRegistry hands each to the decoder of the
protocol id in its header: HttpDecoder for HTTP/1 (paired in the kernel), a StreamDecoder
(telegen/ebpf/l7_stream.py) per stream protocol of telegen.protocols.registry (the databases,
HTTP/2 and gRPC). Every decoder's
exchanges go through one ExchangeSink (spans batched per turn and process, duration histograms).
agent.ebpf.protocols switches each protocol, live: the kernel's l7_enabled array decides what
new connections are classified as.

agent.ebpf.capture: `socket` or `syscalls` load that one; `auto` (the default) tries the socket
capture first and falls back to the syscall capture when it does not load (a kernel without the
tracepoints, BTF or tp_btf support), saying why in /status/ebpf "capture".

Spans are submitted in one batch per process per reactor turn (a callLater(0) after the ring
buffer drain), duration histograms every agent.host_metrics.interval (telegen/ebpf/exchange_sink.py). Paths matching
agent.ebpf.network.exclude_paths are dropped here (the kernel does not parse paths) and
counted as telegen_ebpf_events_dropped_total{reason="excluded_path"}.

Per-exchange work is kept to a dictionary lookup and a few joins: everything an exchange's
telemetry derives from its shape (connection endpoint, parsed request, status, response size)
is computed once per shape into an _ExchangeTemplate (path exclusion, route, the span's encoded
attributes, the RED series), so a steady stream of similar requests costs ids, times and a
histogram update each.
"""
import fnmatch
import re
import time
from collections import Counter

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from telegen.ebpf.btf import BtfError, KernelBtf
from telegen.ebpf.exchange_sink import ExchangeSink
from telegen.ebpf.http_decoder import HttpDecoder
from telegen.ebpf.l7 import DecoderRegistry
from telegen.ebpf.l7_stream import StreamDecoder
from telegen.ebpf.loader import LoadError
from telegen.ebpf.probe import Probe, excluded_ports
from telegen.ebpf.tls import ENTRIES, GO_FUNCTIONS, RETURN_FN, TlsLibraries
from telegen.l7.http import parse_traceparent
from telegen.l7.protocols import NAMES, PROTO_HTTP1
from telegen.l7.records import HttpExchange
from telegen.protocols import http2_semconv
from telegen.protocols.http2 import upgrade_request_gap
from telegen.protocols.registry import PROTOCOLS
from telegen.signals import db as db_signals
from telegen.signals.exchanges import SpanTemplate, fixed_span
from telegen.signals.http import RedMetrics, RouteMatcher, SpanEncoder, url_path

log = Logger()

CAPTURE_BYTES = 512          # HTTP_CAPTURE: bytes of each request/response head sent up
STREAM_CAPTURE_BYTES = 4096  # L7_DATA_CAPTURE: bytes of each stream protocol read/write sent up
IDLE_NS = 10 * 10**9         # a connection silent this long has its open response finished
STREAM_IDLE_NS = 3600 * 10**9  # a database connection silent this long is forgotten (pools idle for long)
SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg",
            "sendfile64", "accept", "accept4", "connect")


SOCKET_TRACEPOINTS = ("sock_send_length", "sock_recv_length", "inet_sock_set_state")
# -D flag of bpf/http_sock.c -> (kernel struct, member): the fields it reads, at the running kernel's offsets.
SOCKET_FIELDS = {
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_SK_TYPE": ("sock", "sk_type"),
    "OFF_TASK_FLAGS": ("task_struct", "flags"),
    "OFF_REGS_ORIG_AX": ("pt_regs", "orig_ax"),
    "OFF_REGS_SI": ("pt_regs", "si"),
    "OFF_REGS_CS": ("pt_regs", "cs"),
}
CAPTURE_MODES = {"auto": ("socket", "syscalls"), "socket": ("socket",), "syscalls": ("syscalls",)}
# The Go crypto/tls uprobe programs (agent.ebpf.tls_go), entries and RETs.
_GO_PROGRAMS = tuple(sorted({fn for fns in GO_FUNCTIONS.values() for fn in fns}))
TLS_LOST_REASONS = ("tls_unlinked",)     # bpf/tls.h tls_lost slots, as telegen_ebpf_events_dropped_total reasons


def socket_field_flags(btf):
    """The -D flags of SOCKET_FIELDS from a KernelBtf; LoadError when the kernel lacks one."""
    try:
        return btf.offset_flags(SOCKET_FIELDS)
    except BtfError as e:
        raise LoadError(str(e)) from e


def _tracepoints():
    tps = [f"syscalls:sys_{edge}_{call}" for call in SYSCALLS for edge in ("enter", "exit")]
    tps += ["syscalls:sys_enter_close", "sock:inet_sock_set_state"]
    return [(tp, "tracepoint__" + tp.replace(":", "__")) for tp in tps]


MAX_TEMPLATES = 20000       # exchange shapes remembered (cleared when full)


class _ExchangeTemplate:
    """What every exchange of one shape yields: a drop reason, or its span template and RED series."""

    __slots__ = ("drop", "span", "record")

    def __init__(self, drop, span=None, record=None):
        self.drop = drop
        self.span = span
        self.record = record           # adds a duration (s) to the RED series (RedMetrics.recorder)


def _glob_regex(patterns):
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)) if patterns else None


def protocols_on(config):
    """{protocol name: on} from agent.ebpf.protocols (HTTP/1 also needs agent.ebpf.network.http)."""
    ebpf = config["agent"]["ebpf"]
    on = dict(ebpf["protocols"])
    on["http"] = on["http"] and ebpf["network"]["http"]
    return on


class HttpProbe(Probe):
    """HTTP/1.x server and client exchanges and database client operations of every process on the host."""

    name = "http"
    needs_btf = True          # socket capture: tp_btf and socket storage; syscall capture: task storage

    def __init__(self, config, pipeline, processes, metrics, reactor=None):
        self._config = config
        self._pipeline = pipeline
        self._processes = processes
        self._metrics = metrics
        self._reactor = reactor
        self._read_paths(config)
        self._red = RedMetrics(metrics)
        self._encoder = SpanEncoder()
        self._sink = ExchangeSink(pipeline, processes, metrics, self._clock, self._red)
        self._sink.on_forget(self._forget_templates)
        self._red.add_metric(db_signals.METRIC, db_signals.DESCRIPTION, db_signals.DURATION_BUCKETS)
        for metric, description in ((http2_semconv.RPC_SERVER_METRIC, "Duration of inbound RPCs."),
                                    (http2_semconv.RPC_CLIENT_METRIC, "Duration of outbound RPCs.")):
            self._red.add_metric(metric, description, http2_semconv.RPC_DURATION_BUCKETS_MS, "ms")
        mono_to_epoch = time.time_ns() - time.monotonic_ns()
        self._lost = {}                # protocol name -> Counter of decoder losses by reason
        http_loss = self._losses("http")

        def http_drop(reason):
            self._drop(reason)
            http_loss(reason, 1)
        self._decoder = HttpDecoder(self._exchange, http_drop, mono_to_epoch, CAPTURE_BYTES, self._upgrade)
        self._decoders = DecoderRegistry(self._drop)
        self._decoders.register(PROTO_HTTP1, self._decoder.handle_bytes)
        self._streams = {}
        for protocol in PROTOCOLS:
            on_exchange = self._h2_exchange if protocol.name == "http2" else self._db_exchange
            stream = StreamDecoder(protocol, on_exchange, self._losses(protocol.name), mono_to_epoch)
            self._streams[protocol.name] = stream
            self._decoders.register(protocol.proto, stream.handle_bytes)
        self._db_templates = {}
        self._query_text = config["agent"]["ebpf"]["db"]["query_text"]
        self._on = protocols_on(config)
        self._set_streams_enabled()
        self._loops = []
        self._bpf = None
        self._port_rules = {}
        self.capture = None            # "socket" or "syscalls" once chosen (select_capture)
        self.capture_reason = None
        self._tls = None               # TlsLibraries once the uprobes are attached (agent.ebpf.tls)
        self._tls_lost = [0] * len(TLS_LOST_REASONS)

    def _clock(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def enabled(self, config):
        ebpf = config["agent"]["ebpf"]
        return ebpf["enabled"] and ebpf["network"]["enabled"] and any(protocols_on(config).values())

    @property
    def exchanges(self):
        """Exchanges of every protocol made spans, counted as each turn's batch is submitted."""
        return self._sink.exchanges

    @property
    def source(self):
        return "http_sock.c" if self.capture == "socket" else "http.c"

    def capture_modes(self, config):
        return list(CAPTURE_MODES[config["agent"]["ebpf"]["capture"]])

    def select_capture(self, mode, failures):
        self.capture = mode
        configured = self._config["agent"]["ebpf"]["capture"]
        if configured != "auto":
            self.capture_reason = f"agent.ebpf.capture is {configured}"
        elif failures:
            self.capture_reason = "auto: the socket-level capture did not load: " + "; ".join(r for _, r in failures)
        else:
            self.capture_reason = "auto: the socket-level tracepoints (tp_btf) loaded"

    def capture_status(self):
        """/status/ebpf "capture" once loaded: which capture runs and why."""
        return {"mode": self.capture, "reason": self.capture_reason}

    def cflags(self, config):
        flags = [f"-DHTTP_CAPTURE={CAPTURE_BYTES}", f"-DL7_DATA_CAPTURE={STREAM_CAPTURE_BYTES}"]
        if config["agent"]["ebpf"]["tls"]:
            flags.append("-DTELEGEN_TLS=1")
        if self.capture == "socket":
            try:
                btf = KernelBtf.load()
            except BtfError as e:
                raise LoadError(str(e)) from e
            flags += socket_field_flags(btf)
        return flags

    def tracepoints(self):
        return _tracepoints() if self.capture != "socket" else []

    def btf_tracepoints(self):
        return list(SOCKET_TRACEPOINTS) if self.capture == "socket" else []

    def ring_buffers(self):
        return {"http_events": self._decoders.handle_bytes}

    def attach_uprobes(self, bpf):
        """
        With agent.ebpf.tls: the TLS uprobes (bpf/tls.h) on every libssl found now, and with
        agent.ebpf.tls_go on every Go executable too (telegen.ebpf.tls).
        """
        self._tls = None
        ebpf = self._config["agent"]["ebpf"]
        if not ebpf["tls"]:
            return
        go = ebpf["tls_go"]
        for fn in (*ENTRIES.values(), RETURN_FN, *(_GO_PROGRAMS if go else ())):
            bpf.load_func(fn.encode(), bpf.KPROBE)          # listed in /status/ebpf even before a library is found
        self._tls = TlsLibraries(bpf, self._processes, go=go)
        self._tls.start()

    def uprobe_programs(self):
        if self._tls is None:
            return {}
        attached = {s for lib in self._tls.status() for s in lib["symbols"]}
        programs = {fn: symbol if symbol in attached else None for symbol, fn in ENTRIES.items()}
        programs[RETURN_FN] = ("uretprobe:" + ",".join(s for s in ENTRIES if s in attached)) if attached else None
        if not self._config["agent"]["ebpf"]["tls_go"]:
            return programs
        go_attached = {s for exe in self._tls.go_status() for s in exe["symbols"]}
        for symbol, (entry, ret) in GO_FUNCTIONS.items():
            programs[entry] = symbol if symbol in go_attached else None
            returns = [s for s, fns in GO_FUNCTIONS.items() if fns[1] == ret and s in go_attached]
            programs[ret] = ("ret:" + ",".join(returns)) if returns else None
        return programs

    def _read_paths(self, config):
        """Routes and excluded paths: user-space only, so a reload changes them in place."""
        net = config["agent"]["ebpf"]["network"]
        self._routes = RouteMatcher(net["routes"])
        self._exclude = _glob_regex(net["exclude_paths"])
        self._templates = {}           # they hold routes and exclusions
        self._h2_templates = {}

    def attached(self, bpf):
        """Seed the kernel's port filter from config (the kernel captures nothing before) and start the periodic work."""
        self._bpf = bpf
        self.set_protocols(self._on)
        self.set_port_filter(self._config["agent"]["ebpf"]["network"]["include_ports"], excluded_ports(self._config))
        clock = self._clock()
        if self._tls is not None:
            self._tls.watch(self._config["agent"]["discovery"]["poll_interval"], clock)
        for interval, fn in ((self._config["agent"]["host_metrics"]["interval"], self.flush_metrics),
                             (IDLE_NS / 1e9 / 2, self.expire)):
            loop = LoopingCall(fn)
            loop.clock = clock
            loop.start(interval, now=False).addErrback(lambda f: log.failure("http probe timer failed", f))
            self._loops.append(loop)

    def reconfigure(self, config):
        """Protocol switches, db.query.text, port filter (with the API port), routes, excluded paths, the metric and libssl rescan intervals, in place."""
        self._config = config
        self._read_paths(config)
        self._on = protocols_on(config)
        self._set_streams_enabled()
        query_text = config["agent"]["ebpf"]["db"]["query_text"]
        if query_text != self._query_text:
            self._query_text = query_text
            self._db_templates = {}
        if self._bpf is not None:
            self.set_protocols(self._on)
            self.set_port_filter(config["agent"]["ebpf"]["network"]["include_ports"], excluded_ports(config))
        if self._loops:
            self._loops[0].interval = config["agent"]["host_metrics"]["interval"]
        if self._tls is not None:
            self._tls.set_interval(config["agent"]["discovery"]["poll_interval"])

    def _set_streams_enabled(self):
        """A stream protocol switched off forgets its connections and ignores their events from now on."""
        for name, stream in self._streams.items():
            if stream.enabled and not self._on[name]:
                stream.clear()
            stream.enabled = self._on[name]

    def set_protocols(self, on):
        """Write the kernel's per-protocol switches (l7_enabled[PROTO_*]): new connections follow them."""
        enabled = self._bpf[b"l7_enabled"]
        for proto, name in NAMES.items():
            enabled[enabled.Key(proto)] = enabled.Leaf(1 if on.get(name) else 0)

    def set_port_filter(self, include_ports, exclude_ports):
        """
        Write the kernel's port filter: port_rules[port] = 1 (included) or 2 (excluded; an
        exclusion wins over an inclusion of the same port), and settings[0] = 2 in include mode,
        1 otherwise (0, before this is first called, captures nothing). Live: connections accepted or connected from now on follow
        it. Only the ports set before are reset, so a change costs one update per listed port.
        """
        rules, settings = self._bpf[b"port_rules"], self._bpf[b"settings"]
        wanted = {}
        for value, ranges in ((1, include_ports), (2, exclude_ports)):
            for lo, hi in ranges:
                for port in range(lo, hi + 1):
                    wanted[port] = value
        for port in self._port_rules.keys() - wanted.keys():
            rules[rules.Key(port)] = rules.Leaf(0)
        for port, value in wanted.items():
            if self._port_rules.get(port) != value:
                rules[rules.Key(port)] = rules.Leaf(value)
        self._port_rules = wanted
        settings[settings.Key(0)] = settings.Leaf(2 if include_ports else 1)

    def detached(self):
        """Stop timers and export what is aggregated."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._tls is not None:
            self.poll_tls_lost()
            self._tls.stop()
        self.submit_spans()
        self.flush_metrics()

    def _drop(self, reason):
        self._sink.drop(reason)

    def _losses(self, protocol):
        """
        loss(reason, n) of one protocol's decoder: telegen_ebpf_decoder_losses_total{protocol,
        reason} and /status/ebpf "protocols". (HTTP/1's are also in telegen_ebpf_events_dropped_total,
        where they were before there were other protocols.)
        """
        lost = self._lost[protocol] = Counter()

        def loss(reason, n):
            self._metrics.ebpf_decoder_losses.labels(protocol=protocol, reason=reason).inc(n)
            lost[reason] += n
        return loss

    def _exchange(self, conn, request, status, response_body, start_ns, end_ns):
        """One complete HTTP exchange (HttpDecoder's parts) to the sink."""
        pid = conn.pid
        if not self._sink.selected(pid):
            return
        key = (conn.endpoint, request, status, response_body)
        template = self._templates.get(key)
        if template is None:
            template = self._template(key, HttpExchange.of(conn, request, status, response_body, start_ns, end_ns))
        if template.drop:
            self._drop(template.drop)
            return
        self._sink.add("http", pid, template.span, template.record, start_ns, end_ns, conn.peer_port)

    def _template(self, key, ex):
        """Compute and remember what exchanges shaped like `ex` yield."""
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        path = url_path(ex.target)
        if self._exclude is not None and self._exclude.match(path):
            template = _ExchangeTemplate("excluded_path")
        else:
            route = self._routes.match(path)
            template = _ExchangeTemplate(None, self._encoder.template(ex, path, route),
                                         self._red.recorder(ex, route, ex.end_ns))
        self._templates[key] = template
        return template

    def _db_exchange(self, conn, ex):
        """One database operation (a StreamDecoder's) to the sink: a CLIENT span and db.client.operation.duration."""
        pid = conn.pid
        if not self._sink.selected(pid):
            return
        key = (pid, conn.peer, conn.peer_port, db_signals.template_key(ex))
        template = self._db_templates.get(key)
        if template is None:
            if len(self._db_templates) >= MAX_TEMPLATES:
                self._db_templates.clear()
            span, attrs = db_signals.span_template(ex, conn.peer, conn.peer_port, self._query_text)
            template = self._db_templates[key] = _ExchangeTemplate(
                None, span, self._red.series_recorder(db_signals.METRIC, pid, attrs, ex.end_ns))
        self._sink.add(ex.system, pid, template.span, template.record, ex.start_ns, ex.end_ns, None)

    def _upgrade(self, conn, key, request, request_ns, response, response_gap, response_ns):
        """
        A 101 on an HTTP/1 connection (HttpDecoder's on_upgrade): an h2c upgrade the HTTP/1
        decoder paired with its request goes to the http2 stream decoder, which reads the
        connection from the upgrade request on (True: no HTTP/1 exchange for it). Any other
        upgrade (WebSocket...) is reported as HTTP/1's 101, and the few events the kernel sends of
        it before giving up (bpf/l7_stream.h, l7_upgrade()) are ignored; an h2c upgrade whose
        request the kernel did not pair with the 101 cannot be followed: counted.
        """
        stream = self._streams["http2"]
        if not stream.enabled:
            return False
        gap = upgrade_request_gap(request) if request is not None else None
        fd, conn_ts = key
        if gap is None:
            # Unpaired, or a head longer than the capture: it may have been h2c.
            cut = request is None or (len(request) >= CAPTURE_BYTES and b"\r\n\r\n" not in request)
            stream.hand_over(fd, conn_ts, None, (), counted=cut)
            return False
        stream.hand_over(fd, conn_ts, conn, ((True, request, request_ns, gap), (False, response, response_ns, response_gap)))
        return True

    def _h2_exchange(self, conn, ex):
        """
        One HTTP/2 stream (the http2 StreamDecoder's) to the sink: an HTTP span with
        network.protocol.version 2 or a gRPC span (telegen.protocols.http2_semconv), SERVER or
        CLIENT as the kernel saw the connection's side, and its duration histogram. Paths are
        excluded and routed as HTTP/1 paths are. Templates per connection endpoint and exchange
        shape (request fields but traceparent, response fields, status, body sizes). A request's
        valid W3C traceparent makes the span a child of the caller's span, as for HTTP/1; it
        differs per request, so it is not part of the template key: the span gets a copy of the
        template with that parent instead.
        """
        pid = conn.pid
        if not self._sink.selected(pid):
            return
        req, resp = ex.request, ex.response
        key = (pid, conn.server_side, conn.peer, conn.local, conn.local_port if conn.server_side else conn.peer_port,
               ex.status, ex.reset, ex.request_body_size, ex.response_body_size,
               tuple((k, v) for k, v in req.items() if k != b"traceparent"), tuple(resp.items()))
        template = self._h2_templates.get(key)
        if template is None:
            template = self._h2_template(key, conn, ex)
        if template.drop:
            self._drop(template.drop)
            return
        span = template.span
        traceparent = req.get(b"traceparent")
        if traceparent is not None:
            parent = parse_traceparent(traceparent)
            if parent is not None:
                span = SpanTemplate(span.fixed, parent)
        self._sink.add("http2", pid, span, template.record, ex.start_ns, ex.end_ns, conn.peer_port)

    def _h2_template(self, key, conn, ex):
        if len(self._h2_templates) >= MAX_TEMPLATES:
            self._h2_templates.clear()
        path = url_path(ex.path) if ex.path else None
        if path is not None and self._exclude is not None and self._exclude.match(path):
            template = _ExchangeTemplate("excluded_path")
        else:
            route = self._routes.match(path) if path is not None else None
            if conn.server_side:
                span = http2_semconv.span_of(ex, conn.local, conn.local_port, True, conn.peer, None, route)
            else:
                span = http2_semconv.span_of(ex, conn.peer, conn.peer_port, False, route=route)
            fixed = fixed_span(span.name, conn.server_side, span.attributes, span.status == http2_semconv.STATUS_ERROR,
                               span.status_message)
            add = self._red.series_recorder(span.metric, conn.pid, tuple(span.metric_attributes.items()), ex.end_ns)
            # The sink records seconds; the rpc histograms are in ms.
            record = add if span.metric_unit == "s" else (lambda seconds: add(seconds * 1000))
            template = _ExchangeTemplate(None, SpanTemplate(fixed, None), record)
        self._h2_templates[key] = template
        return template

    def _forget_templates(self):
        """Histogram series of an exited process were dropped: the templates holding their recorders go."""
        self._templates.clear()
        self._db_templates.clear()
        self._h2_templates.clear()

    def resource(self, pid):
        """Resource attributes of a process (the sink's)."""
        return self._sink.resource(pid)

    def submit_spans(self):
        """Hand the batched spans to the export pipeline, one submit per process."""
        self._sink.submit_spans()

    def flush_metrics(self):
        """Export the cumulative duration histograms."""
        self._sink.flush_metrics()

    def expire(self):
        """Finish responses of idle connections and forget connections whose close was missed."""
        now = time.monotonic_ns()
        self._decoder.expire(now, IDLE_NS)
        if self._bpf is not None:
            self.poll_lost_closes()
        for stream in self._streams.values():
            stream.expire(now, STREAM_IDLE_NS)
        if self._tls is not None:
            self.poll_tls_lost()

    def poll_lost_closes(self):
        """Closes of stream connections the ring buffer had no room for (bpf/l7_stream.h keeps them
        in l7_lost_closes), to their decoders, which account for the connections' ends once the
        ring has passed them (StreamDecoder.lost_close)."""
        table = self._bpf[b"l7_lost_closes"]
        streams = {stream.protocol.proto: stream for stream in self._streams.values()}
        for key, lost in list(table.items()):
            stream = streams.get(lost.proto)
            if stream is not None:
                stream.lost_close(key.conn_id, key.conn_start_ts, lost.ts, lost.sent, lost.received, lost.server,
                                  lost.max_sid)
            del table[key]

    def poll_tls_lost(self):
        """Add the growth of the kernel's TLS loss counters (per CPU, by reason) to telegen_ebpf_events_dropped_total."""
        table = self._bpf[b"tls_lost"]
        for slot, reason in enumerate(TLS_LOST_REASONS):
            total = sum(table[table.Key(slot)])
            if total > self._tls_lost[slot]:
                self._metrics.ebpf_events_dropped.labels(reason=reason).inc(total - self._tls_lost[slot])
                self._tls_lost[slot] = total

    def status(self):
        """Probe-specific facts for /status/ebpf: exchanges of every protocol, connections the decoders hold, TLS libraries."""
        out = {"exchanges": self.exchanges, "open_connections": len(self._decoder) + sum(map(len, self._streams.values()))}
        if self._tls is not None:
            self.poll_tls_lost()
            go = self._tls.go_status()
            out["tls"] = {"libraries": self._tls.status(), "go_executables": go,
                          "go_not_probed": sum(1 for exe in go if exe["error"]),
                          "lost": dict(zip(TLS_LOST_REASONS, self._tls_lost))}
        return out

    def protocols_status(self):
        """
        /status/ebpf "protocols": per L7 protocol whether it is on (agent.ebpf.protocols), the
        exchanges it made spans of, the connections its decoder holds now and its losses by reason.
        """
        held = {"http": len(self._decoder), **{name: len(stream) for name, stream in self._streams.items()}}
        return [{"name": name, "enabled": self._on[name], "exchanges": self._sink.per_protocol[name],
                 "open_connections": held[name], "losses": dict(self._lost[name])} for name in held]
