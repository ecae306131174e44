"""The process probe decodes header-only exec/exit events into ProcessTable calls."""

from telegen.ebpf.process_events import HEADER, PROCESS_EXEC, PROCESS_EXIT, ProcessProbe
from tests.unit.test_process_table import make_config


class Calls:
    """Records on_exec/on_exit like the ProcessTable would receive them."""

    def __init__(self):
        self.seen = []

    def on_exec(self, pid):
        self.seen.append(("exec", pid))

    def on_exit(self, pid):
        self.seen.append(("exit", pid))


def feed(probe, kind, pid):
    probe.ring_buffers()["process_events"](HEADER.pack(123, pid, pid + 1, kind))


def test_exec_and_exit_reach_the_table_by_tgid():
    """kind picks the call; the header's pid (tgid), not the tid, is passed; unknown kinds are ignored."""
    calls = Calls()
    probe = ProcessProbe(calls)
    feed(probe, PROCESS_EXEC, 100)
    feed(probe, PROCESS_EXIT, 100)
    feed(probe, 99, 7)
    assert calls.seen == [("exec", 100), ("exit", 100)]


def test_enabled_with_ebpf_and_sized_from_config():
    """The probe follows agent.ebpf.enabled; its ring buffer is the configured size, at most 1 MiB."""
    probe, config = ProcessProbe(Calls()), make_config()
    assert probe.enabled(config) and probe.ringbuf_size(config) == 1 << 20
    config["agent"]["ebpf"]["ringbuf_size"] = 1 << 16
    assert probe.ringbuf_size(config) == 1 << 16
    config["agent"]["ebpf"]["enabled"] = False
    assert not probe.enabled(config)
