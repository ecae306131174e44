"""What the debug endpoint tests (and the .deb test) use: the token, `go tool pprof`, a load."""
import shutil
import subprocess
import threading

TOKEN = "debug-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GO = shutil.which("go")


def pprof_top(path, *flags):
    """`go tool pprof -top` of a profile file; fails the test if pprof cannot read it."""
    result = subprocess.run([GO, "tool", "pprof", "-top", *flags, path], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Load:
    """GET /status in a loop from a thread, so the agent has real work to be profiled doing."""

    def __init__(self, agent):
        self.agent = agent
        self.stop = threading.Event()
        self.answers = 0
        self.thread = threading.Thread(target=self._run, name="load")

    def _run(self):
        while not self.stop.is_set():
            assert self.agent.get("/status", headers=AUTH).code == 200
            self.answers += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
