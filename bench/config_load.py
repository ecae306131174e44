#!/usr/bin/env python3
"""
How long loading the shipped config takes, against the bare libyaml parse of the same text.

The agent loads its config at start and on every reload (in a thread); this shows what the
expansion, overrides, validation and normalization cost on top of parsing (the loader parses
with libyaml's CSafeLoader; the pure-Python safe_load is shown for scale).
Usage: .venv/bin/python bench/config_load.py [--rounds N]
"""
import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from telegen.config import load_config_text, redact  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "telegen", "config.yaml")
ENVIRON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "TELEGEN_QUEUES_TRACES_CAPACITY": "20000",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds
    with open(CONFIG, encoding="utf-8") as handle:
        text = handle.read()
    config = load_config_text(text, environ=ENVIRON)
    cases = {
        "yaml CSafeLoader (baseline)": lambda: yaml.load(text, Loader=yaml.CSafeLoader),
        "yaml.safe_load (pure Python)": lambda: yaml.safe_load(text),
        "load_config_text": lambda: load_config_text(text, environ=ENVIRON),
        "redact": lambda: redact(config),
    }
    base = None
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=rounds, repeat=7)) / rounds
        base = base or best
        print(f"{name:28s} {best * 1000:8.3f} ms/call  {best / base:5.2f}x baseline")


if __name__ == "__main__":
    main()
