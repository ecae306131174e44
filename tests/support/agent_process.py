"""
A real `twistd telegen` process for integration tests: written config, free loopback port,
started from the checkout's virtualenv, stopped by PID.
"""
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import yaml

from tests.support.otlp_receiver import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Answer:
    """An HTTP answer: code, headers, body, and the body as JSON when it is."""

    def __init__(self, code, headers, body):
        self.code = code
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def http(method, url, headers=None, data=None, timeout=10.0):
    """One request with urllib; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


class AgentProcess:
    """One agent under test. config is a dict merged over a small test base config."""

    start_timeout = 30.0

    def __init__(self, tmp_path, config=None, env=None):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.config_path = os.path.join(tmp_path, "config.yaml")
        self.log_path = os.path.join(tmp_path, "agent.log")
        self.env = dict(os.environ, **(env or {}))
        self.cwd = ROOT
        self.process = None
        self.write_config(config or {})

    def base_config(self):
        return {
            "telegen": {"data_dir": os.path.join(self.tmp_path, "data"), "log_format": "text", "shutdown_timeout": "5s"},
            "self_telemetry": {"listen": f"127.0.0.1:{self.port}"},
            "agent": {"ebpf": {"enabled": False}, "host_metrics": {"interval": "1s"}},
        }

    def write_config(self, overrides, raw=None):
        """Write the config file: the base merged with overrides, or raw text."""
        if raw is not None:
            text = raw
        else:
            text = yaml.safe_dump(merge(self.base_config(), overrides))
        with open(self.config_path, "w") as f:
            f.write(text)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        """The argv that runs the agent (the .deb test runs the installed copy instead)."""
        return [TWISTD, "-n", "--pidfile=", "telegen", "--config", self.config_path]

    def start(self, wait=True):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy(self.start_timeout)
        return self

    def wait_healthy(self, timeout=30.0):
        def healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            try:
                return self.get("/healthz").code == 200
            except OSError:
                return False

        wait_for(healthy, timeout, interval=0.05, message="the agent's /healthz")

    def wait_ready(self, timeout=60.0):
        """Wait until GET /ready says ready (the message names the checks that are not)."""
        wait_for(lambda: self.get("/ready").json()["status"] == "ready", timeout=timeout,
                 message="agent ready (%s)" % self.get("/ready").json()["checks"])

    def get(self, path, **kw):
        return http("GET", self.url + path, **kw)

    def post(self, path, **kw):
        return http("POST", self.url + path, data=kw.pop("data", b""), **kw)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def signal(self, signum):
        os.kill(self.process.pid, signum)

    def kill(self):
        """SIGKILL, as a crash would end it: nothing of the agent's own shutdown runs."""
        self.process.kill()
        self.process.wait(10)
        self._log.close()

    def stop(self, timeout=15.0):
        """SIGTERM, wait; SIGKILL only if it did not stop in time. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"agent did not stop within {timeout}s:\n{self.log()}")
        finally:
            self._log.close()


def merge(base, overrides):
    """Deep-merge two dicts (overrides win) without changing either."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def capture_agent(tmp, capture, ports):
    """
    A started AgentProcess with eBPF in one capture mode (`socket` or `syscalls`) capturing only
    `ports` (the host's other traffic, other tests' load generators, must not fill its ring buffer
    or spend its CPU budget), ready, with `data_dir` (its file sink) and `capture` set. Stop it.
    """
    agent = AgentProcess(tmp, config={"agent": {"ebpf": {
        "enabled": True, "ringbuf_size": 1 << 22, "capture": capture,
        "network": {"tcp": False, "include_ports": list(ports)}}}})
    agent.capture = capture
    agent.data_dir = os.path.join(tmp, "data")
    agent.start()
    try:
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=180,
                 message="ebpf ready (%s)" % agent.get("/ready").json()["checks"]["ebpf"])
        assert agent.get("/status/ebpf").json()["capture"]["mode"] == capture
    except BaseException:
        agent.stop()
        raise
    return agent
