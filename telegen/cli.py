"""
The `telegen` command: version, validate and status. The agent itself runs as `twistd telegen`.
"""
import argparse
import json
import platform
import sys
import urllib.error
import urllib.request

from telegen import __version__, _build
from telegen.signals.common import goarch

DEFAULT_URL = "http://127.0.0.1:19090"


def version_main(args):
    """telegen version [--json]."""
    info = {
        "version": __version__,
        "commit": _build.COMMIT,
        "built": _build.BUILT,
        "python": platform.python_version(),
        "os": platform.system().lower(),
        "arch": goarch(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"telegen {info['version']} (commit {info['commit']}, built {info['built']}, "
              f"python {info['python']}, {info['os']}/{info['arch']})")
    return 0


def fetch_status(url, token=None, timeout=5.0):
    """GET <url>/status and <url>/ready; raises OSError when the agent cannot be reached."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    documents = {}
    for path in ("/status", "/ready"):
        request = urllib.request.Request(url.rstrip("/") + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                documents[path] = json.load(answer)
        except urllib.error.HTTPError as error:
            if path == "/ready" and error.code == 503:
                documents[path] = json.load(error)
            else:
                raise
    return documents["/status"], documents["/ready"]


def render_status(status, ready):
    """A readable summary of /status and /ready."""
    host, ebpf, export, discovery = status["host"], status["ebpf"], status["export"], status["discovery"]
    lines = [
        f"Telegen {status['version']} (commit {status['commit']}), mode {status['mode']}, up {status['uptime']}",
        f"Host:      {host['name']} {host['os']}/{host['arch']} kernel {host['kernel']}",
        f"Ready:     {ready['status']}" + "".join(f"\n  {k:<10} {v}" for k, v in ready["checks"].items()),
        f"eBPF:      {'on' if ebpf['enabled'] else 'off'}, {ebpf['programs_loaded']} programs, "
        f"{ebpf['maps_created']} maps, ring buffer {ebpf['ringbuf_size']} bytes",
        f"Export:    {export['endpoint'] or '(none)'}, connected {export['connected']}, "
        f"last export {export['last_export'] or 'never'}, spans {export['spans_exported']}, "
        f"metric points {export['metrics_exported']}",
        f"Discovery: kubernetes {discovery['kubernetes']}, docker {discovery['docker']}",
    ]
    return "\n".join(lines)


def status_main(args):
    """telegen status [--url URL] [--token T] [--json]; exit 1 when the agent is down (not when it is only not ready)."""
    try:
        status, ready = fetch_status(args.url, args.token)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        print(f"telegen: agent at {args.url} is not answering: {reason}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"status": status, "ready": ready}, indent=2))
    else:
        print(render_status(status, ready))
    return 0


def validate_cmd(args):
    """telegen validate [--config FILE] [--show]."""
    from telegen.config.cli import validate_main

    argv = ["--config", args.config] + (["--show"] if args.show else [])
    return validate_main(argv)


def build_parser():
    parser = argparse.ArgumentParser(prog="telegen", description="Telegen agent tools. Run the agent with `twistd telegen`.")
    sub = parser.add_subparsers(dest="command", required=True)

    version = sub.add_parser("version", help="print the version")
    version.add_argument("--json", action="store_true", help="one JSON line")
    version.set_defaults(func=version_main)

    validate = sub.add_parser("validate", help="check a configuration file (exit 0 valid, 2 invalid)")
    validate.add_argument("--config", "-c", default="/etc/telegen/config.yaml")
    validate.add_argument("--show", action="store_true", help="also print the effective config, secrets redacted")
    validate.set_defaults(func=validate_cmd)

    status = sub.add_parser("status", help="summarise a running agent's /status and /ready")
    status.add_argument("--url", default=DEFAULT_URL)
    status.add_argument("--token", default=None, help="bearer token when the API has auth on")
    status.add_argument("--json", action="store_true", help="raw documents")
    status.set_defaults(func=status_main)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
