"""
The debug endpoints of a real `twistd telegen` (auth on), read by the real pprof tool: a CPU profile
taken under load names the agent's own hot functions with file and line, the reactor keeps
answering while it samples, and the other profiles load in `go tool pprof` too.
"""
import json
import os
import re
import threading

import pytest

from tests.support.agent_process import AgentProcess, wait_for
from tests.support.debug_tools import AUTH, GO, TOKEN, Load, pprof_top

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(tmp_path):
    process = AgentProcess(str(tmp_path), {"self_telemetry": {
        "debug": {"enabled": True}, "auth": {"enabled": True, "bearer_token": TOKEN}}})
    process.start()
    yield process
    process.stop()


@pytest.mark.skipif(GO is None, reason="go (Debian golang-go) is not installed")
def test_cpu_profile_under_load_shows_the_agents_functions(agent, tmp_path):
    """pprof reads the profile; the /status handler and its helpers appear with file:line."""
    result = {}

    def take_profile():
        result["answer"] = agent.get("/debug/pprof/profile?seconds=4", headers=AUTH, timeout=30)

    with Load(agent) as load:
        profiler = threading.Thread(target=take_profile)
        profiler.start()
        # While it samples (its thread shows in the agent's own stacks): a second profile is
        # refused with the error JSON, and the API still answers.
        wait_for(lambda: "telegen.debug.cpu.CpuProfiler._sample_for" in agent.get(
            "/debug/pprof/goroutine?debug=1", headers=AUTH).body.decode(), timeout=10, message="the sampling thread")
        busy = agent.get("/debug/pprof/profile?seconds=1", headers=AUTH)
        assert busy.code == 503, busy.body
        assert busy.json()["error"] == "service_unavailable" and int(busy.headers["Retry-After"]) >= 1
        answered = load.answers
        wait_for(lambda: load.answers > answered + 5, timeout=10, message="/status answers during the profile")
        profiler.join(40)
    answer = result["answer"]
    assert answer.code == 200, answer.body
    assert answer.headers["Content-Type"] == "application/octet-stream"
    path = os.path.join(tmp_path, "cpu.pprof")
    with open(path, "wb") as f:
        f.write(answer.body)

    top = pprof_top(path, "-lines", "-nodecount=400")
    assert "Type: cpu" in top
    # The agent's own request handling shows, with file:line. Which of its frames a tick catches is
    # chance: the sampler thread runs when the reactor thread lets go of the GIL, mostly at I/O, so
    # a cheap handler like /status itself is caught in some profiles and not in others.
    api_frames = [line for line in top.splitlines()
                  if re.search(r"telegen\.(api|status)\.\S+ \S*" + re.escape(f"{os.sep}telegen{os.sep}") + r"(api|status)", line)]
    assert api_frames, top
    # The sampler's own thread is never in its profile.
    assert "telegen.debug.cpu.CpuProfiler._sample_for" not in top


@pytest.mark.skipif(GO is None, reason="go (Debian golang-go) is not installed")
def test_heap_goroutine_threadcreate_load_in_pprof(agent, tmp_path):
    """Each binary profile is read by pprof with its sample type; goroutine?debug=2 shows the reactor."""
    for name, sample_type in (("heap?gc=1", "inuse_space"), ("goroutine", "goroutine"), ("threadcreate", "threadcreate")):
        answer = agent.get(f"/debug/pprof/{name}", headers=AUTH)
        assert answer.code == 200, answer.body
        path = os.path.join(tmp_path, name.split("?")[0])
        with open(path, "wb") as f:
            f.write(answer.body)
        assert f"Type: {sample_type}" in pprof_top(path)
    stacks = agent.get("/debug/pprof/goroutine?debug=2", headers=AUTH).body.decode()
    assert "[MainThread]" in stacks and "epollreactor.py" in stacks
    assert "pending delayed calls" in stacks


def test_vars_and_auth(agent):
    """/debug/vars is JSON with the agent's counters; without the token the debug routes answer 401."""
    agent.get("/status", headers=AUTH)
    document = agent.get("/debug/vars", headers=AUTH).json()
    assert "telegen" in " ".join(document["cmdline"])
    assert document["memstats"]["rss_bytes"] > 0
    assert document["counters"]["telegen_api_requests_total"]["code=200,route=/status"] >= 1
    refused = agent.get("/debug/pprof/")
    assert refused.code == 401 and refused.json()["error"] == "unauthorized"
    assert agent.get("/api/v1/debug/pprof/", headers=AUTH).code == 200
    block = agent.get("/debug/pprof/block", headers=AUTH)
    assert block.code == 501 and json.loads(block.body)["details"]["reason"]
