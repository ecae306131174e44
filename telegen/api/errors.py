"""
The standard error format of every non-2xx answer: {"error", "message", "details"}.

Handlers raise ApiError; the one error handler in telegen.api.app renders it, adding the
headers it carries (Allow for 405, WWW-Authenticate for 401, Retry-After for 429).
"""

ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    429: "rate_limited",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An HTTP error answer with the standard JSON body."""

    def __init__(self, status, message, details=None, error=None, headers=None):
        super().__init__(message)
        self.status = status
        self.error = error or ERROR_CODES.get(status, "internal_error")
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self):
        """The JSON-ready error document."""
        return {"error": self.error, "message": self.message, "details": self.details}
