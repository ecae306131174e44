"""
The contracts between the parts of the agent, as zope.interface interfaces.

A newcomer adds a child to the service tree, a probe to the eBPF service, a sender to the export
pipeline or a resource provider to discovery by implementing one of these; the fakes in tests/ are
checked against the same interfaces (verifyObject), so a fake cannot answer what the real class
does not. docs/architecture.md shows them with an example.
"""
from zope.interface import Attribute, Interface


class IChild(Interface):
    """
    A named child of the agent's service tree (also an IService: startService, stopService).

    It is built by its ChildSpec's factory from exactly the configuration sections the spec
    declares (a ConfigSlice: reading any other key raises UndeclaredConfigKey), so what a child
    reads and what a reload tells it cannot drift apart.
    """

    name = Attribute("The child's name in the tree (the ChildSpec's name).")

    def status() -> dict:
        """The child's own status document (what its API endpoint or /status block shows)."""

    def ready_check() -> str:
        """'ok', 'disabled', or 'failed: <reason>' for GET /ready."""

    def reconfigure(config) -> bool:
        """
        Apply a changed ConfigSlice of the same sections in place and return True, or return False
        (changing nothing) when the change needs a rebuild: something compiled into the kernel or
        bound to a socket. Called on the reactor thread while the child runs.
        """


class IProbe(Interface):
    """One BPF source file loaded by the eBPF service (telegen.ebpf.probe.Probe is the base)."""

    name = Attribute("Unique name, used in status and logs.")
    source = Attribute("The C file in bpf/.")

    def enabled(config) -> bool:
        """Whether this probe loads under this config."""

    def cflags(config) -> list:
        """The probe's own -D flags (compiled in: changing them needs a rebuild)."""

    def ringbuf_size(config) -> int:
        """Bytes per ring buffer of this probe."""

    def tracepoints() -> list:
        """(category:event, function) pairs the probe attaches to."""

    def ring_buffers() -> dict:
        """Ring buffer map name -> handler(event bytes), called on the reactor thread."""

    def reconfigure(config) -> None:
        """A reload changed nothing compiled in: apply the rest (map contents, timers) in place."""

    def attached(bpf) -> None:
        """After load and attach: seed maps, start timers."""

    def detached() -> None:
        """When unloaded: flush aggregated state."""


class ISender(Interface):
    """One OTLP transport for one signal (gRPC, HTTP or the file sink)."""

    target = Attribute("Where it sends (telegen.export.endpoints.Target; .label names it in metrics).")

    def send(payload: bytes):
        """Send one serialized export request; a Deferred firing with an export Outcome."""

    def close() -> None:
        """Release connections; no send follows."""


class IRecordSink(Interface):
    """Where producers hand records: the export pipeline, or ExportHandle in front of it."""

    def submit(signal: str, resource_attrs: dict, records: list) -> int:
        """
        Queue records (OTLP protos or their serialized bytes) of one resource for signal
        (traces|metrics|logs|profiles); return how many were accepted, every other one counted
        as dropped with a reason. Never blocks.
        """


class IProcessResources(Interface):
    """What probes ask the process table (telegen.discovery.processes.ProcessTable)."""

    def resource_attributes(pid: int) -> dict:
        """The OTel resource of pid's telemetry (service.name always set)."""

    def selected(pid: int) -> bool:
        """Whether pid is instrumented under the discovery selectors."""

    def listener_pid(port: int):
        """The one process listening on TCP port, or None."""

    def container_resource(container_id=None, pod_uid=None, container_name=None):
        """
        The resource of what a container writes (its log file), known by its id or by its pod's
        uid and its name, as the chain gives its processes' without their process.* keys; None
        while discovery does not know the container.
        """


class IResourceProvider(Interface):
    """
    One link of discovery's resource chain (procfs, cgroup, Docker, Kubernetes, cloud, host).

    The process table asks each provider in order for the attributes of a process; later
    providers see (and may refine) what earlier ones found.
    """

    name = Attribute("Short name: 'procfs', 'cgroup', 'docker', 'kubernetes', 'cloud' ...")

    def attributes(pid: int, found: dict) -> dict:
        """Resource attributes this provider adds for pid, given what earlier providers found."""

    def status() -> dict:
        """This provider's block in GET /status/discovery."""

    def ready_check() -> str:
        """'ok', 'disabled', or 'failed: <reason>'; a provider that is not present is 'disabled'."""
