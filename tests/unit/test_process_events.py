"""The process probe decodes exec/exit events (header and comm) into ProcessTable calls."""

from telegen.ebpf import process_events
from telegen.ebpf.btf import BtfError
from telegen.ebpf.process_events import EVENT, PROCESS_EXEC, PROCESS_EXIT, ProcessProbe
from tests.support.fakes import make_config


class Calls:
    """Records on_exec/on_exit like the ProcessTable would receive them."""

    def __init__(self):
        self.seen = []

    def on_exec(self, pid, comm):
        self.seen.append(("exec", pid, comm))

    def on_exit(self, pid, comm, ppid):
        self.seen.append(("exit", pid, comm, ppid))


def feed(probe, kind, pid, comm=b"curl"):
    probe.ring_buffers()["process_events"](EVENT.pack(123, pid, pid + 1, kind, comm, pid // 2))


def test_exec_and_exit_reach_the_table_by_tgid_with_the_comm():
    """
    kind picks the call; the header's pid (tgid), not the tid, is passed with the comm up to its
    NUL (a full 15-byte one has no NUL but the last byte; bad UTF-8 is replaced); unknown kinds are ignored.
    """
    calls = Calls()
    probe = ProcessProbe(calls)
    feed(probe, PROCESS_EXEC, 100)
    feed(probe, PROCESS_EXIT, 100, b"a-very-long-nam\0")
    feed(probe, PROCESS_EXEC, 101, b"caf\xc3\xa9\xff")
    feed(probe, 99, 7)
    assert calls.seen == [("exec", 100, "curl"), ("exit", 100, "a-very-long-nam", 50), ("exec", 101, "caf\u00e9\ufffd")]


def test_enabled_with_ebpf_and_sized_from_config():
    """The probe follows agent.ebpf.enabled; its ring buffer is the configured size, at most 1 MiB."""
    probe, config = ProcessProbe(Calls()), make_config()
    assert probe.enabled(config) and probe.ringbuf_size(config) == 1 << 20
    config["agent"]["ebpf"]["ringbuf_size"] = 1 << 16
    assert probe.ringbuf_size(config) == 1 << 16
    config["agent"]["ebpf"]["enabled"] = False
    assert not probe.enabled(config)


def test_without_kernel_btf_the_probe_loads_and_exits_carry_no_parent(monkeypatch):
    """The parent's offsets come from the kernel's BTF; without it the probe still loads (ppid 0)."""
    def unreadable(path=None):
        raise BtfError("kernel BTF unreadable: /nowhere")
    monkeypatch.setattr(process_events.KernelBtf, "load", unreadable)
    assert ProcessProbe(Calls()).cflags(make_config()) == []
