"""
The contracts of telegen/contracts.py hold for the real parts and for the fakes the other tests
use: every production child of the tree built from its own slice provides IChild, probes IProbe,
senders ISender, and a fake's documents validate against the same OpenAPI schemas the real
answers are checked with. A fake that drifts from its real class fails here.
"""
import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyClass, verifyObject

from telegen.api.openapi import openapi_document
from telegen.components import SPECS
from telegen.config import defaults
from telegen.contracts import IChild, IProbe, IProcessResources, IRecordSink, IResourceProvider, ISender
from telegen.ebpf.probes import default_probes
from telegen.export.file_sink import FileSink
from telegen.export.grpc_sender import GrpcSender
from telegen.export.http_sender import HttpSender
from telegen.export.kinds import KINDS
from telegen.export.endpoints import resolve
from telegen.logs.tailer import LogTailer
from telegen.manhole import ManholeService
from telegen.profiling.service import ProfilerService
from telegen.selfmetrics import SelfMetrics
from telegen.service import AgentService
from tests.support.fakes import (FakeChild, FakeExport, FakeProcesses, RecordingPipeline, ScriptedSender,
                                 StubProcesses, make_agent)
from tests.support.openapi_check import schema_validator


@pytest.fixture
def production_tree(tmp_path):
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path)
    return AgentService(config, reactor=MemoryReactorClock())      # built, never started


def test_every_production_child_provides_ichild(production_tree):
    children = list(production_tree)
    assert {c.name for c in children} == {"processes", "export", "hostmetrics", "ebpf", "api"}
    for child in children:
        assert verifyObject(IChild, child)
    assert verifyClass(IChild, ManholeService)
    assert verifyClass(IChild, LogTailer)
    assert verifyClass(IChild, ProfilerService)


def test_the_export_pipeline_and_its_handle_are_record_sinks_and_the_process_table_answers_probes(production_tree):
    assert verifyObject(IRecordSink, production_tree.child("export"))
    assert verifyObject(IRecordSink, production_tree.exporter)
    assert verifyObject(IProcessResources, production_tree.child("processes"))


def test_every_link_of_the_resource_chain_provides_iresourceprovider(production_tree):
    providers = production_tree.child("processes").chain.providers
    assert [p.name for p in providers] == ["procfs", "cgroup", "docker", "kubernetes", "cloud", "host"]
    for provider in providers:
        assert verifyObject(IResourceProvider, provider)


def test_default_probes_provide_iprobe():
    probes = default_probes(defaults(), RecordingPipeline(), StubProcesses(), SelfMetrics(), reactor=MemoryReactorClock())
    assert {p.name for p in probes} == {"process", "http", "tcp"}
    for probe in probes:
        assert verifyObject(IProbe, probe)


def test_every_sender_provides_isender(tmp_path):
    otlp = defaults()["otlp"]
    kind = KINDS["traces"]
    assert verifyObject(ISender, FileSink(str(tmp_path), kind, otlp["file"]))
    for protocol, endpoint in (("grpc", "127.0.0.1:4317"), ("http", "http://127.0.0.1:4318")):
        config = dict(otlp, endpoint=endpoint, protocol=protocol, insecure=True)
        sender_class = GrpcSender if protocol == "grpc" else HttpSender
        sender = sender_class(resolve(config, kind), kind, config, MemoryReactorClock())
        assert verifyObject(ISender, sender)
        sender.close()


def test_fakes_provide_the_contracts_of_what_they_stand_for():
    agent = make_agent(MemoryReactorClock())
    for child in (agent.child("export"), agent.child("processes"), FakeChild(agent, agent.config)):
        assert verifyObject(IChild, child)
    assert verifyObject(IRecordSink, RecordingPipeline())
    assert verifyObject(IProcessResources, StubProcesses())
    assert verifyObject(ISender, ScriptedSender(KINDS["traces"]))


def test_fake_documents_have_the_shape_of_the_real_answers():
    """What FakeExport and FakeProcesses answer validates against the schemas of /status/export and /status/discovery."""
    agent = make_agent(MemoryReactorClock())
    spec = openapi_document()
    assert isinstance(agent.child("export"), FakeExport) and isinstance(agent.child("processes"), FakeProcesses)
    schema_validator(spec, "/status/export", "get", 200).validate(agent.child("export").status())
    from telegen.status import discovery_status

    schema_validator(spec, "/status/discovery", "get", 200).validate(discovery_status(agent))


def test_the_log_tailer_is_built_from_its_slice_with_the_process_table(tmp_path):
    """The logs child asks the process table for its files' containers: built after it, rebuilt with it."""
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path)
    config["agent"]["logs"]["enabled"] = True
    tree = AgentService(config, reactor=MemoryReactorClock())
    tailer = tree.child("logs")
    assert verifyObject(IChild, tailer)
    assert tailer._processes is tree.child("processes")
    assert [s.depends_on for s in SPECS if s.name == "logs"] == [("processes",)]
