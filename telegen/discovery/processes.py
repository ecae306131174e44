"""
The process table: which processes run on this host, and the resource attributes of their telemetry.

It is filled by an initial /proc scan (in a thread, so the API is up meanwhile), kept current by
sched:sched_process_exec/exit events from the `process` probe (on_exec/on_exit), and corrected by a
periodic rescan every agent.discovery.poll_interval (events can be lost; listening ports change
without any event). An exited process stays for `exit_grace` seconds so that ring buffer events
it caused before exiting, which may be consumed after its exit event, still find their resource.

A process can be gone from /proc before its events are read (curl runs for milliseconds): then
the table keeps what the kernel told, its comm (the executable's name, at most 15 bytes), as
its service.name and process.executable.name, for the same grace period. Metrics are flushed
later than that (RED and TCP every host_metrics.interval), so the resource of a forgotten process
is kept a while longer (the last DEPARTED_MAX of them) for telemetry that still names its pid,
until that pid is seen again. Telemetry of a process
known by nothing but its pid gets service.name "unknown_service", the fallback the OpenTelemetry
resource conventions prescribe, so that every resource names a service.
"""
from dataclasses import replace

from twisted.application import service
from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from telegen.contracts import IChild, IProcessResources
from telegen.discovery import procfs
from telegen.discovery.cgroup import CgroupProvider
from telegen.discovery.chain import ResourceChain
from telegen.discovery.host import HostProvider
from telegen.discovery.selectors import Selection
from telegen.signals.common import host_identity

log = Logger()

DEPARTED_MAX = 4096                     # resources of forgotten processes kept for late telemetry


@implementer(IChild, IProcessResources)
class ProcessTable(service.Service):
    """Processes by pid, their OTel resources, and the services they expose (listening ports)."""

    def __init__(self, config, metrics, reactor=None, proc_root="/proc", exit_grace=2.0, run_in_thread=None,
                 providers=None):
        """
        proc_root and run_in_thread (fn, *args) -> Deferred exist for unit tests: a fake /proc tree
        and a synchronous runner under a Clock. By default scans run in the reactor's thread pool.
        providers (table -> list of the IResourceProviders between cgroup and host) lets tests
        put fakes in the chain; by default they are built from the config.
        """
        self.config = config
        self.metrics = metrics
        self._reactor = reactor
        self.proc_root = proc_root
        self.exit_grace = exit_grace
        self.poll_interval = config["agent"]["discovery"]["poll_interval"]
        self._table = {}            # pid -> ProcessInfo
        self._resources = {}        # pid -> resource attribute dict (cache)
        self._departed = {}         # pid -> ProcessInfo of a forgotten process, oldest first (bounded)
        self._exited = {}           # pid -> IDelayedCall removing it after the grace period
        self._selection = Selection(config["agent"]["discovery"])
        self.chain = ResourceChain([
            procfs.ProcfsProvider(self._known, host_identity()["name"]),
            CgroupProvider(self._known),
            *(providers or default_providers)(self),
            HostProvider(config),
        ])
        self._scanning = False
        self._scans = 0
        self._error = None
        self._loop = None
        self._listeners = {}        # port -> set of pids listening on it (from the last scan)
        self._missing = set()       # pids asked for but not in /proc, until the next scan
        self._selected = {}         # pid -> bool (cache; cleared by scans, exec and exit)
        self._run_in_thread = run_in_thread or self._thread_pool
        # Set by the eBPF service: read the exec/exit events already in the kernel's ring now.
        self.catch_up_events = lambda: None
        # Called with the pid of every process that execs (the HTTP probe looks for its libssl).
        self.exec_hooks = []

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    # -- service -----------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.rescan)
        self._loop.clock = self.reactor
        self._loop.start(self.poll_interval, now=True)
        self.chain.start()

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in self._exited.values():
            if call.active():
                call.cancel()
        self._exited.clear()
        super().stopService()
        return self.chain.stop()

    def rescan(self):
        """Re-read /proc in a thread and replace the table; skipped while a scan is still running."""
        if self._scanning:
            return None
        self._scanning = True
        d = self._run_in_thread(procfs.scan, dict(self._table), self.proc_root)
        d.addCallbacks(self._scanned, self._scan_failed)
        return d

    def _thread_pool(self, fn, *args):
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _scanned(self, table):
        self._scanning = False
        self._scans += 1
        self._error = None
        for pid in self._exited:            # an exited process keeps its info until its grace period ends
            if pid in self._table:
                table[pid] = self._table[pid]
        for pid in self._departed.keys() & table.keys():     # alive again: a new process on that pid
            del self._departed[pid]
        for pid, info in table.items():
            old = self._table.get(pid)
            if old is None or old.start_time != info.start_time:
                self._resources.pop(pid, None)
        self._table = table
        self._resources = {pid: attrs for pid, attrs in self._resources.items() if pid in table}
        listeners = {}
        for pid, info in table.items():
            for port in info.ports:
                listeners.setdefault(port, set()).add(pid)
        self._listeners = listeners
        self._missing.clear()
        self._selected.clear()     # listening ports may have changed
        self._update_gauge()

    def _scan_failed(self, failure):
        self._scanning = False
        self._error = failure.getErrorMessage() or failure.type.__name__
        log.failure("/proc scan failed", failure)

    # -- events from the process probe ----------------------------------------------------------

    def on_exec(self, pid, comm=None):
        """
        A process called exec: (re-)read it now, while it most likely still runs. When it is
        already gone, keep its comm (from the event) for the grace period.
        """
        pending = self._exited.pop(pid, None)
        if pending is not None and pending.active():
            pending.cancel()
        info = procfs.read_process(pid, self.proc_root)
        self._resources.pop(pid, None)
        self._selected.pop(pid, None)
        if info is None:
            self._table.pop(pid, None)
            if comm:
                self._remember_gone(pid, comm)
        else:
            self._departed.pop(pid, None)       # the pid names a live process now
            old = self._table.get(pid)
            info.ports = old.ports if old is not None else set()
            self._table[pid] = info
        self._update_gauge()
        for hook in list(self.exec_hooks):
            try:
                hook(pid)
            except Exception:
                log.failure("exec hook failed for pid {pid}", pid=pid)

    def on_exit(self, pid, comm=None, ppid=0):
        """
        A process exited: forget it after the grace period. One never seen ran its parent's
        program in its parent's container when the parent is known (no exec event came for it:
        a forking server's worker), else it is known by its comm meanwhile.
        """
        if pid in self._exited:
            return
        if pid not in self._table:
            parent = self._table.get(ppid) if ppid else None
            if parent is not None:
                self._remember_gone(pid, info=replace(parent, pid=pid, ports=set()))
            elif comm:
                self._remember_gone(pid, comm)
            return
        self._exited[pid] = self.reactor.callLater(self.exit_grace, self._forget, pid)

    def _remember_gone(self, pid, comm=None, info=None):
        """A process no longer in /proc, known by info or the kernel's comm until the grace period ends."""
        self._table[pid] = info or procfs.ProcessInfo(pid, start_time=0, exe_name=comm, service_name=comm)
        self._departed.pop(pid, None)
        self._missing.discard(pid)
        self._selected.pop(pid, None)
        self._exited[pid] = self.reactor.callLater(self.exit_grace, self._forget, pid)

    def _forget(self, pid):
        self._exited.pop(pid, None)
        info = self._table.pop(pid, None)
        self._resources.pop(pid, None)
        if info is not None:    # kept as is: most exited processes are never asked for again
            if len(self._departed) >= DEPARTED_MAX:
                del self._departed[next(iter(self._departed))]
            self._departed[pid] = info
        self._selected.pop(pid, None)
        self._update_gauge()

    def _update_gauge(self):
        self.metrics.processes_tracked.set(len(self._table))

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, pid):
        """The ProcessInfo of pid, or None when unknown."""
        return self._table.get(pid)

    def resource_attributes(self, pid):
        """
        The OTel resource of telemetry caused by pid, composed by the provider chain (procfs,
        cgroup, ... host). A pid not in the table is read from /proc at once; one that is gone
        gets process.pid, the host facts and service.name "unknown_service"; pid 0 (owner
        unknown) the host facts and "unknown_service". Facts a process has not got (a path, a
        command line for one known only by its comm) are left out, not sent empty.
        """
        attrs = self._resources.get(pid)
        if attrs is not None:
            return attrs
        live = self._table.get(pid) or self._read_missing(pid)
        attrs = self.chain.attributes(pid)
        if live is not None:
            self._resources[pid] = attrs
        return attrs

    def container_resource(self, container_id=None, pod_uid=None, container_name=None):
        """
        The resource of telemetry a container writes but no one process caused (its log file),
        known by its id, or by its pod's uid and its name: what the chain gives a process of that
        container, less the process's own keys (process.*, service.instance.id). A process of the
        container whose OTel environment names its service names it here too, as in its spans.
        None while no provider has named the container's service (not discovered yet).
        """
        facts = {"container.id": container_id, "k8s.pod.uid": pod_uid, "k8s.container.name": container_name}
        attrs = self.chain.compose(0, {k: v for k, v in facts.items() if v})
        if "service.name" not in attrs:
            return None
        for pid, info in sorted(self._table.items()):
            container = info.container
            if not info.service_from_env or container is None:
                continue
            if container.id == container_id or (container_id is None and container.pod_uid == pod_uid
                                                 and self.resource_attributes(pid).get("k8s.container.name") == container_name):
                attrs["service.name"] = info.service_name
                if info.service_namespace:
                    attrs["service.namespace"] = info.service_namespace
                break
        return attrs

    def _known(self, pid):
        """The ProcessInfo of pid, whether it runs or was forgotten lately; None when unknown."""
        return self._table.get(pid) or self._departed.get(pid)

    def metadata_changed(self):
        """
        A provider learned something (a container started, a pod was named): drop the cached
        resources (and selections that may depend on them) so that what follows carries it. What
        was already sent stays as it was.
        """
        self._resources.clear()
        self._selected.clear()

    def host_facts(self):
        """What discovery knows of the host itself (the cloud instance), for the host's own metrics."""
        cloud = self.chain.provider("cloud")
        return dict(cloud.attributes(0, {})) if cloud is not None else {}

    def discovery_blocks(self):
        """The providers' blocks of GET /status/discovery ({name: block})."""
        return self.chain.blocks()

    def _read_missing(self, pid):
        """
        Read a pid that events name before its exec event or a scan did (ring buffers are consumed
        independently), else catch up with the exec/exit events. A pid not found is not retried
        until the next scan.
        """
        if pid <= 0 or pid in self._missing:
            return None
        self.on_exec(pid)
        info = self._table.get(pid)
        if info is None:
            # Gone already: its exit event (sent as it began exiting; since 6.16 before its memory,
            # hence its /proc/PID/exe, went) may wait in the ring, and names a forked worker's
            # parent (busybox httpd's, one per request), whose program and container it ran.
            self.catch_up_events()
            info = self._table.get(pid)
        if info is None:
            self._missing.add(pid)
        return info

    def selected(self, pid):
        """
        Whether telemetry caused by pid is reported (agent.discovery.instrument/exclude_instrument).
        pid 0 or a vanished pid is selected only when no instrument selector restricts the set.
        """
        if self._selection.everything:
            return True
        verdict = self._selected.get(pid)
        if verdict is None:
            info = self._table.get(pid) or self._read_missing(pid)
            resource = self.resource_attributes(pid) if self._selection.uses_resource and info is not None else None
            verdict = self._selected[pid] = self._selection.selected(info, resource)
        return verdict

    def listener_pid(self, port):
        """The one process listening on TCP port, or None when none or several (known at the last scan)."""
        owners = self._listeners.get(port, ())
        return next(iter(owners)) if len(owners) == 1 else None

    def services(self):
        """
        Processes with listening sockets grouped by service: [{name, namespace, instances, ports}],
        named as their telemetry is (a container's name, a pod's service), not only by /proc.
        """
        grouped = {}
        for pid, info in list(self._table.items()):
            if not info.ports:
                continue
            attrs = self.resource_attributes(pid)
            key = (attrs["service.name"], attrs.get("service.namespace") or attrs.get("k8s.namespace.name"))
            entry = grouped.setdefault(key, {"pids": set(), "ports": set()})
            entry["pids"].add(info.pid)
            entry["ports"] |= info.ports
        return [
            {"name": name, "namespace": namespace or None, "instances": len(e["pids"]), "ports": sorted(e["ports"])}
            for (name, namespace), e in sorted(grouped.items())
        ]

    def ready_check(self):
        """"ok" once the first /proc scan has completed and no provider of the chain failed."""
        if self._scans:
            return self.chain.ready_check()
        if self._error:
            return f"failed: /proc scan: {self._error}"
        return "failed: initial /proc scan not finished"

    def status(self):
        """The process table's part of GET /status/discovery."""
        return {"processes": len(self._table), "scans": self._scans, "error": self._error,
                "discovered_services": self.services()}

    def reconfigure(self, config):
        """
        Selectors, the poll interval and the agent's resource keys change in place. The Docker,
        Kubernetes and cloud settings are connections and watches: a change there rebuilds the
        table (and the providers with it).
        """
        old = self.config
        if config["cloud"] != old["cloud"] or any(
                config["agent"]["discovery"][key] != old["agent"]["discovery"][key] for key in ("docker", "kubernetes")):
            return False
        self.config = config
        discovery = config["agent"]["discovery"]
        self.poll_interval = discovery["poll_interval"]
        if self._loop is not None:
            self._loop.interval = self.poll_interval
        self._selection = Selection(discovery)
        self._selected.clear()
        self.chain.provider("host").reconfigure(config)
        self._resources.clear()
        return True


def default_providers(table):
    """The providers between cgroup and host under the table's config."""
    from telegen.discovery.cloud import CloudProvider
    from telegen.discovery.docker import DockerProvider
    from telegen.discovery.kubernetes import KubernetesProvider

    discovery = table.config["agent"]["discovery"]
    return [DockerProvider(discovery["docker"], table.metrics, table.metadata_changed, table.reactor),
            KubernetesProvider(discovery["kubernetes"], table.metrics, table.metadata_changed, table.reactor,
                               label_keys=table._selection.pod_labels),
            CloudProvider(table.config["cloud"], table.metrics, table.metadata_changed, table.reactor)]
