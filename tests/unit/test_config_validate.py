"""Validation against the schema: kinds, limits, unknown keys, nulls, aliases, cross-field rules."""
import socket

import pytest

from telegen.config import ConfigError, defaults, load_config, load_config_text


def _load(text):
    return load_config_text(text, environ={}, source="t.yaml")


def _error(text):
    with pytest.raises(ConfigError) as caught:
        _load(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _at(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("key, given, expected", [
    ("otlp.timeout", "10s", 10.0),
    ("otlp.timeout", "500ms", 0.5),
    ("otlp.timeout", "1m30s", 90.0),
    ("telegen.shutdown_timeout", "1.5m", 90.0),
    ("backoff.max_elapsed", "2h", 7200.0),
    ("otlp.timeout", 7, 7.0),
    ("otlp.timeout", "2.5", 2.5),
    ("agent.ebpf.ringbuf_size", "16Mi", 16 << 20),
    ("queues.traces.max_bytes", "64KiB", 65536),
    ("otlp.file.max_bytes", "1GB", 10 ** 9),
    ("otlp.file.max_bytes", "2M", 2 * 10 ** 6),
    ("otlp.file.max_bytes", 4096, 4096),
    ("self_telemetry.listen", '":0"', ":0"),
    ("self_telemetry.listen", '"127.0.0.1:19090"', "127.0.0.1:19090"),
    ("self_telemetry.listen", '"[::1]:65535"', "[::1]:65535"),
    ("self_telemetry.listen", '"localhost:8080"', "localhost:8080"),
    ("agent.ebpf.network.include_ports", '[80, "8000-8999", "443"]', [(80, 80), (8000, 8999), (443, 443)]),
    ("agent.ebpf.network.exclude_ports", '"22,6000-6010"', [(22, 22), (6000, 6010)]),
    ("manhole.listen", '"tcp:0:interface=127.0.0.1"', "tcp:0:interface=127.0.0.1"),
    ("manhole.listen", '"unix:/run/telegen/m.sock"', "unix:/run/telegen/m.sock"),
    ("telegen.instance_id", "42", "42"),
    ("otlp.insecure", "yes", True),
    ("backoff.jitter", 0, 0.0),
    ("otlp.headers", "{a: 1}", {"a": "1"}),
    ("telegen.log_level", "WARN", "warn"),
    ("otlp.protocol", "HTTP", "http"),
])
def test_kinds_parse(key, given, expected):
    """Each kind accepts its documented spellings and normalizes them."""
    section, _, leaf = key.rpartition(".")
    text = ""
    for depth, name in enumerate(section.split(".")):
        text += "  " * depth + name + ":\n"
    text += "  " * (section.count(".") + 1) + f"{leaf}: {given}\n"
    assert _at(_load(text), key) == expected


@pytest.mark.parametrize("text, expected", [
    ("otlp:\n  timeout: soon\n", "t.yaml: otlp.timeout: invalid duration 'soon'"),
    ("otlp:\n  timeout: 1x\n", "t.yaml: otlp.timeout: invalid duration '1x'"),
    ("otlp:\n  timeout: 0s\n", "t.yaml: otlp.timeout: must be >= 0.001s, got 0s at line 2"),
    ("otlp:\n  timeout: 11m\n", "t.yaml: otlp.timeout: must be <= 600s, got 660s at line 2"),
    ("agent:\n  ebpf:\n    ringbuf_size: 5000\n", "t.yaml: agent.ebpf.ringbuf_size: must be a power of two, got 5000 at line 3"),
    ("agent:\n  ebpf:\n    ringbuf_size: 2048\n", "t.yaml: agent.ebpf.ringbuf_size: must be >= 4096 bytes, got 2048 bytes"),
    ("agent:\n  ebpf:\n    ringbuf_size: 16 megs\n", "t.yaml: agent.ebpf.ringbuf_size: invalid size '16 megs'"),
    ("queues:\n  metrics:\n    capacity: 0\n", "t.yaml: queues.metrics.capacity: must be >= 1, got 0"),
    ("queues:\n  metrics:\n    capacity: 1.5\n", "t.yaml: queues.metrics.capacity: expected an integer, got 1.5"),
    ("queues:\n  metrics:\n    capacity: true\n", "t.yaml: queues.metrics.capacity: expected an integer, got True"),
    ("backoff:\n  jitter: 2\n", "t.yaml: backoff.jitter: must be <= 1, got 2"),
    ("backoff:\n  multiplier: fast\n", "t.yaml: backoff.multiplier: expected a number, got 'fast'"),
    ("otlp:\n  insecure: maybe\n", "t.yaml: otlp.insecure: expected a boolean"),
    ("otlp:\n  protocol: grcp\n", "t.yaml: otlp.protocol: must be one of grpc, http, got 'grcp' at line 2 (did you mean 'grpc'?)"),
    ("telegen:\n  service_name: [a]\n", "t.yaml: telegen.service_name: expected a string, got a list"),
    ("telegen:\n  service_name: null\n", "t.yaml: telegen.service_name: must not be null at line 2"),
    ("agent:\n  ebpf:\n    network:\n      routes: {a: b}\n", "t.yaml: agent.ebpf.network.routes: expected a list, got a mapping"),
    ("agent:\n  ebpf:\n    network:\n      include_ports: [0]\n", "t.yaml: agent.ebpf.network.include_ports[0]: port 0 out of range 1..65535"),
    ("agent:\n  ebpf:\n    network:\n      include_ports: ['90-80']\n", "t.yaml: agent.ebpf.network.include_ports[0]: port range '90-80' has its start after its end"),
    ("agent:\n  ebpf:\n    network:\n      include_ports: [80, 70000]\n", "t.yaml: agent.ebpf.network.include_ports[1]: port 70000 out of range"),
    ("agent:\n  ebpf:\n    network:\n      include_ports: [http]\n", "t.yaml: agent.ebpf.network.include_ports[0]: expected an integer, got 'http'"),
    ("self_telemetry:\n  listen: '19090'\n", "t.yaml: self_telemetry.listen: invalid listen address '19090'"),
    ("self_telemetry:\n  listen: ':65536'\n", "t.yaml: self_telemetry.listen: invalid listen address ':65536'"),
    ("self_telemetry:\n  listen: '[::zz]:80'\n", "t.yaml: self_telemetry.listen: invalid listen address '[::zz]:80'"),
    ("manhole:\n  listen: 'bogus:22'\n", "t.yaml: manhole.listen: invalid endpoint 'bogus:22'"),
    ("manhole:\n  listen: 'tcp:notaport'\n", "t.yaml: manhole.listen: invalid endpoint 'tcp:notaport'"),
    ("manhole:\n  listen: 'tcp:70000'\n", "t.yaml: manhole.listen: invalid endpoint 'tcp:70000': port out of range"),
    ("telegen:\n  resource_attributes: {a: [1]}\n", "t.yaml: telegen.resource_attributes.a: expected a string, got a list"),
    ("telegen:\n  resource_attributes: 'novalue'\n", "t.yaml: telegen.resource_attributes: expected k=v pairs"),
])
def test_kind_errors_name_the_key(text, expected):
    """A bad value is a one-line error naming the exact dotted key and the problem."""
    assert _error(text).startswith(expected)


def test_endpoint_validation_does_not_bind():
    """Validating a manhole endpoint on a port in use succeeds: it is parsed, never bound."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert _load(f"manhole:\n  listen: 'tcp:{port}:interface=127.0.0.1'\n")["manhole"]["listen"].endswith("127.0.0.1")


@pytest.mark.parametrize("text, expected", [
    ("agent:\n  discovery:\n    instrument:\n      - exe_pat: '*x*'\n",
     "t.yaml: agent.discovery.instrument[0].exe_pat: unknown selector key at line 4 (did you mean 'exe_path'?)"),
    ("agent:\n  discovery:\n    instrument:\n      - {}\n", "t.yaml: agent.discovery.instrument[0]: a selector needs at least one of"),
    ("agent:\n  discovery:\n    instrument:\n      - name\n", "t.yaml: agent.discovery.instrument[0]: a selector must be a mapping"),
    ("agent:\n  discovery:\n    exclude_instrument:\n      - {name: a}\n      - {containers_only: perhaps}\n",
     "t.yaml: agent.discovery.exclude_instrument[1].containers_only: expected a boolean"),
    ("agent:\n  discovery:\n    instrument:\n      - open_ports: '80,99999'\n",
     "t.yaml: agent.discovery.instrument[0].open_ports[1]: port '99999' out of range"),
    ("agent:\n  discovery:\n    instrument: {exe_path: x}\n", "t.yaml: agent.discovery.instrument: expected a list of selector mappings"),
])
def test_selector_errors(text, expected):
    """Selectors: only the known keys, typed, at least one per selector; errors point inside."""
    assert _error(text).startswith(expected)


def test_selectors_normalized():
    """Selector criteria are parsed: ports to (lo, hi), containers_only to bool, the rest strings."""
    text = ("agent:\n  discovery:\n    instrument:\n      - exe_path: '*nginx*'\n        open_ports: '80,8000-8001'\n"
            "      - {k8s_namespace: shop, k8s_pod_name: web, k8s_deployment_name: web, name: web, containers_only: 'yes'}\n"
            "      - {k8s_pod_labels: {tier: front*}, container_image: 'shop/*'}\n")
    assert _load(text)["agent"]["discovery"]["instrument"] == [
        {"exe_path": "*nginx*", "open_ports": [(80, 80), (8000, 8001)]},
        {"k8s_namespace": "shop", "k8s_pod_name": "web", "k8s_deployment_name": "web", "name": "web", "containers_only": True},
        {"k8s_pod_labels": {"tier": "front*"}, "container_image": "shop/*"},
    ]


@pytest.mark.parametrize("text, expected", [
    ("otlp:\n  endpont: x\n", "t.yaml: otlp.endpont: unknown key at line 2 (did you mean 'endpoint'?)"),
    ("selftelemetry: {}\n", "t.yaml: selftelemetry: unknown key at line 1 (did you mean 'self_telemetry'?)"),
    ("agent:\n  ebpf:\n    netwrk: {}\n", "t.yaml: agent.ebpf.netwrk: unknown key at line 3 (did you mean 'network'?)"),
    ("zzz: 1\n", "t.yaml: zzz: unknown key at line 1"),
])
def test_unknown_keys_with_did_you_mean(text, expected):
    """Unknown keys are errors; a close spelling is offered, none when nothing is close."""
    assert _error(text) == expected


def test_sections_must_be_mappings():
    """A section given a scalar is an error; an empty section (all commented out) is fine."""
    assert _error("otlp: 5\n") == "t.yaml: otlp: expected a mapping at line 1"
    assert _load("otlp:\n  # endpoint: x\n") == defaults()


def test_defaults_filled():
    """An empty file yields every key at its default, normalized (seconds, bytes), instance id = host name."""
    config = _load("")
    assert config == defaults()
    assert config["telegen"]["instance_id"] == socket.gethostname()
    assert config["agent"]["ebpf"]["ringbuf_size"] == 16 * 1024 * 1024
    assert config["cloud"]["gcp"]["timeout"] == 0.2
    assert config["self_telemetry"]["rate_limit"]["burst"] is None
    assert config["telegen"]["resource_attributes"] == {}


def test_defaults_are_fresh_copies():
    """Mutating one defaults() result does not leak into the next."""
    first = defaults()
    first["otlp"]["headers"]["x"] = "y"
    assert defaults()["otlp"]["headers"] == {}


def test_partial_file_keeps_other_defaults():
    """Keys not in the file keep their defaults next to the ones given."""
    config = _load("queues:\n  traces:\n    capacity: 5\n")
    assert config["queues"]["traces"] == {"capacity": 5, "max_bytes": 64 << 20, "batch_size": 512, "batch_timeout": 5.0}


def test_aliases():
    """selfTelemetry and top-level discovery are accepted for self_telemetry and agent.discovery."""
    config = _load("selfTelemetry:\n  listen: ':1234'\ndiscovery:\n  poll_interval: 1m\nagent:\n  ebpf:\n    enabled: false\n")
    assert config["self_telemetry"]["listen"] == ":1234"
    assert config["agent"]["discovery"]["poll_interval"] == 60.0
    assert config["agent"]["ebpf"]["enabled"] is False


def test_alias_errors_point_at_the_alias_line():
    """An error under an alias names the real key and the alias's line; both spellings at once fail."""
    assert _error("\nselfTelemetry:\n  listen: nope\n").startswith("t.yaml: self_telemetry.listen: invalid listen address 'nope'")
    assert "at line 3" in _error("\nselfTelemetry:\n  listen: nope\n")
    assert _error("discovery: {}\nagent:\n  discovery: {}\n").startswith("t.yaml: agent.discovery: given twice")


@pytest.mark.parametrize("text, expected", [
    ("self_telemetry:\n  auth:\n    enabled: true\n",
     "t.yaml: self_telemetry.auth.bearer_token: required when self_telemetry.auth.enabled is true at line 3"),
    ("self_telemetry:\n  auth:\n    enabled: true\n    bearer_token: ''\n",
     "t.yaml: self_telemetry.auth.bearer_token: required when self_telemetry.auth.enabled is true at line 4"),
    ("self_telemetry:\n  cors:\n    enabled: true\n    allowed_origins: ['http://ok:3000', 'example.com']\n",
     "t.yaml: self_telemetry.cors.allowed_origins[1]: invalid origin 'example.com'"),
    ("self_telemetry:\n  cors:\n    allowed_origins: ['https://a.example/path']\n",
     "t.yaml: self_telemetry.cors.allowed_origins[0]: invalid origin 'https://a.example/path'"),
    ("backoff:\n  initial: 1m\n  max: 30s\n", "t.yaml: backoff.initial: must be <= backoff.max (30s), got 60s at line 2"),
    ("agent:\n  ebpf:\n    min_cpu: 0.5\n    max_cpu: 0.25\n",
     "t.yaml: agent.ebpf.min_cpu: must be <= agent.ebpf.max_cpu (0.25), got 0.5 at line 3"),
    ("agent:\n  logs:\n    multiline_start: '^(unclosed'\n",
     "t.yaml: agent.logs.multiline_start: not a regular expression: missing ), unterminated subpattern"),
    ("otlp:\n  endpoint: http://c:4317/v1\n", "t.yaml: otlp.endpoint: a gRPC endpoint is host:port"),
    ("otlp:\n  protocol: http\n  endpoint: 'https://'\n", "t.yaml: otlp.endpoint: URL without a host"),
])
def test_cross_field_rules(text, expected):
    """Rules spanning keys fail with the key to fix named."""
    assert _error(text).startswith(expected)


def test_cross_field_rules_pass():
    """The valid counterparts load: token given, origins well-formed, initial == max."""
    config = _load("self_telemetry:\n  auth: {enabled: true, bearer_token: s3cret}\n  cors:\n    enabled: true\n"
                   "    allowed_origins: ['http://localhost:3000', 'https://[::1]:8443', 'https://a.example']\n"
                   "backoff: {initial: 30s, max: 30s}\n")
    assert config["self_telemetry"]["auth"]["bearer_token"] == "s3cret"


@pytest.mark.parametrize("otlp, endpoint, insecure", [
    ("{endpoint: 'c:4317'}", "c:4317", False),
    ("{endpoint: 'c:4317', insecure: true}", "c:4317", True),
    ("{endpoint: 'http://c:4317'}", "c:4317", True),
    ("{endpoint: 'https://c:4317/', insecure: true}", "c:4317", False),
    ("{endpoint: 'dns:///c:4317'}", "dns:///c:4317", False),
    ("{protocol: http, endpoint: 'c:4318'}", "https://c:4318", False),
    ("{protocol: http, endpoint: 'c:4318', insecure: true}", "http://c:4318", True),
    ("{protocol: http, endpoint: 'http://c:4318/base'}", "http://c:4318/base", True),
    ("{protocol: http, endpoint: 'HTTPS://c:4318', insecure: true}", "HTTPS://c:4318", False),
])
def test_otlp_endpoint_normalization(otlp, endpoint, insecure):
    """gRPC endpoints become host:port and http ones URLs; an http(s) scheme decides insecure."""
    config = _load(f"otlp: {otlp}\n")["otlp"]
    assert (config["endpoint"], config["insecure"]) == (endpoint, insecure)


def test_signal_endpoints_normalized_without_touching_insecure():
    """Per-signal endpoints get the protocol's form but leave otlp.insecure alone."""
    grpc = _load("otlp:\n  endpoint: c:4317\n  traces: {endpoint: 'http://t:4317'}\n")["otlp"]
    assert (grpc["traces"]["endpoint"], grpc["insecure"]) == ("t:4317", False)
    http = _load("otlp:\n  protocol: http\n  insecure: true\n  metrics: {endpoint: 'm:4318/v1/metrics'}\n")["otlp"]
    assert http["metrics"]["endpoint"] == "http://m:4318/v1/metrics"
    assert http["endpoint"] is None


@pytest.mark.parametrize("text, expected", [
    ("otlp:\n  endpoint: [\n", "t.yaml: line 3, column 1: invalid YAML:"),
    ("otlp:\n\tendpoint: x\n", "t.yaml: line 2, column 1: invalid YAML:"),
    ("otlp: {a: 1}\notlp: {}\n", "t.yaml: line 2, column 1: invalid YAML: duplicate key 'otlp'"),
    ("- otlp\n", "t.yaml: the top level must be a mapping of sections, got list"),
    ("just text\n", "t.yaml: the top level must be a mapping of sections, got str"),
    ("a: 1\n---\nb: 2\n", "t.yaml: line 2, column 1: invalid YAML:"),
    ("1: x\n", "t.yaml: keys must be strings, got 1"),
])
def test_yaml_level_errors(text, expected):
    """Syntax errors, duplicate keys and a non-mapping top level are one-line errors with position."""
    assert _error(text).startswith(expected)


def test_unreadable_files(tmp_path):
    """A missing file, a directory and non-UTF-8 bytes are ConfigErrors naming the path."""
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read the file: No such file or directory$"):
        load_config(str(missing), environ={})
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the file"):
        load_config(str(tmp_path), environ={})
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(binary), environ={})


def test_config_error_fields():
    """ConfigError exposes its parts for callers (the reload answer, the CLI)."""
    with pytest.raises(ConfigError) as caught:
        _load("otlp:\n  protocl: http\n")
    err = caught.value
    assert (err.source, err.key, err.hint) == ("t.yaml", "otlp.protocl", "protocol")
    assert isinstance(err, ValueError)
