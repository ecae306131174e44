"""
telegen.workerproc with real child processes: answers come back in order and large, a handler's
exception fails only its call, a child that dies or hangs fails its calls with WorkerCrashed and
is restarted (counted), and stop() ends the child.
"""
import os
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from telegen.workerproc import NICE_INCREMENT, Worker, WorkerCrashed, WorkerError
from tests.support.twisted_wait import until

CHILD = """
import os, time
from telegen.workerproc import serve
def fail():
    raise ValueError("bad input")
serve({"echo": lambda x: x, "big": lambda n: b"x" * n, "fail": fail, "die": lambda: os._exit(3),
       "hang": lambda: time.sleep(60), "pid": os.getpid, "nice": lambda: os.nice(0)})
"""


@pytest.fixture
def worker():
    events = {"started": [], "crashed": []}
    w = Worker(reactor, "test", [sys.executable, "-c", CHILD], timeout=5.0,
               on_start=events["started"].append, on_crash=events["crashed"].append)
    w.start()
    w.events = events
    yield w
    pytest_twisted.blockon(w.stop())


@pytest_twisted.ensureDeferred
async def test_answers_in_order_large_and_errors_per_call(worker):
    results = await defer.gatherResults([worker.call("echo", i) for i in range(20)])
    assert results == list(range(20))
    assert len(await worker.call("big", 8 << 20)) == 8 << 20      # several pipe reads make one frame
    with pytest.raises(WorkerError, match="ValueError: bad input"):
        await worker.call("fail")
    assert await worker.call("pid") == worker.pid == worker.events["started"][0] != os.getpid()
    assert await worker.call("nice") == min(19, os.nice(0) + NICE_INCREMENT)     # the reactor gets the CPU first


@pytest_twisted.ensureDeferred
async def test_a_child_that_dies_or_hangs_is_restarted_and_counted(worker):
    first = worker.pid
    with pytest.raises(WorkerCrashed):
        await worker.call("die")
    assert worker.events["crashed"] == ["exited"] and worker.restarts == 1
    await until(lambda: worker.running, timeout=10, message="restart")
    assert await worker.call("echo", "again") == "again" and worker.pid != first
    with pytest.raises(WorkerCrashed):
        await worker.call("hang")                       # killed at the 5 s timeout
    assert worker.events["crashed"] == ["exited", "timeout"] and worker.restarts == 2


@pytest_twisted.ensureDeferred
async def test_stop_ends_the_child():
    w = Worker(reactor, "test", [sys.executable, "-c", CHILD])
    w.start()
    pid = w.pid
    assert await w.call("echo", 1) == 1
    await w.stop()
    assert not w.running and not os.path.exists(f"/proc/{pid}/status")
