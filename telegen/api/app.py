"""
The Klein app of the self-telemetry API and the service that serves it.

Handlers only read live state from the agent (telegen.status) or call its operations (reload,
flush); checks shared by every route live in telegen.api.gate, errors in telegen.api.errors.
"""
import json

from klein import Klein
from zope.interface import implementer
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

from telegen import status as status_docs
from telegen.api.errors import ApiError
from telegen.api.gate import CappedRequest, Gate, write_error
from telegen.config import ConfigError, redact
from telegen.contracts import IChild
from telegen.selfmetrics import CONTENT_TYPE
from telegen.service import ReloadFailed

log = Logger(namespace="telegen.api")

# Every route and its methods: the preflight answers and the metric labels come from here, and the
# OpenAPI test checks the document names exactly these.
ROUTES = {
    "/healthz": ("GET",),
    "/ready": ("GET",),
    "/metrics": ("GET",),
    "/status": ("GET",),
    "/status/ebpf": ("GET",),
    "/status/export": ("GET",),
    "/status/discovery": ("GET",),
    "/config": ("GET",),
    "/admin/reload": ("POST",),
    "/admin/flush": ("POST",),
    "/openapi.json": ("GET",),
    "/debug/": ("GET",),
}


def json_response(request, document, code=200):
    """Serialise a document as the JSON answer."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode()


class TelegenApi:
    """The routes. Each is served at /<path> and /api/v1/<path> (the gate strips the prefix)."""

    app = Klein()

    def __init__(self, agent):
        self.agent = agent

    # -- probes ----------------------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        if self.agent.stopping:
            document = ApiError(503, "agent is shutting down").body()
            document["status"] = "shutting_down"
            return json_response(request, document, 503)
        return json_response(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    def ready(self, request):
        ready, document = status_docs.readiness(self.agent)
        if ready:
            return json_response(request, document)
        failing = {k: v for k, v in document["checks"].items() if v not in status_docs.READY_VALUES}
        # The reference shows the readiness document on 503; the error fields ride along so the
        # answer is also the standard error format.
        document.update(ApiError(503, "not ready: " + ", ".join(sorted(failing)), failing).body())
        return json_response(request, document, 503)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.agent.metrics.render()

    # -- status ----------------------------------------------------------------------------

    @app.route("/status", methods=["GET"])
    def status(self, request):
        return json_response(request, status_docs.agent_status(self.agent))

    @app.route("/status/ebpf", methods=["GET"])
    def status_ebpf(self, request):
        return json_response(request, status_docs.ebpf_status(self.agent))

    @app.route("/status/export", methods=["GET"])
    def status_export(self, request):
        return json_response(request, status_docs.export_status(self.agent))

    @app.route("/status/discovery", methods=["GET"])
    def status_discovery(self, request):
        return json_response(request, status_docs.discovery_status(self.agent))

    @app.route("/config", methods=["GET"])
    def config(self, request):
        return json_response(request, redact(self.agent.config))

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request):
        from telegen.api.openapi import openapi_document

        return json_response(request, openapi_document())

    # -- admin -----------------------------------------------------------------------------

    @app.route("/admin/reload", methods=["POST"])
    def reload(self, request):
        d = self.agent.reload()

        def done(result):
            return json_response(request, {"status": "ok", "message": "Configuration reloaded",
                                           "reloaded": result.changed, "rebuilt": result.rebuilt,
                                           "reconfigured": result.reconfigured})

        def failed(failure):
            if failure.check(ConfigError):
                raise ApiError(400, "invalid configuration; the running configuration is kept",
                               {"error": str(failure.value)})
            if failure.check(ReloadFailed):
                raise ApiError(500, "reload failed; the previous configuration was restored",
                               {"error": str(failure.value)})
            return failure

        return d.addCallbacks(done, failed)

    @app.route("/admin/flush", methods=["POST"])
    def flush(self, request):
        d = self.agent.flush()
        return d.addCallback(lambda flushed: json_response(request, {"status": "ok", "flushed": flushed}))

    # -- debug -----------------------------------------------------------------------------

    @app.route("/debug/", branch=True, methods=["GET"])
    def debug(self, request):
        if not self.agent.config["self_telemetry"]["debug"]["enabled"]:
            raise ApiError(404, "debug endpoints are off (self_telemetry.debug.enabled)", {"path": request.path.decode()})
        from telegen.api.debug import DebugApi

        return DebugApi(self.agent, reactor=self.agent.reactor).app.resource()


def _api_error(_instance, request, failure):
    return write_error(request, failure.value)


def _http_error(_instance, request, failure):
    exc = failure.value
    if isinstance(exc, RequestRedirect):
        error = ApiError(308, f"moved to {exc.new_url}", {"location": exc.new_url},
                         error="permanent_redirect", headers={"Location": exc.new_url})
    elif isinstance(exc, MethodNotAllowed):
        allow = ", ".join(sorted(set(exc.valid_methods or ()) | {"OPTIONS"}))
        error = ApiError(405, f"method {request.method.decode()} not allowed", {"allow": allow},
                         headers={"Allow": allow})
    elif exc.code == 404:
        path = request.path.decode("utf-8", "replace")
        error = ApiError(404, f"no such endpoint: {path}", {"path": path})
    else:
        error = ApiError(exc.code, exc.description or exc.name)
    return write_error(request, error)


def _internal_error(_instance, request, failure):
    log.failure("error serving {path}", failure, path=request.path)
    return write_error(request, ApiError(500, "internal error", {"type": failure.type.__name__}))


def add_error_handling(app):
    """
    Render every failure of a Klein app as the standard error JSON: ApiError as raised, werkzeug's
    routing answers (404, 405 with Allow, 308 with Location), anything else as a logged 500.
    Mounted sub-apps (debug) call this too, since Klein applies only the serving app's handlers.
    """
    app.handle_errors(ApiError)(_api_error)
    app.handle_errors(HTTPException)(_http_error)
    app.handle_errors(Exception)(_internal_error)


add_error_handling(TelegenApi.app)


class ApiSite(Site):
    """A Site whose access log is written only at log_level debug: probes would flood it otherwise."""

    access_log = False

    def log(self, request):
        if self.access_log:
            super().log(request)


def make_site(agent, config=None):
    """The web Site: the gate in front of the Klein resource, with the body cap."""
    site = ApiSite(None)
    configure_site(site, agent, config if config is not None else agent.config)
    site.displayTracebacks = False
    site.noisy = False
    return site


def configure_site(site, agent, config):
    """(Re)apply self_telemetry (all but listen) and the log level to a site, in place."""
    settings = config["self_telemetry"]

    class Request(CappedRequest):
        max_body_bytes = settings["max_body_bytes"]

    site.resource = Gate(TelegenApi(agent).app.resource(), settings, agent.metrics, agent.reactor, ROUTES)
    site.requestFactory = Request
    site.access_log = config["telegen"]["log_level"] == "debug"


def listen_endpoint(listen):
    """Turn the config's listen form (":19090", "host:port", "[v6]:port") into an endpoint string."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host:
        return f"tcp:{port}"
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={host}"


@implementer(IChild)
class ApiService(StreamServerEndpointService):
    """
    The `api` child: the API listener. A bind failure raises at start so twistd exits non-zero.
    Auth, rate limit, CORS, the body cap and the log level change in place; a new listen address
    needs a new socket, so the child is rebuilt for it.
    """

    def __init__(self, agent, config):
        self._agent = agent
        self.listen = config["self_telemetry"]["listen"]
        super().__init__(serverFromString(agent.reactor, listen_endpoint(self.listen)), make_site(agent, config))
        self._raiseSynchronously = True

    def reconfigure(self, config):
        if config["self_telemetry"]["listen"] != self.listen:
            return False
        configure_site(self.factory, self._agent, config)
        return True

    def status(self):
        return {"listen": self.listen, "running": bool(self.running)}

    def ready_check(self):
        return "ok" if self.running else "not ready: not started"


def api_service(agent, config):
    """The `api` child (components.py)."""
    return ApiService(agent, config)
