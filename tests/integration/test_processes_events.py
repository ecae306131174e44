"""
The process table on the real kernel: sched exec/exit events through EbpfService and the
`process` probe, and the real /proc.

The rescan period is an hour, so after the initial scan only the kernel events can explain what
the table learns. Assertions concern only the test's own child processes (other engineers run
processes on this machine at the same time).
"""
import os
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer

from telegen.discovery.processes import ProcessTable
from telegen.ebpf.process_events import ProcessProbe
from telegen.ebpf.service import EbpfService
from telegen.selfmetrics import SelfMetrics
from tests.support.twisted_wait import until
from tests.support.fakes import make_config
from tests.support.fakes import RecordingPipeline

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


def start_table(config, metrics):
    table = ProcessTable(config, metrics, exit_grace=0.2)
    table.startService()
    return table


@pytest_twisted.ensureDeferred
async def test_initial_scan_finds_running_processes_with_their_service_name():
    """A process started before the table is found by the /proc scan, with OTEL_SERVICE_NAME and listening ports."""
    server = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
         "print(s.getsockname()[1], flush=True); time.sleep(60)"],
        env={**os.environ, "OTEL_SERVICE_NAME": "scanned-svc"}, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        metrics = SelfMetrics()
        table = start_table(make_config(), metrics)
        await until(lambda: table.ready_check() == "ok", message="initial scan")
        attrs = table.resource_attributes(server.pid)
        assert attrs["service.name"] == "scanned-svc"
        assert attrs["process.executable.path"] == os.path.realpath(sys.executable)
        assert table.listener_pid(port) == server.pid
        [service] = [s for s in table.services() if s["name"] == "scanned-svc"]
        assert service["ports"] == [port] and service["instances"] == 1
        assert metrics.registry.get_sample_value("telegen_processes_tracked") >= 2
        table.stopService()
    finally:
        server.kill()
        server.wait()


@pytest_twisted.ensureDeferred
async def test_exec_and_exit_events_add_and_remove_a_child():
    """A child started later appears with service.name foo (exec event) and leaves the table when killed (exit event)."""
    config = make_config()
    config["agent"]["discovery"]["poll_interval"] = 3600.0
    metrics = SelfMetrics()
    table = start_table(config, metrics)
    await until(lambda: table.ready_check() == "ok", message="initial scan")
    ebpf = EbpfService(config, metrics, RecordingPipeline(), table, probes=[ProcessProbe(table)])
    ebpf.startService()
    try:
        await until(lambda: ebpf.ready_check() == "ok", timeout=120, message=f"process probe attached ({ebpf.ready_check()})")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, "OTEL_SERVICE_NAME": "foo"})
        try:
            info = await until(lambda: table.lookup(child.pid), message="exec event for the child")
            assert info.service_name == "foo"
            assert table.resource_attributes(child.pid)["service.name"] == "foo"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        await until(lambda: table.lookup(child.pid) is None, message="exit event for the child")
        # Forgotten, yet its resource stays for telemetry flushed later (RED, TCP metrics).
        assert table.resource_attributes(child.pid)["service.name"] == "foo"
    finally:
        await defer.maybeDeferred(ebpf.stopService)
        table.stopService()


@pytest_twisted.ensureDeferred
async def test_a_forked_worker_gone_before_it_was_read_is_known_by_its_parent():
    """
    A child forked without exec that exits at once (a forking server's worker) is never read from
    /proc: its exit event's parent pid (the kernel's task_struct at its BTF offsets) gives it the
    parent's executable, not just its comm. Asked for before the reactor read that event (as a
    span may be), the table catches up with the ring first.
    """
    config = make_config()
    config["agent"]["discovery"]["poll_interval"] = 3600.0
    # The CPU governor would measure this process (the probe's compile included) and hold the reader.
    config["agent"]["ebpf"].update(min_cpu=64.0, max_cpu=64.0)
    table = start_table(config, SelfMetrics())
    await until(lambda: table.ready_check() == "ok", message="initial scan")
    ebpf = EbpfService(config, SelfMetrics(), RecordingPipeline(), table, probes=[ProcessProbe(table)])
    ebpf.startService()
    try:
        await until(lambda: ebpf.ready_check() == "ok", timeout=120, message=f"process probe attached ({ebpf.ready_check()})")
        parent = subprocess.Popen([sys.executable, "-c", "import os, sys, time\n"
                                   "pid = os.fork()\n"
                                   "if pid == 0: os._exit(0)\n"
                                   "os.waitpid(pid, 0); print(pid, flush=True); time.sleep(60)"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            worker = int(parent.stdout.readline())      # reaped: gone from /proc; the reactor has not run since
            assert table.lookup(worker) is None
            attrs = table.resource_attributes(worker)
            assert attrs["process.executable.path"] == os.path.realpath(sys.executable)
            assert attrs["process.command_line"] == table.lookup(parent.pid).command_line
        finally:
            parent.kill()
            parent.wait()
    finally:
        await defer.maybeDeferred(ebpf.stopService)
        table.stopService()
