"""Time as the API shows it: RFC 3339 UTC instants and Go-style durations (DESIGN.md)."""
from datetime import datetime, timezone


def rfc3339(epoch_seconds):
    """An epoch time as RFC 3339 UTC with a Z, second precision, or None for None."""
    if epoch_seconds is None:
        return None
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def go_duration(seconds):
    """Format seconds like Go's time.Duration.String(), to whole seconds: 24h15m30s, 5m0s, 7s."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
