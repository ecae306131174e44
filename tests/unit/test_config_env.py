"""Environment overrides: TELEGEN_<SECTION>_<KEY>, the OTEL_* variables, and their precedence."""
import pytest

from telegen.config import ConfigError, load_config_text
from telegen.config.env import FULL_NAMES, SHORT_NAMES, env_name
from telegen.config.schema import leaves

FILE = """
otlp:
  endpoint: file-collector:4317
  timeout: 3s
telegen:
  service_name: from-file
"""


def test_every_leaf_has_a_distinct_variable():
    """Each schema leaf maps to its own TELEGEN_ name, built from the full path."""
    paths = [path for path, _ in leaves()]
    assert len(FULL_NAMES) == len(paths)
    assert FULL_NAMES["TELEGEN_OTLP_ENDPOINT"] == ("otlp", "endpoint")
    assert FULL_NAMES["TELEGEN_SELF_TELEMETRY_LISTEN"] == ("self_telemetry", "listen")
    assert FULL_NAMES["TELEGEN_AGENT_EBPF_RINGBUF_SIZE"] == ("agent", "ebpf", "ringbuf_size")
    assert FULL_NAMES["TELEGEN_QUEUES_TRACES_CAPACITY"] == ("queues", "traces", "capacity")
    assert FULL_NAMES["TELEGEN_SELF_TELEMETRY_AUTH_BEARER_TOKEN"] == ("self_telemetry", "auth", "bearer_token")
    assert env_name(("otlp", "tls", "ca_file")) == "TELEGEN_OTLP_TLS_CA_FILE"


def test_short_names_never_shadow_full_names():
    """The short telegen-section forms exist only where no key has that full name."""
    assert SHORT_NAMES["TELEGEN_LOG_LEVEL"] == ("telegen", "log_level")
    assert not set(SHORT_NAMES) & set(FULL_NAMES)


@pytest.mark.parametrize("var, value, path, expected", [
    ("TELEGEN_OTLP_ENDPOINT", "env:4317", ("otlp", "endpoint"), "env:4317"),
    ("TELEGEN_SELF_TELEMETRY_LISTEN", "127.0.0.1:0", ("self_telemetry", "listen"), "127.0.0.1:0"),
    ("TELEGEN_AGENT_EBPF_RINGBUF_SIZE", "1Mi", ("agent", "ebpf", "ringbuf_size"), 1 << 20),
    ("TELEGEN_QUEUES_TRACES_CAPACITY", "77", ("queues", "traces", "capacity"), 77),
    ("TELEGEN_OTLP_INSECURE", "YES", ("otlp", "insecure"), True),
    ("TELEGEN_AGENT_EBPF_ENABLED", "0", ("agent", "ebpf", "enabled"), False),
    ("TELEGEN_BACKOFF_MULTIPLIER", "2.5", ("backoff", "multiplier"), 2.5),
    ("TELEGEN_OTLP_TIMEOUT", "250ms", ("otlp", "timeout"), 0.25),
    ("TELEGEN_AGENT_EBPF_NETWORK_EXCLUDE_PATHS", "/a, /b", ("agent", "ebpf", "network", "exclude_paths"), ["/a", "/b"]),
    ("TELEGEN_AGENT_EBPF_NETWORK_INCLUDE_PORTS", "80,8000-8999", ("agent", "ebpf", "network", "include_ports"), [(80, 80), (8000, 8999)]),
    ("TELEGEN_OTLP_HEADERS", "a=1,b=x%2Cy", ("otlp", "headers"), {"a": "1", "b": "x,y"}),
    ("TELEGEN_AGENT_DISCOVERY_INSTRUMENT", '[{exe_path: "*nginx*", open_ports: "80"}]',
     ("agent", "discovery", "instrument"), [{"exe_path": "*nginx*", "open_ports": [(80, 80)]}]),
    ("TELEGEN_TELEGEN_INSTANCE_ID", "", ("telegen", "instance_id"), None),
    ("TELEGEN_LOG_LEVEL", "debug", ("telegen", "log_level"), "debug"),
])
def test_telegen_override_parsed_by_kind(var, value, path, expected):
    """A TELEGEN_ variable sets its key, its text parsed by the key's kind."""
    config = load_config_text(FILE, environ={var: value})
    node = config
    for part in path:
        node = node[part]
    if path == ("telegen", "instance_id"):
        assert node  # null -> the host name
    else:
        assert node == expected


def test_telegen_override_beats_file_and_creates_sections():
    """The variable wins over the file, and works for a section the file does not have."""
    config = load_config_text(FILE, environ={"TELEGEN_OTLP_TIMEOUT": "7s", "TELEGEN_CLOUD_AWS_ENABLED": "true"})
    assert config["otlp"]["timeout"] == 7.0
    assert config["cloud"]["aws"]["enabled"] is True


def test_full_name_beats_short_name():
    """With both spellings set, TELEGEN_TELEGEN_<KEY> wins over TELEGEN_<KEY>."""
    config = load_config_text("", environ={"TELEGEN_LOG_LEVEL": "debug", "TELEGEN_TELEGEN_LOG_LEVEL": "error"})
    assert config["telegen"]["log_level"] == "error"


def test_unknown_telegen_variables_are_ignored():
    """TELEGEN_ names matching no key (other tools share the prefix) change nothing."""
    assert load_config_text("", environ={"TELEGEN_CONFIG_FILE": "/x", "TELEGEN_NOPE": "1"}) == load_config_text("", environ={})


def test_bad_override_names_key_and_variable():
    """A bad variable value is an error naming the key and the variable, not a file line."""
    with pytest.raises(ConfigError) as caught:
        load_config_text(FILE, environ={"TELEGEN_QUEUES_TRACES_CAPACITY": "lots"}, source="f.yaml")
    assert str(caught.value) == "f.yaml: queues.traces.capacity: expected an integer, got 'lots' (from $TELEGEN_QUEUES_TRACES_CAPACITY)"


def test_otel_endpoint_grpc_url():
    """OTEL_EXPORTER_OTLP_ENDPOINT http://host:4317 -> gRPC host:port, plain text."""
    otlp = load_config_text("", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})["otlp"]
    assert (otlp["endpoint"], otlp["protocol"], otlp["insecure"]) == ("collector:4317", "grpc", True)


def test_otel_endpoint_port_4318_means_http():
    """An http(s) URL on 4318 selects OTLP/HTTP and stays a URL."""
    otlp = load_config_text("", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318"})["otlp"]
    assert (otlp["endpoint"], otlp["protocol"], otlp["insecure"]) == ("https://collector:4318", "http", False)


def test_otel_protocol_http_protobuf():
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf selects http whatever the port."""
    otlp = load_config_text("", environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:9999", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})["otlp"]
    assert (otlp["endpoint"], otlp["protocol"], otlp["insecure"]) == ("http://collector:9999", "http", True)


def test_otel_protocol_grpc_wins_over_port_4318():
    """An explicit grpc protocol is not overridden by the 4318 port guess."""
    otlp = load_config_text("", environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})["otlp"]
    assert (otlp["endpoint"], otlp["protocol"]) == ("collector:4318", "grpc")


def test_otel_protocol_unsupported():
    """An unsupported protocol is an error naming otlp.protocol and the variable."""
    with pytest.raises(ConfigError) as caught:
        load_config_text("", environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert "otlp.protocol: must be one of grpc, http, got 'http/json' (from $OTEL_EXPORTER_OTLP_PROTOCOL)" in str(caught.value)


def test_otel_headers_signal_endpoints_and_service():
    """Headers are percent-decoded; per-signal endpoints and the service name land on their keys."""
    config = load_config_text("", environ={
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=t1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "t:4317",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "m:4317",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "l:4317",
        "OTEL_SERVICE_NAME": "svc",
    })
    assert config["otlp"]["headers"] == {"authorization": "Bearer abc", "x-tenant": "t1"}
    assert [config["otlp"][s]["endpoint"] for s in ("traces", "metrics", "logs")] == ["t:4317", "m:4317", "l:4317"]
    assert config["telegen"]["service_name"] == "svc"


def test_otel_resource_attributes():
    """OTEL_RESOURCE_ATTRIBUTES fills telegen.resource_attributes; its service.name yields to OTEL_SERVICE_NAME."""
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%2Fb,service.name=ra"}
    config = load_config_text("", environ=environ)
    assert config["telegen"]["resource_attributes"] == {"deployment.environment": "prod", "team": "a/b"}
    assert config["telegen"]["service_name"] == "ra"
    config = load_config_text("", environ=dict(environ, OTEL_SERVICE_NAME="explicit"))
    assert config["telegen"]["service_name"] == "explicit"


def test_precedence_telegen_over_otel_over_file():
    """TELEGEN_* > OTEL_* > file > defaults, key by key."""
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4317", "TELEGEN_OTLP_ENDPOINT": "tg:4317",
            "OTEL_SERVICE_NAME": "otel-svc"}
    config = load_config_text(FILE, environ=both)
    assert config["otlp"]["endpoint"] == "tg:4317"
    assert config["telegen"]["service_name"] == "otel-svc"
    assert config["otlp"]["timeout"] == 3.0  # file over default
    assert load_config_text(FILE, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4317"})["otlp"]["endpoint"] == "otel:4317"
    assert load_config_text(FILE, environ={})["otlp"]["endpoint"] == "file-collector:4317"


def test_telegen_protocol_beats_otel_guess():
    """TELEGEN_OTLP_PROTOCOL wins over the protocol OTEL_EXPORTER_OTLP_ENDPOINT implies."""
    otlp = load_config_text("", environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "TELEGEN_OTLP_PROTOCOL": "grpc"})["otlp"]
    assert (otlp["protocol"], otlp["endpoint"]) == ("grpc", "c:4318")


def test_environ_defaults_to_process_environment(monkeypatch):
    """Without an environ argument, os.environ is read."""
    monkeypatch.setenv("TELEGEN_OTLP_COMPRESSION", "none")
    assert load_config_text("")["otlp"]["compression"] == "none"
