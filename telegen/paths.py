"""Where shipped data lives: BPF C sources and the default config, in a checkout or an install."""
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_existing(*candidates):
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]


def bpf_dir():
    """The folder holding bpf/*.c: the checkout's bpf/ when run from source, else <prefix>/share."""
    return _first_existing(
        os.path.join(_CHECKOUT, "bpf"),
        os.path.join(sys.prefix, "share", "telegen", "bpf"),
    )


def default_config_file():
    """The documented default config shipped with the code (used by `telegen validate` defaults)."""
    return _first_existing(
        os.path.join(_CHECKOUT, "etc", "telegen", "config.yaml"),
        os.path.join(sys.prefix, "share", "telegen", "etc", "config.yaml"),
    )
