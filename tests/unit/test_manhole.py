"""
The manhole's construction: the loopback rule, key-only auth from the authorized_keys file, the host
key (generated 0600 under the data directory, or configured), per-instance key dicts and a fresh
namespace per session. A MemoryReactor stands in for the network.
"""
import os
import stat
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.manhole_ssh import ConchFactory
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs

from telegen.config import defaults
from telegen.manhole import HOST_KEY_FILE, ManholeError, ManholeService


def new_key():
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


class FakeAgent:
    """The root service as the manhole sees it: config, children by name, status()."""

    def __init__(self, config, children=None):
        self.config = config
        self.children = children or {}

    def getServiceNamed(self, name):
        return self.children[name]

    def status(self):
        return {"mode": "agent"}


@pytest.fixture
def setup(tmp_path):
    """A config with the manhole on, an authorized_keys file holding one key, and that key."""
    allowed = new_key()
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(b"# operators\n" + allowed.public().toString("openssh") + b" ops@example\n")
    config = defaults()
    config["telegen"]["data_dir"] = str(tmp_path / "data")
    config["manhole"].update(enabled=True, listen="tcp:2222:interface=127.0.0.1", authorized_keys=str(authorized))
    return SimpleNamespace(config=config, allowed=allowed, tmp_path=tmp_path)


def build(setup, reactor=None, children=None):
    return ManholeService(FakeAgent(setup.config, children), setup.config, reactor=reactor or MemoryReactor())


def test_binds_loopback_by_default(setup):
    """Started on a MemoryReactor, it listens on 127.0.0.1 at the configured port."""
    reactor = MemoryReactor()
    service = build(setup, reactor)
    service.startService()
    port, factory, _backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (2222, "127.0.0.1")
    assert factory is service.factory


@pytest.mark.parametrize("listen", ["tcp:2222", "tcp:2222:interface=0.0.0.0", "tcp:2222:interface=10.1.2.3",
                                    r"tcp6:2222:interface=\:\:"])
def test_non_loopback_is_refused(setup, listen):
    """Every address or a routable one: refused with a line naming manhole.listen and the way out."""
    setup.config["manhole"]["listen"] = listen
    with pytest.raises(ManholeError, match=r"^manhole.listen: .*allow_non_loopback"):
        build(setup)


def test_ipv6_loopback_and_unix_socket_are_allowed(setup):
    """::1 and a UNIX socket are local."""
    for listen in (r"tcp6:2222:interface=\:\:1", f"unix:{setup.tmp_path}/manhole.sock"):
        setup.config["manhole"]["listen"] = listen
        build(setup)


def test_non_loopback_when_allowed_logs_a_warning(setup):
    """allow_non_loopback lets it bind everywhere, with a warning in the log."""
    setup.config["manhole"].update(listen="tcp:2222", allow_non_loopback=True)
    with capturedLogs() as events:
        build(setup)
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert warnings and "non-loopback" in warnings[0]["log_format"]


def test_host_key_is_generated_0600_once_and_reused(setup):
    """First start writes <data_dir>/manhole_host_key with mode 0600; the next start serves the same key."""
    first = build(setup)
    path = os.path.join(setup.config["telegen"]["data_dir"], HOST_KEY_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = build(setup)
    assert first.factory.publicKeys == second.factory.publicKeys
    assert list(first.factory.publicKeys) == [b"ssh-ed25519"]


def test_configured_host_key_is_used(setup):
    """manhole.host_key names the private key to serve; nothing is generated."""
    key = new_key()
    path = setup.tmp_path / "host"
    path.write_bytes(key.toString("openssh"))
    setup.config["manhole"]["host_key"] = str(path)
    service = build(setup)
    assert service.factory.publicKeys[b"ssh-ed25519"] == key.public()
    assert not os.path.exists(os.path.join(setup.config["telegen"]["data_dir"], HOST_KEY_FILE))


def test_unreadable_host_key_names_the_file_not_its_contents(setup):
    """A broken key file: one line naming the key and the path, no key material."""
    path = setup.tmp_path / "host"
    path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key-SECRETBYTES\n")
    setup.config["manhole"]["host_key"] = str(path)
    with pytest.raises(ManholeError) as error:
        build(setup)
    assert str(error.value).startswith(f"manhole.host_key: cannot load host key {path}")
    assert "SECRETBYTES" not in str(error.value)


def test_key_dicts_are_per_instance(setup):
    """ConchFactory's class-level dicts stay empty; each service has its own."""
    service = build(setup)
    assert ConchFactory.publicKeys == {} and ConchFactory.privateKeys == {}
    assert service.factory.__dict__["privateKeys"]


def test_missing_or_empty_authorized_keys_is_refused(setup):
    """No file, or a file without a usable key: a clear error instead of a manhole nobody can use."""
    setup.config["manhole"]["authorized_keys"] = str(setup.tmp_path / "missing")
    with pytest.raises(ManholeError, match=r"^manhole.authorized_keys: cannot read .*missing"):
        build(setup)
    empty = setup.tmp_path / "empty"
    empty.write_bytes(b"# nobody\n")
    setup.config["manhole"]["authorized_keys"] = str(empty)
    with pytest.raises(ManholeError, match=r"^manhole.authorized_keys: no usable public key"):
        build(setup)


def test_only_listed_keys_log_in_whatever_the_user_name(setup):
    """The listed key gets an avatar for any user name; another key is unauthorized."""
    from twisted.conch.interfaces import IConchUser

    service = build(setup)

    def attempt(key, username):
        data = b"session data"
        credentials = SSHPrivateKey(username, key.sshType(), key.public().blob(), data, key.sign(data))
        return service.factory.portal.login(credentials, None, IConchUser)

    results = []
    attempt(setup.allowed, b"root").addBoth(results.append)
    attempt(setup.allowed, b"someone").addBoth(results.append)
    attempt(new_key(), b"root").addBoth(results.append)
    assert results[0][0] is IConchUser and results[1][0] is IConchUser
    assert results[2].check(UnauthorizedLogin)


def test_each_session_gets_a_fresh_namespace_with_the_live_agent(setup):
    """agent, config, export/queues, ebpf and status() are the live objects; a name set in one session is not in the next."""
    export, ebpf = object(), object()
    service = build(setup, children={"export": export, "ebpf": ebpf})
    first = service.namespace()
    assert first["agent"] is service.agent and first["config"] is setup.config
    assert first["export"] is export and first["queues"] is export and first["ebpf"] is ebpf
    assert first["processes"] is None
    assert first["status"]() == {"mode": "agent"}
    first["scratch"] = 1
    assert "scratch" not in service.namespace()
