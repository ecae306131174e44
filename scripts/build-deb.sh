#!/usr/bin/env bash
# Build telegen_<version>_<arch>.deb (`make deb`) into OUTDIR (default dist/) and print its path.
#
# dpkg-buildpackage writes into the source tree (debian/telegen, debian/.build) and its parent
# directory, so it runs on an export of the checkout in a temporary directory: the checkout, its
# .venv and the folder above it stay untouched, and two builds can run at once. The export is what
# git would commit now (tracked and untracked files, minus ignored ones such as .venv).
# Needs: dpkg-dev, debhelper, python3-venv, and PyPI reachable (the wheels are fetched here, at
# build time, never at install time).
set -euo pipefail
cd "$(dirname "$0")/.."
outdir=$(realpath -m "${1:-dist}")

work=$(mktemp -d "${TMPDIR:-/tmp}/telegen-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/telegen"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$src"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
(cd "$src" && TELEGEN_COMMIT="$commit" dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log above)" >&2
  exit 1
}
mkdir -p "$outdir"
for deb in "$work"/telegen_*.deb; do
  cp "$deb" "$outdir/"
  echo "$outdir/$(basename "$deb")"
done
