"""Packaging for Telegen: the agent package, its twistd plugin, BPF sources and default config."""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    """Read __version__ from telegen/__init__.py without importing the package."""
    with open(os.path.join(HERE, "telegen", "__init__.py"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in telegen/__init__.py")


setup(
    name="telegen",
    version=read_version(),
    description="eBPF host agent on Twisted: HTTP spans, RED and TCP metrics, host metrics over OTLP",
    python_requires=">=3.11",
    # twisted.plugins is a namespace-like package without __init__.py: find_packages skips it,
    # so it is named by hand (Twisted's tap howto).
    packages=find_packages(include=["telegen", "telegen.*"]) + ["twisted.plugins"],
    # The top-level bpf/ and etc/ folders ship as data under <prefix>/share/telegen; the code finds
    # them there or, in a checkout, beside the package (telegen.paths).
    data_files=[
        ("share/telegen/bpf", sorted(glob.glob("bpf/*.c") + glob.glob("bpf/*.h"))),
        ("share/telegen/etc", ["etc/telegen/config.yaml"]),
    ],
    entry_points={"console_scripts": ["telegen = telegen.cli:main"]},
    install_requires=[
        "twisted[conch]>=23.10",
        "klein>=23.12",
        "treq>=23.11",
        "pyyaml>=6.0",
        "grpcio>=1.60",
        "opentelemetry-proto>=1.27,<2",
        "protobuf>=5.26,<6",
        "prometheus-client>=0.19",
        "googleapis-common-protos>=1.60",    # google.rpc status details of gRPC export errors
        "hpack>=4.0",                        # HPACK's static table and Huffman code (HTTP/2 decoding)
    ],
)
