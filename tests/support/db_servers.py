"""
Real database servers for protocol tests, started as this test run's own processes: Debian's
PostgreSQL, MariaDB and redis-server, each on an ephemeral loopback port with its data under a
fresh temporary directory, stopped by PID (tests/support/db_servers.py, docs/protocols.md).

PostgreSQL refuses to run as root, so its process runs as the postgres user (subprocess's user=,
so the PID is the server's own) over a data directory that user owns. MariaDB runs as root with
--user=root; the tests' SQL user is created over its unix socket (root's unix_socket login).
"""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port():
    """A loopback port free right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class _Server:
    """A started server process: .port, .dir, stop(); .tls: its (certificate, key) files when it serves TLS."""

    def __init__(self, prefix, tls=None):
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.process = None
        self._log = open(os.path.join(self.dir, "server.log"), "wb")

    def log(self):
        with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
            return f.read()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres(_Server):
    """
    PostgreSQL with trust authentication; database `telegen` exists. With tls=(certificate, key)
    files: ssl=on with them (copied where the server's user owns them: it refuses a key others can read).
    """

    def __init__(self, tls=None):
        super().__init__("telegen-pg-", tls)
        self.bindir = bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        data = os.path.join(self.dir, "data")
        shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                       user="postgres", group="postgres", check=True, stdout=self._log, stderr=subprocess.STDOUT)
        options = []
        if tls:
            for source, name in zip(tls, ("server.crt", "server.key")):
                shutil.copy(source, os.path.join(data, name))
                os.chmod(os.path.join(data, name), 0o600)
                shutil.chown(os.path.join(data, name), "postgres", "postgres")
            options = ["-c", "ssl=on"]       # server.crt and server.key in the data directory are the defaults
        self.process = subprocess.Popen(
            [f"{bindir}/postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", *options],
            user="postgres", group="postgres", stdout=self._log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process)
        self._psql(f"{bindir}/createdb", "telegen")

    def _psql(self, tool, *args):
        deadline = time.monotonic() + 30
        while True:   # listening comes before accepting connections; retry through start-up
            done = subprocess.run([tool, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args],
                                  capture_output=True)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stderr.decode(errors='replace')}")


class MariaDB(_Server):
    """
    MariaDB with user `telegen` (password `telegen`) owning database `telegen`. With tls=(certificate,
    key) files: TCP clients must use TLS (require_secure_transport: a client that would fall back to
    plaintext is refused).
    """

    def __init__(self, tls=None):
        super().__init__("telegen-mariadb-", tls)
        options = [f"--ssl-cert={tls[0]}", f"--ssl-key={tls[1]}", "--require-secure-transport=ON"] if tls else []
        data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--skip-test-db"], check=True, stdout=self._log, stderr=subprocess.STDOUT)
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=root", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.dir}/mysqld.pid",
             "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve", *options],
            stdout=self._log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process)
        subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e",
                        "CREATE DATABASE telegen; CREATE USER 'telegen'@'%' IDENTIFIED BY 'telegen';"
                        " GRANT ALL ON *.* TO 'telegen'@'%';"], check=True, capture_output=True)


class Redis(_Server):
    """redis-server without persistence. With tls=(certificate, key) files: TLS only on .port, no client certificates."""

    def __init__(self, tls=None):
        super().__init__("telegen-redis-", tls)
        ports = ["--port", str(self.port)]
        if tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls[0], "--tls-key-file", tls[1],
                     "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=self._log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process)


def server_fixture(server_class, tls=False):
    """
    A module-scoped pytest fixture giving a started server of server_class, stopped after the
    module; tls=True: over TLS with the module's `certificate` fixture ((certificate, key) files).
    """
    @pytest.fixture(scope="module")
    def server(request):
        started = server_class(tls=request.getfixturevalue("certificate")) if tls else server_class()
        yield started
        started.stop()
    return server
