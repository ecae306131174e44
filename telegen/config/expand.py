"""
${VAR} expansion inside string values of the parsed YAML tree.

Expansion runs after YAML parsing, on each string value alone, so an environment value can never
inject YAML structure (a variable holding "a: b" stays that string). Forms:

- `${VAR}`: the value of VAR; unset is an error naming VAR (set but empty gives "").
- `${VAR:-default}`: VAR, or default when VAR is unset or empty.
- `${VAR:?message}`: VAR, or an error carrying message when VAR is unset or empty.
- `$$`: a literal `$`. Any other `$` is kept as written (a password may contain one).
"""
import re

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpansionError(ValueError):
    """A reference that cannot be expanded; the message names the variable."""


def _reference(text, start, environ):
    """Expand the `${...}` that opens at start; return (replacement, index after the closing brace)."""
    end = text.find("}", start + 2)
    if end < 0:
        raise ExpansionError("unterminated '${' (write '$$' for a literal '$')")
    body = text[start + 2:end]
    match = _NAME.match(body)
    if not match:
        raise ExpansionError(f"invalid variable reference '${{{body}}}'")
    name, rest = match.group(0), body[match.end():]
    value = environ.get(name)
    if rest == "":
        if value is None:
            raise ExpansionError(f"environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
        return value, end + 1
    if rest.startswith(":-"):
        return (value if value else rest[2:]), end + 1
    if rest.startswith(":?"):
        if not value:
            raise ExpansionError(f"{name}: {rest[2:] or 'is not set'}")
        return value, end + 1
    raise ExpansionError(f"invalid variable reference '${{{body}}}' (use ${{{name}}}, ${{{name}:-default}} or ${{{name}:?message}})")


def expand_string(text, environ):
    """Expand one string; raise ExpansionError naming the variable."""
    if "$" not in text:
        return text
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "$" and text.startswith("$$", index):
            out.append("$")
            index += 2
        elif char == "$" and text.startswith("${", index):
            value, index = _reference(text, index, environ)
            out.append(value)
        else:
            out.append(char)
            index += 1
    return "".join(out)


def expand_tree(node, environ, path=()):
    """
    A copy of a parsed YAML tree with every string value expanded (keys are left alone).

    Raises ExpansionError with its `path` attribute set to the key path of the failing value.
    """
    if isinstance(node, dict):
        return {key: expand_tree(value, environ, path + (key,)) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_tree(value, environ, path + (index,)) for index, value in enumerate(node)]
    if isinstance(node, str):
        try:
            return expand_string(node, environ)
        except ExpansionError as err:
            err.path = path
            raise
    return node
