# The Telegen agent image for deploy/kubernetes, built from the Debian package (no checkout inside):
#   make deb && docker build -t telegen:0.1.0 .
# BCC and its libraries come from Debian as the package's dependencies. Kernel headers are not in
# the image (--no-install-recommends skips them): the DaemonSet mounts the node's /lib/modules and
# /usr/src, which match the node's kernel. binutils (a Recommends) is installed by name: its objdump
# finds the RET instructions of Go's crypto/tls functions (docs/ebpf.md, "HTTPS from Go programs").
FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG TARGETARCH=amd64
COPY dist/telegen_${VERSION}_${TARGETARCH}.deb /tmp/telegen.deb
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/telegen.deb binutils \
 && rm -rf /var/lib/apt/lists/* /tmp/telegen.deb

WORKDIR /var/lib/telegen
EXPOSE 19090
# The systemd unit's ExecStart: twistd in the foreground, no pid file, the packaged conffile
# (the DaemonSet mounts its ConfigMap over /etc/telegen).
ENTRYPOINT ["/opt/telegen/venv/bin/twistd", "-n", "--pidfile=", "telegen", "--config", "/etc/telegen/config.yaml"]
