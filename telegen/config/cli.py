"""
`telegen validate [--config FILE] [--show]`: check a config file the way the agent would load it.

Exit 0 with "Configuration is valid: FILE" (and, with --show, the effective config after
environment overrides and defaults, secrets redacted, as YAML); exit 2 with the one-line
ConfigError on stderr when it is not valid (2 is the original Telegen's "config" exit code).
"""
import argparse
import sys

import yaml

from telegen.config.errors import ConfigError
from telegen.config.loader import load_config
from telegen.config.redact import redact
from telegen.paths import default_config_file

EXIT_INVALID = 2


def _parser():
    parser = argparse.ArgumentParser(prog="telegen validate", description="Validate a Telegen configuration file.")
    parser.add_argument("--config", "-c", default=None, metavar="FILE",
                        help="the file to check (default: the shipped etc/telegen/config.yaml)")
    parser.add_argument("--show", action="store_true", help="also print the effective config, secrets redacted")
    return parser


def validate_main(argv, environ=None):
    """Run `telegen validate` with argv (the arguments after `validate`); return the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage error
        return exit_.code if isinstance(exit_.code, int) else EXIT_INVALID
    path = args.config or default_config_file()
    try:
        config = load_config(path, environ)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_INVALID
    print(f"Configuration is valid: {path}")
    if args.show:
        sys.stdout.write(yaml.safe_dump(redact(config), sort_keys=False, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(validate_main(sys.argv[1:]))
