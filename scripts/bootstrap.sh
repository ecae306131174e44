#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) and the checkout's .venv for running and testing Telegen.
# Idempotent: every step checks first, so a second run takes a couple of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runtime (BCC), tests (nginx, ssh, go tool pprof, systemd-analyze), benchmarks (wrk, h2load), the
# Debian package build (dpkg-dev, debhelper, ca-certificates), the journal and its tools for the log
# tests, gcc for the C programs the profiler tests build, discovery tests (a dockerd they start
# themselves, images built from busybox-static), and the database servers the protocol parsers are
# tested against (postgresql, mariadb-server, redis-server).
APT_PACKAGES=(python3-venv python3-bpfcc bpfcc-tools nginx-light wrk nghttp2-client
              golang-go openssh-client curl make dpkg-dev debhelper ca-certificates systemd
              python3-systemd systemd-journal-remote gcc libc6-dev binutils
              docker.io busybox-static postgresql mariadb-server redis-server)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
  # Prefer headers that match the running kernel; these machines have none, so fall back to
  # Debian's generic headers and link them where BCC looks (DESIGN.md, "eBPF on these machines").
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    missing+=("linux-headers-$kver")
  else
    missing+=(linux-headers-amd64)
  fi
fi
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -e "/lib/modules/$kver/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$hdr" ]; then
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    [ -n "$common" ] && ln -sfn "$common" "/lib/modules/$kver/source"
    echo "bootstrap: linked $hdr as /lib/modules/$kver/build"
  fi
fi

# BCC reads tracepoint formats from tracefs; some machines boot without it mounted.
if [ ! -e /sys/kernel/tracing/events ] && [ -d /sys/kernel/tracing ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi

stamp=.venv/.bootstrap-stamp
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
# twistd only finds plugins on sys.path; rebuild the plugin cache so the first run is quick.
.venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" 2>/dev/null || true
