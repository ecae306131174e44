"""
The agent's root service: the named children, reload, flush and graceful shutdown.

Children are built by factories from the agent and the slice of configuration their ChildSpec
declares (a ConfigSlice: reading any other key raises), so tests swap them and what a child reads
is exactly what a reload tells it. On reload a child whose slice changed is first asked to
reconfigure itself in place (IChild.reconfigure); it is rebuilt only when it answers False (a
change compiled into the kernel or bound to a socket) or when a child it depends on was rebuilt.
Collectors reach the export pipeline through ExportHandle, so rebuilding the pipeline does not
rebuild them.
"""
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Optional

from twisted.application.service import IService, MultiService
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from telegen.config import load_config
from telegen.config.view import ConfigSlice
from telegen.contracts import IChild, IRecordSink
from telegen.selfmetrics import SelfMetrics
from telegen.timebox import within

log = Logger(namespace="telegen.service")


@dataclass(frozen=True)
class ChildSpec:
    """
    How to build one named child.

    sections are the dotted config paths the child reads, all of them: the factory and the child
    get only those (a ConfigSlice), and a change in any of them is passed to the child's
    reconfigure(). depends_on names children whose rebuild forces this one's (it holds a reference
    to them). factory(agent, config) returns a service or None (None: the child is off under
    this config).
    """

    name: str
    sections: tuple
    factory: Callable[["AgentService", ConfigSlice], Optional[IService]]
    depends_on: tuple = field(default_factory=tuple)

    def slice(self, config) -> ConfigSlice:
        """The part of config this child may read."""
        return ConfigSlice(config, self.sections)


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: children rebuilt, and children that applied their new slice in place."""

    rebuilt: list
    reconfigured: list

    @property
    def changed(self) -> list:
        """Every child that now runs on the new configuration."""
        return sorted(self.rebuilt + self.reconfigured)


class ReloadFailed(Exception):
    """The new config was valid but applying it failed; the old children were restored."""


@implementer(IRecordSink)
class ExportHandle:
    """A stable reference to whatever export pipeline the agent runs now."""

    def __init__(self, agent):
        self._agent = agent

    def submit(self, signal_name, resource_attrs, records):
        """Forward to the current pipeline; without one, count the records as dropped."""
        pipeline = self._agent.child("export")
        if pipeline is None:
            self._agent.metrics.queue_dropped.labels(signal_type=signal_name, reason="disabled").inc(len(records))
            return 0
        return pipeline.submit(signal_name, resource_attrs, records)

    def submit_tracked(self, signal_name, resource_attrs, records, order=None):
        """Forward to the current pipeline (ExportPipeline.submit_tracked); without one, settled as dropped."""
        pipeline = self._agent.child("export")
        if pipeline is None:
            from telegen.export.delivery import settled_delivery

            self._agent.metrics.queue_dropped.labels(signal_type=signal_name, reason="disabled").inc(len(records))
            return len(records), settled_delivery(len(records), "disabled")
        return pipeline.submit_tracked(signal_name, resource_attrs, records, order)


class AgentService(MultiService):
    """
    The root of the service tree.

    @ivar config: the running config (a validated nested dict).
    @ivar metrics: the SelfMetrics every child reports into.
    """

    def __init__(self, config: dict, config_path: Optional[str] = None, reactor: Any = None,
                 specs: Optional[Iterable[ChildSpec]] = None, install_signals: bool = False,
                 loader: Optional[Callable[[Optional[str]], Any]] = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.config_path = config_path
        self.metrics = SelfMetrics()
        self.exporter = ExportHandle(self)
        self.started_at = time.time()
        self.stopping = False
        self._install_signals = install_signals
        self._loader = loader or self._load_in_thread
        self._specs = list(specs if specs is not None else default_specs())
        self._reload_lock = defer.DeferredLock()
        for spec in self._specs:
            self._build(spec)

    # -- children ----------------------------------------------------------------------------

    def child(self, name: str) -> Optional[IService]:
        """The running child called name, or None when it is off."""
        return self.namedServices.get(name)

    def _build(self, spec: ChildSpec) -> Optional[IService]:
        """Build spec's child from its slice and add it (started when the tree runs)."""
        child = spec.factory(self, spec.slice(self.config))
        if child is not None:
            child.setName(spec.name)
            child.setServiceParent(self)    # IServiceCollection.addService, which starts it if we run
        return child

    # -- lifecycle -----------------------------------------------------------------------------

    def startService(self):
        self.started_at = time.time()
        super().startService()
        if self._install_signals:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._reload_on_signal))

    def _stop_children(self):
        """
        Stop the children in reverse declared order (the exporter flushes last), whatever order
        rebuilds added them in: MultiService would use the order of addService.
        """
        super(MultiService, self).stopService()
        order = [s.name for s in self._specs]
        children = sorted(self, key=lambda c: order.index(c.name) if c.name in order else len(order))
        return defer.DeferredList([defer.maybeDeferred(c.stopService) for c in reversed(children)])

    def stopService(self):
        """Stop children in reverse order (the exporter flushes last), bounded by shutdown_timeout."""
        self.stopping = True
        timeout = self.config["telegen"]["shutdown_timeout"]

        def log_failure(result):
            if isinstance(result, Failure):
                log.failure("a child failed to stop cleanly", result)

        def give_up():
            # twistd simply stops waiting for the children; they are not cancelled.
            log.warn("shutdown took longer than {timeout}s; stopping anyway", timeout=timeout)

        stopping = defer.maybeDeferred(self._stop_children).addBoth(log_failure)
        return within(stopping, self.reactor, timeout, give_up)

    # -- reload --------------------------------------------------------------------------------

    def _reload_on_signal(self):
        d = self.reload()
        d.addErrback(lambda f: log.error("reload on SIGHUP failed: {error}", error=f.getErrorMessage()))

    def reload(self) -> defer.Deferred:
        """
        Re-read the config file and apply it. One reload runs at a time; a second request while
        one runs waits for it and then runs its own, so the newest file always gets applied.
        Fires with a ReloadResult; fails with ConfigError (nothing changed) or ReloadFailed (old
        children restored).
        """
        return self._reload_lock.run(self._reload_once)

    def _reload_once(self):
        d = defer.maybeDeferred(self._loader, self.config_path)
        return d.addCallback(self.apply_config)

    def _load_in_thread(self, path):
        """Parse and validate the file off the reactor thread (it may be slow, e.g. on NFS)."""
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), load_config, path)

    @defer.inlineCallbacks
    def apply_config(self, new_config: dict) -> Generator[Any, Any, ReloadResult]:
        """
        Tell every child whose slice differs between the running and the new config: in place
        where it can, by a rebuild otherwise (and then every child depending on it is rebuilt).
        """
        old_config = self.config
        changed = [s for s in self._specs if s.slice(old_config) != s.slice(new_config)]
        self.config = new_config
        try:
            reconfigured = self._reconfigure_in_place(changed, new_config)
            rebuild = self._with_dependents({s.name for s in changed} - set(reconfigured))
            reconfigured = [name for name in reconfigured if name not in rebuild]
            log.info("applied new config: rebuilt {rebuilt}, reconfigured in place {reconfigured}",
                     rebuilt=sorted(rebuild) or "nothing", reconfigured=sorted(reconfigured) or "nothing")
            yield self._rebuild(rebuild)
        except Exception as exc:
            log.failure("applying the new config failed; restoring the previous one")
            self.config = old_config
            yield self._rebuild({s.name for s in changed})
            raise ReloadFailed(f"{type(exc).__name__}: {exc}") from exc
        return ReloadResult(rebuilt=sorted(rebuild), reconfigured=sorted(reconfigured))

    def _reconfigure_in_place(self, changed: list, new_config: dict) -> list:
        """Names of the running children that applied their new slice themselves."""
        done = []
        for spec in changed:
            child = self.child(spec.name)
            # IChild(child): a child not declaring the contract fails here, loudly, not later.
            if child is not None and IChild(child).reconfigure(spec.slice(new_config)):
                done.append(spec.name)
        return done

    def _with_dependents(self, names: set) -> set:
        """names plus every child that depends, directly or not, on one of them."""
        names = set(names)
        grew = True
        while grew:
            grew = False
            for spec in self._specs:
                if spec.name not in names and names.intersection(spec.depends_on):
                    names.add(spec.name)
                    grew = True
        return names

    @defer.inlineCallbacks
    def _rebuild(self, names: set) -> Generator[Any, Any, None]:
        """Stop and remove the named children (dependents first), then build them anew in order."""
        specs = [s for s in self._specs if s.name in names]
        for spec in reversed(specs):
            old = self.child(spec.name)
            if old is not None:
                yield defer.maybeDeferred(old.disownServiceParent)   # IServiceCollection.removeService
        for spec in specs:
            self._build(spec)

    # -- operations used by the API and the manhole ----------------------------------------------

    def flush(self):
        """Send everything queued now; fires with {signal: count}."""
        pipeline = self.child("export")
        if pipeline is None:
            return defer.succeed({})
        return pipeline.flush()

    def status(self):
        """What GET /status answers."""
        from telegen.status import agent_status

        return agent_status(self)


def default_specs():
    """The production tree, in start order (the reverse is the stop order)."""
    from telegen import components

    return components.SPECS


__all__ = ["AgentService", "ChildSpec", "ExportHandle", "ReloadFailed", "ReloadResult", "default_specs"]
