"""
The kernel side of the CPU profiler: compiles bpf/profile.c (through telegen.ebpf.loader, like
every probe) and attaches it to a software cpu-clock perf event on every online CPU.

Why its own perf event fds instead of BCC's attach_perf_event: BCC keeps one dict of fds per
event type and replaces it when called again, so CPUs that come online later could not be added
(and their fds would leak). Here each CPU's fd is kept by CPU number; attach_new_cpus() adds the
missing ones and detach() closes exactly what was opened.

Draining the maps is the worker process's job (telegen.profiling.worker): the sampler hands it the
map fds. load() blocks (the compiler): the service calls it in a thread.
"""
from dataclasses import dataclass, field

from telegen.ebpf.loader import LoadError, compile_probe
from telegen.ebpf.probe import Probe

# perf_event_attr type/config of the software cpu-clock (uapi/linux/perf_event.h).
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
# Drop slots of bpf/profile.c's `drops` array -> the reason label of telegen_profiler_dropped_total.
DROP_REASONS = ("stack_collision", "stack_map_full", "counts_map_full", "off_cpu_threads_full", "off_cpu_crossed_window")
# How long a program that read the old generation just before the flip may still be writing: a
# perf_event program runs for microseconds, so this is generous and costs the drain thread only.
SETTLE_SECONDS = 0.01
ONLINE_CPUS = "/sys/devices/system/cpu/online"
_NEW_PIDS_RING = 64 * 1024


def parse_cpu_list(text):
    """'0-3,5' -> [0, 1, 2, 3, 5] (the kernel's cpu list format)."""
    cpus = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def online_cpus(path=ONLINE_CPUS):
    with open(path, encoding="ascii") as f:
        return parse_cpu_list(f.read())


class ProfileProbe(Probe):
    """bpf/profile.c for the loader: its -D flags come from agent.profiling."""

    name = "profiler"
    source = "profile.c"

    def __init__(self, profiling_config):
        self._config = profiling_config

    def cflags(self, config):
        entries = self._config["map_entries"]
        return [f"-DCOUNTS_ENTRIES={entries}", f"-DSTACK_ENTRIES={entries}",
                f"-DPROFILE_SELF={int(self._config['include_self'])}", f"-DOFF_CPU={int(self._config['off_cpu'])}"]

    def tracepoints(self):
        """sched_switch (a TRACEPOINT_PROBE, attached by BCC) when off-CPU time is on."""
        return [("sched:sched_switch", "tracepoint__sched__sched_switch")] if self._config["off_cpu"] else []

    def ringbuf_size(self, config):
        """new_pids carries one 24-byte event per new process: 64 KiB is thousands."""
        return _NEW_PIDS_RING


@dataclass
class Window:
    """
    One drained window: sample counts per (pid, user addresses, kernel addresses), innermost
    first, and (off-CPU on) nanoseconds blocked per the same keys.
    """

    counts: dict = field(default_factory=dict)
    samples: int = 0
    off_cpu: dict = field(default_factory=dict)


class Sampler:
    """Loads, attaches and detaches bpf/profile.c. Not thread-safe: one caller at a time."""

    def __init__(self, profiling_config, self_pid, compile_fn=compile_probe, cpus_fn=online_cpus):
        self.probe = ProfileProbe(profiling_config)
        self._config = profiling_config
        self._self_pid = self_pid
        self._compile = compile_fn
        self._cpus = cpus_fn
        self.bpf = None
        self._fn = None
        self._perf_fds = {}       # cpu -> perf event fd

    def load(self):
        """Compile and attach on every online CPU (raises LoadError with the reason)."""
        self.bpf = self._compile(self.probe, {}, self._self_pid)
        try:
            self._fn = self.bpf.load_func(b"on_sample", self.bpf.PERF_EVENT)
            self.attach_new_cpus()
        except Exception as e:
            self.detach()
            raise e if isinstance(e, LoadError) else LoadError(f"attach failed: {e}") from e

    @property
    def cpus(self):
        return sorted(self._perf_fds)

    def attach_new_cpus(self):
        """Attach to online CPUs not attached yet (all of them the first time); returns the new ones."""
        from bcc.libbcc import lib

        added = []
        for cpu in self._cpus():
            if cpu in self._perf_fds:
                continue
            fd = lib.bpf_attach_perf_event(self._fn.fd, PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, 0,
                                           self._config["sample_rate"], -1, cpu, -1)
            if fd < 0:
                raise LoadError(f"perf_event_open(cpu-clock, cpu {cpu}) failed: {fd}")
            self._perf_fds[cpu] = fd
            added.append(cpu)
        return added

    def detach(self):
        """Close every perf event and release the BPF object."""
        if self.bpf is None:
            return
        from bcc.libbcc import lib

        for fd in self._perf_fds.values():
            lib.bpf_close_perf_event_fd(fd)
        self._perf_fds.clear()
        self.bpf.cleanup()
        self.bpf = None

    def map_fds(self):
        """[(name, fd)] of the maps the worker drains (telegen.profiling.worker), in the order it gets them."""
        names = ["generation", "drops", "counts0", "counts1", "stacks0", "stacks1"]
        if self._config["off_cpu"]:
            names += ["offcpu0", "offcpu1"]
        return [(name, self.bpf[name.encode()].map_fd) for name in names]

    def exclude(self, pid):
        """Never sample pid (the agent's worker process: its CPU is the agent's)."""
        table = self.bpf[b"helper_pids"]
        table[table.Key(pid)] = table.Leaf(1)

    def include(self, pid):
        table = self.bpf[b"helper_pids"]
        try:
            del table[table.Key(pid)]
        except KeyError:
            pass
