"""Running resource providers in integration tests: started on the real reactor, stopped at the test's end."""
import pytest
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from telegen.contracts import IResourceProvider
from telegen.selfmetrics import SelfMetrics


class Changes:
    """The changed() callback a provider is given, counting its calls."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


@pytest.fixture
def run_provider():
    """run_provider(cls, config, **kw) -> (provider, metrics, changes), started now and stopped at the end."""
    started = []

    def run(cls, config, **kwargs):
        metrics, changes = SelfMetrics(), Changes()
        provider = cls(config, metrics, changes, reactor=reactor, **kwargs)
        verifyObject(IResourceProvider, provider)
        provider.startService()
        started.append(provider)
        return provider, metrics, changes

    yield run
    for provider in started:
        provider.stopService()
