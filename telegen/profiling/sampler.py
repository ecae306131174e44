"""
The kernel side of the CPU profiler: compiles bpf/profile.c (through telegen.ebpf.loader, like
every probe), attaches it to a software cpu-clock perf event on every online CPU, and drains
the in-kernel sample counts one window at a time.

Why its own perf event fds instead of BCC's attach_perf_event: BCC keeps one dict of fds per
event type and replaces it when called again, so CPUs that come online later could not be added
(and their fds would leak). Here each CPU's fd is kept by CPU number; attach_new_cpus() adds the
missing ones and detach() closes exactly what was opened.

Everything here blocks (syscalls per map entry, the compiler): the service calls it in a thread.
"""
import ctypes
import errno
import os
import time
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
_EFAULT = -14


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


def lookup_and_delete_all(table):
    """
    [(key, value)] of every entry of a BCC hash table, each removed as it is read, in batches
    (BPF_MAP_LOOKUP_AND_DELETE_BATCH: a few syscalls for thousands of entries).

    Why not BCC's items_lookup_and_delete_batch: BCC 0.26 binds its in/out batch token and its
    count to one c_uint32, so any map that takes more than one call fails with EINVAL.
    """
    from bcc.libbcc import lib

    room = table.max_entries
    keys, values = (table.Key * room)(), (table.Leaf * room)()
    in_batch, out_batch = ctypes.c_uint32(0), ctypes.c_uint32(0)
    total, first = 0, True
    while total < room:
        count = ctypes.c_uint32(room - total)
        res = lib.bpf_lookup_and_delete_batch(
            table.map_fd, None if first else ctypes.byref(in_batch), ctypes.byref(out_batch),
            ctypes.byref(keys, ctypes.sizeof(table.Key) * total), ctypes.byref(values, ctypes.sizeof(table.Leaf) * total),
            ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:      # no more buckets
                break
            raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH: {os.strerror(err)}")
        in_batch.value, first = out_batch.value, False
    return [(keys[i], values[i]) for i in range(total)]


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
    """Loads, attaches, drains and detaches bpf/profile.c. Not thread-safe: one caller at a time."""

    def __init__(self, profiling_config, self_pid, compile_fn=compile_probe, cpus_fn=online_cpus):
        self.probe = ProfileProbe(profiling_config)
        self._config = profiling_config
        self._self_pid = self_pid
        self._compile = compile_fn
        self._cpus = cpus_fn
        self.bpf = None
        self._fn = None
        self._perf_fds = {}       # cpu -> perf event fd
        self._generation = 0
        self._drops_seen = [0] * len(DROP_REASONS)

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

    def drain(self):
        """
        Flip the generation, then read and empty the previous one: a Window of this period's
        samples. Samples of programs still writing the old generation after SETTLE_SECONDS stay
        in its counts map and are read two windows later (lookup-and-delete takes only what it returns).
        """
        old = self._generation
        self._generation = 1 - old
        table = self.bpf[b"generation"]
        table[table.Key(0)] = table.Leaf(self._generation)
        time.sleep(SETTLE_SECONDS)
        counts = self.bpf[f"counts{old}".encode()]
        stacks = self.bpf[f"stacks{old}".encode()]
        window = Window()
        traces = {}
        maps = [(counts, window.counts)]
        if self._config["off_cpu"]:
            maps.append((self.bpf[f"offcpu{old}".encode()], window.off_cpu))
        for table, out in maps:
            for key, value in lookup_and_delete_all(table):
                slot = (key.pid, self._trace(stacks, key.user_stack, traces), self._trace(stacks, key.kernel_stack, traces))
                out[slot] = out.get(slot, 0) + value
        window.samples = sum(window.counts.values())
        for stack_key in list(stacks.keys()):
            try:
                del stacks[stack_key]
            except KeyError:
                pass
        return window

    @staticmethod
    def _trace(stacks, stack_id, cache):
        """The addresses of one stack id, innermost first; () for none (a negative id)."""
        if stack_id < 0:
            return ()
        trace = cache.get(stack_id)
        if trace is None:
            try:
                trace = cache[stack_id] = tuple(stacks.walk(stack_id))
            except KeyError:      # deleted under us: the entry outlived its window (see drain())
                trace = cache[stack_id] = ()
        return trace

    def new_drops(self):
        """{reason: count} of drops since the last call (summed over CPUs)."""
        table = self.bpf[b"drops"]
        out = {}
        for slot, reason in enumerate(DROP_REASONS):
            total = sum(table[table.Key(slot)])
            if total > self._drops_seen[slot]:
                out[reason] = total - self._drops_seen[slot]
                self._drops_seen[slot] = total
        return out
