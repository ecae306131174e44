"""The shipped config files and docs/configuration.md stay in step with the schema."""
import os
import subprocess
import sys

import pytest
import yaml

from telegen.config import defaults, load_config
from telegen.config.reference import render
from telegen.config.schema import SCHEMA, Section, leaves

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "etc", "telegen", "config.yaml")
DEV_CONFIG = os.path.join(ROOT, "etc", "telegen", "config.dev.yaml")
DOC = os.path.join(ROOT, "docs", "configuration.md")


def _file_leaves(tree, section=SCHEMA, prefix=()):
    """Dotted paths of the schema leaves a parsed file spells out."""
    found = set()
    for name, value in tree.items():
        spec = section.fields.get(name)
        if isinstance(spec, Section) and isinstance(value, dict):
            found |= _file_leaves(value, spec, prefix + (name,))
        else:
            found.add(prefix + (name,))
    return found


@pytest.mark.parametrize("path", [CONFIG, DEV_CONFIG])
def test_shipped_files_spell_out_every_key(path):
    """Every schema key is written in the shipped files (and nothing else)."""
    with open(path, encoding="utf-8") as handle:
        tree = yaml.safe_load(handle)
    assert _file_leaves(tree) == {path for path, _ in leaves()}


def _key_lines(node, prefix=()):
    """{path: 0-based line} of every key in a composed YAML mapping."""
    lines = {}
    for key, value in node.value:
        path = prefix + (key.value,)
        lines[path] = key.start_mark.line
        if isinstance(value, yaml.MappingNode):
            lines.update(_key_lines(value, path))
    return lines


def test_every_key_is_commented():
    """Each key of config.yaml has a comment line right above it or above one of its sections."""
    with open(CONFIG, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    key_lines = _key_lines(yaml.compose(text))
    for path, _field in leaves():
        above = [lines[key_lines[path[:n]] - 1].strip() for n in range(len(path), 0, -1)]
        assert any(line.startswith("#") for line in above), f"{'.'.join(path)} has no comment"


def test_default_file_loads_to_defaults():
    """config.yaml loads, with no environment, to exactly defaults()."""
    assert load_config(CONFIG, environ={}) == defaults()


def test_dev_file_differs_only_in_data_dir():
    """config.dev.yaml is the defaults with data_dir ./data, listen :19090 and no endpoint (file sink)."""
    config = load_config(DEV_CONFIG, environ={})
    expected = defaults()
    expected["telegen"]["data_dir"] = "./data"
    assert config == expected
    assert config["self_telemetry"]["listen"] == ":19090"
    assert config["otlp"]["endpoint"] is None


def test_doc_reference_is_current():
    """docs/configuration.md carries the reference rendered from the schema (scripts/config_docs.py)."""
    with open(DOC, encoding="utf-8") as handle:
        assert render().rstrip("\n") in handle.read(), "run: .venv/bin/python scripts/config_docs.py"


def test_doc_lists_every_key_and_variable():
    """Each key and its TELEGEN_ variable appear in the doc."""
    with open(DOC, encoding="utf-8") as handle:
        doc = handle.read()
    for path, _field in leaves():
        assert f"`{'.'.join(path)}`" in doc
        assert "TELEGEN_" + "_".join(path).upper() in doc


def test_doc_script_check_mode():
    """scripts/config_docs.py --check agrees the doc is current (exit 0)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "config_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
