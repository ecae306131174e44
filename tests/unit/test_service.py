"""
The service tree: the production children, rebuilds by changed sections and dependencies, the
bounded shutdown, the twistd plugin and options, the log observer and the CLI.
"""
import copy
import io
import json
import os
import subprocess
import sys
import tempfile

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from telegen import cli
from telegen.config import defaults
from telegen.config.view import UndeclaredConfigKey
from telegen.logconfig import make_observer
from telegen.service import AgentService, ChildSpec
from tests.support.fakes import FakeChild

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Recorder(FakeChild):
    """A child that records the config it was built with and can refuse to stop."""

    def __init__(self, agent, config, stop_result=None):
        super().__init__(agent, config)
        self.stop_result = stop_result

    def stopService(self):
        super().stopService()
        return self.stop_result


class InPlace(Recorder):
    """A child that applies every new slice itself."""

    in_place = True


class TreeTests(SynchronousTestCase):
    """Reloads reconfigure in place or rebuild, by changed slices and declared dependencies, in order."""

    def make(self, stop_result=None, ebpf=Recorder):
        specs = [
            ChildSpec("processes", ("agent.discovery",), Recorder),
            ChildSpec("export", ("otlp",), lambda agent, config: Recorder(agent, config, stop_result)),
            ChildSpec("ebpf", ("agent.ebpf", "self_telemetry.listen"), ebpf, depends_on=("processes",)),
            ChildSpec("api", ("self_telemetry",), Recorder),
        ]
        self.reactor = MemoryReactorClock()
        agent = AgentService(defaults(), reactor=self.reactor, specs=specs)
        agent.startService()
        return agent

    def test_dependency_forces_rebuild(self):
        agent = self.make()
        ebpf, api = agent.child("ebpf"), agent.child("api")
        new = copy.deepcopy(agent.config)
        new["agent"]["discovery"]["poll_interval"] = 9.0
        result = self.successResultOf(agent.apply_config(new))
        self.assertEqual((result.rebuilt, result.reconfigured), (["ebpf", "processes"], []))
        self.assertIsNot(agent.child("ebpf"), ebpf)
        self.assertIs(agent.child("api"), api)
        self.assertTrue(agent.child("ebpf").running)
        self.assertIsNone(ebpf.parent)

    def test_stop_order_is_the_declared_one_whatever_was_rebuilt(self):
        agent = self.make()
        stopped = []
        new = copy.deepcopy(agent.config)
        new["otlp"]["endpoint"] = "collector:4317"          # export rebuilt: added last to the collection
        self.successResultOf(agent.apply_config(new))
        for child in agent:
            child.stopService = lambda name=child.name: stopped.append(name)
        self.successResultOf(agent.stopService())
        self.assertEqual(stopped, ["api", "ebpf", "export", "processes"])

    def test_every_child_is_told_of_each_section_it_declared(self):
        """The reproduced bug: the ebpf child read self_telemetry.listen but was not told it changed."""
        agent = self.make(ebpf=InPlace)
        ebpf = agent.child("ebpf")
        new = copy.deepcopy(agent.config)
        new["self_telemetry"]["listen"] = "127.0.0.1:19191"
        result = self.successResultOf(agent.apply_config(new))
        self.assertEqual((result.rebuilt, result.reconfigured), (["api"], ["ebpf"]))
        self.assertIs(agent.child("ebpf"), ebpf)
        self.assertEqual(ebpf.config_seen["self_telemetry"]["listen"], "127.0.0.1:19191")

    def test_a_child_reads_only_its_declared_slice(self):
        agent = self.make()
        seen = agent.child("ebpf").config_seen
        self.assertEqual(seen["agent"]["ebpf"]["ringbuf_size"], agent.config["agent"]["ebpf"]["ringbuf_size"])
        with self.assertRaises(UndeclaredConfigKey):
            seen["self_telemetry"]["auth"]
        with self.assertRaises(UndeclaredConfigKey):
            seen["agent"].get("host_metrics")      # not swallowed into a default
        self.assertEqual(list(seen["agent"]), ["ebpf"])

    def test_unchanged_config_rebuilds_nothing(self):
        agent = self.make()
        result = self.successResultOf(agent.apply_config(copy.deepcopy(agent.config)))
        self.assertEqual(result.changed, [])

    def test_child_turned_off_and_on(self):
        specs = [ChildSpec("extra", ("manhole",),
                           lambda a, config: Recorder(a, config) if config["manhole"]["enabled"] else None)]
        agent = AgentService(defaults(), reactor=MemoryReactorClock(), specs=specs)
        agent.startService()
        self.assertIsNone(agent.child("extra"))
        on = copy.deepcopy(agent.config)
        on["manhole"]["enabled"] = True
        self.successResultOf(agent.apply_config(on))
        self.assertTrue(agent.child("extra").running)
        self.successResultOf(agent.apply_config(defaults()))
        self.assertIsNone(agent.child("extra"))

    def test_overlapping_reloads_run_one_after_the_other_each_with_its_own_answer(self):
        """A second reload waits for the first; each caller gets its own result, the newest file wins."""
        loads = []

        def loader(path):
            loads.append(defer.Deferred())
            return loads[-1]

        agent = AgentService(defaults(), reactor=MemoryReactorClock(), specs=[
            ChildSpec("export", ("otlp",), Recorder)], loader=loader)
        agent.startService()
        first, second = agent.reload(), agent.reload()
        self.assertEqual(len(loads), 1)  # the second has not started loading yet
        one = copy.deepcopy(agent.config)
        one["otlp"]["endpoint"] = "first:4317"
        loads[0].callback(one)
        self.assertEqual(self.successResultOf(first).rebuilt, ["export"])
        self.assertNoResult(second)
        two = copy.deepcopy(one)
        two["otlp"]["endpoint"] = "second:4317"
        loads[1].callback(two)
        self.assertEqual(self.successResultOf(second).rebuilt, ["export"])
        self.assertEqual(agent.child("export").config_seen["otlp"]["endpoint"], "second:4317")

    def test_a_failed_reload_does_not_block_the_next(self):
        from telegen.config import ConfigError

        outcomes = [defer.fail(ConfigError("f.yaml", "otlp.protocol", "bad")), defer.succeed(defaults())]
        agent = AgentService(defaults(), reactor=MemoryReactorClock(), specs=[], loader=lambda path: outcomes.pop(0))
        self.failureResultOf(agent.reload(), ConfigError)
        self.assertEqual(self.successResultOf(agent.reload()).changed, [])

    def test_shutdown_is_bounded_by_shutdown_timeout(self):
        agent = self.make(stop_result=defer.Deferred())
        d = agent.stopService()
        self.assertNoResult(d)
        self.reactor.advance(agent.config["telegen"]["shutdown_timeout"] + 0.1)
        self.successResultOf(d)
        self.assertTrue(agent.stopping)

    def test_export_handle_counts_when_no_pipeline(self):
        agent = AgentService(defaults(), reactor=MemoryReactorClock(), specs=[])
        self.assertEqual(agent.exporter.submit("traces", {}, [1, 2]), 0)
        dropped = agent.metrics.registry.get_sample_value(
            "telegen_queue_dropped_total", {"signal_type": "traces", "reason": "disabled"})
        self.assertEqual(dropped, 2)


class ProductionTreeTests(SynchronousTestCase):
    """makeService builds the documented children without starting anything heavy."""

    def test_children_of_the_default_config(self):
        from telegen import tap

        niceness = []
        self.patch(tap, "set_niceness", niceness.append)  # the test process keeps its own priority
        options = tap.Options()
        options.parseOptions(["--config", os.path.join(ROOT, "etc", "telegen", "config.yaml")])
        agent = tap.makeService(options)
        self.assertEqual(niceness, [10])
        self.assertEqual([s.name for s in agent], ["processes", "export", "hostmetrics", "ebpf", "api"])
        self.assertIsNone(agent.child("manhole"))

    def test_bad_config_exits_2_with_one_line(self):
        from telegen.tap import Options

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("otlp:\n  protocol: smoke-signals\n")
        self.addCleanup(os.unlink, f.name)
        path = f.name
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as raised:
            Options().parseOptions(["--config", path])
        self.assertEqual(raised.exception.code, 2)
        lines = stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertIn("otlp.protocol", lines[0])


class PluginTests(SynchronousTestCase):
    """The plugin module imports nothing heavy, and twistd lists it."""

    def test_plugin_import_is_light(self):
        code = ("import sys; from twisted.plugins import telegen_plugin; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bcc', 'grpc', 'klein', 'treq', 'telegen')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        self.assertEqual(out.stdout.strip(), "[]")

    def test_twistd_lists_telegen(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out = subprocess.run([twistd, "--help"], capture_output=True, text=True, cwd=ROOT)
        self.assertIn("telegen", out.stdout)


class LogObserverTests(SynchronousTestCase):
    """json lines and the level filter."""

    def emit(self, level_name, fmt, **config_changes):
        from twisted.logger import Logger, LogPublisher

        config = defaults()
        config["telegen"].update(config_changes)
        stream = io.StringIO()
        publisher = LogPublisher(make_observer(config, stream))
        getattr(Logger(namespace="telegen.test", observer=publisher), level_name)(fmt, value=42)
        return stream.getvalue()

    def test_json_line(self):
        record = json.loads(self.emit("info", "value is {value}"))
        self.assertEqual((record["level"], record["namespace"], record["message"]), ("info", "telegen.test", "value is 42"))
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_level_filter(self):
        self.assertEqual(self.emit("debug", "hidden"), "")
        self.assertIn("shown", self.emit("debug", "shown", log_level="debug"))

    def test_text_format(self):
        self.assertIn("value is 42", self.emit("warn", "value is {value}", log_format="text"))


class CliTests(SynchronousTestCase):
    """telegen version and the status rendering."""

    def test_version_json(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(cli.main(["version", "--json"]), 0)
        from telegen import __version__

        info = json.loads(out.getvalue())
        self.assertEqual((info["version"], info["commit"]), (__version__, "unknown"))

    def test_render_status(self):
        from tests.support.fakes import make_agent

        agent = make_agent(MemoryReactorClock())
        from telegen.status import readiness

        text = cli.render_status(agent.status(), readiness(agent)[1])
        self.assertIn("Ready:     ready", text)
        self.assertIn("collector.example:4317", text)
        self.assertIn(os.uname().release, text)


