# -*- test-case-name: tests.unit.test_exchange_sink -*-
"""
The exchange sink every L7 protocol's decoder hands its exchanges to (HTTP/1 and the stream
protocols alike): span batching per reactor turn, one export submit per process with its
resource, duration histograms exported every agent.host_metrics.interval, and the counts
/status/ebpf shows per protocol.

A protocol computes, once per exchange shape, a SpanTemplate (telegen.signals.exchanges) and the
function that records a duration into its histogram series; per exchange it calls add() with
those, the pid and the times. Everything after that is the same for every protocol, so a new
protocol is a decoder and a template function (docs/ebpf.md, "Adding a protocol").
"""
import os
import time
from collections import Counter

from twisted.logger import Logger

from telegen.signals.common import host_identity
from telegen.signals.exchanges import SpanEncoder

log = Logger()


class ExchangeSink:
    """
    @param clock: a callable returning the reactor (IReactorTime), asked when a batch is first scheduled.
    @param histograms: the DurationHistograms every protocol's recorders write to (flushed here).
    """

    def __init__(self, pipeline, processes, metrics, clock, histograms):
        self._pipeline = pipeline
        self._processes = processes
        self._metrics = metrics
        self._clock = clock
        self.histograms = histograms
        self.encoder = SpanEncoder()
        self._spans = {}
        self._submit_call = None
        self._forget_hooks = []
        self.exchanges = 0             # exchanges made spans, counted as each turn's batch is submitted
        self.per_protocol = Counter()  # exchanges per protocol name, counted as they arrive

    def on_forget(self, hook):
        """Call hook() when histogram series of an exited process are dropped (templates holding them go stale)."""
        self._forget_hooks.append(hook)

    def drop(self, reason):
        self._metrics.ebpf_events_dropped.labels(reason=reason).inc()

    def selected(self, pid):
        """Whether pid's exchanges are wanted (agent.discovery selectors); counted when not."""
        if self._processes is not None and not self._processes.selected(pid):
            self.drop("process_not_selected")
            return False
        return True

    def add(self, protocol, pid, template, record, start_ns, end_ns, peer_port):
        """One exchange: its span (batched per reactor turn) and its duration into record()."""
        if end_ns < start_ns:
            end_ns = start_ns
        record((end_ns - start_ns) / 1e9)
        spans = self._spans.get(pid)
        if spans is None:
            spans = self._spans[pid] = []
        spans.append(self.encoder.encode(template, start_ns, end_ns, peer_port))
        self.per_protocol[protocol] += 1
        if self._submit_call is None:
            self._submit_call = self._clock().callLater(0, self.submit_spans)

    def resource(self, pid):
        """Resource attributes of a process, from the ProcessTable (which keeps process.pid even for exited pids)."""
        if self._processes is None:
            return {"process.pid": pid, "host.name": host_identity()["name"]}
        return self._processes.resource_attributes(pid)

    def submit_spans(self):
        """Hand the batched spans to the export pipeline, one submit per process."""
        self._submit_call = None
        batches, self._spans = self._spans, {}
        for pid, spans in batches.items():
            self.exchanges += len(spans)
            try:
                self._pipeline.submit("traces", self.resource(pid), spans)
            except Exception:
                # Never lose spans silently, and never let one process's failure stop the others.
                self._metrics.spans_dropped.labels(reason="submit_error").inc(len(spans))
                log.failure("submitting {n} spans of pid {pid} failed", n=len(spans), pid=pid)

    def flush_metrics(self):
        """Export the cumulative duration histograms; forget the series of processes that exited."""
        forgot = False
        for pid, metrics in self.histograms.collect(time.time_ns()).items():
            self._pipeline.submit("metrics", self.resource(pid), metrics)
            if not os.path.exists(f"/proc/{pid}"):
                self.histograms.forget(pid)
                forgot = True
        if forgot:
            for hook in self._forget_hooks:
                hook()
