"""
The SSH manhole: a Python prompt inside the live agent, for debugging what the API cannot show.

Why this shape (twisted-style.md, section 5): key-only auth through SSHPublicKeyChecker, a host key
of our own kept under the data directory, per-instance key dicts (never ConchFactory's class-level
ones, which every factory in the process would share), a fresh namespace per connection, and a
loopback-only bind unless manhole.allow_non_loopback says otherwise. Anyone who gets in can do
anything the agent can (it runs as root): that is why it is off by default.
"""
import os

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import StreamServerEndpointService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from telegen.api.gate import is_loopback
from telegen.contracts import IChild

log = Logger(namespace="telegen.manhole")

HOST_KEY_FILE = "manhole_host_key"


class ManholeError(Exception):
    """The manhole cannot start with this config; the message names the key and the problem."""


class _SameKeysForEveryUser(dict):
    """
    The mapping InMemorySSHKeyDB reads. The manhole has no accounts: whatever user name the client
    sends (ssh sends the local one), the keys of manhole.authorized_keys decide.
    """

    def __init__(self, authorized):
        super().__init__()
        self._authorized = authorized

    def get(self, username, default=None):
        return self._authorized


def check_listen(endpoint, description, allow_non_loopback):
    """
    Refuse a bind that is not loopback (or a UNIX socket) unless allowed; warn when allowed.

    Twisted's TCP and SSL server endpoints keep their bind address in _interface ("" means every
    address); anything we cannot inspect counts as non-loopback.
    """
    if isinstance(endpoint, UNIXServerEndpoint):
        return
    interface = getattr(endpoint, "_interface", "")
    if is_loopback(interface):
        return
    if not allow_non_loopback:
        raise ManholeError(
            f"manhole.listen: {description!r} binds {interface or 'every address'}, not loopback; "
            "use interface=127.0.0.1 (or ::1), or set manhole.allow_non_loopback")
    log.warn("manhole listens on non-loopback address {address}: anyone holding an authorized key "
             "who reaches it gets a root Python prompt", address=interface or "every address")


def load_authorized_keys(path):
    """The public keys of an authorized_keys file; ManholeError if none can be read."""
    try:
        with open(path, "rb") as f:
            authorized = list(readAuthorizedKeyFile(f))
    except OSError as exc:
        raise ManholeError(f"manhole.authorized_keys: cannot read {path}: {exc.strerror}") from None
    if not authorized:
        raise ManholeError(f"manhole.authorized_keys: no usable public key in {path}")
    return authorized


def load_host_key(configured, data_dir):
    """
    The host private key: manhole.host_key when set, else <data_dir>/manhole_host_key, generated
    (ed25519, mode 0600) on first start. Errors name the file, never its contents.
    """
    path = configured or os.path.join(data_dir, HOST_KEY_FILE)
    if configured is None and not os.path.exists(path):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
        log.info("generated manhole host key {path} ({fingerprint})", path=path,
                 fingerprint=key.fingerprint(keys.FingerprintFormats.SHA256_BASE64))
        return key
    try:
        return keys.Key.fromFile(path)
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as exc:
        key_name = "manhole.host_key" if configured else "telegen.data_dir"
        raise ManholeError(f"{key_name}: cannot load host key {path}: {type(exc).__name__}") from None


@implementer(IChild)
class ManholeService(StreamServerEndpointService):
    """
    The SSH server. Config problems raise ManholeError when it is built, so the agent refuses to
    start (or a reload is refused) with one readable line; a bind failure raises at start.
    """

    def __init__(self, agent, config, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        settings = config["manhole"]
        endpoint = serverFromString(reactor, settings["listen"])
        check_listen(endpoint, settings["listen"], settings["allow_non_loopback"])
        authorized = load_authorized_keys(settings["authorized_keys"])
        host_key = load_host_key(settings["host_key"], config["telegen"]["data_dir"])

        self.agent = agent
        self.reactor = reactor
        realm = manhole_ssh.TerminalRealm()
        realm.chainedProtocolFactory = self._session_protocol
        checker = SSHPublicKeyChecker(InMemorySSHKeyDB(_SameKeysForEveryUser(authorized)))
        factory = manhole_ssh.ConchFactory(Portal(realm, [checker]))
        # Instance attributes: ConchFactory's class-level dicts are shared by every factory.
        factory.publicKeys = {host_key.sshType(): host_key.public()}
        factory.privateKeys = {host_key.sshType(): host_key}
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True

    def reconfigure(self, config):
        """
        Never in place: keys are read and checked when the service is built, so a rebuild is what
        validates a changed manhole section (a bad key refuses the reload and keeps the old one).
        """
        return False

    def status(self):
        return {"enabled": True, "running": bool(self.running)}

    def ready_check(self):
        return "ok" if self.running else "not ready: not started"

    def _child(self, name):
        try:
            return self.agent.getServiceNamed(name)
        except KeyError:
            return None

    def namespace(self):
        """A fresh namespace for one session, holding the live objects (not copies)."""
        export = self._child("export")
        return {
            "__name__": "__manhole__",
            "agent": self.agent,
            "config": self.agent.config,
            "export": export,
            "queues": export,
            "ebpf": self._child("ebpf"),
            "processes": self._child("processes"),
            "reactor": self.reactor,
            "status": self.agent.status,
        }

    def _session_protocol(self):
        log.info("manhole session opened")
        return insults.ServerProtocol(manhole.ColoredManhole, self.namespace())
