"""
The agent's root service: the named children, reload, flush and graceful shutdown.

Children are built by factories from the agent (so tests swap them) and each declares the config
sections it reads; a reload rebuilds exactly the children whose sections changed. Collectors reach
the export pipeline through ExportHandle, so rebuilding the pipeline does not rebuild them.
"""
import signal
import time
from dataclasses import dataclass, field

from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from telegen.config import load_config
from telegen.selfmetrics import SelfMetrics

log = Logger(namespace="telegen.service")


@dataclass(frozen=True)
class ChildSpec:
    """
    How to build one named child.

    sections are dotted config paths whose change means a rebuild; depends_on names children whose
    rebuild forces this one's (it holds a reference to them); factory(agent) returns a service or None
    (None: the child is off under this config).
    """

    name: str
    sections: tuple
    factory: object
    depends_on: tuple = field(default_factory=tuple)


class ReloadFailed(Exception):
    """The new config was valid but applying it failed; the old children were restored."""


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

    def submit_tracked(self, signal_name, resource_attrs, records):
        """Forward to the current pipeline (ExportPipeline.submit_tracked); without one, settled as dropped."""
        pipeline = self._agent.child("export")
        if pipeline is None:
            from telegen.export.delivery import settled_delivery

            self._agent.metrics.queue_dropped.labels(signal_type=signal_name, reason="disabled").inc(len(records))
            return len(records), settled_delivery(len(records), "disabled")
        return pipeline.submit_tracked(signal_name, resource_attrs, records)


def _section(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


class AgentService(MultiService):
    """
    The root of the service tree.

    @ivar config: the running config (a validated nested dict).
    @ivar metrics: the SelfMetrics every child reports into.
    """

    def __init__(self, config, config_path=None, reactor=None, specs=None, install_signals=False, loader=None):
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

    def child(self, name):
        """The running child called name, or None when it is off."""
        return self.namedServices.get(name)

    def _build(self, spec):
        child = spec.factory(self)
        if child is not None:
            child.setName(spec.name)
            child.setServiceParent(self)
        return child

    # -- lifecycle -----------------------------------------------------------------------------

    def startService(self):
        self.started_at = time.time()
        super().startService()
        if self._install_signals:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._reload_on_signal))

    def stopService(self):
        """Stop children in reverse order (the exporter flushes last), bounded by shutdown_timeout."""
        self.stopping = True
        timeout = self.config["telegen"]["shutdown_timeout"]
        done = defer.Deferred()

        def finish(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                log.failure("a child failed to stop cleanly", result)
            if not done.called:
                done.callback(None)

        def give_up():
            # The children are not cancelled (a cancelled flush would log noise and lose the
            # reason); twistd simply stops waiting for them.
            log.warn("shutdown took longer than {timeout}s; stopping anyway", timeout=timeout)
            done.callback(None)

        timer = self.reactor.callLater(timeout, give_up)
        defer.maybeDeferred(super().stopService).addBoth(finish)
        return done

    # -- reload --------------------------------------------------------------------------------

    def _reload_on_signal(self):
        d = self.reload()
        d.addErrback(lambda f: log.error("reload on SIGHUP failed: {error}", error=f.getErrorMessage()))

    def reload(self):
        """
        Re-read the config file and apply it. One reload runs at a time; a second request while
        one runs waits for it and then runs its own, so the newest file always gets applied.
        Fires with the list of rebuilt children; fails with ConfigError (nothing changed) or
        ReloadFailed (old children restored).
        """
        return self._reload_lock.run(self._reload_once)

    def _reload_once(self):
        d = defer.maybeDeferred(self._loader, self.config_path)
        return d.addCallback(self.apply_config)

    def _load_in_thread(self, path):
        """Parse and validate the file off the reactor thread (it may be slow, e.g. on NFS)."""
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), load_config, path)

    @defer.inlineCallbacks
    def apply_config(self, new_config):
        """Rebuild the children whose config sections differ between the running and the new config."""
        old_config = self.config
        changed = self._changed_children(old_config, new_config)
        log.info("applying new config; rebuilding {children}", children=sorted(changed) or "nothing")
        self.config = new_config
        try:
            yield self._rebuild(changed)
        except Exception as exc:
            log.failure("applying the new config failed; restoring the previous one")
            self.config = old_config
            yield self._rebuild(changed)
            raise ReloadFailed(f"{type(exc).__name__}: {exc}") from exc
        return sorted(changed)

    def _changed_children(self, old, new):
        changed = {
            spec.name for spec in self._specs
            if any(_section(old, s) != _section(new, s) for s in spec.sections)
        }
        grew = True
        while grew:
            grew = False
            for spec in self._specs:
                if spec.name not in changed and changed.intersection(spec.depends_on):
                    changed.add(spec.name)
                    grew = True
        return changed

    @defer.inlineCallbacks
    def _rebuild(self, names):
        specs = [s for s in self._specs if s.name in names]
        for spec in reversed(specs):
            old = self.child(spec.name)
            if old is not None:
                yield defer.maybeDeferred(old.disownServiceParent)
        for spec in specs:
            child = spec.factory(self)
            if child is None:
                continue
            child.setName(spec.name)
            # Keep the declared order so stopService still stops the exporter last.
            self._insert_in_order(child)
            if self.running:
                child.privilegedStartService()
                yield defer.maybeDeferred(child.startService)

    def _insert_in_order(self, child):
        order = [s.name for s in self._specs]
        child.parent = self
        self.namedServices[child.name] = child
        rank = order.index(child.name)
        position = len(self.services)
        for i, existing in enumerate(self.services):
            if existing.name in order and order.index(existing.name) > rank:
                position = i
                break
        self.services.insert(position, child)

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


__all__ = ["AgentService", "ChildSpec", "ExportHandle", "ReloadFailed", "default_specs"]
