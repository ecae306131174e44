"""
Parsers for the value kinds of the schema (``Field.kind``).

Each parser turns what YAML or an environment variable gives into the normalized Python value the
rest of the agent reads (durations float seconds, sizes int bytes, port ranges (lo, hi) tuples), or
raises L{Invalid} naming the problem. Every parser also accepts a string, because ``${VAR}``
expansion and ``TELEGEN_*`` variables always produce strings; that keeps one parsing rule per kind
whichever source the value came from.
"""
import difflib
import ipaddress
import re
from urllib.parse import unquote

import yaml

SELECTOR_KEYS = (
    "open_ports", "exe_path", "name", "k8s_namespace", "k8s_pod_name", "k8s_deployment_name",
    "containers_only", "container_name", "container_image", "k8s_owner_name", "k8s_pod_labels",
)

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")

# Go's time.ParseDuration units, as multipliers of one second.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# Byte sizes: SI (k, M, G, T) and binary (Ki, Mi, Gi, Ti), with or without a trailing B.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "b"] = 1000 ** _i
    _SIZE_UNITS[_p + "i"] = _SIZE_UNITS[_p + "ib"] = 1024 ** _i

_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9.\-]*)):(?P<port>\d{1,5})")


class Invalid(ValueError):
    """
    A value does not fit its kind.

    @ivar problem: what is wrong, phrased to follow the key ("invalid duration 'x'").
    @ivar hint: a close valid spelling for a did-you-mean, or None.
    @ivar at: path below the key where the problem is (list index, selector key), or ().
    """

    def __init__(self, problem, hint=None, at=()):
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
        self.at = tuple(at)


def show(value):
    """A short quoted rendering of a value for an error message."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def closest(word, candidates):
    """The candidate closest to word (difflib), or None: the did-you-mean hint."""
    found = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return found[0] if found else None


def _type_name(value):
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def parse_str(value, field=None):
    """A string; numbers are taken as their text (YAML reads `instance_id: 42` as an int)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Invalid(f"expected a string, got {_type_name(value)}")


def parse_bool(value, field=None):
    """true/false, or the strings true/false/yes/no/1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise Invalid(f"expected a boolean (true/false/yes/no/1/0), got {show(value)}")


def parse_int(value, field=None):
    """An integer, or its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            pass
    raise Invalid(f"expected an integer, got {show(value)}")


def parse_float(value, field=None):
    """A number, or its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    raise Invalid(f"expected a number, got {show(value)}")


def parse_duration(value, field=None):
    """Seconds as float: a bare number is seconds, text is Go style (`1m30s`, `500ms`, `2h`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise Invalid(f"invalid duration {show(value)} (use e.g. 10s, 500ms, 1m30s, 2h or seconds)")


def parse_size(value, field=None):
    """Bytes as int: an integer, or text like `16Mi`, `64KiB`, `1GB` (k/M/G/T = 1000^n, Ki/Mi/Gi/Ti = 1024^n)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match and match.group(2).lower() in _SIZE_UNITS:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if size.is_integer():
                return int(size)
    raise Invalid(f"invalid size {show(value)} (use bytes or e.g. 64KiB, 16Mi, 1GB)")


def parse_enum(value, field):
    """One of field.choices, matched without regard to case (TELEGEN_LOG_LEVEL=DEBUG is common)."""
    if isinstance(value, str):
        for choice in field.choices:
            if value.strip().lower() == choice.lower():
                return choice
    choices = ", ".join(field.choices)
    raise Invalid(f"must be one of {choices}, got {show(value)}", hint=closest(value, field.choices))


def _split_list(value):
    """YAML lists pass through; a string is a comma-separated list (blank items dropped)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    raise Invalid(f"expected a list, got {_type_name(value)}")


def _each(items, parse):
    out = []
    for index, item in enumerate(items):
        try:
            out.append(parse(item))
        except Invalid as err:
            raise Invalid(err.problem, err.hint, (index,) + err.at) from None
    return out


def parse_list_str(value, field=None):
    """A list of strings (or one comma-separated string)."""
    return _each(_split_list(value), parse_str)


def parse_list_int(value, field=None):
    """A list of integers (or one comma-separated string)."""
    return _each(_split_list(value), parse_int)


def _port(text, item):
    port = parse_int(text)
    if not 1 <= port <= 65535:
        raise Invalid(f"port {show(item)} out of range 1..65535")
    return port


def _port_range(item):
    if isinstance(item, str) and "-" in item:
        low, _, high = item.partition("-")
        lo, hi = _port(low, item), _port(high, item)
        if lo > hi:
            raise Invalid(f"port range {show(item)} has its start after its end")
        return (lo, hi)
    if isinstance(item, (int, str)) and not isinstance(item, bool):
        port = _port(item, item)
        return (port, port)
    raise Invalid(f"expected a port or a 'lo-hi' range, got {show(item)}")


def parse_list_ports(value, field=None):
    """Ports and ranges (`[80, "8000-8999"]` or `"80,8000-8999"`) as a list of (lo, hi) tuples."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    return _each(_split_list(value), _port_range)


def parse_map_str(value, field=None):
    """A mapping of strings, or `k=v,k2=v2` text (values percent-decoded, as OTEL_* headers are)."""
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            if not part.strip():
                continue
            key, sep, item = part.partition("=")
            if not sep or not key.strip():
                raise Invalid("expected k=v pairs separated by commas")
            pairs[unquote(key.strip())] = unquote(item.strip())
        return pairs
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping, got {_type_name(value)}")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise Invalid(f"keys must be strings, got {show(key)}")
        try:
            out[key] = parse_str(item)
        except Invalid as err:
            raise Invalid(err.problem, at=(key,)) from None
    return out


def parse_listen(value, field=None):
    """A TCP listen address: `:port`, `host:port` or `[v6]:port`, port 0..65535."""
    text = parse_str(value)
    match = _LISTEN.fullmatch(text.strip())
    if match and match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(match.group("v6"))
        except ValueError:
            match = None
    if not match or int(match.group("port")) > 65535:
        raise Invalid(f"invalid listen address {show(value)} (use ':19090', '127.0.0.1:19090' or '[::1]:19090')")
    return text.strip()


def parse_endpoint(value, field=None):
    """
    A Twisted server endpoint string such as `tcp:2222:interface=127.0.0.1`.

    Only parsed: serverFromString builds an endpoint object without listening, so no port is bound
    and no reactor is needed (the reactor argument is only stored by the endpoint classes).
    """
    from twisted.internet.endpoints import serverFromString

    text = parse_str(value)
    try:
        endpoint = serverFromString(None, text)
    except Exception as err:  # Twisted raises ValueError, KeyError, TypeError ... for bad strings
        raise Invalid(f"invalid endpoint {show(text)}: {err}") from None
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise Invalid(f"invalid endpoint {show(text)}: port out of range 0..65535")
    return text


_SELECTOR_PARSERS = {
    "open_ports": parse_list_ports,
    "containers_only": parse_bool,
    "k8s_pod_labels": parse_map_str,
}


def _selector(item):
    if not isinstance(item, dict):
        raise Invalid(f"a selector must be a mapping, got {_type_name(item)}")
    if not item:
        raise Invalid("a selector needs at least one of " + ", ".join(SELECTOR_KEYS))
    out = {}
    for key, criterion in item.items():
        if key not in SELECTOR_KEYS:
            raise Invalid("unknown selector key", hint=closest(key, SELECTOR_KEYS), at=(str(key),))
        try:
            out[key] = _SELECTOR_PARSERS.get(key, parse_str)(criterion)
        except Invalid as err:
            raise Invalid(err.problem, err.hint, (key,) + err.at) from None
    return out


def parse_selectors(value, field=None):
    """
    Process selectors: a list of mappings whose keys are among SELECTOR_KEYS (AND within one
    selector, OR across them). A string (from an environment variable) is read as YAML flow text,
    e.g. `[{exe_path: "*nginx*", open_ports: "80,443"}]`.
    """
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise Invalid("expected a YAML list of selector mappings") from None
        value = [] if value is None else value
    if not isinstance(value, list):
        raise Invalid(f"expected a list of selector mappings, got {_type_name(value)}")
    return _each(value, _selector)


PARSERS = {
    "str": parse_str,
    "int": parse_int,
    "float": parse_float,
    "bool": parse_bool,
    "duration": parse_duration,
    "size": parse_size,
    "enum": parse_enum,
    "list_str": parse_list_str,
    "list_int": parse_list_int,
    "list_ports": parse_list_ports,
    "map_str": parse_map_str,
    "listen": parse_listen,
    "endpoint": parse_endpoint,
    "selectors": parse_selectors,
}


_UNITS = {"duration": "s", "size": " bytes"}


def format_number(value, kind):
    """A limit or value for messages and docs, with the kind's unit (0.1s, 4096 bytes)."""
    text = str(int(value)) if float(value).is_integer() else str(value)
    return text + _UNITS.get(kind, "")


def check_limits(value, field):
    """Apply the field's min, max and power_of_two to a parsed number."""
    if field.min is not None and value < field.min:
        raise Invalid(f"must be >= {format_number(field.min, field.kind)}, got {format_number(value, field.kind)}")
    if field.max is not None and value > field.max:
        raise Invalid(f"must be <= {format_number(field.max, field.kind)}, got {format_number(value, field.kind)}")
    if field.power_of_two and (value <= 0 or value & (value - 1)):
        raise Invalid(f"must be a power of two, got {value}")


def parse_value(value, field):
    """Parse a leaf value by its field: null handling, kind, then limits."""
    if isinstance(value, str) and value == "" and field.nullable:
        value = None
    if value is None:
        if field.nullable:
            return None
        raise Invalid("must not be null")
    parsed = PARSERS[field.kind](value, field)
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        check_limits(parsed, field)
    return parsed
