"""
The OTLP retry rules (opentelemetry-proto specification, "Failures") and the exponential backoff
of the Collector's exporterhelper (initial, max, multiplier, randomization factor, max elapsed).

Why a separate module: both senders reduce their transport's answer to one Outcome, and the
pipeline decides what to do with it here, so gRPC and HTTP cannot drift apart.
"""
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Optional

SUCCESS = "success"
RETRYABLE = "retryable"
PERMANENT = "permanent"

# gRPC status codes the spec lists as retryable; RESOURCE_EXHAUSTED only with RetryInfo.
RETRYABLE_GRPC = frozenset(("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"))
RETRYABLE_HTTP = frozenset((429, 502, 503, 504))


@dataclass
class Outcome:
    """
    One export attempt's result.

    kind: SUCCESS (maybe with `rejected` items from partial_success), RETRYABLE or PERMANENT.
    status: the protocol status for telegen_export_requests_total ("200", "UNAVAILABLE", or
    "unreachable" when no answer came back). reached: the server answered at all.
    error: a short reason without secrets (None on success). retry_after: the server's hint in
    seconds (Retry-After or RetryInfo), None if none was given.
    """

    kind: str
    status: str
    reached: bool
    error: Optional[str] = None
    error_type: Optional[str] = None
    rejected: int = 0
    message: str = ""
    retry_after: Optional[float] = None


def grpc_outcome(code_name, has_retry_info, retry_after, error, error_type, reached):
    """Classify a failed gRPC call by its status code name."""
    retryable = code_name in RETRYABLE_GRPC or (code_name == "RESOURCE_EXHAUSTED" and has_retry_info)
    return Outcome(RETRYABLE if retryable else PERMANENT, code_name, reached, error, error_type,
                   retry_after=retry_after)


def http_outcome(code, retry_after, error):
    """Classify a non-2xx HTTP answer by its status code."""
    kind = RETRYABLE if code in RETRYABLE_HTTP else PERMANENT
    return Outcome(kind, str(code), True, error, f"http_{code}", retry_after=retry_after)


def parse_retry_after(value, now=None):
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Backoff:
    """
    Delays for one batch: initial * multiplier**n capped at max, randomized by +-jitter, and the
    give-up rule: a retry that would start after max_elapsed from the first attempt is not made.
    A server hint (Retry-After, RetryInfo) replaces the computed delay for that attempt.
    """

    def __init__(self, config, rng=None):
        self.initial = config["initial"]
        self.max = config["max"]
        self.multiplier = config["multiplier"]
        self.jitter = config["jitter"]
        self.max_elapsed = config["max_elapsed"]
        self._rng = rng or random.Random()

    def delay(self, attempt, hint=None):
        """The wait before retry number `attempt` (0 for the first retry)."""
        if hint is not None:
            return hint
        base = min(self.max, self.initial * self.multiplier ** attempt)
        spread = self.jitter * base
        return base - spread + self._rng.random() * 2 * spread

    def gives_up(self, elapsed, delay):
        """True when waiting `delay` more would pass max_elapsed since the first attempt."""
        return elapsed + delay > self.max_elapsed
