"""
deploy/kubernetes/ and the Dockerfile, without a cluster or a registry: every object validates
strictly against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate` (offline), the
ServiceMonitor against the CRD subset in deploy/schemas/, and the pieces agree with each other,
with the package (same command, same capabilities as the systemd unit) and with Telegen's own
config validation.
"""
import json
import os
import shlex

import jsonschema
import kubernetes_validate
import pytest
import yaml

import telegen
from telegen.discovery.kubernetes import KINDS
from telegen.config import load_config
from tests.support.debian_unit import ROOT, service

K8S = os.path.join(ROOT, "deploy", "kubernetes")
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
API_PORT = 19090


def load(name):
    with open(os.path.join(K8S, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def kustomization():
    return load("kustomization.yaml")


def objects():
    return [load(name) for name in kustomization()["resources"]]


def by_kind(kind):
    [obj] = [o for o in objects() if o["kind"] == kind]
    return obj


def container():
    [c] = by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_kustomization_lists_every_manifest():
    listed = kustomization()["resources"]
    present = sorted(n for n in os.listdir(K8S) if n.endswith(".yaml") and n != "kustomization.yaml")
    assert sorted(listed) == present
    assert {o["kind"] for o in objects()} == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                             "ConfigMap", "DaemonSet", "Service", "ServiceMonitor"}


@pytest.mark.parametrize("version", VERSIONS)
def test_objects_validate_strictly_against_the_kubernetes_schemas(version):
    for obj in objects():
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_misspelled_field():
    daemonset = by_kind("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_service_monitor_validates_against_the_crd_schema():
    with open(os.path.join(ROOT, "deploy", "schemas", "servicemonitor-v1.schema.json")) as f:
        schema = json.load(f)
    monitor = by_kind("ServiceMonitor")
    jsonschema.validate(monitor, schema)
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, schema)


def test_daemonset_has_host_pid_and_the_units_capabilities_instead_of_privileged():
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    security = container()["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    unit_caps = {c.removeprefix("CAP_") for c in service("CapabilityBoundingSet").split()}
    assert set(security["capabilities"]["add"]) == unit_caps
    # The API server refuses allowPrivilegeEscalation: false together with SYS_ADMIN (the schema cannot say so).
    assert security.get("allowPrivilegeEscalation", True) is True


def test_daemonset_mounts_tracing_bpffs_and_headers_read_only():
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container()["volumeMounts"]}
    expected = {"/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf", "/lib/modules", "/usr/src"}
    assert set(host_paths.values()) == expected
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path and mounts[name]["readOnly"] is True, name


def test_probes_and_ports_reach_the_api():
    c = container()
    [port] = c["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", API_PORT)
    assert (c["livenessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["port"]) == ("/healthz", "metrics")
    assert (c["readinessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["port"]) == ("/ready", "metrics")
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}

    pod_labels = by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    svc = by_kind("Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    [svc_port] = svc["spec"]["ports"]
    assert (svc_port["name"], svc_port["port"], svc_port["targetPort"]) == ("metrics", API_PORT, "metrics")

    monitor = by_kind("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("metrics", "/metrics")]


def test_rbac_grants_exactly_what_discovery_watches_bound_to_the_agents_account():
    granted = {(group, resource): set(rule["verbs"])
               for rule in by_kind("ClusterRole")["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    # /api/v1/pods -> ("", "pods"); /apis/apps/v1/replicasets -> ("apps", "replicasets")
    used = {("" if path.startswith("/api/") else path.split("/")[2], path.rsplit("/", 1)[1]) for _, path in KINDS}
    assert granted == {key: {"list", "watch"} for key in used}
    binding = by_kind("ClusterRoleBinding")
    account = by_kind("ServiceAccount")["metadata"]
    assert binding["roleRef"]["name"] == by_kind("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    assert by_kind("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


def test_configmap_is_a_valid_telegen_config_with_the_daemonsets_environment(tmp_path):
    configmap = by_kind("ConfigMap")
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}[volume["name"]] == "/etc/telegen"
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    env = {e["name"]: e["value"] for e in container()["env"] if "value" in e}
    config = load_config(str(path), environ=env)
    assert config["self_telemetry"]["listen"] == f":{API_PORT}"
    # Kubernetes discovery is not built yet and, asked for, fails /ready (the readiness probe).
    assert config["agent"]["discovery"]["kubernetes"]["enabled"] is False
    # The standard variable wins over the file; an http:// URL means plain-text gRPC.
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
    assert (config["otlp"]["endpoint"], config["otlp"]["insecure"]) == ("otel-collector.observability.svc:4317", True)


def dockerfile():
    """The Dockerfile as (instruction, argument text) pairs, continuation lines joined."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_image_runs_the_units_command_from_the_package():
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG")
    assert args["VERSION"] == telegen.__version__
    [copy] = [a for i, a in instructions if i == "COPY"]
    source = copy.split()[0].replace("${VERSION}", args["VERSION"]).replace("${TARGETARCH}", args["TARGETARCH"])
    assert source == f"dist/telegen_{telegen.__version__}_{args['TARGETARCH']}.deb"
    [run] = [a for i, a in instructions if i == "RUN"]
    assert "apt-get install -y --no-install-recommends /tmp/telegen.deb" in run
    [entrypoint] = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    assert entrypoint == shlex.split(service("ExecStart")) == container()["command"]
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        assert [line.strip() for line in f if line.strip() and not line.startswith("#")] == ["*", "!dist/telegen_*.deb"]
