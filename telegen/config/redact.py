"""
redact(config): the copy of a config that /config, `telegen validate --show` and logs may show.

Secrets are found three ways, because a miss leaks: the schema's `secret` fields, the values of
otlp.headers (the keys stay: they tell which headers are sent), and by name anywhere in the tree
(a key containing a word like token, password, secret or key), plus the password of a URL's userinfo.
"""
import re

from telegen.config.schema import leaves

REDACTED = "[REDACTED]"
_SECRET_WORDS = {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials"}
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*:)[^/@\s]+(?P<tail>@)")
_SECRET_PATHS = {path for path, field in leaves() if field.secret}


def _named_secret(name):
    """True when a key's name says it holds a secret (`bearer_token`, `api-key`, `password`)."""
    return any(word in _SECRET_WORDS for word in _WORD_SPLIT.split(str(name).lower()))


def _is_empty(value):
    return value is None or value == "" or value == {} or value == []


def _hide(value):
    """A secret value as shown: keys of a mapping survive, anything non-empty is replaced."""
    if isinstance(value, dict):
        return {key: (item if _is_empty(item) else REDACTED) for key, item in value.items()}
    return value if _is_empty(value) or isinstance(value, bool) else REDACTED


def _copy(node, path):
    if path in _SECRET_PATHS or (path and _named_secret(path[-1])):
        return _hide(node)
    if isinstance(node, dict):
        return {str(key): _copy(value, path + (key,)) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_copy(value, path) for value in node]
    if isinstance(node, str):
        return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED + m.group("tail"), node)
    return node


def redact(config):
    """A JSON-serializable deep copy (tuples become lists) with every secret value "[REDACTED]"."""
    return _copy(config, ())
