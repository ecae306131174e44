"""
The API's routes, shapes and cross-cutting rules (auth, rate limit, CORS, errors), in memory:
StubTreq drives the real Site and gate over a MemoryReactorClock, with fake children.
"""
import copy
import json
import os

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from telegen.api.app import ROUTES, listen_endpoint, make_site
from telegen.api.gate import Gate, is_loopback
from telegen.config import ConfigError, defaults
from tests.support.fakes import make_agent


def settings(**changes):
    """A default config with some self_telemetry keys changed."""
    config = defaults()
    for dotted, value in changes.items():
        node = config["self_telemetry"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


class ApiTestCase(SynchronousTestCase):
    """Base: an agent with fake children and a StubTreq client bound to its site."""

    config = None

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.agent = make_agent(self.reactor, config=copy.deepcopy(self.config) if self.config else None)
        self.site = make_site(self.agent)
        self.client = StubTreq(self.site.resource)
        # StubTreq builds its own Site: give it ours so the body cap applies.
        self.client._agent._serverFactory.requestFactory = self.site.requestFactory

    def call(self, method, path, headers=None, data=None):
        """Make a request; return (response, body bytes)."""
        response = self.successResultOf(self.client.request(method, "http://127.0.0.1" + path, headers=headers, data=data))
        body = self.successResultOf(response.content())
        return response, body

    def get_json(self, path, headers=None, expect=200):
        response, body = self.call("GET", path, headers)
        self.assertEqual(response.code, expect, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response, json.loads(body)

    def assertErrorDocument(self, body, error):
        document = json.loads(body)
        self.assertEqual(set(document) >= {"error", "message", "details"}, True, document)
        self.assertEqual(document["error"], error)
        self.assertIsInstance(document["message"], str)
        self.assertIsInstance(document["details"], dict)


class RouteShapeTests(ApiTestCase):
    """Every route answers its documented shape from live state."""

    def test_healthz(self):
        _, document = self.get_json("/healthz")
        self.assertEqual(document, {"status": "ok"})

    def test_healthz_while_stopping_is_503(self):
        self.agent.stopping = True
        response, body = self.call("GET", "/healthz")
        self.assertEqual(response.code, 503)
        self.assertErrorDocument(body, "service_unavailable")

    def test_ready_reports_each_check(self):
        _, document = self.get_json("/ready")
        self.assertEqual(document, {"status": "ready", "checks": {"ebpf": "disabled", "otlp": "ok", "discovery": "ok"}})

    def test_ready_not_ready_names_the_failing_check(self):
        self.agent.child("export").check = "failed: connection refused"
        _, document = self.get_json("/ready", expect=503)
        self.assertEqual(document["status"], "not_ready")
        self.assertEqual(document["checks"]["otlp"], "failed: connection refused")
        self.assertEqual(document["error"], "service_unavailable")
        self.assertEqual(document["details"], {"otlp": "failed: connection refused"})

    def test_metrics_is_prometheus_text(self):
        response, body = self.call("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        for family in ("telegen_process_resident_memory_bytes", "telegen_spans_collected_total",
                       "telegen_queue_dropped_total", "telegen_export_queue_size"):
            self.assertIn(family, text)

    def test_status_values_are_real(self):
        self.reactor.advance(0)
        _, document = self.get_json("/status")
        from telegen import __version__

        self.assertEqual(document["version"], __version__)
        self.assertEqual(document["host"]["kernel"], os.uname().release)
        self.assertEqual(document["host"]["os"], "linux")
        self.assertRegex(document["uptime"], r"^(\d+h)?(\d+m)?\d+s$")
        self.assertEqual(document["mode"], "agent")
        self.assertEqual(document["ebpf"], {"enabled": False, "programs_loaded": 0, "maps_created": 0, "ringbuf_size": 16777216})
        self.assertEqual(document["export"]["endpoint"], "collector.example:4317")
        self.assertEqual(document["discovery"], {"kubernetes": False, "docker": False, "pods_discovered": 0, "containers_discovered": 0})

    def test_status_export_counts_follow_the_pipeline(self):
        export = self.agent.child("export")
        export.submit("traces", {}, [1, 2, 3])
        _, before = self.get_json("/status/export")
        self.assertEqual(before["queues"]["traces"]["size"], 3)
        self.successResultOf(self.agent.flush())
        _, after = self.get_json("/status/export")
        self.assertEqual(after["queues"]["traces"], {"size": 0, "capacity": 10000, "exported": 3, "dropped": 0})
        _, status = self.get_json("/status")
        self.assertEqual(status["export"]["spans_exported"], 3)

    def test_status_ebpf_when_off(self):
        _, document = self.get_json("/status/ebpf")
        self.assertEqual(document, {"enabled": False, "programs": [], "maps": [],
                                    "ringbuf": {"size": 16777216, "events_received": 0, "events_lost": 0}})

    def test_status_discovery(self):
        _, document = self.get_json("/status/discovery")
        self.assertEqual(document["discovered_services"], [{"name": "nginx", "namespace": None, "instances": 2, "ports": [80]}])
        self.assertEqual(document["kubernetes"]["enabled"], False)
        self.assertEqual(document["cloud"], {"provider": None, "region": None, "instance_id": None})

    def test_api_v1_prefix_serves_the_same(self):
        for path in ("/healthz", "/ready", "/status/ebpf", "/config", "/status/discovery"):
            _, plain = self.get_json(path)
            _, versioned = self.get_json("/api/v1" + path)
            self.assertEqual(plain, versioned, path)

    def test_flush_answers_counts(self):
        self.agent.child("export").submit("metrics", {}, [1, 2])
        response, body = self.call("POST", "/admin/flush")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"status": "ok", "flushed": {"traces": 0, "metrics": 2, "logs": 0, "profiles": 0}})


class ErrorFormatTests(ApiTestCase):
    """Unknown paths, wrong methods: the standard error document."""

    def test_unknown_path_is_404_json(self):
        response, body = self.call("GET", "/nope")
        self.assertEqual(response.code, 404)
        self.assertErrorDocument(body, "not_found")

    def test_wrong_method_is_405_with_allow(self):
        response, body = self.call("GET", "/admin/reload")
        self.assertEqual(response.code, 405)
        self.assertIn("POST", response.headers.getRawHeaders("allow")[0])
        self.assertErrorDocument(body, "method_not_allowed")
        response, body = self.call("DELETE", "/status")
        self.assertEqual(response.code, 405)
        self.assertIn("GET", response.headers.getRawHeaders("allow")[0])

    def test_debug_off_is_404(self):
        response, body = self.call("GET", "/debug/vars")
        self.assertEqual(response.code, 404)
        self.assertErrorDocument(body, "not_found")

    def test_body_cap(self):
        response, body = self.call("POST", "/admin/flush", data=b"x" * 70000)
        self.assertEqual(response.code, 413)
        self.assertErrorDocument(body, "payload_too_large")


class AuthTests(ApiTestCase):
    """Bearer auth: constant-time compare, 401 with WWW-Authenticate, probes exempt."""

    config = settings(auth__enabled=True, auth__bearer_token="s3cret-token")

    def test_missing_token(self):
        response, body = self.call("GET", "/status")
        self.assertEqual(response.code, 401)
        self.assertTrue(response.headers.getRawHeaders("www-authenticate")[0].startswith("Bearer"))
        self.assertErrorDocument(body, "unauthorized")

    def test_wrong_token(self):
        response, _ = self.call("GET", "/status", headers={"Authorization": "Bearer nope"})
        self.assertEqual(response.code, 401)

    def test_right_token(self):
        self.get_json("/status", headers={"Authorization": "Bearer s3cret-token"})
        self.get_json("/api/v1/status/export", headers={"Authorization": "Bearer s3cret-token"})

    def test_probes_are_exempt(self):
        self.get_json("/healthz")
        self.get_json("/ready")

    def test_probes_need_the_token_when_not_exempt(self):
        self.agent.config["self_telemetry"]["auth"]["exempt_probes"] = False
        self.client = StubTreq(make_site(self.agent).resource)
        response, _ = self.call("GET", "/healthz")
        self.assertEqual(response.code, 401)

    def test_token_never_in_config(self):
        _, body = self.call("GET", "/config", headers={"Authorization": "Bearer s3cret-token"})
        self.assertNotIn(b"s3cret-token", body)
        self.assertEqual(json.loads(body)["self_telemetry"]["auth"]["bearer_token"], "[REDACTED]")


class AdminLoopbackTests(SynchronousTestCase):
    """With auth off, /admin/* answers only loopback clients."""

    def render(self, client_host, path):
        agent = make_agent(MemoryReactorClock())
        gate = Gate(make_site(agent).resource._inner, agent.config["self_telemetry"], agent.metrics, agent.reactor, ROUTES)
        request = DummyRequest([part.encode() for part in path.lstrip("/").split("/")])
        request.method = b"POST"
        from twisted.internet.address import IPv4Address

        request.client = IPv4Address("TCP", client_host, 5555)
        return request, gate.render(request)

    def test_remote_admin_is_forbidden(self):
        request, body = self.render("10.1.2.3", "/admin/reload")
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(json.loads(body)["error"], "forbidden")

    def test_is_loopback(self):
        self.assertTrue(is_loopback("127.0.0.1"))
        self.assertTrue(is_loopback("127.8.0.1"))
        self.assertTrue(is_loopback("::1"))
        self.assertTrue(is_loopback("::ffff:127.0.0.1"))
        self.assertFalse(is_loopback("10.0.0.1"))
        self.assertFalse(is_loopback("not-an-ip"))


class RateLimitTests(ApiTestCase):
    """A token bucket: over the limit, 429 with Retry-After: 1; tokens come back with time."""

    config = settings(rate_limit__enabled=True, rate_limit__requests_per_second=5.0)

    def test_limit(self):
        codes = [self.call("GET", "/status")[0].code for _ in range(5)]
        self.assertEqual(codes, [200] * 5)
        response, body = self.call("GET", "/status")
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertErrorDocument(body, "rate_limited")
        self.reactor.advance(1.0)
        self.assertEqual(self.call("GET", "/status")[0].code, 200)

    def test_probes_are_not_limited(self):
        for _ in range(20):
            self.assertEqual(self.call("GET", "/healthz")[0].code, 200)


class CorsTests(ApiTestCase):
    """Only listed origins get CORS headers; preflight answers 204 with methods and headers."""

    config = settings(cors__enabled=True, cors__allowed_origins=["http://localhost:3000"])

    def test_listed_origin(self):
        response, _ = self.call("GET", "/status", headers={"Origin": "http://localhost:3000"})
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["http://localhost:3000"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Origin"])

    def test_other_origin(self):
        response, _ = self.call("GET", "/status", headers={"Origin": "http://evil.example"})
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))

    def test_preflight(self):
        response, body = self.call("OPTIONS", "/admin/flush", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        self.assertEqual(response.code, 204)
        self.assertIn("POST", response.headers.getRawHeaders("access-control-allow-methods")[0])
        self.assertIn("Authorization", response.headers.getRawHeaders("access-control-allow-headers")[0])

    def test_preflight_from_other_origin_is_refused(self):
        response, body = self.call("OPTIONS", "/status", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
        self.assertEqual(response.code, 403)
        self.assertErrorDocument(body, "forbidden")


class ReloadTests(SynchronousTestCase):
    """POST /admin/reload applies a valid file and keeps the running config on a bad one."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.next = None
        self.agent = make_agent(self.reactor, loader=self.load)
        self.agent.startService()
        self.client = StubTreq(make_site(self.agent).resource)

    def load(self, path):
        if isinstance(self.next, Exception):
            return defer.fail(self.next)
        return defer.succeed(self.next)

    def post(self):
        response = self.successResultOf(self.client.post("http://127.0.0.1/admin/reload"))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_valid_config_rebuilds_changed_children_only(self):
        old_export = self.agent.child("export")
        old_processes = self.agent.child("processes")
        self.next = copy.deepcopy(self.agent.config)
        self.next["otlp"]["endpoint"] = "collector:4317"
        code, document = self.post()
        self.assertEqual(code, 200)
        self.assertEqual(document, {"status": "ok", "message": "Configuration reloaded", "reloaded": ["export"],
                                    "rebuilt": ["export"], "reconfigured": []})
        self.assertIsNot(self.agent.child("export"), old_export)
        self.assertFalse(old_export.running)
        self.assertTrue(self.agent.child("export").running)
        self.assertEqual(self.agent.child("export").config_seen["otlp"]["endpoint"], "collector:4317")
        self.assertIs(self.agent.child("processes"), old_processes)
        self.assertEqual([s.name for s in self.agent], ["processes", "export"])

    def test_invalid_config_is_400_and_keeps_running_config(self):
        before = copy.deepcopy(self.agent.config)
        export = self.agent.child("export")
        self.next = ConfigError("/etc/telegen/config.yaml", "otlp.protocol", "must be one of grpc, http")
        code, document = self.post()
        self.assertEqual(code, 400)
        self.assertEqual(document["error"], "invalid_request")
        self.assertIn("otlp.protocol", document["details"]["error"])
        self.assertEqual(self.agent.config, before)
        self.assertIs(self.agent.child("export"), export)
        self.assertTrue(export.running)


class ListenTests(SynchronousTestCase):
    """The listen setting becomes the right endpoint string."""

    def test_forms(self):
        self.assertEqual(listen_endpoint(":19090"), "tcp:19090")
        self.assertEqual(listen_endpoint("127.0.0.1:19090"), "tcp:19090:interface=127.0.0.1")
        self.assertEqual(listen_endpoint("[::1]:19090"), "tcp6:19090:interface=\\:\\:1")


class ApiReconfigureTests(SynchronousTestCase):
    """The api child applies auth, rate limit, CORS and the body cap in place; a new listen address rebuilds it."""

    def test_auth_turned_on_in_place_and_listen_change_refused(self):
        from telegen.api.app import ApiService
        from telegen.components import SPECS

        [spec] = [s for s in SPECS if s.name == "api"]
        agent = make_agent(MemoryReactorClock())
        service = ApiService(agent, spec.slice(defaults()))
        client = StubTreq(service.factory.resource)
        answer = self.successResultOf(client.get("http://127.0.0.1/status"))
        self.assertEqual(answer.code, 200)
        secured = settings(auth__enabled=True, auth__bearer_token="s3cret-token")
        self.assertTrue(service.reconfigure(spec.slice(secured)))
        client = StubTreq(service.factory.resource)
        self.assertEqual(self.successResultOf(client.get("http://127.0.0.1/status")).code, 401)
        self.assertFalse(service.reconfigure(spec.slice(settings(listen="127.0.0.1:19191"))))
