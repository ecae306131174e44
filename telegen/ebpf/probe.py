"""
The Probe interface: one BPF C source file, compiled into one BCC BPF object, per concern.

EbpfService (telegen.ebpf.service) knows nothing about HTTP or TCP. It asks each Probe what to
compile (source, -D flags), what to attach and which ring buffers to read, and hands ring buffer
events back to the probe's handlers. That keeps each concern (HTTP, TCP, processes) in its own
module, owned and tested on its own.
"""
from typing import Callable

from zope.interface import implementer

from telegen.contracts import IProbe


@implementer(IProbe)
class Probe:
    """
    One BPF source file = one BCC BPF object. Subclass per concern.

    Handlers returned by ring_buffers() run on the reactor thread from RingBufferReader.doRead;
    they must be cheap (decode with struct, defer the rest) and must not raise (the reader guards
    them anyway and counts the failure, because an exception inside a BCC callback is swallowed
    by ctypes).
    """

    name = "probe"        # unique; used in status and logs
    source = ""           # file in bpf/ (telegen.paths.bpf_dir()); it #includes "telegen.h"
    needs_btf = False     # uses kernel BTF (task storage, bpf_get_current_task_btf)
    drains_first = False  # its rings are drained before every other probe's (events the others' depend on)

    def enabled(self, config) -> bool:
        """Whether this probe should be loaded with this config."""
        return True

    def cflags(self, config) -> list:
        """
        The probe's own -D flags. The loader adds the common ones itself: TELEGEN_PID,
        and RINGBUF_PAGES (from ringbuf_size).
        """
        return []

    def ringbuf_size(self, config) -> int:
        """Bytes per ring buffer of this probe: agent.ebpf.ringbuf_size unless the probe needs less."""
        return config["agent"]["ebpf"]["ringbuf_size"]

    def tracepoints(self) -> list:
        """(category:event, fn_name) pairs. TRACEPOINT_PROBE functions auto-attach in BCC; list them anyway for status."""
        return []

    def btf_tracepoints(self) -> list:
        """Tracepoint names whose function `tp_btf__<name>` the loader attaches as tp_btf (telegen.ebpf.tpbtf)."""
        return []

    def attach_uprobes(self, bpf) -> None:
        """
        Attach the probe's uprobes, in the compile thread after its tracepoints. Each file's
        failure is the probe's to report (a library lacking a symbol must not fail the probe).
        """

    def uprobe_programs(self) -> dict:
        """{function name: the symbols it probes ("uretprobe:" for returns), None when attached nowhere}, for /status/ebpf."""
        return {}

    def capture_modes(self, config) -> list:
        """
        The ways to try loading this probe, in order (each selected with select_capture before
        it compiles): the first that loads is kept. One probe, one way, unless it overrides this.
        """
        return [None]

    def select_capture(self, mode, failures) -> None:
        """
        Called (in the compile thread) before compiling with `mode`, and once more after it
        loaded; failures: [(mode, reason)] of the modes tried before it.
        """

    def ring_buffers(self) -> "dict[str, Callable[[bytes], None]]":
        """Ring buffer map name -> handler(event bytes), called on the reactor thread."""
        return {}

    def reconfigure(self, config) -> None:
        """
        A reload changed config but nothing compiled into this probe (EbpfService checks
        enabled(), cflags() and ringbuf_size()): apply the rest in place, e.g. map contents.
        """

    def attached(self, bpf) -> None:
        """Hook after load and attach (seed maps from config, start timers)."""

    def detached(self) -> None:
        """Hook when the service stops or the probe is unloaded (flush aggregated state)."""


def api_port(config) -> int:
    """
    The agent's own API port. The API's server side is the agent's process, which the kernel
    already skips; its clients (health probes, Prometheus scrapes, an SRE's curl) are the agent's
    own traffic too, so they make no span, duration or connection metric either, whatever
    include_ports says. The HTTP probe writes it into its port filter map, and the kernel side
    captures nothing until that map is written, so even a readiness probe answered while the
    probes still load is never captured; a reload moving the API changes the map in place.
    """
    return int(config["self_telemetry"]["listen"].rpartition(":")[2])


def excluded_ports(config) -> list:
    """agent.ebpf.network.exclude_ports plus api_port() (the TCP probe filters in user space)."""
    port = api_port(config)
    return list(config["agent"]["ebpf"]["network"]["exclude_ports"]) + [(port, port)]
