"""
ConfigError: the one-line error every configuration problem becomes.

The agent prints it on a failed start, `telegen validate` prints it, and a failed reload answers it
in a 400; so it is one line that names where (`<source>: <dotted.key>`) and what, and it never
carries a secret value (the validator words secret problems without the value).
"""


def dotted(path):
    """Render a key path: names joined by dots, list positions as [i] (`agent.discovery.instrument[0].name`)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class ConfigError(ValueError):
    """
    A configuration that cannot be used.

    str(err) is `<source>: <dotted.key>: <problem>` plus ` (did you mean 'x'?)` when a close
    spelling exists; without a key (unreadable file, YAML syntax) it is `<source>: <problem>`.

    @ivar source: the file path, `<string>` or what the caller named.
    @ivar key: the dotted key, or None.
    @ivar problem: what is wrong (with line or variable origin when known).
    @ivar hint: the did-you-mean spelling, or None.
    """

    def __init__(self, source, key, problem, hint=None):
        self.source = source
        self.key = key
        self.problem = problem
        self.hint = hint
        super().__init__(str(self))

    def __str__(self):
        where = f"{self.source}: {self.key}" if self.key else f"{self.source}"
        text = f"{where}: {self.problem}"
        if self.hint:
            text += f" (did you mean {self.hint!r}?)"
        return " ".join(text.split("\n"))
