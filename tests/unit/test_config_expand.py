"""${VAR} expansion in config values: every form, escapes, and the errors naming the variable."""
import pytest

from telegen.config import ConfigError, load_config_text
from telegen.config.expand import ExpansionError, expand_string


def _name(text, environ):
    """Load `telegen.service_name: <text>` and return what it became."""
    return load_config_text(f"telegen:\n  service_name: '{text}'\n", environ=environ)["telegen"]["service_name"]


@pytest.mark.parametrize("text, environ, expected", [
    ("${A}", {"A": "x"}, "x"),
    ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
    ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ("${A}", {"A": ""}, ""),
    ("${A:-dflt}", {}, "dflt"),
    ("${A:-dflt}", {"A": ""}, "dflt"),
    ("${A:-dflt}", {"A": "set"}, "set"),
    ("${A:-}", {}, ""),
    ("${A:-a b:c}", {}, "a b:c"),
    ("${A:?needed}", {"A": "ok"}, "ok"),
    ("$${A}", {"A": "x"}, "${A}"),
    ("cost: 5$$", {}, "cost: 5$"),
    ("pa$word", {}, "pa$word"),
    ("trailing$", {}, "trailing$"),
])
def test_expand_forms(text, environ, expected):
    """Each documented form expands as documented; a lone `$` stays literal."""
    assert expand_string(text, environ) == expected


def test_expanded_value_cannot_inject_yaml():
    """A variable holding YAML text stays one string: expansion runs after parsing."""
    assert _name("${A}", {"A": "x\nmode: evil"}) == "x\nmode: evil"


def test_expansion_applies_inside_lists_and_maps():
    """Strings nested in lists and mappings are expanded too."""
    text = "otlp:\n  headers:\n    x-h: ${H}\nagent:\n  ebpf:\n    network:\n      exclude_paths: ['${P}']\n"
    config = load_config_text(text, environ={"H": "v", "P": "/healthz"})
    assert config["otlp"]["headers"] == {"x-h": "v"}
    assert config["agent"]["ebpf"]["network"]["exclude_paths"] == ["/healthz"]


def test_expanded_text_is_parsed_by_kind():
    """`${VAR}` always yields a string; the key's kind parses it (bool, duration, int)."""
    text = "otlp:\n  insecure: ${I}\n  timeout: ${T}\nqueues:\n  traces:\n    capacity: ${C:-42}\n"
    config = load_config_text(text, environ={"I": "yes", "T": "1m30s"})
    assert config["otlp"]["insecure"] is True
    assert config["otlp"]["timeout"] == 90.0
    assert config["queues"]["traces"]["capacity"] == 42


def test_empty_expansion_of_nullable_key_is_null():
    """`${VAR:-}` on a nullable key leaves it unset (null), not an empty endpoint."""
    config = load_config_text("otlp:\n  endpoint: ${COLLECTOR:-}\n", environ={})
    assert config["otlp"]["endpoint"] is None


def test_unset_variable_error_names_variable_key_and_line():
    """An unset `${VAR}` is a one-line error naming VAR, the dotted key and the file line."""
    with pytest.raises(ConfigError) as caught:
        load_config_text("otlp:\n  endpoint: ${OTLP_HOST}:4317\n", environ={}, source="c.yaml")
    message = str(caught.value)
    assert message.startswith("c.yaml: otlp.endpoint: environment variable OTLP_HOST is not set")
    assert "at line 2" in message
    assert "\n" not in message


def test_required_variable_message():
    """`${VAR:?message}` fails with the author's message when VAR is unset or empty."""
    for environ in ({}, {"TOKEN": ""}):
        with pytest.raises(ConfigError) as caught:
            load_config_text("self_telemetry:\n  auth:\n    bearer_token: ${TOKEN:?set the API token}\n", environ=environ)
        assert "self_telemetry.auth.bearer_token: TOKEN: set the API token" in str(caught.value)


@pytest.mark.parametrize("text, fragment", [
    ("${A", "unterminated"),
    ("${}", "invalid variable reference"),
    ("${1A}", "invalid variable reference"),
    ("${A:+x}", "invalid variable reference"),
])
def test_malformed_references(text, fragment):
    """Malformed references are errors, not silently kept."""
    with pytest.raises(ExpansionError) as caught:
        expand_string(text, {"A": "x"})
    assert fragment in str(caught.value)


def test_expansion_in_list_item_names_index():
    """An error inside a list names the item position."""
    with pytest.raises(ConfigError) as caught:
        load_config_text("self_telemetry:\n  cors:\n    allowed_origins: ['http://a', '${ORIGIN}']\n", environ={})
    assert "self_telemetry.cors.allowed_origins[1]: environment variable ORIGIN is not set" in str(caught.value)
