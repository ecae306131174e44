#!/usr/bin/env python3
"""
Regenerate the key reference in docs/configuration.md from telegen/config/schema.py.

Usage: .venv/bin/python scripts/config_docs.py [--check]
--check exits 1 when the doc is stale instead of writing it (tests/unit/test_config_docs.py does
the same check).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telegen.config.reference import replace_block  # noqa: E402

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configuration.md")


def main(argv):
    with open(DOC, encoding="utf-8") as handle:
        current = handle.read()
    fresh = replace_block(current)
    if "--check" in argv:
        if fresh != current:
            print(f"{DOC} is stale: run scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as handle:
        handle.write(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
