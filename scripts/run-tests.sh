#!/usr/bin/env bash
# Run the whole suite: mypy over telegen/ first (an error fails the run; mypy.ini), then pytest.
# pytest's own summary line ends the output; a run that collects nothing fails (pytest exits 5
# then, and so does this script).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m mypy telegen || { echo "mypy found errors in telegen/ (see above)"; exit 1; }
exec .venv/bin/python -m pytest tests "$@"
