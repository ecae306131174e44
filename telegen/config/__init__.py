"""
Telegen's configuration: one YAML file, ${VAR} expansion, environment overrides, strict validation.

load_config(path) reads the file, expands `${VAR}` forms in string values, moves the aliased
sections, applies OTEL_* then TELEGEN_<SECTION>_<KEY> variables, validates against
telegen.config.schema and fills defaults. The result is a plain nested dict with every schema key
(durations float seconds, sizes int bytes, port lists (lo, hi) tuples). Any problem is a one-line
ConfigError naming the key. docs/configuration.md is the user-facing description.
"""
from telegen.config.errors import ConfigError
from telegen.config.loader import defaults, load_config, load_config_text
from telegen.config.redact import redact

__all__ = ["ConfigError", "defaults", "load_config", "load_config_text", "redact"]
