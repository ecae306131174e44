#!/usr/bin/env bash
# What the .deb's compression costs: build (dpkg-deb -b) and unpack (dpkg-deb -x, what an install
# pays) of the same package tree with xz (Debian's default, the baseline), zstd (what debian/rules
# uses) and gzip. Usage: bash bench/deb/compression.sh [path/to/telegen_*.deb]
# Without an argument it builds one first with scripts/build-deb.sh. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d "${TMPDIR:-/tmp}/telegen-debbench.XXXXXX")
trap 'rm -rf "$work"' EXIT
deb=${1:-$(bash scripts/build-deb.sh "$work/dist" | tail -n 1)}
dpkg-deb -R "$deb" "$work/tree"
tree_mb=$(du -sm "$work/tree" | cut -f1)

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

echo "package tree: ${tree_mb} MB; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| compressor | build s | unpack s | size MB | build vs xz | size vs xz |"
echo "|---|---|---|---|---|---|"
for z in xz zstd gzip; do
  out="$work/t-$z.deb"
  b=$(seconds dpkg-deb "-Z$z" --build "$work/tree" "$out")
  rm -rf "$work/x"
  u=$(seconds dpkg-deb -x "$out" "$work/x")
  size=$(stat -c %s "$out")
  if [ "$z" = xz ]; then xb=$b; xs=$size; fi
  printf '| %s | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n' "$z" "$b" "$u" "$(echo "$size/1048576" | bc -l)" \
    "$(echo "$b/$xb" | bc -l)" "$(echo "$size/$xs" | bc -l)"
done
