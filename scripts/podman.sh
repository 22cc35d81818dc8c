#!/usr/bin/env bash
# podman with the flags that make it work in this sandbox (and on a normal
# Debian 12 host as root, where they are harmless). Use it exactly like podman:
#   scripts/podman.sh build -t sidelog:dev CONTEXT
#   scripts/podman.sh run --rm sidelog:dev --help
#
# What was found by trying (Debian 12, podman 4.3.1, runc 1.1.5, as root, in a
# VM with cgroup v1 and no systemd):
#   * `podman build` of a FROM scratch image (COPY only, no RUN) works with the
#     defaults: overlay storage driver, netavark networking.
#   * `podman run` fails with
#       error setting rlimits for ready process: error setting rlimit type 7:
#       operation not permitted
#     because rootful podman raises RLIMIT_NOFILE (type 7) above the sandbox's
#     hard limit, and `--ulimit host` does not help. An empty default_ulimits
#     list in containers.conf fixes it: containers inherit the caller's limits.
#     podman 4.3 has no CONTAINERS_CONF_OVERRIDE, so we point CONTAINERS_CONF at
#     a file of our own (it then replaces the system containers.conf; Debian's
#     ships everything commented out, so nothing else changes).
#   * There is no systemd and no journald: cgroupfs and file events. podman
#     detects both, but we say so explicitly so a host with a different
#     default behaves the same.
#   * runc is the runtime Debian's podman uses here (crun is not installed).
#   * Networking: both `--network host` and the default bridge with
#     `-p 127.0.0.1:HOST:CONTAINER` work.
# Override with PODMAN_GLOBAL_FLAGS="..." (replaces the flags below) or
# SIDELOG_CONTAINERS_CONF=PATH (where the containers.conf is written).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v podman >/dev/null 2>&1 || {
    echo "[podman.sh] ERROR: podman is not installed (Debian: apt-get install -y podman runc)" >&2
    exit 127
}

conf="${SIDELOG_CONTAINERS_CONF:-$REPO_ROOT/target/containers.conf}"
# netavark is named explicitly: podman 4.3 otherwise keeps CNI on a host that
# already has images, and CNI networks here answer no DNS for aliases.
want=$'[containers]\ndefault_ulimits = []\n\n[network]\nnetwork_backend = "netavark"\n'
# Write the file only when it is missing or different (idempotent).
if [ ! -f "$conf" ] || [ "$(cat "$conf")"$'\n' != "$want" ]; then
    mkdir -p "$(dirname "$conf")"
    printf '%s' "$want" > "$conf"
fi
export CONTAINERS_CONF="$conf"

# shellcheck disable=SC2206 # word splitting of the override is intended
flags=(${PODMAN_GLOBAL_FLAGS:---runtime runc --cgroup-manager cgroupfs --events-backend file})

exec podman "${flags[@]}" "$@"
