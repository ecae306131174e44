"""
The real `twistd telegen` process on a free loopback port: every endpoint over HTTP, validated
against the agent's own OpenAPI document; reload (good, broken, SIGHUP); SIGTERM; a bad config at
start; the CLI against the running agent.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from openapi_spec_validator import validate as validate_spec

from tests.support.agent_process import AgentProcess, http
from tests.support.openapi_check import schema_validator
from tests.support.otlp_receiver import free_port, wait_for

TELEGEN = os.path.join(os.path.dirname(sys.executable), "telegen")


@pytest.fixture
def agent(tmp_path):
    process = AgentProcess(str(tmp_path))
    process.start()
    yield process
    process.stop()


def test_every_endpoint_answers_its_documented_shape(agent):
    """Each route, plain and under /api/v1, answers a body valid against /openapi.json."""
    spec = agent.get("/openapi.json").json()
    validate_spec(spec)
    calls = [
        ("get", "/healthz"), ("get", "/ready"), ("get", "/status"), ("get", "/status/ebpf"),
        ("get", "/status/export"), ("get", "/status/discovery"), ("get", "/config"),
        ("get", "/openapi.json"), ("post", "/admin/flush"), ("post", "/admin/reload"),
    ]
    for prefix in ("", "/api/v1"):
        for method, path in calls:
            answer = http(method.upper(), agent.url + prefix + path, data=b"" if method == "post" else None)
            assert answer.code in (200, 503), (path, answer.code, answer.body)
            if path == "/ready" and answer.code == 503:
                pytest.fail(f"agent not ready: {answer.body}")
            schema_validator(spec, prefix + path, method, answer.code).validate(answer.json())
    metrics = agent.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "telegen_process_resident_memory_bytes" in metrics.body.decode()
    not_found = agent.get("/no/such/thing")
    assert not_found.code == 404
    schema_validator(spec, "/status", "get", 404).validate(not_found.json())
    wrong = agent.get("/admin/flush")
    assert wrong.code == 405 and "POST" in wrong.headers["Allow"]


def test_status_reports_this_host(agent):
    status = agent.get("/status").json()
    assert status["host"]["name"] == socket.gethostname()
    assert status["host"]["kernel"] == os.uname().release
    assert status["ebpf"]["enabled"] is False  # the test config turns it off


def test_the_agent_runs_at_the_configured_niceness(agent):
    """telegen.nice (10 by default) applies to every thread of the agent, started after it was set."""
    threads = os.listdir(f"/proc/{agent.process.pid}/task")
    for tid in threads:
        with open(f"/proc/{agent.process.pid}/task/{tid}/stat") as f:
            nice = int(f.read().rsplit(")", 1)[1].split()[16])
        assert nice == 10, (tid, nice)


def test_reload_keeps_running_config_on_a_broken_file(agent):
    before = agent.get("/config").json()
    agent.write_config({}, raw="otlp:\n  protocol: carrier-pigeon\n")
    answer = agent.post("/admin/reload")
    assert answer.code == 400
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert "otlp.protocol" in body["details"]["error"]
    assert agent.get("/config").json() == before
    assert agent.get("/healthz").code == 200


def test_reload_applies_a_new_listen_address(agent):
    new_port = free_port()
    old_url = agent.url
    agent.write_config({"self_telemetry": {"listen": f"127.0.0.1:{new_port}"}})
    answer = agent.post("/admin/reload")
    assert answer.code == 200, answer.body
    assert "api" in answer.json()["reloaded"]
    agent.port = new_port
    wait_for(lambda: agent.get("/healthz").code == 200, message="the API on the new port")
    with pytest.raises(OSError):
        http("GET", old_url + "/healthz", timeout=2)


def test_sighup_reloads(agent):
    agent.write_config({"agent": {"host_metrics": {"interval": "7s"}}})
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.get("/config").json()["agent"]["host_metrics"]["interval"] == 7.0,
             message="the SIGHUP reload to apply")


def test_sigterm_stops_gracefully(tmp_path):
    process = AgentProcess(str(tmp_path)).start()
    # twistd ends a signal-stopped run by re-raising the signal (systemd counts that as clean),
    # so the exit status is -SIGTERM; the log shows the orderly shutdown.
    assert process.stop(timeout=10) == -signal.SIGTERM
    assert "Server Shut Down." in process.log()
    with pytest.raises(OSError):
        http("GET", process.url + "/healthz", timeout=2)


def test_bad_config_exits_before_binding(tmp_path):
    process = AgentProcess(str(tmp_path))
    process.write_config({}, raw=f"self_telemetry:\n  listen: '127.0.0.1:{process.port}'\n  ratelimit: {{}}\n")
    process.start(wait=False)
    code = process.process.wait(30)
    process._log.close()
    assert code == 2
    lines = [line for line in process.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "self_telemetry.ratelimit" in lines[0] and "rate_limit" in lines[0]
    with pytest.raises(OSError):
        http("GET", process.url + "/healthz", timeout=2)


def test_cli_against_the_running_agent(agent):
    shown = subprocess.run([TELEGEN, "status", "--url", agent.url], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "Telegen" in shown.stdout and socket.gethostname() in shown.stdout
    version = subprocess.run([TELEGEN, "version", "--json"], capture_output=True, text=True, timeout=30)
    from telegen import __version__

    assert json.loads(version.stdout)["version"] == __version__
    valid = subprocess.run([TELEGEN, "validate", "--config", agent.config_path], capture_output=True, text=True, timeout=30)
    assert valid.returncode == 0, valid.stderr


def test_cli_status_when_agent_is_down():
    down = subprocess.run([TELEGEN, "status", "--url", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert "not answering" in down.stderr
