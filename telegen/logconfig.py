"""
The agent's log output: level filter and text or JSON lines on stdout (journald reads either).

twistd asks the Application for an ILogObserver before it falls back to its own, so the agent
installs this one there (telegen.tap) and the config decides format and level.
"""
import json
import sys
import time

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


class JsonLinesObserver:
    """One JSON object per line: time, level, namespace, message (and the failure's traceback)."""

    def __init__(self, stream):
        self._stream = stream

    def __call__(self, event):
        level = event.get("log_level")
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", time.time()))) + "Z",
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getTraceback()
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()


def make_observer(config, stream=None):
    """The observer the config asks for: text or json, filtered at telegen.log_level."""
    stream = stream or sys.stdout
    settings = config["telegen"]
    base = JsonLinesObserver(stream) if settings["log_format"] == "json" else textFileLogObserver(stream)
    return FilteringLogObserver(base, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[settings["log_level"]])])
