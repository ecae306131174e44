"""
The /debug sub-app through a real Site in memory (StubTreq): status codes, content types, the error
JSON, and profile contents decoded with the protobuf runtime. A fake reactor runs thread-pool work
synchronously, so nothing here needs sockets or root.
"""
import json
import sys
import tracemalloc
from types import SimpleNamespace

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from telegen.api.debug import DebugApi
from telegen.config import defaults
from telegen.selfmetrics import SelfMetrics
from tests.support.pprof_read import parse_profile, sample_type_names, stacks_of


class SynchronousPool:
    """A thread pool that runs the work at once, in the calling thread."""

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        try:
            result = func(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class FakeReactor(MemoryReactorClock):
    """MemoryReactorClock plus the two thread calls deferToThreadPool uses."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def getThreadPool(self):
        return SynchronousPool()


def fake_agent():
    """What DebugApi reads from the agent: its config and its self-metrics."""
    config = defaults()
    config["self_telemetry"]["debug"]["enabled"] = True
    return SimpleNamespace(config=config, metrics=SelfMetrics(), status=lambda: {"mode": "agent"})


def pending_flush():
    """A named function for the reactor's delayed-call listing."""


class DebugApiTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.agent = fake_agent()
        self.client = StubTreq(DebugApi(self.agent, reactor=self.reactor).app.resource())

    def get(self, path):
        """(response, body bytes) of a GET relative to /debug."""
        response = self.successResultOf(self.client.get("http://debug.test" + path))
        return response, self.successResultOf(response.content())

    def assertError(self, path, code, error):
        response, body = self.get(path)
        self.assertEqual(response.code, code, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        document = json.loads(body)
        self.assertEqual(document["error"], error)
        self.assertTrue(document["message"])
        return response, document

    def test_index_links_every_profile(self):
        """The index is HTML linking each profile relative to /debug/pprof/, and /debug/vars."""
        response, body = self.get("/pprof/")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/html"))
        for link in ("profile?seconds=30", "heap", "goroutine?debug=1", "threadcreate", "block", "mutex", "trace", "../vars"):
            self.assertIn(f'href="{link}"'.encode(), body)

    def test_vars_has_cmdline_memstats_and_counters(self):
        """cmdline is argv; memstats has RSS and three GC generations; counters come from the registry."""
        self.agent.metrics.spans_collected.inc(7)
        self.agent.metrics.queue_dropped.labels(signal_type="traces", reason="queue_full").inc(3)
        response, body = self.get("/vars")
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual(document["cmdline"], sys.argv)
        memstats = document["memstats"]
        self.assertGreater(memstats["rss_bytes"], 1_000_000)
        self.assertEqual(len(memstats["gc"]["generations"]), 3)
        self.assertEqual(set(memstats["gc"]["generations"][0]), {"collections", "collected", "uncollectable"})
        self.assertEqual(len(memstats["gc"]["pending"]), 3)
        self.assertEqual(memstats["tracemalloc"]["tracing"], tracemalloc.is_tracing())
        counters = document["counters"]
        self.assertEqual(counters["telegen_spans_collected_total"], 7.0)
        self.assertEqual(counters["telegen_queue_dropped_total"]["reason=queue_full,signal_type=traces"], 3.0)
        self.assertFalse(any(name.endswith("_created") for name in counters))

    def test_goroutine_debug_1_groups_stacks_and_lists_delayed_calls(self):
        """Text with this test's own frame, and the pending call by name only (never its arguments)."""
        self.reactor.callLater(5, pending_flush, "secret-token-value")
        response, body = self.get("/pprof/goroutine?debug=1")
        self.assertEqual(response.code, 200)
        text = body.decode()
        self.assertTrue(text.startswith("thread profile: total "))
        self.assertIn("test_goroutine_debug_1_groups_stacks_and_lists_delayed_calls", text)
        self.assertIn("reactor: 1 pending delayed calls", text)
        self.assertIn(f"in 5.000s\t{__name__}.pending_flush", text)
        self.assertNotIn("secret-token-value", text)

    def test_goroutine_debug_2_is_a_traceback_per_thread(self):
        """Each thread with its name and Python-traceback lines with source."""
        _response, body = self.get("/pprof/goroutine?debug=2")
        text = body.decode()
        self.assertIn("[MainThread]", text)
        self.assertIn(f'File "{__file__}"', text)
        self.assertIn('self.get("/pprof/goroutine?debug=2")', text)

    def test_goroutine_proto_counts_threads(self):
        """Without debug: goroutine/count profile.proto, one unit per thread, labelled by name."""
        response, body = self.get("/pprof/goroutine")
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/octet-stream"])
        profile = parse_profile(body)
        self.assertEqual(sample_type_names(profile), [("goroutine", "count")])
        samples = stacks_of(profile)
        self.assertEqual(sum(v[0] for _n, v, _l in samples), len(sys._current_frames()))
        main = [names for names, _v, labels in samples if labels["thread"] == "MainThread"]
        self.assertTrue(any(f"{__name__}.DebugApiTests.test_goroutine_proto_counts_threads" in n for n in main[0]))

    def test_threadcreate_lists_threads_by_entry_function(self):
        """One sample per live thread; the main thread at python.main_thread."""
        _response, body = self.get("/pprof/threadcreate")
        samples = stacks_of(parse_profile(body))
        self.assertIn((["python.main_thread"], [1], {"thread": "MainThread", "daemon": "false"}), samples)

    def test_heap_is_tracemalloc_inuse_and_finds_a_live_allocation(self):
        """Tracing starts on the first request; a block allocated after it shows under its function."""
        was_tracing = tracemalloc.is_tracing()
        try:
            response, _body = self.get("/pprof/heap?frames=8")
            self.assertEqual(response.headers.getRawHeaders("x-tracemalloc-started"), ["false" if was_tracing else "true"])
            if not was_tracing:
                self.assertEqual(response.headers.getRawHeaders("x-tracemalloc-frames"), ["8"])
            kept = allocate_for_heap_test()
            response, body = self.get("/pprof/heap?gc=1")
            self.assertEqual(response.headers.getRawHeaders("x-tracemalloc-started"), ["false"])
            profile = parse_profile(body)
            self.assertEqual(sample_type_names(profile), [("inuse_objects", "count"), ("inuse_space", "bytes")])
            self.assertEqual(profile.string_table[profile.default_sample_type], "inuse_space")
            ours = sum(v[1] for names, v, _l in stacks_of(profile) if f"{__name__}.allocate_for_heap_test" in names)
            self.assertGreaterEqual(ours, 4 * 1024 * 1024)
            _response, text = self.get("/pprof/heap?debug=1")
            self.assertIn(f"{__name__}.allocate_for_heap_test".encode(), text)
            del kept
        finally:
            if not was_tracing:
                tracemalloc.stop()

    def test_profile_returns_gzipped_cpu_profile(self):
        """One second of sampling (run synchronously by the fake pool) gives a CPU profile.proto."""
        response, body = self.get("/pprof/profile?seconds=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(body[:2], b"\x1f\x8b")
        self.assertEqual(response.headers.getRawHeaders("content-disposition"), ['attachment; filename="profile"'])
        profile = parse_profile(body)
        self.assertEqual(sample_type_names(profile), [("samples", "count"), ("cpu", "nanoseconds")])
        self.assertGreaterEqual(profile.duration_nanos, 1_000_000_000)

    def test_profile_seconds_is_validated(self):
        """0, past the maximum, and not a number: 400 invalid_request naming the argument."""
        for bad in ("0", "301", "abc", "-3"):
            _response, document = self.assertError(f"/pprof/profile?seconds={bad}", 400, "invalid_request")
            self.assertIn("seconds", document["message"])

    def test_profile_while_one_runs_is_503_with_retry_after(self):
        """The second profile is refused with the error JSON and Retry-After."""
        from telegen.debug.cpu import CpuProfiler

        CpuProfiler._deadline = self.reactor.seconds() + 1e9  # as if one ran, far from done
        try:
            response, document = self.assertError("/pprof/profile?seconds=5", 503, "service_unavailable")
            self.assertTrue(int(response.headers.getRawHeaders("retry-after")[0]) >= 1)
            self.assertIn("already running", document["message"])
        finally:
            CpuProfiler._deadline = None

    def test_block_mutex_trace_say_why_there_is_none(self):
        """501 not_implemented with the reason in details."""
        for name in ("block", "mutex", "trace"):
            _response, document = self.assertError(f"/pprof/{name}", 501, "not_implemented")
            self.assertEqual(document["details"]["profile"], name)
            self.assertTrue(document["details"]["reason"])

    def test_unknown_debug_path_and_wrong_method_are_error_json(self):
        """404 and 405 inside /debug render the standard error JSON too."""
        self.assertError("/pprof/nothing", 404, "not_found")
        response = self.successResultOf(self.client.post("http://debug.test/vars"))
        self.assertEqual(response.code, 405)
        self.assertEqual(json.loads(self.successResultOf(response.content()))["error"], "method_not_allowed")

    def test_index_without_slash_redirects_with_location(self):
        """/pprof answers 308 to /pprof/ (relative links need the slash), Location set, body the error JSON."""
        response = self.successResultOf(self.client.get("http://debug.test/pprof", allow_redirects=False))
        body = self.successResultOf(response.content())
        self.assertEqual(response.code, 308)
        self.assertEqual(response.headers.getRawHeaders("location"), ["http://debug.test/pprof/"])
        self.assertEqual(json.loads(body)["details"]["location"], "http://debug.test/pprof/")

    def test_debug_and_frames_arguments_are_validated(self):
        """goroutine?debug=3 and heap?frames=0 are refused before anything starts."""
        self.assertError("/pprof/goroutine?debug=3", 400, "invalid_request")
        was_tracing = tracemalloc.is_tracing()
        self.assertError("/pprof/heap?frames=0", 400, "invalid_request")
        self.assertEqual(tracemalloc.is_tracing(), was_tracing)


def allocate_for_heap_test():
    """Four 1 MiB blocks allocated here (and kept by the caller)."""
    return [bytearray(1024 * 1024) for _ in range(4)]
