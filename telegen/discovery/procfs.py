"""
Reading facts about processes from /proc, without the reactor.

Every function here blocks on the file system and tolerates processes that vanish mid-read
(they return None or skip), because on a busy host a pid can exit between listdir and open.
ProcessTable calls the whole-host functions from a thread and the single-pid ones for exec events.
"""
import os
from dataclasses import dataclass, field, replace
from typing import Optional

from zope.interface import implementer

from telegen.contracts import IResourceProvider
from telegen.discovery import cgroup as cgroups
from telegen.discovery import sockdiag
from telegen.signals.common import parse_resource_attributes

# /proc/net/tcp{,6} state column value of a listening socket (TCP_LISTEN = 10).
_LISTEN = "0A"
UNKNOWN_SERVICE = "unknown_service"     # the resource conventions' service.name when nothing better is known
_ENV_KEYS = (b"OTEL_SERVICE_NAME=", b"OTEL_RESOURCE_ATTRIBUTES=")
# cgroup path fragments of container runtimes (Docker, containerd, CRI-O, Podman, Kubernetes).
_CONTAINER_MARKS = (b"docker", b"containerd", b"crio", b"libpod", b"kubepods")


@dataclass
class ProcessInfo:
    """One process as the resource attributes and /status/discovery need it."""

    pid: int
    start_time: int                     # clock ticks after boot (/proc/PID/stat field 22): pid reuse guard
    exe_path: str = ""
    exe_name: str = ""
    command_line: str = ""
    service_name: str = ""              # OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES, else exe_name
    service_namespace: str = ""
    service_from_env: bool = False      # service_name was set by the process's OTel environment, not guessed
    ports: set = field(default_factory=set)   # TCP ports it listens on
    in_container: bool = False          # its cgroup belongs to a container runtime
    container: Optional[cgroups.Container] = None   # the container its cgroup path names, if any


def _read(path):
    """The whole file. (read(n) would allocate n bytes up front: 1 MiB per environ read was most
    of an exec event's cost.) /proc files are bounded by the kernel (environ/cmdline by ARG_MAX)."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def start_time(pid, root="/proc"):
    """The process's start time in clock ticks, or None when it is gone (a kernel thread has one too)."""
    try:
        stat = _read(f"{root}/{pid}/stat")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[19])


def _environ_service(pid, root):
    """(service name, namespace) from the process's OTel environment variables; ('', '') when absent."""
    try:
        env = _read(f"{root}/{pid}/environ")
    except OSError:
        return "", ""
    if b"OTEL_" not in env:        # the common case: skip splitting the whole environment
        return "", ""
    found = {}
    for entry in env.split(b"\0"):
        for key in _ENV_KEYS:
            if entry.startswith(key):
                found[key] = entry[len(key):].decode("utf-8", "replace")
    resource = parse_resource_attributes(found.get(_ENV_KEYS[1], ""))
    name = found.get(_ENV_KEYS[0]) or resource.get("service.name", "")
    return name, resource.get("service.namespace", "")


def read_process(pid, root="/proc"):
    """A ProcessInfo for pid, or None for a vanished process or a kernel thread (no executable)."""
    started = start_time(pid, root)
    if started is None:
        return None
    try:
        exe_path = os.readlink(f"{root}/{pid}/exe")
    except OSError:
        return None
    try:
        argv = _read(f"{root}/{pid}/cmdline").rstrip(b"\0").split(b"\0")
    except OSError:
        return None
    try:
        cgroup = _read(f"{root}/{pid}/cgroup")
    except OSError:
        cgroup = b""
    exe_path = exe_path.removesuffix(" (deleted)")
    exe_name = os.path.basename(exe_path)
    service, namespace = _environ_service(pid, root)
    return ProcessInfo(
        pid=pid,
        start_time=started,
        exe_path=exe_path,
        exe_name=exe_name,
        command_line=" ".join(a.decode("utf-8", "replace") for a in argv),
        service_name=service or exe_name,
        service_namespace=namespace,
        service_from_env=bool(service),
        in_container=any(mark in cgroup for mark in _CONTAINER_MARKS),
        container=cgroups.parse(cgroup),
    )


def pids(root="/proc"):
    """Every process id present now."""
    return [int(name) for name in os.listdir(root) if name.isdigit()]


def listening_ports(root="/proc"):
    """
    {socket inode: port} of every listening TCP socket (IPv4 and IPv6) in this network namespace:
    from sock_diag (sockdiag.py: 66 us here where /proc/net/tcp took 9 ms, because reading that
    walks every established socket too), or from root's net/tcp{,6} for a fake /proc tree or a
    kernel without inet_diag (the same answer, only dearer).
    """
    if root == "/proc":
        try:
            return sockdiag.listening_tcp()
        except OSError:
            pass
    return listening_inodes(root)


def listening_inodes(root="/proc"):
    """{socket inode: port} of every listening TCP socket, parsed from root's net/tcp and net/tcp6."""
    out = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = _read(f"{root}/net/{table}").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN.encode():
                out[int(cols[9])] = int(cols[1].rsplit(b":", 1)[1], 16)
    return out


def socket_inodes(pid, root="/proc"):
    """Inodes of the sockets pid holds open (from its fd links); empty when unreadable."""
    out = []
    try:
        fds = os.listdir(f"{root}/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"{root}/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.append(int(target[8:-1]))
    return out


def scan(known, root="/proc"):
    """
    Read the whole host: {pid: ProcessInfo} with listening ports filled in.

    known ({pid: ProcessInfo}) lets an unchanged process (same start time) keep its info without
    re-reading cmdline and environ, which keeps the periodic rescan cheap.
    """
    listening = listening_ports(root)
    table = {}
    for pid in pids(root):
        old = known.get(pid)
        if old is not None and old.start_time == start_time(pid, root):
            info = replace(old, ports=set())
        else:
            info = read_process(pid, root)
        if info is None:
            continue
        if listening:
            info.ports = {listening[i] for i in socket_inodes(pid, root) if i in listening}
        table[pid] = info
    return table


@implementer(IResourceProvider)
class ProcfsProvider:
    """
    The first link of the resource chain: service.* and process.* of a process as /proc told it
    (lookup(pid) is the process table's ProcessInfo lookup). service.name only when the process's
    OTel environment sets it: otherwise later links may name the service (a container's name), and
    the chain falls back to the executable's name. A pid nothing knows gets process.pid only.
    """

    name = "procfs"
    STATUS_SCHEMA = None        # /status/discovery shows processes as discovered_services instead

    def __init__(self, lookup, hostname):
        self._lookup = lookup
        self._hostname = hostname

    def attributes(self, pid, found):
        info = self._lookup(pid)
        if info is None:
            return {"process.pid": pid} if pid > 0 else {}
        attrs = {
            "service.name": info.service_name if info.service_from_env else None,
            "service.namespace": info.service_namespace or None,
            "service.instance.id": f"{self._hostname}:{pid}",
            "process.pid": pid,
            "process.executable.name": info.exe_name,
            "process.executable.path": info.exe_path,
            "process.command_line": info.command_line,
        }
        return {k: v for k, v in attrs.items() if v not in (None, "")}

    def status(self):
        return {}

    def ready_check(self):
        return "ok"
