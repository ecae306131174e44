"""
The twistd plugin: `twistd telegen`.

Every twistd run imports every plugin module, so this one imports nothing heavy (no bcc, grpc or
klein) and names the real code by its dotted path; ServiceMaker resolves it only when used.
"""
from twisted.application.service import ServiceMaker

telegen = ServiceMaker(
    "Telegen",
    "telegen.tap",
    "eBPF host agent: HTTP spans, RED and TCP metrics, host metrics over OTLP, with a REST API",
    "telegen",
)
