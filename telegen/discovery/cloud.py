"""
The cloud link of the resource chain: cloud.* and host.id/host.type of the instance the agent runs
on, from the provider's instance metadata service, asked once at start.

Opt-in per cloud (cloud.aws|gcp|azure.enabled), as in the OpenTelemetry Collector's
resourcedetection processor: nothing is sent anywhere unless configured, and each request gives
up after that cloud's timeout, so readiness waits at most the slowest enabled cloud's timeouts.
The enabled clouds are asked at once; the first in the order aws, gcp, azure that answers wins.
endpoint is the metadata service's base URL (tests point it at loopback).

  aws    IMDSv2: PUT /latest/api/token, then GETs under /latest/meta-data/ with the token (and the
         identity document for the account id, when the service has it)
  gcp    GET /computeMetadata/v1/instance/?recursive=true and .../project/project-id, Metadata-Flavor: Google
  azure  GET /metadata/instance/compute?api-version=2021-02-01, Metadata: true
"""
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import ResponseNeverReceived
from zope.interface import implementer

from telegen.contracts import IResourceProvider
from telegen.discovery.streams import json_body

log = Logger()

CLOUDS = ("aws", "gcp", "azure")
AZURE_API_VERSION = "2021-02-01"
_AWS_TOKEN_TTL = "21600"


def _timed_out(failure):
    """Whether a request failed by its timeout (treq cancels it: ResponseNeverReceived of a CancelledError)."""
    if failure.check(defer.CancelledError, defer.TimeoutError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return failure.check(ResponseNeverReceived) is not None and any(r.check(defer.CancelledError) for r in reasons)


def _text(response):
    """The body of a 200 answer as text; a failure otherwise."""
    return json_body(response) if response.code != 200 else response.text()


async def detect_aws(client, base, timeout):
    token = await client.put(f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": _AWS_TOKEN_TTL},
                             timeout=timeout).addCallback(_text)
    headers = {"X-aws-ec2-metadata-token": token.strip()}

    def get(path):
        return client.get(f"{base}/latest/meta-data/{path}", headers=headers, timeout=timeout).addCallback(_text)

    paths = ("instance-id", "instance-type", "placement/region", "placement/availability-zone")
    instance, kind, region, zone = await defer.gatherResults([get(p) for p in paths], consumeErrors=True)
    attrs = {"cloud.provider": "aws", "cloud.platform": "aws_ec2", "cloud.region": region, "cloud.availability_zone": zone,
             "host.id": instance, "host.type": kind}
    try:
        document = await client.get(f"{base}/latest/dynamic/instance-identity/document", headers=headers,
                                    timeout=timeout).addCallback(json_body)
        attrs["cloud.account.id"] = document.get("accountId")
    except Exception:
        pass        # not every metadata service has the document: the account is then not known
    return attrs


async def detect_gcp(client, base, timeout):
    headers = {"Metadata-Flavor": "Google"}
    instance = await client.get(f"{base}/computeMetadata/v1/instance/?recursive=true", headers=headers,
                                timeout=timeout).addCallback(json_body)
    project = await client.get(f"{base}/computeMetadata/v1/project/project-id", headers=headers,
                               timeout=timeout).addCallback(_text)
    zone = str(instance.get("zone", "")).rsplit("/", 1)[-1]          # projects/123/zones/europe-west1-b
    return {"cloud.provider": "gcp", "cloud.platform": "gcp_compute_engine", "cloud.account.id": project.strip(),
            "cloud.region": zone.rsplit("-", 1)[0] if zone else None, "cloud.availability_zone": zone,
            "host.id": str(instance.get("id", "")), "host.type": str(instance.get("machineType", "")).rsplit("/", 1)[-1]}


async def detect_azure(client, base, timeout):
    compute = await client.get(f"{base}/metadata/instance/compute?api-version={AZURE_API_VERSION}",
                               headers={"Metadata": "true"}, timeout=timeout).addCallback(json_body)
    return {"cloud.provider": "azure", "cloud.platform": "azure_vm", "cloud.region": compute.get("location"),
            "cloud.availability_zone": compute.get("zone"), "cloud.account.id": compute.get("subscriptionId"),
            "host.id": compute.get("vmId"), "host.type": compute.get("vmSize")}


DETECTORS = {"aws": detect_aws, "gcp": detect_gcp, "azure": detect_azure}


@implementer(IResourceProvider)
class CloudProvider(service.Service):
    """The instance's cloud facts, the same for every process (and for the host's own metrics)."""

    name = "cloud"  # type: ignore[assignment]  # IResourceProvider.name; Service types it None
    STATUS_SCHEMA = {
        "type": "object",
        "properties": {"provider": {"type": ["string", "null"]}, "region": {"type": ["string", "null"]},
                       "instance_id": {"type": ["string", "null"]}},
        "required": ["provider", "region", "instance_id"],
        "additionalProperties": False,
    }

    def __init__(self, config, metrics, changed, reactor):
        """config is the cloud section; changed() tells the process table that resources gained the cloud's facts."""
        self.metrics = metrics
        self._changed = changed
        self.reactor = reactor
        self.clouds = [(name, config[name]) for name in CLOUDS if config[name]["enabled"]]
        self.found = {}
        self.detecting = None       # the Deferred of the detection in flight

    def startService(self):
        super().startService()
        if self.clouds:
            self._detect()

    def stopService(self):
        super().stopService()
        if self.detecting is not None:
            self.detecting.cancel()

    def _detect(self):
        import treq.client
        from twisted.web.client import Agent, HTTPConnectionPool

        client = treq.client.HTTPClient(Agent(self.reactor, pool=HTTPConnectionPool(self.reactor, persistent=False)))
        asks = [defer.Deferred.fromCoroutine(DETECTORS[name](client, cfg["endpoint"].rstrip("/"), cfg["timeout"]))
                for name, cfg in self.clouds]
        self.detecting = defer.DeferredList(asks, consumeErrors=True)
        self.detecting.addCallback(self._detected)

    def _detected(self, results):
        self.detecting = None
        if not self.running:
            return
        for (name, _), (ok, value) in zip(self.clouds, results):
            if ok and not self.found:
                self.found = {k: v for k, v in value.items() if v}
                self._changed()
                log.info("cloud: {provider} instance {id} in {region}", provider=name,
                         id=self.found.get("host.id"), region=self.found.get("cloud.region"))
            elif not ok:
                reason = "timeout" if _timed_out(value) else "no_answer"
                self.metrics.discovery_errors.labels(provider=f"cloud.{name}", reason=reason).inc()
                log.info("cloud: no {cloud} metadata at {endpoint}: {error}", cloud=name,
                         endpoint=dict(self.clouds)[name]["endpoint"], error=value.getErrorMessage() or value.type.__name__)

    # -- IResourceProvider ---------------------------------------------------------------------

    def attributes(self, pid, found):
        return self.found

    def status(self):
        return {"provider": self.found.get("cloud.provider"), "region": self.found.get("cloud.region"),
                "instance_id": self.found.get("host.id")}

    def ready_check(self):
        """'disabled' with no cloud enabled; 'ok' once detection ended, found or not."""
        if not self.clouds:
            return "disabled"
        if self.detecting is not None:
            return f"failed: asking {', '.join(name for name, _ in self.clouds)} instance metadata"
        return "ok"
