"""
The CPU profiler's worker process: drains the kernel's sample maps, symbolizes and builds the
window's profiles (OTLP record and pprof files), so that none of it runs in the agent's process.

The agent (telegen.profiling.service) starts it through telegen.workerproc with the BPF maps of
bpf/profile.c as inherited file descriptors, and sends it:
- ("maps", pid, text): a new process's /proc/PID/maps, read by the agent at its first sample;
- ("drain",): flip the generation and drain the old one; answers the pids, sample total, drops;
- ("build", start, end, resources): resources {pid: (attributes, selected)} from the agent's
  process table; symbolizes, writes the pprof files, answers the encoded OTLP record.
Two steps because the resources live in the agent and are only needed for the pids of a window.
"""
import array
import json
import struct
import sys
import time
from collections import defaultdict

from telegen.profiling import otlp, pprof_files
from telegen.profiling.sampler import DROP_REASONS, SETTLE_SECONDS, Window
from telegen.profiling.symbolize import Symbolizer

UNKNOWN_SERVICE = "unknown_service"
_SAMPLE_KEY = struct.Struct("<Iii")     # struct sample_key: pid, user stack id, kernel stack id
_U32 = struct.Struct("<I")


class Drainer:
    """The kernel side of a window: bpf/profile.c's maps by name (telegen.profiling.bpfmaps.BpfMap)."""

    def __init__(self, maps, off_cpu):
        self.maps = maps
        self.off_cpu = off_cpu
        self._drops_seen = [0] * len(DROP_REASONS)

    def drain(self):
        """
        Flip the generation, then read and empty the previous one: a Window of this period's
        samples. Samples of programs still writing the old generation after SETTLE_SECONDS stay
        in its counts map and are read two windows later (lookup-and-delete takes only what it returns).
        """
        generation = self.maps["generation"]
        old = _U32.unpack(generation.lookup(_U32.pack(0)))[0]
        generation.update(_U32.pack(0), _U32.pack(1 - old))
        time.sleep(SETTLE_SECONDS)
        stacks = self.maps[f"stacks{old}"]
        window = Window()
        traces = {}
        sources = [(self.maps[f"counts{old}"], window.counts)]
        if self.off_cpu:
            sources.append((self.maps[f"offcpu{old}"], window.off_cpu))
        for table, out in sources:
            keys, values, count = table.lookup_and_delete_all()
            for (pid, user, kernel), (value,) in zip(_SAMPLE_KEY.iter_unpack(keys), struct.iter_unpack("<Q", values)):
                slot = (pid, self._trace(stacks, user, traces), self._trace(stacks, kernel, traces))
                out[slot] = out.get(slot, 0) + value
        window.samples = sum(window.counts.values())
        for stack_id in traces:
            stacks.delete(_U32.pack(stack_id))
        for key in stacks.keys():      # ids of samples written after the flip: their counts come later, frameless
            stacks.delete(key)
        return window

    @staticmethod
    def _trace(stacks, stack_id, cache):
        """The addresses of one stack id, innermost first; () for none (a negative id)."""
        if stack_id < 0:
            return ()
        trace = cache.get(stack_id)
        if trace is None:
            raw = stacks.lookup(_U32.pack(stack_id))
            if raw is None:     # deleted under us: the entry outlived its window (see drain())
                trace = ()
            else:
                ips = array.array("Q", raw)
                end = ips.index(0) if 0 in ips else len(ips)
                trace = tuple(ips[:end])
            cache[stack_id] = trace
        return trace

    def new_drops(self):
        """{reason: count} of drops since the last call (summed over CPUs)."""
        table = self.maps["drops"]
        out = {}
        for slot, reason in enumerate(DROP_REASONS):
            total = sum(array.array("Q", table.lookup(_U32.pack(slot))))
            if total > self._drops_seen[slot]:
                out[reason] = total - self._drops_seen[slot]
                self._drops_seen[slot] = total
        return out


class WindowBuilder:
    """The worker's handlers; also run in-process by the unit tests (with a fake Drainer)."""

    def __init__(self, profiling, data_dir, drainer, symbolizer=None):
        self.profiling = profiling
        self.data_dir = data_dir
        self.drainer = drainer
        self.symbolizer = symbolizer or Symbolizer(cache_entries=profiling["symbol_cache_entries"])
        self._window = None

    def handlers(self):
        return {"maps": self.maps, "drain": self.drain, "build": self.build}

    def maps(self, pid, text):
        self.symbolizer.remember_text(pid, text)

    def drain(self):
        """The window's pids, sample total and the kernel's new drops; the samples stay here for build()."""
        self._window = window = self.drainer.drain()
        pids = {pid for pid, _, _ in window.counts} | {pid for pid, _, _ in window.off_cpu}
        return {"pids": sorted(pids), "samples": window.samples, "drops": self.drainer.new_drops()}

    def build(self, start, end, resources):
        """
        The window's OTLP record (serialized, or None), its profile count, the pprof files written,
        samples of processes not selected, and symbol cache evictions.
        """
        window, self._window = self._window, None
        self.symbolizer.refresh(set(resources))
        cpu, off_cpu = self._symbolized(window.counts), self._symbolized(window.off_cpu)
        processes, not_selected = [], 0
        for pid in sorted(cpu.keys() | off_cpu.keys()):
            attrs, selected = resources[pid]
            if not selected:
                not_selected += sum(n for _, n in cpu.get(pid, ()))
                continue
            processes.append((pid, attrs, cpu.get(pid, []), off_cpu.get(pid, [])))
        record, profiles = self._otlp(processes, start, end)
        return {"record": record, "profiles": profiles, "files": self._pprof(processes, start, end),
                "not_selected": not_selected, "evictions": self.symbolizer.take_evictions()}

    def _symbolized(self, counts):
        """{pid: [(frames, value)]}: samples of the same pid whose stacks symbolize alike are merged."""
        stacks = defaultdict(lambda: defaultdict(int))
        stack = self.symbolizer.stack
        for (pid, user, kernel), value in counts.items():
            stacks[pid][stack(pid, user, kernel)] += value
        return {pid: list(by_stack.items()) for pid, by_stack in stacks.items()}

    def _otlp(self, processes, start, end):
        if not processes:
            return None, 0
        record = otlp.window_profiles([(attrs, cpu, off) for _, attrs, cpu, off in processes], start, end - start,
                                      self.profiling["sample_rate"])
        return record.SerializeToString(), otlp.profile_count(record)

    def _pprof(self, processes, start, end):
        """One file per service; returns their paths."""
        if not self.profiling["pprof_files"]:
            return []
        directory = pprof_files.profiles_dir(self.data_dir)
        by_service = defaultdict(list)
        for process in processes:
            by_service[process[1].get("service.name", UNKNOWN_SERVICE)].append(process)
        written = []
        for service_name, members in by_service.items():
            labelled = [[(frames, value, {"pid": pid}) for pid, _, *kinds in members for frames, value in kinds[i]]
                        for i in (0, 1)]
            builder = pprof_files.cpu_profile(labelled[0], start, end - start, self.profiling["sample_rate"],
                                              members[0][1].get("process.executable.path", ""),
                                              off_cpu=labelled[1] if self.profiling["off_cpu"] else None)
            # gzip level 1: a third of level 6's CPU for files about a fifth larger.
            written.append(pprof_files.write(directory, service_name, start, builder.gzipped(level=1)))
        pprof_files.rotate(directory, self.profiling["pprof_max_age"], self.profiling["pprof_max_bytes"])
        return written


def main(argv=None):
    """argv[1]: JSON {"profiling": agent.profiling, "data_dir": ..., "maps": [names of fds 3, 4, ...]}."""
    from telegen.profiling.bpfmaps import BpfMap
    from telegen.workerproc import serve

    setup = json.loads((argv or sys.argv)[1])
    maps = {name: BpfMap(3 + i, per_cpu=name == "drops") for i, name in enumerate(setup["maps"])}
    builder = WindowBuilder(setup["profiling"], setup["data_dir"], Drainer(maps, setup["profiling"]["off_cpu"]))
    serve(builder.handlers())


if __name__ == "__main__":
    main()
