"""
pytest fixtures around the test OTLP receiver. The lead imports them into tests/conftest.py:

    from tests.support.fixtures import otlp_receiver, otlp_tls, otlp_tls_receiver  # noqa: F401
"""
import pytest

from tests.support.otlp_receiver import OtlpReceiver, make_tls


@pytest.fixture
def otlp_receiver():
    """A started plain-text OTLP receiver (gRPC and HTTP on 127.0.0.1), stopped after the test."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def otlp_tls(tmp_path):
    """A generated CA with server and client certificates (TlsMaterial)."""
    return make_tls(tmp_path / "tls")


@pytest.fixture
def otlp_tls_receiver(otlp_tls):
    """A started OTLP receiver serving TLS with the otlp_tls certificates."""
    receiver = OtlpReceiver(tls=otlp_tls).start()
    yield receiver
    receiver.stop()
