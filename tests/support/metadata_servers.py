"""
Instance metadata services on loopback for the cloud provider's tests.

AWS is moto's server (PyPI moto[server]: IMDSv2 token and meta-data paths) run as a process.
GCP and Azure are small Twisted servers following their documented APIs: GCP's computeMetadata/v1
answers only with `Metadata-Flavor: Google`, Azure's /metadata/instance only with `Metadata: true`
and an api-version (400 otherwise), as the real services do.
"""
import json
import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.web import resource, server

from tests.support.otlp_receiver import free_port, wait_for

GCP_INSTANCE = {"id": 4520031799277581759, "name": "web-1", "zone": "projects/1234567/zones/europe-west1-b",
                "machineType": "projects/1234567/machineTypes/e2-medium", "hostname": "web-1.c.shop-prod.internal"}
GCP_PROJECT = "shop-prod"
AZURE_COMPUTE = {"location": "westeurope", "zone": "2", "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                 "vmSize": "Standard_D2s_v3", "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d", "name": "web-1"}


class _Metadata(resource.Resource):
    isLeaf = True

    def __init__(self, header, value, answers):
        super().__init__()
        self.header, self.value, self.answers = header, value, answers
        self.requests = 0

    def render_GET(self, request):
        self.requests += 1
        if request.getHeader(self.header) != self.value:
            request.setResponseCode(403 if self.header == "metadata-flavor" else 400)
            return b"missing metadata header"
        answer = self.answers(request)
        if answer is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"content-type", b"application/json" if not isinstance(answer, str) else b"text/plain")
        return (answer if isinstance(answer, str) else json.dumps(answer)).encode()


def _gcp(request):
    path = request.path.decode()
    if path == "/computeMetadata/v1/instance/" and request.args.get(b"recursive") == [b"true"]:
        return GCP_INSTANCE
    if path == "/computeMetadata/v1/project/project-id":
        return GCP_PROJECT
    return None


def _azure(request):
    if request.path == b"/metadata/instance/compute" and request.args.get(b"api-version"):
        return AZURE_COMPUTE
    return None


def listen(kind):
    """(metadata resource, listening port) of a GCP or Azure metadata server on loopback."""
    site = _Metadata("metadata-flavor", "Google", _gcp) if kind == "gcp" else _Metadata("metadata", "true", _azure)
    port = reactor.listenTCP(0, server.Site(site), interface="127.0.0.1")
    return site, port


class MotoServer:
    """moto's server on a loopback port, stopped by its PID."""

    def __init__(self):
        self.port = free_port()
        self.process = None

    def start(self):
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import urllib.request
        import urllib.error

        def answers():
            try:
                request = urllib.request.Request(f"{self.url}/latest/api/token", method="PUT")
                return urllib.request.urlopen(request, timeout=1).status == 200
            except (urllib.error.URLError, OSError):
                return self.process.poll() is not None
        wait_for(answers, timeout=60, message="moto_server answers")
        assert self.process.poll() is None, "moto_server exited"
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
