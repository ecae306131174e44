"""The real OpenSSH client against the manhole: keys made with ssh-keygen, an interactive session."""
import os
import select
import subprocess
import threading

from tests.support.otlp_receiver import wait_for

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10"]


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path


class Session:
    """An interactive `ssh -tt` whose output is collected by a thread as it arrives."""

    def __init__(self, port, key):
        self.process = subprocess.Popen(
            ["ssh", "-tt", "-i", key, *SSH_OPTIONS, "-p", str(port), "127.0.0.1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output = b""
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self):
        fd = self.process.stdout.fileno()
        while True:
            readable, _, _ = select.select([fd], [], [], 30)
            data = os.read(fd, 65536) if readable else b""
            if not data:
                return
            self.output += data

    def type(self, line):
        self.process.stdin.write(line.encode() + b"\r")
        self.process.stdin.flush()

    def wait_output(self, text, timeout=20):
        wait_for(lambda: text.encode() in self.output, timeout, message=f"{text!r} in the manhole output:\n{self.output!r}")

    def close(self):
        """Ctrl-D ends the session; the client exits once the server closes."""
        self.process.stdin.write(b"\x04")
        self.process.stdin.flush()
        self.process.wait(20)
        self.reader.join(20)
