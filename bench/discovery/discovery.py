"""
Discovery at scale: watch events handled per CPU-second and memory per cached object (1,000 pods,
1,000 containers, then churn), and the time from `docker run` to the container being named.

  events     feeds Kubernetes watch lines and Docker event lines through the providers' own stream
             parser (JsonLines) and handlers, as the reactor would hand them over: 1,000 pods (two
             containers each) ADDED, then churn (MODIFIED, DELETED, ADDED) of 1,000 events; 1,000
             Docker starts, then churn (die, destroy, start). CPU by time.process_time, memory by
             tracemalloc over what the providers keep.
  latency    (root) a private dockerd (tests/support/dockerd.py) and a DockerProvider on the real
             reactor: for N containers, the time from starting `docker run` to the provider naming
             the container (what a first span's resource needs).

Command: .venv/bin/python bench/discovery/discovery.py events
         .venv/bin/python bench/discovery/discovery.py latency --containers 20
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from telegen.discovery.docker import DockerProvider  # noqa: E402
from telegen.discovery.kubernetes import KubernetesProvider  # noqa: E402
from telegen.discovery.streams import JsonLines  # noqa: E402
from telegen.selfmetrics import SelfMetrics  # noqa: E402
from tests.support.kube_api import pod  # noqa: E402

PODS = CONTAINERS = CHURN = 1000


def _pod(i, version=1):
    p = pod(f"web-{i}", f"uid-{i}", namespace=f"ns-{i % 20}", owner=("ReplicaSet", f"web-{i % 50}-5f6"),
            labels={"app.kubernetes.io/name": f"web-{i % 50}", "pod-template-hash": "5f6"},
            containers=[("app", f"containerd://{i:064x}"), ("sidecar", f"containerd://{i + 10**6:064x}")])
    p["metadata"]["resourceVersion"] = str(version)
    return p


def _lines(events):
    return [json.dumps(e).encode() + b"\n" for e in events]


def _feed(lines, stream):
    start = time.process_time()
    for line in lines:
        stream.dataReceived(line)
    return time.process_time() - start


def _kept_bytes(make_stream, lines):
    """Bytes a fresh provider keeps after the lines (tracemalloc slows Python: CPU is timed apart)."""
    stream = make_stream()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _feed(lines, stream)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename"))


def _kubernetes():
    provider = KubernetesProvider({"enabled": False, "kubeconfig": "", "node_name": "node-1", "cluster_name": "c"},
                                  SelfMetrics(), lambda: None, Clock(), environ={})
    return provider, JsonLines(lambda e: provider.apply("pods", e["type"], e["object"]), None, defer.Deferred())


def kubernetes_events():
    provider, stream = _kubernetes()
    added = _lines({"type": "ADDED", "object": _pod(i)} for i in range(PODS))
    churn = []
    for n in range(CHURN):
        i = n % PODS
        churn.append({"type": ("MODIFIED", "DELETED", "ADDED")[n % 3], "object": _pod(i, version=n + 2)})
    churn = _lines(churn)
    kept = _kept_bytes(lambda: _kubernetes()[1], added)
    cpu_add = _feed(added, stream)
    cpu_churn = _feed(churn, stream)
    lookups = [{"container.id": f"{i:064x}"} for i in range(PODS)]
    start = time.process_time()
    for found in lookups:
        provider.attributes(1, found)
    cpu_lookup = time.process_time() - start
    return {"pods": PODS, "added_per_cpu_s": PODS / cpu_add, "churn_per_cpu_s": CHURN / cpu_churn,
            "bytes_per_pod": kept / PODS, "attributes_us": cpu_lookup / PODS * 1e6}


def _docker():
    provider = DockerProvider({"enabled": True, "socket": "/nonexistent", "labels": ["team"]}, SelfMetrics(), lambda: None, Clock())
    return provider, JsonLines(provider._apply, None, defer.Deferred())


def docker_events():

    def event(action, i):
        return {"Type": "container", "Action": action, "Actor": {"ID": f"{i:064x}", "Attributes": {
            "name": f"web-{i}", "image": f"registry.local/shop/web:{i % 7}", "team": "blue",
            "com.docker.compose.project": "shop", "maintainer": "someone"}}}

    provider, stream = _docker()
    starts = _lines(event("start", i) for i in range(CONTAINERS))
    churn = _lines(event(("die", "destroy", "start")[n % 3], n % CONTAINERS) for n in range(CHURN))
    kept = _kept_bytes(lambda: _docker()[1], starts)
    cpu_start = _feed(starts, stream)
    cpu_churn = _feed(churn, stream)
    return {"containers": CONTAINERS, "started_per_cpu_s": CONTAINERS / cpu_start, "churn_per_cpu_s": CHURN / cpu_churn,
            "bytes_per_container": kept / CONTAINERS}


def events(_args):
    for name, run in (("kubernetes", kubernetes_events), ("docker", docker_events)):
        results = [run() for _ in range(3)]
        best = {k: (max if "per_cpu" in k else min)(r[k] for r in results) for k in results[0]}
        print(name, " ".join(f"{k}={v:,.1f}" for k, v in best.items()))


def latency(args):
    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    from tests.support.dockerd import Dockerd

    root = tempfile.mkdtemp(prefix="tg-dockerd-")
    daemon = Dockerd(root)
    daemon.start()
    daemon.import_busybox()
    provider = DockerProvider({"enabled": True, "socket": daemon.socket, "labels": []}, SelfMetrics(), lambda: None, reactor)
    times, returned = [], []

    async def run():
        provider.startService()
        while provider.ready_check() != "ok":
            await task.deferLater(reactor, 0.01, lambda: None)
        for i in range(args.containers):
            name = f"bench-{i}"
            started = time.monotonic()
            run_cli = getProcessOutputAndValue("docker", ["-H", f"unix://{daemon.socket}", "run", "-d", "--network", "none",
                                                          "--name", name, "telegen-test/busybox:1", "sleep", "60"], env=os.environ)
            cid = None
            while True:
                if cid is None and run_cli.called:
                    out, _, code = run_cli.result
                    cid = out.decode().strip()
                    returned.append(time.monotonic() - started)
                if cid and provider.attributes(1, {"container.id": cid}).get("container.name") == name:
                    break
                await task.deferLater(reactor, 0.001, lambda: None)
            times.append(time.monotonic() - started)
        provider.stopService()

    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(lambda f: f.printTraceback())
    d.addBoth(lambda _: reactor.stop())
    try:
        reactor.run()
    finally:
        for i in range(args.containers):
            daemon.docker("rm", "-f", f"bench-{i}", check=False)
        daemon.stop()
        daemon.cleanup()
    for label, values in (("docker run returns", returned), ("docker run -> named", times)):
        values.sort()
        print(f"{label}: n={len(values)} median={statistics.median(values) * 1000:.0f} ms "
              f"p90={values[int(len(values) * 0.9) - 1] * 1000:.0f} ms max={values[-1] * 1000:.0f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("events", "latency"))
    parser.add_argument("--containers", type=int, default=20)
    args = parser.parse_args()
    {"events": events, "latency": latency}[args.what](args)


if __name__ == "__main__":
    main()
