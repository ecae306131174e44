"""
The CPU profiler's user-space parts on their own: ELF symbols, the symbolizer (with a made-up
/proc), pprof file naming and rotation, OTLP profile records and their merge into one request,
and ProfilerService's window flow with a fake sampler on a Clock.
"""
import gzip
import os
import shutil
import struct
import subprocess

import pytest
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from telegen.contracts import IChild
from telegen.export.queue import Chunk
from telegen.export.wire import ResourceCache
from telegen.profiling import otlp, pprof_files
from telegen.profiling.demangle import Demangler
from telegen.profiling.elf import ElfError, ElfSymbols
from telegen.profiling.pprof_proto import Profile
from telegen.profiling.sampler import Window, parse_cpu_list
from telegen.profiling.service import ProfilerService
from telegen.profiling.symbolize import KERNEL_MODULE, Symbolizer
from telegen.profiling.worker import WindowBuilder
from telegen.selfmetrics import SelfMetrics
from telegen.workerproc import WorkerCrashed
from tests.support.fakes import make_config
from tests.support.inprocess_worker import InProcessWorker

SOURCE = os.path.join(os.path.dirname(__file__), "..", "integration", "data", "burn.c")
CHAIN = ("telegen_leaf", "telegen_middle", "telegen_outer", "main")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """burn.c built as a PIE, and {function: link-time address} from nm."""
    path = str(tmp_path_factory.mktemp("elf") / "burn")
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-Wl,--build-id", "-o", path, SOURCE], check=True)
    nm = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    symbols = {parts[2]: int(parts[0], 16) for parts in map(str.split, nm.splitlines()) if len(parts) == 3}
    return path, symbols


def build_id_of(path):
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, check=True).stdout
    return next(line.split(":")[1].strip() for line in out.splitlines() if "Build ID" in line)


# -- ELF ---------------------------------------------------------------------------------------


def test_elf_functions_and_build_id(binary):
    path, symbols = binary
    elf = ElfSymbols.from_path(path)
    assert elf.build_id == build_id_of(path)
    for name in CHAIN:
        assert elf.function(symbols[name]) == name
        assert elf.function(symbols[name] + 3) == name
    assert elf.function(0) is None


def test_elf_rejects_what_it_cannot_read():
    with pytest.raises(ElfError, match="not an ELF"):
        ElfSymbols(b"#!/bin/sh\n")
    with pytest.raises(ElfError, match="64-bit little-endian"):
        ElfSymbols(b"\x7fELF\x01\x01" + b"\0" * 58)


# -- symbolizer --------------------------------------------------------------------------------


def fake_proc(root, pid, path, start=0x555555554000):
    """A /proc/PID/maps listing the file's executable segment at `start` (with its real device and inode)."""
    st = os.stat(path)
    text_offset = 0x1000
    line = (f"{start + text_offset:x}-{start + 0x3000:x} r-xp {text_offset:08x} "
            f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino} {path}\n"
            "7fff00000000-7fff00001000 r-xp 00000000 00:00 0 \n")
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "maps").write_text(line)
    return start


def test_user_frames_resolve_after_the_process_exited(tmp_path, binary):
    path, symbols = binary
    start = fake_proc(tmp_path / "proc", 77, path)
    sym = Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path))
    sym.remember(77)
    (tmp_path / "proc" / "77" / "maps").unlink()           # the process is gone
    sym.refresh({77})
    # Leaf first (exact address), callers by return address (one byte past the call's function).
    leaf = start + symbols["telegen_leaf"] + 5
    returns = [start + symbols[name] + 4 for name in CHAIN[1:]]
    frames = sym.stack(77, [leaf, *returns], [])
    assert frames == tuple((name, path) for name in CHAIN)


def test_unresolved_frames_keep_module_and_offset_and_perf_maps_resolve_jit(tmp_path, binary):
    path, _ = binary
    start = fake_proc(tmp_path / "proc", 78, path)
    sym = Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path))
    sym.remember(78)
    assert sym.user_frame(78, start + 0x2ff0, False) == (f"burn+0x{0x2ff0:x}", path)
    assert sym.user_frame(78, 0x1234, False) == ("[unknown] 0x1234", "[unknown]")
    (tmp_path / "perf-78.map").write_text("7fff00000100 80 py::work:/app/x.py\n")
    sym.refresh({78})                                       # a perf map is read again each window
    assert sym.user_frame(78, 0x7FFF00000110, False) == ("py::work:/app/x.py", f"{tmp_path}/perf-78.map")


def test_kernel_frames_from_kallsyms(tmp_path):
    (tmp_path / "kallsyms").write_text("ffffffff81000000 T _stext\nffffffff81000100 t do_syscall_64\n"
                                       "ffffffff81000200 D some_data\nffffffff81000300 T ksys_write\n")
    sym = Symbolizer(proc=str(tmp_path), kallsyms=str(tmp_path / "kallsyms"))
    assert sym.stack(1, [], [0xFFFFFFFF81000310, 0xFFFFFFFF81000201]) == (
        ("ksys_write", KERNEL_MODULE), ("do_syscall_64", KERNEL_MODULE))


def test_cpu_list_parsing():
    assert parse_cpu_list("0-3,5,7-8\n") == [0, 1, 2, 3, 5, 7, 8]


# -- pprof files -------------------------------------------------------------------------------


def test_file_names_and_rotation(tmp_path):
    assert pprof_files.file_name("api", 0) == "api.19700101T000000Z.pb.gz"
    assert pprof_files.file_name("a/b c", 86400) == "a_b_c.19700102T000000Z.pb.gz"
    now = 10_000.0
    for i, (age, size) in enumerate([(500, 10), (300, 10), (100, 10), (10, 10)]):
        path = tmp_path / f"s{i}.pb.gz"
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    (tmp_path / "other.txt").write_text("kept")
    assert pprof_files.rotate(str(tmp_path), max_age=400, max_bytes=25, now=now) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", "s2.pb.gz", "s3.pb.gz"]


def test_cpu_profile_values_and_labels():
    frames = [("telegen_leaf", "/bin/burn"), ("main", "/bin/burn")]
    data = pprof_files.cpu_profile([(frames, 3, {"pid": 7})], 1.5, 60, 100, "/bin/burn").gzipped()
    profile = Profile.FromString(gzip.decompress(data))
    s = profile.string_table
    assert [(s[t.type], s[t.unit]) for t in profile.sample_type] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert (profile.period, profile.time_nanos, profile.duration_nanos) == (10_000_000, 1_500_000_000, 60 * 10**9)
    [sample] = profile.sample
    assert list(sample.value) == [3, 30_000_000]
    assert {s[label.key]: s[label.str] for label in sample.label} == {"pid": "7"}


# -- OTLP --------------------------------------------------------------------------------------


def otlp_stacks(request):
    d = request.dictionary
    out = []
    for rp in request.resource_profiles:
        for sp in rp.scope_profiles:
            for profile in sp.profiles:
                for sample in profile.samples:
                    out.append((rp.resource.attributes[0].value.string_value, sample.values[0],
                                [(d.string_table[d.function_table[d.location_table[i].lines[0].function_index].name_strindex],
                                  d.string_table[d.function_table[d.location_table[i].lines[0].function_index].filename_strindex])
                                 for i in d.stack_table[sample.stack_index].location_indices]))
    return out


def test_a_window_is_one_request_and_windows_of_a_batch_share_one_dictionary():
    a = (("leaf", "/bin/a"), ("main", "/bin/a"))
    b = (("other", "/bin/b"),)
    first = otlp.window_profiles([({"service.name": "a"}, [(a, 5)], []), ({"service.name": "b"}, [(b, 2), (a, 1)], [])],
                                 1, 60, 99).SerializeToString()
    second = otlp.window_profiles([({"service.name": "b"}, [], [(b, 7_000)])], 61, 60, 99).SerializeToString()
    assert otlp.profile_count(first) == 2 and otlp.profile_count(second) == 1
    one = [Chunk((), {}, [first], [2], len(first))]
    assert otlp.encode_request(one, ResourceCache()) == first        # sent as is: no work on the reactor
    both = [Chunk((), {}, [first], [2], len(first)), Chunk((), {}, [second], [1], len(second))]
    request = ExportProfilesServiceRequest.FromString(otlp.encode_request(both, ResourceCache()))
    assert otlp_stacks(request) == [("a", 5, list(a)), ("b", 2, list(b)), ("b", 1, list(a)), ("b", 7_000, list(b))]
    d = request.dictionary
    assert d.string_table[0] == "" and len(d.stack_table) == 3 and len(d.function_table) == 4
    profiles = [p for rp in request.resource_profiles for sp in rp.scope_profiles for p in sp.profiles]
    assert [d.string_table[p.sample_type.type_strindex] for p in profiles] == ["samples", "samples", "off_cpu"]
    assert d.string_table[profiles[0].period_type.unit_strindex] == "nanoseconds" and profiles[0].period == 10101010
    assert request.resource_profiles[0].scope_profiles[0].scope.name == "telegen"


def resources_of(data):
    """The resource attributes of each ResourceProfiles, as dicts."""
    return [{kv.key: kv.value.int_value or kv.value.string_value for kv in rp.resource.attributes}
            for rp in data.resource_profiles]


# -- the service -------------------------------------------------------------------------------


class FakeSampler:
    """The Sampler's surface."""

    def __init__(self, config, self_pid):
        self.bpf = object()
        self.cpus = [0, 1]
        self.detached = False

    def load(self):
        pass

    def attach_new_cpus(self):
        return []

    def detach(self):
        self.detached = True


class FakeDrainer:
    """The worker's Drainer: one window of samples per drain."""

    def __init__(self):
        self.windows = []

    def drain(self):
        return self.windows.pop(0) if self.windows else Window()

    def new_drops(self):
        return {"stack_collision": 2}


class FakeReader:
    def __init__(self, bpf, name, handler, metrics, reactor=None, drain_interval=None):
        self.handler = handler

    def start(self):
        pass

    def stop(self):
        pass

    def catch_up(self):
        pass


class FakeExporter:
    def __init__(self):
        self.submitted = []

    def submit(self, signal, attrs, records):
        self.submitted.append((signal, attrs, records))
        return len(records)


@pytest.fixture
def profiler(tmp_path, binary):
    path, symbols = binary
    start = fake_proc(tmp_path / "proc", 77, path)
    config = make_config(data_dir=str(tmp_path / "data"))
    config["agent"]["profiling"].update(enabled=True, upload_interval=10)
    clock = Clock()
    drainer = FakeDrainer()
    builder = WindowBuilder(config["agent"]["profiling"], config["telegen"]["data_dir"], drainer,
                            Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path)))
    service = ProfilerService(config, SelfMetrics(), FakeExporter(), None, reactor=clock,
                              sampler_factory=FakeSampler, reader_factory=FakeReader,
                              worker_factory=lambda _: InProcessWorker(builder.handlers()), proc=str(tmp_path / "proc"),
                              run_in_thread=lambda fn, *args: defer.maybeDeferred(fn, *args))
    service.startService()
    leaf = start + symbols["telegen_leaf"] + 5
    returns = tuple(start + symbols[name] + 4 for name in CHAIN[1:])
    drainer.windows.append(Window({(77, (leaf, *returns), ()): 9}, 9))
    service.drainer = drainer
    yield service, clock, tmp_path / "data" / "profiles", path
    service.stopService()


def test_service_is_an_ichild_and_reports_live_status(profiler):
    service, _, _, _ = profiler
    verifyObject(IChild, service)
    assert service.ready_check() == "ok"
    assert service.status()["enabled"] is True and service.status()["cpus"] == [0, 1]
    assert service.reconfigure(service._config) is False


def test_window_becomes_pprof_file_and_otlp_record(profiler):
    service, clock, directory, path = profiler
    service._on_new_pid(struct.pack("<QIII4x", 1, 77, 77, 1))    # first sample: mappings recorded
    clock.advance(10)                                              # the upload_interval timer drains
    [(signal, _, [record])] = service.exporter.submitted
    data = otlp.pb.ProfilesData.FromString(record)
    assert signal == "profiles" and resources_of(data) == [{"process.pid": 77}]
    assert [s.values[0] for s in data.resource_profiles[0].scope_profiles[0].profiles[0].samples] == [9]
    [name] = os.listdir(directory)
    assert name == "unknown_service.19700101T000000Z.pb.gz"
    profile = Profile.FromString(gzip.decompress((directory / name).read_bytes()))
    s = profile.string_table
    functions = {f.id: s[f.name] for f in profile.function}
    assert [functions[loc.line[0].function_id] for loc in profile.location] == list(CHAIN)
    registry = service.metrics.registry
    assert registry.get_sample_value("telegen_profiler_samples_total") == service.status()["samples"] == 9
    assert registry.get_sample_value("telegen_profiler_profiles_total") == service.status()["profiles_collected"] == 1
    assert registry.get_sample_value("telegen_profiler_dropped_total", {"reason": "stack_collision"}) == 2


def test_disabled_profiler_reports_off(tmp_path):
    config = make_config(data_dir=str(tmp_path))
    service = ProfilerService(config, SelfMetrics(), FakeExporter(), None, reactor=Clock(),
                              sampler_factory=FakeSampler, run_in_thread=lambda fn, *a: defer.maybeDeferred(fn, *a))
    service.startService()
    assert service.ready_check() == "disabled"
    assert service.status()["enabled"] is False and service.status()["profiles_collected"] == 0


def test_status_profiling_block_is_the_running_profilers(profiler):
    """GET /status's profiling object comes from the child; without one it is off with the configured rate."""
    from telegen.service import AgentService, ChildSpec
    from telegen.status import agent_status

    service, clock, _, _ = profiler
    clock.advance(10)
    config = make_config()
    config["agent"]["profiling"]["sample_rate"] = 49
    with_child = AgentService(config, reactor=clock, specs=[ChildSpec("profiling", ("agent.profiling",), lambda agent, config: service)])
    assert agent_status(with_child)["profiling"] == {"enabled": True, "sample_rate": 99, "profiles_collected": 1}
    without = AgentService(config, reactor=clock, specs=[])
    assert agent_status(without)["profiling"] == {"enabled": False, "sample_rate": 49, "profiles_collected": 0}


class FakeProcesses:
    """A process table that excludes pid 77 and names everything else."""

    def __init__(self):
        self.execs = []

    def lookup(self, pid):
        return None

    def on_exec(self, pid, comm=None):
        self.execs.append(pid)

    def resource_attributes(self, pid):
        return {"service.name": f"svc-{pid}", "process.pid": pid}

    def selected(self, pid):
        return pid != 77


def test_discovery_selection_applies_and_resources_are_taken_at_the_first_sample(profiler):
    service, clock, directory, _ = profiler
    service.processes = FakeProcesses()
    service._on_new_pid(struct.pack("<QIII4x", 1, 78, 78, 1))
    assert service.processes.execs == [78]                     # the table learns a pid it had not seen
    service.drainer.windows[0].counts[(78, (), ())] = 4
    clock.advance(10)
    [(_, _, [record])] = service.exporter.submitted
    assert resources_of(otlp.pb.ProfilesData.FromString(record)) == [{"service.name": "svc-78", "process.pid": 78}]
    assert os.listdir(directory) == ["svc-78.19700101T000000Z.pb.gz"]
    assert service.metrics.registry.get_sample_value("telegen_profiler_dropped_total", {"reason": "not_selected"}) == 9


def test_off_cpu_samples_are_a_third_pprof_value_and_their_own_otlp_profile(profiler):
    service, clock, directory, path = profiler
    service._config["agent"]["profiling"]["off_cpu"] = True
    service._on_new_pid(struct.pack("<QIII4x", 1, 77, 77, 1))
    leaf, *_ = next(iter(service.drainer.windows[0].counts))[1]
    service.drainer.windows[0].off_cpu[(77, (leaf,), ())] = 2_000_000_000
    clock.advance(10)
    [(_, _, [record])] = service.exporter.submitted
    data = otlp.pb.ProfilesData.FromString(record)
    types = [(data.dictionary.string_table[profile.sample_type.type_strindex], [s.values[0] for s in profile.samples])
             for profile in data.resource_profiles[0].scope_profiles[0].profiles]
    assert types == [("samples", [9]), ("off_cpu", [2_000_000_000])]
    [name] = os.listdir(directory)
    profile = Profile.FromString(gzip.decompress((directory / name).read_bytes()))
    s = profile.string_table
    assert [s[t.type] for t in profile.sample_type] == ["samples", "cpu", "off_cpu"]
    assert sorted(list(sample.value) for sample in profile.sample) == [[0, 0, 2_000_000_000], [9, 90_909_090, 0]]
    assert service.status()["profiles_collected"] == 2


def test_cached_frames_are_forgotten_when_the_mappings_change(tmp_path, binary):
    """An exec or a munmap changes what an address means: the per-process frame cache starts over."""
    path, symbols = binary
    start = fake_proc(tmp_path / "proc", 79, path)
    sym = Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path))
    sym.refresh({79})
    address = start + symbols["telegen_leaf"] + 5
    assert sym.user_frame(79, address, False) == ("telegen_leaf", path)
    fake_proc(tmp_path / "proc", 79, path, start=0x7F0000000000)
    sym.refresh({79})
    assert sym.user_frame(79, address, False) == (f"[unknown] 0x{address:x}", "[unknown]")
    assert sym.user_frame(79, 0x7F0000000000 + symbols["telegen_leaf"] + 5, False) == ("telegen_leaf", path)


def test_a_window_lost_with_its_worker_is_counted_and_the_next_one_works(profiler):
    service, clock, directory, _ = profiler
    handlers = service.worker.handlers
    build = handlers["build"]

    def crash(*args):
        service._worker_crashed("exited")           # what Worker does before failing the calls in flight
        raise WorkerCrashed("profiler worker ended")
    handlers["build"] = crash
    clock.advance(10)
    registry = service.metrics.registry
    assert registry.get_sample_value("telegen_profiler_dropped_total", {"reason": "worker_crashed"}) == 1
    assert registry.get_sample_value("telegen_profiler_worker_restarts_total") == 1
    assert service.status()["profiles_collected"] == 0 and not service.exporter.submitted
    handlers["build"] = build
    service.drainer.windows.append(Window({(77, (), ()): 5}, 5))
    clock.advance(10)
    assert service.status()["profiles_collected"] == 1


def test_frame_caches_are_bounded_and_evictions_counted(tmp_path, binary):
    """Past cache_entries, the caches of the processes sampled longest ago go first; what went is counted."""
    path, symbols = binary
    for pid in (81, 82):
        fake_proc(tmp_path / "proc", pid, path)
    sym = Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path), cache_entries=100)
    sym.refresh({81})
    for offset in range(60):
        sym.user_frame(81, 0x555555555000 + offset, False)
    sym.refresh({82})
    for offset in range(60):
        sym.user_frame(82, 0x555555555000 + offset, False)
    assert sym.cached() <= 100
    assert sym.take_evictions() == 60 and sym.take_evictions() == 0     # pid 81's, sampled a window earlier
    assert sym.user_frame(82, 0x555555555000, False)[1] == path


def test_cpp_and_rust_names_are_demangled(tmp_path):
    """A g++-built function resolves to its C++ name; a Rust legacy symbol loses its hash suffix."""
    if shutil.which("g++") is None or shutil.which("c++filt") is None:
        pytest.skip("needs g++ and c++filt (binutils)")
    source = tmp_path / "cpp.cc"
    source.write_text("namespace telegen { template <typename T> struct Box { __attribute__((noinline)) T spin(T n); };\n"
                      "template <typename T> T Box<T>::spin(T n) { volatile T s = 0; for (T i = 0; i < n; i++) s += i; return s; } }\n"
                      "int main() { return telegen::Box<int>().spin(3); }\n")
    binary = str(tmp_path / "cpp")
    subprocess.run(["g++", "-O2", "-fno-omit-frame-pointer", "-o", binary, str(source)], check=True)
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    [(address, mangled)] = [(int(p[0], 16), p[2]) for p in map(str.split, nm.splitlines()) if len(p) == 3 and "spin" in p[2]]
    start = fake_proc(tmp_path / "proc", 83, binary)
    sym = Symbolizer(proc=str(tmp_path / "proc"), perf_map_dir=str(tmp_path))
    sym.refresh({83})
    assert mangled.startswith("_Z")
    name, module = sym.user_frame(83, start + address + 2, False)
    assert name.startswith("telegen::Box<int>::spin(int)") and module == binary     # gcc may add " [clone .isra.0]"
    assert Demangler().demangle("_ZN4core3fmt5write17h0123456789abcdefE") == "core::fmt::write"
    assert Demangler().demangle("not_mangled") == "not_mangled"
