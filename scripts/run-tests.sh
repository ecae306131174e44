#!/usr/bin/env bash
# Run the whole suite. pytest's own summary line ends the output; a run that collects nothing fails
# (pytest exits 5 then, and so does this script).
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest tests "$@"
