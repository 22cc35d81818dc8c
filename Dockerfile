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

# Listen on all interfaces inside the container (the binary's defaults are
# loopback-only, which would be unreachable from outside the container).
# SIDELOG_INSECURE=true lets the agent serve plaintext on non-loopback
# addresses, which it otherwise refuses. That is for local use and tests only:
# in production give the TLS flags (--tls-cert/--tls-key/--tls-ca and the
# --peer-tls-* ones, or their SIDELOG_* variables) and set
# SIDELOG_INSECURE=false; the Helm chart does so.
# SIDELOG_NODE_ID is deliberately not set: it defaults to the hostname, which
# is the pod name in a StatefulSet.
ENV SIDELOG_CLIENT_ADDR=0.0.0.0:8400 \
    SIDELOG_HTTP_ADDR=0.0.0.0:8080 \
    SIDELOG_PEER_ADDR=0.0.0.0:8401 \
    SIDELOG_DATA_DIR=/data \
    SIDELOG_INSECURE=true \
    SIDELOG_LOG_FORMAT=json

# 8400 client gRPC (Log API, grpc.health.v1, reflection)
# 8401 peer gRPC (Raft, join/leave, write forwarding; mutual TLS when configured)
# 8080 HTTP (JSON API, /metrics, /healthz, /readyz)
EXPOSE 8400 8401 8080
VOLUME /data
WORKDIR /data

# Distroless-style "nonroot" uid/gid; matches runAsUser/fsGroup in the chart.
USER 65532:65532

# SIGTERM makes the agent stop accepting, finish in-flight requests, fsync
# and exit 0. No HEALTHCHECK: there is no probe binary in the image;
# Kubernetes uses its native gRPC probe against grpc.health.v1 on 8400.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/sidelog", "agent"]
