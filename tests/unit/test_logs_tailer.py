"""
LogTailer on a Clock with real files in tmp_path and a scripted export pipeline: start positions,
rotation by rename, copytruncate and re-creation, checkpoints that move only on delivery,
restart after a crash, back-pressure, abandoned deliveries, limits and counters.
"""
import json
import os

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from telegen.config import defaults
from telegen.contracts import IChild, IProcessResources
from telegen.export.delivery import Delivery
from telegen.logs.tailer import LogTailer
from telegen.selfmetrics import SelfMetrics
from tests.support.fakes import StubProcesses


class ScriptedPipeline:
    """submit_tracked like the export pipeline's: takes up to `room` records, settles when told."""

    def __init__(self, room=10_000):
        self.room = room
        self.queued = []    # [(resource, [body], Delivery)] not settled yet
        self.exported = []  # bodies, in export order
        self.orders = []    # the order key of every submission

    def submit_tracked(self, signal, resource, records, order=None):
        assert signal == "logs" and order is not None
        self.orders.append(order)
        taken = min(self.room - sum(len(b) for _, b, _ in self.queued), len(records))
        if taken <= 0:
            return 0, None
        delivery = Delivery(taken)
        self.queued.append((resource, [LogRecord.FromString(r) for r in records[:taken]], delivery))
        return taken, delivery

    def deliver(self, reason=None):
        """Settle everything queued: exported, or dropped for `reason`."""
        queued, self.queued = self.queued, []
        for _, recs, delivery in queued:
            if reason is None:
                self.exported += [r.body.string_value for r in recs]
            delivery.settle(len(recs), reason)

    def records(self):
        return [r for _, recs, _ in self.queued for r in recs]


def make(tmp_path, pipeline=None, clock=None, journal_reader=None, processes=None, **logs):
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path / "data")
    settings = dict(enabled=True, include=[str(tmp_path / "logs" / "*.log*")], poll_interval=1.0, flush_timeout=0.5)
    config["agent"]["logs"].update(settings, **logs)
    clock = clock or Clock()
    pipeline = pipeline or ScriptedPipeline()
    metrics = SelfMetrics()
    extra = {"journal_reader": journal_reader} if journal_reader else {}
    tailer = LogTailer(config, pipeline, metrics, reactor=clock, wall_clock=lambda: 1_700_000_000.0, processes=processes,
                       **extra)
    return tailer, pipeline, clock, metrics


def append(path, *lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def poll(clock, times=1):
    for _ in range(times):
        clock.advance(1.0)


def checkpoint(tmp_path):
    with open(tmp_path / "data" / "logs" / "checkpoints.json") as f:
        return {e["path"]: e["offset"] for e in json.load(f)["files"]}


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "logs" / "app.log")


def test_is_an_ichild_and_reports_status(tmp_path, log):
    tailer, _, clock, _ = make(tmp_path)
    verifyObject(IChild, tailer)
    append(log, "x")
    tailer.startService()
    clock.advance(0)
    assert tailer.status()["files_watched"] == 1
    assert tailer.ready_check() == "ok"
    assert tailer.reconfigure(None) is False


def test_first_run_starts_at_the_end_and_later_files_at_their_beginning(tmp_path, log):
    append(log, "old 1", "old 2")
    tailer, pipeline, clock, _ = make(tmp_path)
    tailer.startService()
    clock.advance(0)
    append(log, "new 1")
    append(str(tmp_path / "logs" / "other.log"), "other 1")
    poll(clock)
    pipeline.deliver()
    assert sorted(pipeline.exported) == ["new 1", "other 1"]


def test_start_at_beginning_reads_existing_lines(tmp_path, log):
    append(log, "old 1", "old 2")
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    tailer.startService()
    clock.advance(0)
    pipeline.deliver()
    assert pipeline.exported == ["old 1", "old 2"]


def test_records_carry_file_attributes_severity_and_observed_time(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "2024-01-01 12:00:00 WARN disk almost full")
    tailer.startService()
    clock.advance(0)
    (resource, recs, _), = pipeline.queued
    record = recs[0]
    attrs = {kv.key: kv.value.string_value for kv in record.attributes}
    assert attrs == {"log.file.path": log, "log.file.name": "app.log"}
    assert (record.severity_text, record.severity_number) == ("WARN", 13)
    assert record.observed_time_unix_nano == 1_700_000_000 * 10**9 and record.time_unix_nano == 0
    assert resource["service.name"] == "telegen"


def test_checkpoint_moves_only_when_the_pipeline_settled_the_records(tmp_path, log):
    append(log, "a")
    tailer, pipeline, clock, _ = make(tmp_path)
    tailer.startService()
    clock.advance(0)
    assert checkpoint(tmp_path) == {log: 2}  # first run: the end, saved at once
    append(log, "b", "c")
    poll(clock)
    assert len(pipeline.records()) == 2
    clock.advance(0)
    assert checkpoint(tmp_path) == {log: 2}
    pipeline.deliver()
    clock.advance(0)
    assert checkpoint(tmp_path) == {log: 6}


def test_a_crash_resumes_at_the_last_delivered_line(tmp_path, log):
    """Lines read but not delivered when the process died are read again by the next one; delivered ones are not."""
    append(log, "a")
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    tailer.startService()
    clock.advance(0)
    pipeline.deliver()
    clock.advance(0)
    append(log, "b")
    poll(clock)
    assert [r.body.string_value for r in pipeline.records()] == ["b"]
    # the process dies here: "b" is in flight, never settled
    again, pipeline2, clock2, _ = make(tmp_path, start_at="beginning")
    append(log, "c")
    again.startService()
    clock2.advance(0)
    pipeline2.deliver()
    assert pipeline.exported + pipeline2.exported == ["a", "b", "c"]


def test_rename_rotation_finishes_the_old_file_and_reads_the_new_one(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "1", "2")
    tailer.startService()
    clock.advance(0)
    append(log, "3")
    os.rename(log, log + ".1")
    append(log, "4")
    append(log + ".1", "late")  # a writer still holding the old file
    poll(clock)
    pipeline.deliver()
    assert sorted(pipeline.exported) == ["1", "2", "3", "4", "late"]
    assert pipeline.exported.index("3") > pipeline.exported.index("2")


def test_rename_out_of_the_globs_is_drained_through_the_open_descriptor(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning", include=[log])
    append(log, "1")
    tailer.startService()
    clock.advance(0)
    append(log, "2")
    os.rename(log, log + ".old")
    append(log, "3")
    poll(clock, 2)
    pipeline.deliver()
    poll(clock)
    assert sorted(pipeline.exported) == ["1", "2", "3"]
    assert tailer.status()["files_open"] == 1


def test_copytruncate_reads_the_copy_to_its_end_and_the_path_from_zero(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "line 1", "line 2")
    tailer.startService()
    clock.advance(0)
    append(log, "line 3")
    with open(log, "rb") as src, open(log + ".1", "wb") as dst:
        dst.write(src.read())
    poll(clock)  # the copy and the original have the same first bytes: neither is read twice
    os.truncate(log, 0)
    append(log, "after 1")
    poll(clock)
    pipeline.deliver()
    assert sorted(pipeline.exported) == ["after 1", "line 1", "line 2", "line 3"]


def test_recreated_path_is_a_new_file(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "first file")
    tailer.startService()
    clock.advance(0)
    os.remove(log)
    append(log, "second file")
    poll(clock)
    pipeline.deliver()
    assert pipeline.exported == ["first file", "second file"]


def test_a_full_queue_pauses_reading_and_loses_nothing(tmp_path, log):
    tailer, pipeline, clock, metrics = make(tmp_path, pipeline=ScriptedPipeline(room=3), start_at="beginning")
    append(log, *[f"l{i}" for i in range(10)])
    tailer.startService()
    clock.advance(0)
    assert len(pipeline.records()) == 3
    poll(clock)
    assert len(pipeline.records()) == 3
    assert metrics.registry.get_sample_value("telegen_logs_backpressure_pauses_total") >= 1
    for _ in range(4):
        pipeline.deliver()
        poll(clock)
    pipeline.deliver()
    assert pipeline.exported == [f"l{i}" for i in range(10)]


def test_records_abandoned_at_shutdown_are_read_again(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "a", "b")
    tailer.startService()
    clock.advance(0)
    pipeline.deliver("shutdown")
    poll(clock)
    pipeline.deliver()
    assert pipeline.exported == ["a", "b"]


def test_records_dropped_by_the_pipeline_are_counted_and_not_read_again(tmp_path, log):
    tailer, pipeline, clock, metrics = make(tmp_path, start_at="beginning")
    append(log, "a")
    tailer.startService()
    clock.advance(0)
    pipeline.deliver("rejected")
    clock.advance(0)
    assert checkpoint(tmp_path) == {log: 2}
    assert metrics.registry.get_sample_value("telegen_logs_dropped_total", {"reason": "rejected"}) == 1
    poll(clock)
    assert pipeline.records() == []


def test_stop_waits_for_deliveries_and_saves_them(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "a")
    tailer.startService()
    clock.advance(0)
    stopped = []
    tailer.stopService().addCallback(stopped.append)
    assert not stopped
    pipeline.deliver()
    assert stopped and checkpoint(tmp_path) == {log: 2}
    assert tailer.status()["files_open"] == 0


def test_invalid_utf8_is_replaced_and_long_lines_split_counted(tmp_path, log):
    tailer, pipeline, clock, metrics = make(tmp_path, start_at="beginning", max_line_size=16)
    os.makedirs(os.path.dirname(log))
    with open(log, "wb") as f:
        f.write(b"bad \xff byte\n" + b"x" * 20 + b"\nlast")
    tailer.startService()
    clock.advance(0)
    poll(clock)  # the unterminated last line goes after flush_timeout
    pipeline.deliver()
    assert pipeline.exported == ["bad \ufffd byte", "x" * 16, "x" * 4, "last"]
    sample = metrics.registry.get_sample_value
    assert sample("telegen_logs_invalid_utf8_lines_total") == 1
    assert sample("telegen_logs_long_lines_total", {"action": "split"}) == 1
    assert sample("telegen_logs_lines_read_total") == 4


def test_multiline_records_join_stack_traces(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning", multiline_start=r"^\d{4}-")
    append(log, "2024-01-01 ERROR boom", "Traceback:", "  File x", "2024-01-01 INFO ok")
    tailer.startService()
    clock.advance(0)
    poll(clock)
    pipeline.deliver()
    assert pipeline.exported == ["2024-01-01 ERROR boom\nTraceback:\n  File x", "2024-01-01 INFO ok"]


def test_open_descriptors_are_bounded(tmp_path):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning", max_open_files=2)
    for i in range(5):
        append(str(tmp_path / "logs" / f"f{i}.log"), f"file {i}")
    tailer.startService()
    clock.advance(0)
    assert tailer.status()["files_open"] == 2
    for i in range(5):
        append(str(tmp_path / "logs" / f"f{i}.log"), f"more {i}")
    poll(clock)
    pipeline.deliver()
    assert sorted(pipeline.exported) == sorted([f"file {i}" for i in range(5)] + [f"more {i}" for i in range(5)])


def test_kubernetes_names_become_resource_attributes(tmp_path):
    cid = "a" * 64
    path = str(tmp_path / "logs" / f"web-7d4b9_shop_nginx-{cid}.log")
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(path, "hello")
    tailer.startService()
    clock.advance(0)
    resource = pipeline.queued[0][0]
    assert {k: resource[k] for k in ("k8s.pod.name", "k8s.namespace.name", "k8s.container.name", "container.id")} == {
        "k8s.pod.name": "web-7d4b9", "k8s.namespace.name": "shop", "k8s.container.name": "nginx", "container.id": cid}


def submitted(pipeline):
    """[(resource, [body])] in submission order, settled or not."""
    return [(resource, [r.body.string_value for r in recs]) for resource, recs, _ in pipeline.queued]


def test_a_docker_containers_file_gets_its_resource_once_discovery_knows_it_and_keeps_it(tmp_path):
    cid = "c" * 64
    path = str(tmp_path / "logs" / cid / f"{cid}-json.log")
    discovered = {"container.id": cid, "container.name": "shop-web", "container.runtime": "docker",
                  "service.name": "shop-web", "host.name": "node-1"}
    processes = StubProcesses()
    verifyObject(IProcessResources, processes)
    tailer, pipeline, clock, _ = make(tmp_path, processes=processes, start_at="beginning",
                                      include=[str(tmp_path / "logs" / "*" / "*-json.log*")])
    append(path, '{"log":"before\\n","stream":"stdout","time":"2026-12-07T10:00:00Z"}')
    tailer.startService()
    clock.advance(0)
    processes.containers[cid] = discovered      # the container's start event arrives
    append(path, '{"log":"after\\n","stream":"stdout","time":"2026-12-07T10:00:01Z"}')
    poll(clock)
    del processes.containers[cid]               # destroyed: discovery forgets it, its file's last lines follow
    os.rename(path, path + ".1")
    append(path + ".1", '{"log":"last\\n","stream":"stdout","time":"2026-12-07T10:00:02Z"}')
    poll(clock, 2)
    (before, first), (after, second), (last, third) = submitted(pipeline)
    assert (first, second, third) == (["before"], ["after"], ["last"])
    assert before["container.id"] == cid and before["container.runtime"] == "docker"
    # what the path says, until discovered: the host's resource, not the agent's service
    assert before["service.name"] == "unknown_service" and "container.name" not in before
    assert before["host.name"] and "service.version" not in before and "service.instance.id" not in before
    assert after == last == discovered


def test_a_kubelet_pod_file_is_looked_up_by_pod_uid_and_container_name(tmp_path):
    uid = "8f9e6a1c-3b2d-4e5f-9a8b-7c6d5e4f3a2b"
    path = str(tmp_path / "pods" / f"shop_web-7d4b9_{uid}" / "nginx" / "0.log")
    processes = StubProcesses(containers={(uid, "nginx"): {"k8s.pod.uid": uid, "service.name": "web", "k8s.pod.name": "web-7d4b9"}})
    tailer, pipeline, clock, _ = make(tmp_path, processes=processes, start_at="beginning",
                                      include=[str(tmp_path / "pods" / "*" / "*" / "*.log")])
    append(path, "2026-12-07T10:00:00.000000000Z stdout F hello")
    tailer.startService()
    clock.advance(0)
    [(resource, bodies)] = submitted(pipeline)
    assert bodies == ["hello"]
    assert resource == {"k8s.pod.uid": uid, "service.name": "web", "k8s.pod.name": "web-7d4b9",
                        "k8s.namespace.name": "shop", "k8s.container.name": "nginx"}


def test_files_of_no_container_keep_the_agents_resource_and_discovery_is_not_asked(tmp_path, log):
    class Counting(StubProcesses):
        asked = 0

        def container_resource(self, *args):
            self.asked += 1
            return super().container_resource(*args)

    processes = Counting()
    tailer, pipeline, clock, _ = make(tmp_path, processes=processes, start_at="beginning")
    append(log, "plain")
    tailer.startService()
    clock.advance(0)
    assert submitted(pipeline)[0][0]["service.name"] == "telegen" and processes.asked == 0


def test_cri_pieces_wait_for_their_final_line_and_carry_the_stream(tmp_path):
    cid = "b" * 64
    path = str(tmp_path / "logs" / f"api-1_prod_app-{cid}.log")
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning", flush_timeout=30.0)
    append(path, "2024-03-05T10:20:30.000000001Z stderr P Traceback part ")
    tailer.startService()
    clock.advance(0)
    poll(clock)
    assert pipeline.records() == []
    append(path, '2024-03-05T10:20:30.000000002Z stderr F {"level":"error","msg":"the end"}')
    poll(clock)
    (record,) = pipeline.records()
    assert record.body.string_value == 'Traceback part {"level":"error","msg":"the end"}'
    attrs = {kv.key: kv.value.string_value for kv in record.attributes}
    assert attrs["log.iostream"] == "stderr" and record.time_unix_nano == 1709634030000000001


# -- the systemd journal, from files written by systemd's own journal-remote ---------------------

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def write_entries(directory, entries):
    """Append entries ({field: value}) to directory/remote.journal, in export format."""
    import subprocess

    os.makedirs(directory, exist_ok=True)
    text = "".join("".join(f"{k}={v}\n" for k, v in entry.items()) + "\n" for entry in entries)
    subprocess.run([JOURNAL_REMOTE, "-o", os.path.join(directory, "remote.journal"), "-"],
                   input=text.encode(), check=True, capture_output=True)


def write_journal(directory, first, count, unit="app.service"):
    """Append `count` entries (messages "entry <n>") to directory/remote.journal."""
    write_entries(directory, [{
        "__REALTIME_TIMESTAMP": 1709634030000000 + n, "__MONOTONIC_TIMESTAMP": 1000 + n,
        "_BOOT_ID": "0123456789abcdef0123456789abcdef", "MESSAGE": f"entry {n} trace_id={TRACE}",
        "PRIORITY": n % 8, "_PID": 100 + n, "_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": "app"} for n in range(first, first + count)])


def journal_tailer(tmp_path, **journal):
    settings = {"enabled": True, "directory": str(tmp_path / "journal"), "units": []}
    settings.update(journal)
    return make(tmp_path, start_at="beginning", journal=settings)


def test_journal_entries_become_records_with_priority_unit_pid_and_trace(tmp_path):
    write_journal(str(tmp_path / "journal"), 0, 3)
    tailer, pipeline, clock, _ = journal_tailer(tmp_path)
    tailer.startService()
    clock.advance(0)
    recs = pipeline.records()
    assert [r.body.string_value for r in recs] == [f"entry {n} trace_id={TRACE}" for n in range(3)]
    first = recs[0]
    assert (first.severity_text, first.severity_number) == ("EMERG", 23)
    assert (recs[2].severity_text, recs[2].severity_number) == ("CRIT", 21)
    assert first.time_unix_nano == 1709634030000000000 and first.trace_id.hex() == TRACE
    attrs = {kv.key: kv.value for kv in first.attributes}
    assert attrs["systemd.unit"].string_value == "app.service" and attrs["process.pid"].int_value == 100


def test_journal_resumes_after_the_last_delivered_entry(tmp_path):
    directory = str(tmp_path / "journal")
    write_journal(directory, 0, 3)
    tailer, pipeline, clock, _ = journal_tailer(tmp_path)
    tailer.startService()
    clock.advance(0)
    pipeline.deliver()
    clock.advance(0)
    write_journal(directory, 3, 2)
    poll(clock)
    assert len(pipeline.records()) == 2  # read, never delivered: the process dies here
    again, pipeline2, clock2, _ = journal_tailer(tmp_path)
    write_journal(directory, 5, 1)
    again.startService()
    clock2.advance(0)
    pipeline2.deliver()
    assert pipeline.exported + pipeline2.exported == [f"entry {n} trace_id={TRACE}" for n in range(6)]
    assert again.status()["journal"]["cursor"] is not None


def test_journal_entries_of_containers_and_known_processes_carry_their_resources(tmp_path):
    """
    Docker's journald driver names the container (CONTAINER_ID_FULL, CONTAINER_NAME; _PID is
    dockerd's): the container's resource once discovery knows it, what the entry names before.
    An entry of a running process discovery knows (this test's own process, started before the
    entry in this boot) carries that process's resource; a pid from another boot, or one whose
    process started after the entry (pid reuse), names nothing: the host's resource.
    """
    import time as _time
    import uuid

    cid = "d" * 64
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = uuid.UUID(f.read().strip()).hex
    now_us = int(_time.monotonic() * 1e6)
    directory = str(tmp_path / "journal")

    def entry(n, boot_id=boot, monotonic=now_us, **fields):
        return dict({"__REALTIME_TIMESTAMP": 1709634030000000 + n, "__MONOTONIC_TIMESTAMP": monotonic,
                     "_BOOT_ID": boot_id, "MESSAGE": f"entry {n}"}, **fields)

    dockerd = {"_PID": 1, "_COMM": "dockerd"}
    write_entries(directory, [
        entry(0, CONTAINER_ID=cid[:12], CONTAINER_ID_FULL=cid, CONTAINER_NAME="shop-web", **dockerd),
        entry(1, _PID=os.getpid()),
        entry(2, _PID=os.getpid(), monotonic=1000),                                  # before this process began
        entry(3, boot_id="0123456789abcdef0123456789abcdef", _PID=os.getpid()),    # another boot
    ])
    processes = StubProcesses()
    tailer, pipeline, clock, _ = make(tmp_path, processes=processes, start_at="beginning",
                                      journal={"enabled": True, "directory": directory, "units": []})
    tailer.startService()
    clock.advance(0)
    (named, first), (process, second), (host, rest) = submitted(pipeline)
    assert (first, second, rest) == (["entry 0"], ["entry 1"], ["entry 2", "entry 3"])
    assert named["container.id"] == cid and named["container.name"] == "shop-web"
    assert named["service.name"] == "unknown_service" and named["host.name"] and "process.pid" not in named
    assert process == {"service.name": f"svc-{os.getpid()}", "process.pid": os.getpid()}
    assert host["service.name"] == "telegen" and "process.pid" not in host
    discovered = {"container.id": cid, "container.name": "shop-web", "service.name": "shop-web", "host.name": "node-1"}
    processes.containers[cid] = discovered      # the container's start event arrives
    write_entries(directory, [entry(4, CONTAINER_ID=cid[:12], CONTAINER_ID_FULL=cid, CONTAINER_NAME="shop-web", **dockerd)])
    poll(clock)
    assert submitted(pipeline)[-1] == (discovered, ["entry 4"])


def test_journal_units_filter_and_start_at_end(tmp_path):
    directory = str(tmp_path / "journal")
    write_journal(directory, 0, 2, unit="other.service")
    write_journal(directory, 2, 2)
    tailer, pipeline, clock, _ = make(tmp_path, journal={"enabled": True, "directory": directory, "units": ["app.service"]})
    tailer.startService()
    clock.advance(0)
    assert pipeline.records() == []  # start_at end: only what comes next
    write_journal(directory, 4, 1)
    write_journal(directory, 5, 1, unit="other.service")
    poll(clock)
    assert [r.body.string_value for r in pipeline.records()] == [f"entry 4 trace_id={TRACE}"]


def test_an_unreadable_journal_fails_the_ready_check(tmp_path):
    def broken(directory):
        raise OSError("no journal here")

    tailer, _, clock, _ = make(tmp_path, journal_reader=broken, journal={"enabled": True, "directory": None, "units": []})
    tailer.startService()
    assert tailer.ready_check() == "failed: journal: OSError: no journal here"


def test_a_copy_shorter_than_what_was_read_of_the_original_is_not_read_again(tmp_path, log):
    """copytruncate racing a writer: the copy misses lines already read from the original; none repeats."""
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "line 1")
    with open(log, "rb") as src:
        copy = src.read()
    append(log, "line 2")  # written after the copy was taken, before the truncation
    tailer.startService()
    clock.advance(0)
    with open(log + ".1", "wb") as dst:
        dst.write(copy)
    os.truncate(log, 0)
    append(log, "fresh")
    poll(clock)
    pipeline.deliver()
    assert pipeline.exported == ["line 1", "line 2", "fresh"]


def test_truncated_in_place_with_the_same_first_bytes_is_read_from_zero(tmp_path, log):
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, "same head", "old tail")
    tailer.startService()
    clock.advance(0)
    with open(log, "w") as f:
        f.write("same head\n")
    poll(clock)
    pipeline.deliver()
    assert pipeline.exported == ["same head", "old tail", "same head"]


def test_format_auto_encodes_reads_of_json_objects_by_columns_and_unwraps_docker_lines_as_before(tmp_path, log, monkeypatch):
    """
    A read whose lines are all JSON objects takes the column encoder under format auto too (the
    default format); a read with a Docker json-file line or a plain line goes line by line. Both
    give the records the parsers give.
    """
    from telegen.logs import jsonbatch

    column_reads = []
    encode = jsonbatch.encode
    monkeypatch.setattr(jsonbatch, "encode", lambda texts, *rest: column_reads.append(len(texts)) or encode(texts, *rest))
    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning")
    append(log, '{"level":"warn","msg":"one","n":1}', '{"level":"info","msg":"two","n":2}')
    tailer.startService()
    clock.advance(0)
    append(log, '{"log":"three\\n","stream":"stderr","time":"2026-12-07T10:00:00Z"}', '{"level":"error","msg":"four"}')
    poll(clock)
    append(log, "ERROR five", '{"msg":"six"}')
    poll(clock)
    records = pipeline.records()
    assert [r.body.string_value for r in records] == ["one", "two", "three", "four", "ERROR five", "six"]
    assert [r.severity_number for r in records] == [13, 9, 0, 17, 17, 0]
    assert {kv.key: kv.value.int_value for kv in records[0].attributes if kv.key == "n"} == {"n": 1}
    assert {kv.key: kv.value.string_value for kv in records[2].attributes}["log.iostream"] == "stderr"
    assert column_reads == [2]


def test_a_file_and_its_successors_share_one_order_key_and_containers_have_their_own(tmp_path, log):
    """
    The exporter keeps each order key's records in order while other keys' requests go out: a
    rotated file and the file re-created at its path share one key (its directory), so the new
    file's lines never overtake the old one's last lines; kubelet's links, all in one directory,
    are keyed by container.
    """
    from telegen.logs.tailer import order_key
    from telegen.logs.writers import writer_of

    tailer, pipeline, clock, _ = make(tmp_path, start_at="beginning",
                                      include=[str(tmp_path / "logs" / "*.log*"), str(tmp_path / "other" / "*.log")])
    append(log, "old")
    tailer.startService()
    clock.advance(0)
    os.rename(log, log + ".1")
    append(log + ".1", "last of the old")
    append(log, "first of the new")
    append(str(tmp_path / "other" / "x.log"), "elsewhere")
    poll(clock)
    assert submitted(pipeline) and len(set(pipeline.orders[:3])) == 1
    assert pipeline.orders[0] == ("directory", str(tmp_path / "logs")) and pipeline.orders[-1] == ("directory", str(tmp_path / "other"))
    links = ["/var/log/containers/web-1_shop_nginx-" + c * 64 + ".log" for c in "ab"]
    assert [order_key(p, writer_of(p)) for p in links] == [("container", "a" * 64), ("container", "b" * 64)]
