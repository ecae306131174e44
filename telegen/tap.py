"""
twistd's entry: `twistd telegen --config PATH`.

A bad config file ends the process here, before anything binds, with one line naming the key and
exit status 2 (twistd's own UsageError path would print the whole help text first).
"""
import os
import sys

from twisted.python import usage

DEFAULT_CONFIG = "/etc/telegen/config.yaml"


class Options(usage.Options):
    """Options of the telegen twistd plugin."""

    synopsis = "[--config PATH]"
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Configuration file (YAML)."],
    ]

    def postOptions(self):
        from telegen.config import ConfigError, load_config

        try:
            self.loaded = load_config(self["config"])
        except ConfigError as err:
            sys.stderr.write(f"telegen: invalid configuration: {err}\n")
            sys.exit(2)


def set_niceness(nice):
    """
    Apply telegen.nice before any thread starts (Linux niceness is per thread; threads inherit it).
    Returns the error text when the kernel refuses (raising priority needs CAP_SYS_NICE), else None.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        return f"cannot set niceness {nice}: {e.strerror}"
    return None


def makeService(options):
    """Build the agent's service tree from the validated config."""
    from twisted.logger import Logger

    from telegen.service import AgentService

    refused = set_niceness(options.loaded["telegen"]["nice"])
    if refused:
        Logger(namespace="telegen.tap").warn("{refused}", refused=refused)

    class TwistdAgent(AgentService):
        """The agent as twistd runs it: it hands twistd the configured log observer."""

        def setServiceParent(self, parent):
            from twisted.logger import ILogObserver

            from telegen.logconfig import make_observer

            super().setServiceParent(parent)
            parent.setComponent(ILogObserver, make_observer(self.config))

    return TwistdAgent(options.loaded, config_path=options["config"], install_signals=True)
