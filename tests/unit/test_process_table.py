"""
ProcessTable over a fake /proc tree and a Clock: resources, exec/exit handling, listening ports.

No root, no threads: the table's scans run synchronously through an injected runner.
"""

from twisted.internet.task import Clock

from telegen.discovery import processes
from tests.support.fake_proc import make_table
from tests.support.fakes import make_config


def gauge(metrics):
    return metrics.registry.get_sample_value("telegen_processes_tracked")


def test_initial_scan_reads_service_name_from_environment(tmp_path):
    """OTEL_SERVICE_NAME names the service; without it the executable's name does."""
    proc, metrics, table = make_table(tmp_path)
    proc.add(10, "/usr/bin/python3.11", ["python3", "app.py", "--port", "80"], {"OTEL_SERVICE_NAME": "foo", "PATH": "/bin"})
    proc.add(11, "/usr/sbin/nginx", ["nginx: worker"])
    assert table.ready_check() == "failed: initial /proc scan not finished"
    table.startService()
    assert table.ready_check() == "ok"
    assert gauge(metrics) == 2
    attrs = table.resource_attributes(10)
    assert attrs["service.name"] == "foo"
    assert attrs["process.pid"] == 10
    assert attrs["process.executable.name"] == "python3.11"
    assert attrs["process.executable.path"] == "/usr/bin/python3.11"
    assert attrs["process.command_line"] == "python3 app.py --port 80"
    assert attrs["service.instance.id"].endswith(":10")
    assert attrs["host.name"] and attrs["deployment.environment"] == "test"
    assert table.resource_attributes(11)["service.name"] == "nginx"
    table.stopService()


def test_resource_attributes_fall_back_to_resource_env_and_never_take_agent_service(tmp_path):
    """service.name/namespace from OTEL_RESOURCE_ATTRIBUTES; an unknown pid gets host facts and unknown_service."""
    proc, _, table = make_table(tmp_path)
    proc.add(12, "/usr/bin/java", ["java"], {"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,service.namespace=shop%20a"})
    table.startService()
    attrs = table.resource_attributes(12)
    assert (attrs["service.name"], attrs["service.namespace"]) == ("billing", "shop a")
    unknown = table.resource_attributes(999)
    assert "host.name" in unknown and unknown["process.pid"] == 999
    assert [k for k in unknown if k.startswith("service.")] == ["service.name"] and unknown["service.name"] == "unknown_service"
    owner_unknown = table.resource_attributes(0)
    assert owner_unknown["service.name"] == "unknown_service" and not any(k.startswith("process.") for k in owner_unknown)
    proc.add(13, "/usr/bin/late", ["late"], {"OTEL_SERVICE_NAME": "late-svc"})
    assert table.resource_attributes(13)["service.name"] == "late-svc"     # read on demand, before any event
    table.stopService()


def test_exit_removes_after_grace_and_exec_rereads(tmp_path):
    """on_exit forgets the pid only after the grace period; on_exec re-reads the new image."""
    clock = Clock()
    proc, metrics, table = make_table(tmp_path, clock)
    proc.add(20, "/bin/sh", ["sh"])
    table.startService()
    assert table.resource_attributes(20)["service.name"] == "sh"
    proc.add(20, "/usr/bin/curl", ["curl", "x"], {"OTEL_SERVICE_NAME": "fetcher"}, start=200)
    table.on_exec(20)
    assert table.resource_attributes(20)["service.name"] == "fetcher"
    table.on_exit(20)
    assert table.lookup(20) is not None
    clock.advance(table.exit_grace)
    assert table.lookup(20) is None
    assert gauge(metrics) == 0
    table.stopService()


def test_a_process_gone_before_its_events_are_read_is_known_by_its_comm_for_the_grace_period(tmp_path):
    """
    curl exits within milliseconds: its exec event finds no /proc entry, yet its spans get
    service.name curl from the event's comm, until the grace period ends. An exit event of a pid
    never seen does the same; a rescan meanwhile keeps it. Without a comm nothing is invented.
    """
    clock = Clock()
    proc, metrics, table = make_table(tmp_path, clock)
    table.startService()
    assert table.resource_attributes(40)["service.name"] == "unknown_service"   # asked before its event
    table.on_exec(40, "curl")
    attrs = table.resource_attributes(40)
    assert (attrs["service.name"], attrs["process.executable.name"], attrs["process.pid"]) == ("curl", "curl", 40)
    assert "process.executable.path" not in attrs and "process.command_line" not in attrs
    table.on_exit(40, "curl")
    table.on_exit(41, "wget")
    table.rescan()
    assert table.resource_attributes(41)["service.name"] == "wget" and table.lookup(40).exe_name == "curl"
    clock.advance(table.exit_grace)
    assert table.lookup(40) is None and table.lookup(41) is None and gauge(metrics) == 0
    table.on_exec(42)
    table.on_exit(42)
    assert table.lookup(42) is None and table.resource_attributes(42)["service.name"] == "unknown_service"
    table.stopService()


def test_a_forgotten_process_keeps_its_resource_for_later_metrics_until_its_pid_is_reused(tmp_path, monkeypatch):
    """
    RED and TCP metrics are flushed every host_metrics.interval, long after the exit grace: they
    still get the process's resource. A new process on that pid replaces it; the memory is bounded.
    """
    monkeypatch.setattr(processes, "DEPARTED_MAX", 2)
    clock = Clock()
    proc, _, table = make_table(tmp_path, clock)
    proc.add(50, "/usr/bin/python3.11", ["python3", "job.py"], {"OTEL_SERVICE_NAME": "nightly-job"})
    table.startService()
    table.on_exit(50)
    proc.remove(50)
    table.on_exec(51, "curl")
    clock.advance(table.exit_grace)
    assert table.lookup(50) is None
    assert table.resource_attributes(50)["service.name"] == "nightly-job"
    assert table.resource_attributes(50)["process.command_line"] == "python3 job.py"
    assert table.resource_attributes(51)["service.name"] == "curl"
    proc.add(50, "/usr/sbin/nginx", ["nginx"], start=300)     # the pid reused
    table.on_exec(50)
    assert table.resource_attributes(50)["service.name"] == "nginx"
    table.on_exec(52, "a")
    table.on_exec(53, "b")
    clock.advance(table.exit_grace)
    assert table.resource_attributes(51)["service.name"] == "unknown_service"   # the oldest went first
    assert table.resource_attributes(53)["service.name"] == "b"
    table.stopService()


def test_exec_of_new_process_and_rescan_during_exit_grace(tmp_path):
    """A pid seen by exec is added at once; a rescan during the exit grace keeps it, then it goes."""
    clock = Clock()
    proc, metrics, table = make_table(tmp_path, clock)
    table.startService()
    proc.add(30, "/usr/bin/redis-server", ["redis-server"])
    table.on_exec(30)
    assert table.lookup(30).exe_name == "redis-server"
    assert gauge(metrics) == 1
    table.on_exit(30)
    proc.remove(30)
    table.rescan()
    assert table.lookup(30).exe_name == "redis-server"
    clock.advance(table.exit_grace)
    assert table.lookup(30) is None
    table.rescan()
    assert table.lookup(30) is None and gauge(metrics) == 0
    table.stopService()


def test_listening_ports_make_services_and_listener_owner(tmp_path):
    """Listening sockets map to pids through fd links; services() groups pids by service name."""
    proc, _, table = make_table(tmp_path)
    proc.listen(5001, 8080)
    proc.listen(5003, 8443, v6=True)
    proc.listen(5005, 9000)
    proc.add(40, "/usr/sbin/nginx", ["nginx"], socket_inodes=[5001, 5003])
    proc.add(41, "/usr/sbin/nginx", ["nginx"], socket_inodes=[5001, 5002])   # 5002: an established socket
    proc.add(42, "/usr/bin/app", ["app"], {"OTEL_SERVICE_NAME": "api"}, socket_inodes=[5005])
    proc.add(43, "/bin/bash", ["bash"])
    table.startService()
    assert table.services() == [
        {"name": "api", "namespace": None, "instances": 1, "ports": [9000]},
        {"name": "nginx", "namespace": None, "instances": 2, "ports": [8080, 8443]},
    ]
    assert table.listener_pid(9000) == 42
    assert table.listener_pid(8443) == 40
    assert table.listener_pid(8080) is None          # two owners: no guess
    assert table.listener_pid(1) is None
    table.stopService()


def test_vanished_process_and_kernel_threads_are_skipped(tmp_path):
    """A pid without exe (kernel thread) or gone mid-scan is not tracked."""
    proc, _, table = make_table(tmp_path)
    proc.add(50, "/bin/true", ["true"])
    (proc.root / "51").mkdir()
    (proc.root / "51" / "stat").write_text("51 (kthreadd) S " + " ".join(["0"] * 20) + "\n")
    table.startService()
    assert table.lookup(50) is not None and table.lookup(51) is None
    proc.remove(50)
    table.on_exec(50)
    assert table.lookup(50) is None
    table.stopService()


def test_instrument_selectors_choose_processes(tmp_path):
    """instrument (OR of AND-ed criteria) and exclude_instrument (wins) decide selected(pid)."""
    proc, _, table = make_table(
        tmp_path,
        instrument=[{"exe_path": "*/nginx", "open_ports": [(80, 80), (8000, 8999)]}, {"name": "api-*"},
                    {"containers_only": True}, {"k8s_namespace": "shop"}],
        exclude_instrument=[{"name": "api-internal"}])
    proc.listen(6001, 8080)
    proc.add(60, "/usr/sbin/nginx", ["nginx"], socket_inodes=[6001])
    proc.add(61, "/usr/sbin/nginx", ["nginx"])                                    # no matching port
    proc.add(62, "/srv/app", ["app"], {"OTEL_SERVICE_NAME": "api-public"})
    proc.add(63, "/srv/app", ["app"], {"OTEL_SERVICE_NAME": "api-internal"})     # excluded
    proc.add(64, "/bin/sleep", ["sleep"], cgroup="0::/system.slice/docker-0123abcd.scope\n")
    proc.add(65, "/bin/sleep", ["sleep"])
    table.startService()
    assert {pid: table.selected(pid) for pid in range(60, 66)} == {
        60: True, 61: False, 62: True, 63: False, 64: True, 65: False}
    assert table.selected(0) is False and table.selected(4242) is False     # unknown: not when instrument restricts
    table.stopService()


def test_without_selectors_everything_is_selected(tmp_path):
    """The default config selects every process, known or not, without reading anything."""
    _, _, table = make_table(tmp_path)
    assert table.selected(0) and table.selected(12345)
    exclude_only = make_table(tmp_path / "x", exclude_instrument=[{"exe_path": "*/sshd"}])
    proc, _, table = exclude_only
    proc.add(70, "/usr/sbin/sshd", ["sshd"])
    table.startService()
    assert not table.selected(70) and table.selected(0)
    table.stopService()


def test_a_reload_changes_selectors_interval_and_identity_in_place(tmp_path):
    clock = Clock()
    proc, _, table = make_table(tmp_path, clock=clock)
    proc.add(80, "/usr/sbin/sshd", ["sshd"])
    table.startService()
    assert table.selected(80)
    new = make_config(resource_attributes={"deployment.environment": "prod"})
    new["agent"]["discovery"].update(exclude_instrument=[{"exe_path": "*/sshd"}], poll_interval=60.0)
    assert table.reconfigure(new) is True
    assert not table.selected(80)
    assert table.resource_attributes(80)["deployment.environment"] == "prod"
    assert table._loop.interval == 60.0                   # from the next scan on
    table.stopService()
