"""
What every request passes before a route sees it: the /api/v1 prefix, the rate limit, CORS, bearer
auth, the loopback rule for /admin, and the body cap. One place, so no route can forget a check.
"""
import hmac
import ipaddress
import json

from twisted.web.resource import Resource
from twisted.web.server import Request

from telegen.api.errors import ApiError

API_PREFIX = (b"api", b"v1")
PROBES = ("/healthz", "/ready")
CORS_ALLOWED_HEADERS = "Authorization, Content-Type"


def write_error(request, error):
    """Render an ApiError as the standard JSON body, with the headers it carries."""
    request.setResponseCode(error.status)
    for name, value in error.headers.items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(error.body()).encode()


class TokenBucket:
    """A token bucket on an injectable clock: rate tokens per second, at most burst saved up."""

    def __init__(self, rate, burst, clock):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock.seconds()

    def take(self):
        """Take a token if there is one; True when the request may go on."""
        now = self._clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class CappedRequest(Request):
    """A Request that stops buffering a body past max_body_bytes and remembers it was too large."""

    max_body_bytes = 65536

    def gotLength(self, length):
        self.body_too_large = length is not None and length > self.max_body_bytes
        self._body_seen = 0
        super().gotLength(None if self.body_too_large else length)

    def handleContentChunk(self, data):
        self._body_seen += len(data)
        if self._body_seen > self.max_body_bytes:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def route_label(path, routes):
    """The route a path belongs to: itself when known, its mounted prefix (/debug/), else None."""
    if path in routes:
        return path
    for known in routes:
        if known.endswith("/") and path.startswith(known):
            return known
    return None


def route_path(request):
    """The request path without the /api/v1 prefix, as text (for checks and metric labels)."""
    segments = list(request.postpath)
    if tuple(segments[:2]) == API_PREFIX:
        segments = segments[2:]
    return "/" + "/".join(s.decode("utf-8", "replace") for s in segments)


class Gate(Resource):
    """
    The root resource: applies the checks, then hands the request to the Klein resource.

    routes maps a path (or a mounted prefix ending in /) to its methods: preflight answers use them,
    and they are the only metric labels, so unknown paths cannot blow up the label set.
    """

    isLeaf = True

    def __init__(self, inner, settings, metrics, clock, routes):
        super().__init__()
        self._inner = inner
        self._settings = settings
        self._metrics = metrics
        self._routes = routes
        rate = settings["rate_limit"]
        self._bucket = None
        if rate["enabled"]:
            burst = rate["burst"] or max(1, int(rate["requests_per_second"]))
            self._bucket = TokenBucket(rate["requests_per_second"], burst, clock)

    def render(self, request):
        path = route_path(request)
        label = route_label(path, self._routes) or "unknown"
        request.notifyFinish().addBoth(
            lambda _: self._metrics.api_requests.labels(route=label, code=str(request.code)).inc())
        if tuple(request.postpath[:2]) == API_PREFIX:
            request.prepath.extend(request.postpath[:2])
            request.postpath = request.postpath[2:]
        try:
            preflight = self._check(request, path)
        except ApiError as error:
            return write_error(request, error)
        if preflight is not None:
            return preflight
        return self._inner.render(request)

    def _check(self, request, path):
        """Raise ApiError to refuse; return bytes to answer here (preflight); None to go on."""
        if self._bucket is not None and path not in PROBES and not self._bucket.take():
            raise ApiError(429, "rate limit exceeded", {"requests_per_second": self._settings["rate_limit"]["requests_per_second"]},
                           headers={"Retry-After": "1"})
        self._apply_cors(request)
        if request.method == b"OPTIONS":
            return self._preflight(request, path)
        self._check_auth(request, path)
        if getattr(request, "body_too_large", False):
            raise ApiError(413, "request body too large", {"max_body_bytes": self._settings["max_body_bytes"]})
        return None

    def _apply_cors(self, request):
        cors = self._settings["cors"]
        origin = request.getHeader("origin")
        if not cors["enabled"] or origin is None:
            return
        request.setHeader(b"vary", b"Origin")
        if origin in cors["allowed_origins"]:
            request.setHeader("access-control-allow-origin", origin)

    def _preflight(self, request, path):
        label = route_label(path, self._routes)
        if label is None:
            raise ApiError(404, f"no such endpoint: {path}", {"path": path})
        allow = ", ".join(sorted(set(self._routes[label]) | {"OPTIONS"}))
        request.setHeader(b"allow", allow.encode())
        if request.getHeader("origin") is not None and request.getHeader("access-control-request-method") is not None:
            if not request.responseHeaders.hasHeader("access-control-allow-origin"):
                raise ApiError(403, "origin not allowed", {"origin": request.getHeader("origin")})
            request.setHeader(b"access-control-allow-methods", allow.encode())
            request.setHeader(b"access-control-allow-headers", CORS_ALLOWED_HEADERS.encode())
            request.setHeader(b"access-control-max-age", b"600")
        request.setResponseCode(204)
        return b""

    def _check_auth(self, request, path):
        auth = self._settings["auth"]
        if auth["enabled"]:
            if path in PROBES and auth["exempt_probes"]:
                return
            header = request.getHeader("authorization") or ""
            scheme, _, token = header.partition(" ")
            expected = (auth["bearer_token"] or "").encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                raise ApiError(401, "missing or invalid bearer token", {},
                               headers={"WWW-Authenticate": 'Bearer realm="telegen"'})
        elif path.startswith("/admin/") and not is_loopback(request.getClientAddress().host):
            raise ApiError(403, "admin endpoints answer only loopback clients while auth is off",
                           {"client": request.getClientAddress().host})
