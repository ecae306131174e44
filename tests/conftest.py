"""
Shared pytest wiring: the OTLP receiver fixtures, and the rule that an eBPF test may skip only
where the kernel or privileges cannot do it, always saying why.
"""
import os

import pytest

from tests.support.fixtures import otlp_receiver, otlp_tls, otlp_tls_receiver  # noqa: F401 (fixtures)


def ebpf_unavailable_reason():
    """Why eBPF tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "eBPF tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return f"BCC is not importable: {exc}"
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
        return "no kernel headers at /lib/modules/$(uname -r)/build (run scripts/bootstrap.sh)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = ebpf_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "ebpf" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
