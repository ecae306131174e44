"""
A private Docker daemon for tests: Debian's dockerd in a temp dir, no bridge, no iptables, with
a tiny image imported from busybox-static (no registry is reachable here).

Containers use --network host or none, so nothing touches the host's network configuration, and
the daemon is stopped by its PID; mounts it leaves under its directory are unmounted.
"""
import os
import shutil
import signal
import subprocess
import tarfile

import pytest

from tests.support.otlp_receiver import wait_for

BUSYBOX = "/bin/busybox"
IMAGE = "telegen-test/busybox:1"


class Dockerd:
    """One dockerd on a unix socket under root (a short path: unix socket paths are limited)."""

    def __init__(self, root):
        self.root = root
        self.socket = os.path.join(root, "docker.sock")
        self.process = None

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        log = open(os.path.join(self.root, "dockerd.log"), "ab")
        self.process = subprocess.Popen([
            "dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--data-root", os.path.join(self.root, "data"), "--exec-root", os.path.join(self.root, "exec"),
            "-H", f"unix://{self.socket}", "--pidfile", os.path.join(self.root, "dockerd.pid"),
        ], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.process.poll() is not None or self.docker("version", check=False).returncode == 0,
                 timeout=60, message="dockerd answers")
        assert self.process.poll() is None, self.log()

    def stop(self):
        """Stop the daemon by PID (its containers stop with it)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cleanup(self):
        """Unmount what the daemon left under root (its network namespace file) and remove root."""
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(self.root + "/")]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self):
        with open(os.path.join(self.root, "dockerd.log"), errors="replace") as f:
            return f.read()[-4000:]

    def docker(self, *args, check=True):
        """Run the docker CLI against this daemon."""
        return subprocess.run(["docker", "-H", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=60, check=check)

    def import_busybox(self, image=IMAGE):
        """
        Import a rootfs holding only busybox (httpd, sh, sleep), a page at /www/index.html, and
        /lib, /lib64 links into /usr, so that a container given the host's /usr (run(usr=True))
        runs the host's programs (python3) as Debian's merged /usr lays them out.
        """
        tar_path = os.path.join(self.root, "rootfs.tar")
        with tarfile.open(tar_path, "w") as tar:
            tar.add(BUSYBOX, arcname="bin/busybox")
            links = {f"bin/{applet}": "busybox" for applet in ("sh", "httpd", "sleep")}
            links.update({"lib": "usr/lib", "lib64": "usr/lib64"})
            for path, target in links.items():
                link = tarfile.TarInfo(path)
                link.type, link.linkname = tarfile.SYMTYPE, target
                tar.addfile(link)
            page = os.path.join(self.root, "index.html")
            with open(page, "w") as f:
                f.write("hello from a container\n")
            tar.add(page, arcname="www/index.html")
        self.docker("import", "-c", 'CMD ["/bin/sh"]', tar_path, image)
        return image

    def run(self, name, *command, image=IMAGE, network="host", labels=(), usr=False):
        """Start a detached container (with the host's /usr read-only when usr); its full id."""
        args = [a for label in labels for a in ("--label", label)]
        if usr:
            args += ["-v", "/usr:/usr:ro"]
        out = self.docker("run", "-d", "--network", network, "--name", name, *args, image, *command)
        return out.stdout.strip()

    def pid(self, name):
        """The host pid of a container's first process."""
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)


def httpd_command(port):
    """busybox httpd serving /www on loopback port, in the foreground."""
    return ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"]



@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A Dockerd with the busybox image, for the tests of one module."""
    daemon = Dockerd(str(tmp_path_factory.mktemp("dockerd")))
    try:
        daemon.start()
        daemon.import_busybox()
        yield daemon
    finally:
        daemon.stop()
        daemon.cleanup()


@pytest.fixture
def containers(dockerd):
    """Names of containers a test starts; removed at its end."""
    names = []
    yield names
    for name in names:
        dockerd.docker("rm", "-f", name, check=False)
