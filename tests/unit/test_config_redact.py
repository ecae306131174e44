"""Redaction: secrets never reach /config, `validate --show` or an error message."""
import json

import pytest

from telegen.config import ConfigError, defaults, load_config_text, redact
from telegen.config.redact import REDACTED

SECRET = "s3cr3t-value-xyz"


def _config():
    text = f"""
otlp:
  endpoint: https://user:{SECRET}@collector:4318
  protocol: http
  headers:
    authorization: Bearer {SECRET}
    x-tenant: team-a
  tls:
    key_file: /etc/telegen/{SECRET}.key
self_telemetry:
  auth:
    enabled: true
    bearer_token: {SECRET}
manhole:
  host_key: /var/lib/telegen/{SECRET}
telegen:
  resource_attributes:
    api.key: {SECRET}
    deployment.environment: prod
"""
    return load_config_text(text, environ={})


def test_secrets_redacted_and_json_safe():
    """Secret fields, header values, secret-named keys and URL passwords are all replaced."""
    shown = redact(_config())
    text = json.dumps(shown)
    assert SECRET not in text
    assert shown["self_telemetry"]["auth"]["bearer_token"] == REDACTED
    assert shown["otlp"]["headers"] == {"authorization": REDACTED, "x-tenant": REDACTED}
    assert shown["otlp"]["tls"]["key_file"] == REDACTED
    assert shown["manhole"]["host_key"] == REDACTED
    assert shown["telegen"]["resource_attributes"] == {"api.key": REDACTED, "deployment.environment": "prod"}
    assert shown["otlp"]["endpoint"] == f"https://user:{REDACTED}@collector:4318"


def test_redact_keeps_everything_else_and_converts_tuples():
    """Non-secret values survive unchanged; port tuples become lists; unset secrets stay null."""
    config = defaults()
    config["agent"]["ebpf"]["network"]["include_ports"] = [(80, 80), (8000, 8999)]
    shown = redact(config)
    assert shown["agent"]["ebpf"]["network"]["include_ports"] == [[80, 80], [8000, 8999]]
    assert shown["self_telemetry"]["auth"]["bearer_token"] is None
    assert shown["manhole"]["authorized_keys"] == "/etc/telegen/manhole_authorized_keys"
    assert shown["self_telemetry"]["auth"]["enabled"] is False
    json.dumps(shown)
    shown["otlp"]["timeout"] = 0
    assert config["otlp"]["timeout"] == 10.0  # a copy, not a view


@pytest.mark.parametrize("name", ["password", "db_password", "apiKey-x", "client-secret", "auth_token", "private.key"])
def test_heuristic_names(name):
    """Keys named like a secret are redacted wherever they sit, even outside the schema."""
    assert redact({"anything": {name: "v", "plain": "v"}}) == {"anything": {name: REDACTED, "plain": "v"}}


@pytest.mark.parametrize("text", [
    f"otlp:\n  headers: ['{SECRET}']\n",
    f"otlp:\n  headers: {{a: [{SECRET}]}}\n",
    f"self_telemetry:\n  auth:\n    bearer_token: [{SECRET}]\n",
    f"manhole:\n  host_key: {{k: {SECRET}}}\n",
])
def test_secret_values_never_in_errors(text):
    """A bad secret field is reported as 'invalid value' without echoing the value."""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, environ={})
    assert SECRET not in str(caught.value)
    assert ": invalid value" in str(caught.value)


def test_secret_from_environment_never_in_errors():
    """Neither a variable's secret value nor a header value appears in an override error."""
    with pytest.raises(ConfigError) as caught:
        load_config_text("", environ={"OTEL_EXPORTER_OTLP_HEADERS": f"{SECRET}-without-equals"})
    assert SECRET not in str(caught.value)
    assert "otlp.headers: invalid value (from $OTEL_EXPORTER_OTLP_HEADERS)" in str(caught.value)
