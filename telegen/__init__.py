"""Telegen: a Linux host agent on Twisted that turns eBPF observations into OpenTelemetry data."""

__version__ = "0.1.0"
__all__ = ["__version__"]
