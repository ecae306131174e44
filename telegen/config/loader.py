"""
Loading: YAML text -> aliases -> ${VAR} expansion -> environment overrides -> validated config.

Each step works on the plain parsed tree; every problem leaves as one ConfigError, located by the
file line of the offending key when the value came from the file, or by the variable that set it.
"""
import copy
import functools
import os

import yaml

from telegen.config.env import apply_environment
from telegen.config.errors import ConfigError, dotted
from telegen.config.expand import ExpansionError, expand_tree
from telegen.config.kinds import Invalid
from telegen.config.validate import validate

# The spellings of the original Go Telegen docs, accepted at the top level: alias -> real path.
ALIASES = {"selfTelemetry": ("self_telemetry",), "discovery": ("agent", "discovery")}


_FastestSafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_FastestSafeLoader):
    """safe_load (libyaml when present) that refuses a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _parse_yaml(text, source):
    try:
        tree = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, None, f"{where}invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(source, None, f"invalid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(source, None, f"the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def _apply_aliases(tree):
    """Move aliased top-level sections to their real place; both spellings at once is an error."""
    for alias, target in ALIASES.items():
        if alias not in tree:
            continue
        parent = tree
        for name in target[:-1]:
            if parent.get(name) is None:
                parent[name] = {}
            parent = parent[name]
            if not isinstance(parent, dict):
                raise Invalid("expected a mapping", at=target[:-1])
        if target[-1] in parent:
            raise Invalid(f"given twice, as '{alias}' and as '{dotted(target)}'", at=target)
        parent[target[-1]] = tree.pop(alias)


def _file_paths(path):
    """The spellings a key path may have in the file: itself, or under an alias."""
    yield path
    for alias, target in ALIASES.items():
        if path[:len(target)] == target:
            yield (alias,) + path[len(target):]


def _node_at(root, path):
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            matches = [value for key, value in node.value if getattr(key, "value", None) == part]
            if not matches:
                return None
            node = matches[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node


def _line_of(text, path):
    """The 1-based line of the key path in the YAML text, or None."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for candidate in _file_paths(tuple(path)):
        while candidate:
            node = _node_at(root, candidate)
            if node is not None:
                return node.start_mark.line + 1
            candidate = candidate[:-1]  # a default-filled key: point at its section
    return None


def _error(source, text, origins, path, problem, hint=None):
    """A ConfigError for path, saying which variable or file line gave the value."""
    origin = next((origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None)
    if origin:
        problem += f" (from ${origin})"
    else:
        line = _line_of(text, path) if path else None
        if line:
            problem += f" at line {line}"
    return ConfigError(source, dotted(path) or None, problem, hint)


def load_config_text(text, environ=None, source="<string>"):
    """Load a config from YAML text; see the package docstring for the steps. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    tree = _parse_yaml(text, source)
    origins = {}
    try:
        _apply_aliases(tree)
        tree = expand_tree(tree, environ)
        origins = apply_environment(tree, environ)
        return validate(tree)
    except ExpansionError as err:
        raise _error(source, text, {}, err.path, str(err)) from None
    except Invalid as err:
        raise _error(source, text, origins, err.at, err.problem, err.hint) from None


def load_config(path, environ=None):
    """Read and load a config file; an unreadable file is a ConfigError too."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read the file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "cannot read the file: not UTF-8 text") from None
    return load_config_text(text, environ, source=str(path))


@functools.lru_cache(maxsize=1)
def _defaults():
    return load_config_text("", environ={}, source="<defaults>")


def defaults():
    """The config an empty file gives with no environment: every key at its default (a fresh copy)."""
    return copy.deepcopy(_defaults())
