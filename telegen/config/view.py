"""
ConfigSlice: the part of the running configuration one child of the service tree declared.

A child reads its configuration as it always did (config["agent"]["ebpf"]["ringbuf_size"]), but
through a slice that knows which dotted sections the child's ChildSpec declared. Reading anything
else raises UndeclaredConfigKey, so a child cannot depend on a key a reload would not tell it
about (the bug where the eBPF child read self_telemetry.listen without declaring it).
"""
from collections.abc import Iterator, Mapping
from typing import Any


class UndeclaredConfigKey(LookupError):
    """
    A child read a configuration key outside the sections its ChildSpec declares. Not a KeyError,
    so Mapping.get() cannot swallow it into a default.
    """


class ConfigSlice(Mapping):
    """
    A read-only view of a nested config dict restricted to declared dotted paths.

    Indexing walks down the dict; a node at or below a declared path is returned as is (a plain
    value or a read-only slice of the whole subtree), a node above one is a narrower slice.
    Equality compares the declared values, which is what a reload needs to know.
    """

    __slots__ = ("_node", "_paths", "_prefix")

    def __init__(self, config: Mapping, sections, _prefix: str = ""):
        self._node = config
        # each declared path split into parts, relative to this node; () means "everything below"
        self._paths = tuple(tuple(p.split(".")) if p else () for p in sections)
        self._prefix = _prefix

    @property
    def sections(self) -> tuple:
        """The declared dotted paths, relative to this node."""
        return tuple(".".join(p) for p in self._paths)

    def _below(self, key: str) -> tuple:
        return tuple(p[1:] for p in self._paths if not p or p[0] == key)

    def __getitem__(self, key: str) -> Any:
        below = self._below(key)
        where = f"{self._prefix}{key}"
        if not below:
            raise UndeclaredConfigKey(f"{where} is not among the sections this child declared")
        value = self._node[key]
        if not isinstance(value, Mapping):
            return value
        return ConfigSlice(value, [".".join(p) for p in below], _prefix=where + ".")

    def _visible(self) -> list:
        if any(not p for p in self._paths):
            return list(self._node)
        return [k for k in dict.fromkeys(p[0] for p in self._paths) if k in self._node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._visible())

    def __len__(self) -> int:
        return len(self._visible())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        raise TypeError("ConfigSlice is not hashable")

    def __repr__(self) -> str:
        return f"ConfigSlice({self._prefix or '<root>'}: {', '.join(self.sections) or '*'})"

