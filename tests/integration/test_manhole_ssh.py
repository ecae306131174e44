"""
The manhole of a real `twistd telegen`, reached with the real OpenSSH client: a key listed in
manhole.authorized_keys gets a Python prompt where status() answers what /status answers and the
live agent is in scope; any other key is refused; the host key is generated 0600 and is the one served.
"""
import os
import shutil
import stat
import subprocess

import pytest

from tests.support.agent_process import AgentProcess, free_port
from tests.support.ssh_session import SSH_OPTIONS, Session, keygen

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client (Debian openssh-client) is not installed"),
]

@pytest.fixture
def manhole(tmp_path):
    """An agent with the manhole on a free loopback port; yields (agent, port, allowed key, other key)."""
    allowed = keygen(str(tmp_path / "allowed"))
    other = keygen(str(tmp_path / "other"))
    shutil.copy(allowed + ".pub", tmp_path / "authorized_keys")
    port = free_port()
    agent = AgentProcess(str(tmp_path), {"manhole": {
        "enabled": True, "listen": f"tcp:{port}:interface=127.0.0.1",
        "authorized_keys": str(tmp_path / "authorized_keys")}})
    agent.start()
    yield agent, port, allowed, other
    agent.stop()


def test_listed_key_gets_a_prompt_with_the_live_agent(manhole):
    """status() prints the /status document; the namespace holds agent, config, export/queues, ebpf."""
    agent, port, allowed, _other = manhole
    session = Session(port, allowed)
    try:
        session.wait_output(">>> ")
        session.type("status()")
        session.wait_output("'mode': 'agent'")
        session.type("print(sorted(k for k in globals() if not k.startswith('_')))")
        session.wait_output("['agent', 'config', 'ebpf', 'export', 'processes', 'queues', 'reactor', 'status']")
        session.type("print('uptime-check', agent.status()['version'] == status()['version'], export is agent.getServiceNamed('export'))")
        session.wait_output("uptime-check True True")
    finally:
        session.close()
    assert agent.get("/healthz").code == 200  # the agent is fine after the session


def test_other_key_is_refused(manhole):
    """A key not in authorized_keys: the client fails with 255 and Permission denied (publickey)."""
    _agent, port, _allowed, other = manhole
    result = subprocess.run(["ssh", "-i", other, *SSH_OPTIONS, "-p", str(port), "127.0.0.1", "status()"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_host_key_is_generated_0600_and_served(manhole, tmp_path):
    """The served host key is the one written to <data_dir>/manhole_host_key with mode 0600."""
    _agent, port, _allowed, _other = manhole
    path = tmp_path / "data" / "manhole_host_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout.split()[:2]
    scanned = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    assert scanned[1:3] == public
