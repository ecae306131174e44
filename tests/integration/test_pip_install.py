"""
`pip install .` into a fresh virtualenv (with the system site packages, for BCC, as the README
says) gives a working agent, gRPC export included: setup.py's install_requires alone must bring
every module the agent imports. The build runs on a copy of the checkout, so the checkout and its
.venv are never written to, and the agent runs from a folder outside it.
"""
import shutil
import signal
import subprocess

import pytest

from tests.support.agent_process import ROOT, AgentProcess
from tests.support.otlp_receiver import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache")


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory):
    """A virtualenv holding `pip install <copy of the checkout>` and nothing from the checkout's .venv."""
    base = tmp_path_factory.mktemp("pip-install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source)],
                            capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(source)           # the installed agent must need nothing from the source tree
    return venv


class InstalledAgent(AgentProcess):
    """The agent as the fresh virtualenv's twistd runs it, from a folder outside the checkout."""

    def __init__(self, tmp_path, venv, config):
        super().__init__(tmp_path, config)
        self.twistd = str(venv / "bin" / "twistd")
        self.cwd = tmp_path

    def command(self):
        return [self.twistd, "-n", "--pidfile=", "telegen", "--config", self.config_path]


def test_the_installed_agent_exports_over_grpc(installed_venv, tmp_path, otlp_receiver):
    imported = subprocess.run([str(installed_venv / "bin" / "python"), "-c",
                               "import telegen, telegen.export.grpc_sender; print(telegen.__file__)"],
                              capture_output=True, text=True, cwd=str(tmp_path), check=True)
    assert imported.stdout.startswith(str(installed_venv)), imported.stdout
    agent = InstalledAgent(str(tmp_path), installed_venv, {
        "otlp": {"endpoint": otlp_receiver.grpc_endpoint, "protocol": "grpc", "insecure": True}})
    agent.start()
    try:
        metrics = wait_for(lambda: otlp_receiver.metrics(), timeout=30, message="host metrics over gRPC")
        assert any(m.name.startswith("system.") for _, m in metrics)
        assert agent.get("/status/export").json()["protocol"] == "grpc"
    finally:
        # Twisted >= 24.7 ends twistd with the signal it was stopped by.
        assert agent.stop() in (0, -signal.SIGTERM)
