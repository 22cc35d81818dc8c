# sidelog container image: the static binary alone, FROM scratch.
#
# Build it with scripts/build-image.sh, not `docker build .` from the repo
# root: that script builds target/x86_64-unknown-linux-musl/release/sidelog
# (scripts/build-static.sh) and assembles a small build context holding
#   Dockerfile   this file
#   sidelog      the static musl binary
#   data/        an empty directory, to become /data owned by the runtime user
# A scratch image has no shell and no mkdir, so /data cannot be created with
# RUN; copying an empty directory with --chown gives the non-root user a
# writable data directory (and a VOLUME seeded with the right owner).
# There is no builder stage on purpose: no base image can be pulled here, and
# the binary is built on the host by cargo.
FROM scratch

ARG VERSION=dev
LABEL org.opencontainers.image.title="sidelog" \
      org.opencontainers.image.description="A crash-safe, replicated commit log that runs beside applications as a sidecar" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

COPY --chown=65532:65532 data /data
COPY sidelog /sidelog

# Safe defaults (see "Threat model" in the README): no port is open to the
# network without credentials. The binary's defaults are loopback-only,
# which is exactly a sidecar: the application in the same pod reaches 8400
# and 8080 on localhost, and nothing outside the pod reaches anything. There
# is no SIDELOG_INSECURE here: it would serve the log and the peer port to
# the whole network unauthenticated. To listen on the pod IP, give
# credentials and the addresses, e.g.
#   SIDELOG_TLS_CERT/_KEY/_CA          client and HTTP ports (mutual TLS + ACL)
#   SIDELOG_PEER_TLS_CERT/_KEY/_CA     peer port: a certificate from the peer CA
#   SIDELOG_PEER_ALLOWED_NAMES           with an allowed name, and/or
#   SIDELOG_CLUSTER_SECRET_FILE        a shared secret every peer call carries
#   SIDELOG_CLIENT_ADDR=0.0.0.0:8400 SIDELOG_HTTP_ADDR=0.0.0.0:8080 SIDELOG_PEER_ADDR=0.0.0.0:8401
# Probes: SIDELOG_HEALTH_ADDR=0.0.0.0:8402 (--health-addr, what the chart
# sets) adds a plaintext health-only listener: gRPC health ("",
# sidelog.started, sidelog.live) and /healthz, /readyz, /metrics, no data
# API, no --insecure needed. kubelet's native gRPC probe (plaintext only)
# reaches it on the pod IP whatever the data ports do, so a loopback-only
# sidecar is probed there too. Without it: with TLS, httpGet scheme HTTPS on
# 8080 (/healthz, /readyz; no client certificate needed).
# SIDELOG_NODE_ID is deliberately not set: it defaults to the hostname, which
# is the pod name in a StatefulSet.
ENV SIDELOG_DATA_DIR=/data \
    SIDELOG_LOG_FORMAT=json

# 8400 client gRPC (Log API, grpc.health.v1, reflection)
# 8401 peer gRPC (Raft, join/leave, write forwarding; peers only: peer certificate or cluster secret)
# 8080 HTTP (JSON API, /metrics, /healthz, /readyz)
# (8402, the chart's --health-addr, is not opened by default)
EXPOSE 8400 8401 8080
VOLUME /data
WORKDIR /data

# Distroless-style "nonroot" uid/gid; matches runAsUser/fsGroup in the chart.
USER 65532:65532

# SIGTERM makes the agent stop accepting, leave the membership, finish
# in-flight requests and stop Raft within --shutdown-grace (Raft may overrun
# it by a second), then fsync and exit 0. A fatal storage or Raft error fails
# liveness and exits 1 after --fatal-exit-delay. No HEALTHCHECK: there is
# no probe binary in the image.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/sidelog", "agent"]
