# -*- test-case-name: tests.unit.test_protocols_sql -*-
"""
What the database conventions take from SQL text: the sanitized text, the operation and the first
collection.

One regular expression tokenizes the statement (comments, quoted strings and identifiers,
dollar-quoted bodies, hex/bit strings, numbers, placeholders, words) and a substitution replaces
every literal by `?`: strings, numbers, hex and bit strings, dollar-quoted bodies, TRUE/FALSE.
Identifiers (quoted or not), placeholders ($1, ?, %s, :name) and NULL stay. Comments are removed:
the conventions do not mention them, and they are free text the sanitizer cannot vouch for (a
comment may hold a literal). The
dialect decides what a double-quoted token is: an identifier in PostgreSQL, a string in MySQL
(which also has `#` comments and backslash escapes).
"""
import re

_COMMON = [
    ("comment", r"--[^\n]*|/\*.*?(?:\*/|\Z)"),
    ("ident", r"`(?:[^`]|``)*`"),
    ("hex", r"[xXbB]'[0-9A-Fa-f]*'|0[xX][0-9A-Fa-f]+|0[bB][01]+"),
    ("placeholder", r"\$\d+|\?|%s|%\(\w+\)s|(?<!:):[A-Za-z_]\w*"),
    ("word", r"[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*"),
    ("number", r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"),
]
_POSTGRES = [
    ("string", r"[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$"),
    ("ident", r'"(?:[^"]|"")*"'),
]
_MYSQL = [
    ("comment", r"#[^\n]*"),
    ("string", r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\""),
]


def _tokenizer(extra):
    parts = extra + _COMMON
    return re.compile("|".join(f"(?P<{name}{i}>{rx})" for i, (name, rx) in enumerate(parts)), re.S)


_TOKENS = {"postgresql": _tokenizer(_POSTGRES), "mysql": _tokenizer(_MYSQL)}
_BOOLEANS = frozenset(("TRUE", "FALSE"))


def _kind(match):
    return match.lastgroup.rstrip("0123456789")


def sanitize(sql, dialect="postgresql"):
    """sql with its literals replaced by ? and its comments removed."""
    def replace(match):
        kind = _kind(match)
        if kind in ("string", "hex", "number"):
            return "?"
        if kind == "comment":
            return " "
        if kind == "word" and match.group().upper() in _BOOLEANS:
            return "?"
        return match.group()
    return _TOKENS[_dialect(dialect)].sub(replace, sql).strip()


def _dialect(system):
    return "postgresql" if system == "postgresql" else "mysql"


# The keyword after which each operation names its collection (after optional modifiers).
_TARGET_AFTER = {
    "SELECT": ("FROM",), "DELETE": ("FROM",), "INSERT": ("INTO",), "REPLACE": ("INTO",),
    "UPDATE": None, "MERGE": ("INTO",), "TRUNCATE": None, "COPY": None,
    "CREATE": ("TABLE", "VIEW", "INDEX"), "DROP": ("TABLE", "VIEW"), "ALTER": ("TABLE",),
}
_SKIP = frozenset(("TABLE", "ONLY", "IF", "NOT", "EXISTS", "LOW_PRIORITY", "IGNORE", "QUICK",
                   "DELAYED", "HIGH_PRIORITY", "TEMPORARY", "TEMP", "UNLOGGED", "OR", "REPLACE",
                   "UNIQUE", "CONCURRENTLY"))


def operation_and_collection(sql, system="postgresql"):
    """(the statement's first keyword upper-cased, its first table) or Nones: `SELECT`, `orders`.

    The collection is given for simple statements only: the first name after FROM (SELECT,
    DELETE), INTO (INSERT, REPLACE, MERGE), the verb itself (UPDATE, TRUNCATE, COPY) or the
    object keyword right after the verb (CREATE/DROP/ALTER TABLE); a subquery there (`FROM (`)
    gives none. Dotted names stay whole and quoted as written (`public.orders`).
    """
    tokens = [m for m in _TOKENS[_dialect(system)].finditer(sql, 0, 4096) if _kind(m) != "comment"]
    if not tokens or _kind(tokens[0]) != "word":
        return None, None
    operation = tokens[0].group().upper()
    if operation not in _TARGET_AFTER:
        return operation, None
    after = _TARGET_AFTER[operation]
    i = 1
    if after is not None:
        while i < len(tokens) and not (_kind(tokens[i]) == "word" and tokens[i].group().upper() in after):
            if operation in _DDL and tokens[i].group().upper() not in _SKIP:
                return operation, None      # CREATE FUNCTION ..., ALTER USER ...: no table
            i += 1
        i += 1
    while i < len(tokens) and _kind(tokens[i]) == "word" and tokens[i].group().upper() in _SKIP:
        i += 1
    if i >= len(tokens) or _kind(tokens[i]) not in ("word", "ident") or sql[tokens[i].start() - 1:tokens[i].start()] == "(":
        return operation, None
    start = end = tokens[i].end()
    start = tokens[i].start()
    while i + 1 < len(tokens) and sql[end:end + 1] == "." and tokens[i + 1].start() == end + 1 \
            and _kind(tokens[i + 1]) in ("word", "ident"):
        i += 1
        end = tokens[i].end()
    return operation, sql[start:end]


_DDL = frozenset(("CREATE", "DROP", "ALTER"))
