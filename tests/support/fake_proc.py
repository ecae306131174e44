"""
A made-up /proc tree (processes, their environment, cgroup and listening sockets) and a
ProcessTable over it whose scans run synchronously: no root, no threads.
"""
import os

from twisted.internet import defer
from twisted.internet.task import Clock

from telegen.discovery.processes import ProcessTable
from telegen.selfmetrics import SelfMetrics
from tests.support.fakes import make_config


class FakeProc:
    """Writes /proc-shaped files for made-up processes and listening sockets."""

    def __init__(self, root):
        self.root = root
        (root / "net").mkdir(parents=True)
        self.sockets = []
        self._write_net()

    def add(self, pid, exe, argv, env=None, start=100, socket_inodes=(), cgroup="0::/user.slice\n"):
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True, exist_ok=True)
        (d / "stat").write_text(f"{pid} (my (odd) prog) S " + " ".join(["0"] * 18) + f" {start} 0 0\n")
        if (d / "exe").is_symlink():
            (d / "exe").unlink()
        os.symlink(exe, d / "exe")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "cgroup").write_text(cgroup)
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
        for n, inode in enumerate(socket_inodes, start=3):
            os.symlink(f"socket:[{inode}]", d / "fd" / str(n))

    def remove(self, pid):
        d = self.root / str(pid)
        for p in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
        d.rmdir()

    def listen(self, inode, port, v6=False):
        self.sockets.append((inode, port, v6))
        self._write_net()

    def _write_net(self):
        header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        for table, want_v6 in (("tcp", False), ("tcp6", True)):
            lines = [header]
            for n, (inode, port, v6) in enumerate(self.sockets):
                if v6 == want_v6:
                    addr = ("0" * 32 if v6 else "0100007F") + f":{port:04X}"
                    lines.append(f"   {n}: {addr} {'0' * (32 if v6 else 8)}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0\n")
                    lines.append(f"   {n}: {addr} {'0' * (32 if v6 else 8)}:1234 01 00000000:00000000 00:00000000 00000000     0        0 {inode + 1} 1 0\n")
            (self.root / "net" / table).write_text("".join(lines))


def make_table(tmp_path, clock=None, providers=None, **discovery):
    proc = FakeProc(tmp_path / "proc")
    metrics = SelfMetrics()
    config = make_config()
    config["agent"]["discovery"].update(discovery)
    table = ProcessTable(config, metrics, reactor=clock or Clock(), proc_root=str(proc.root),
                         run_in_thread=lambda fn, *a: defer.succeed(fn(*a)), providers=providers or (lambda table: []))
    return proc, metrics, table
