#!/usr/bin/env bash
# Build the sidelog container image (FROM scratch, the static binary alone).
#
#   scripts/build-image.sh                 # builds the binary, then sidelog:dev
#   IMAGE=sidelog:1.2 scripts/build-image.sh
#   SKIP_BUILD=1 scripts/build-image.sh    # reuse an existing static binary
#
# Engine: podman if it works (through scripts/podman.sh, which adds the flags
# this sandbox needs), else docker if `docker info` works. Podman is installed
# from Debian when neither works. With no working engine: exit 3.
# CONTAINER_ENGINE=podman|docker forces the choice.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

IMAGE="${IMAGE:-sidelog:dev}"
BIN="target/x86_64-unknown-linux-musl/release/sidelog"

# --- engine (checked before the slow build, so a missing engine fails fast) --
if ! ENGINE="$(container_engine)"; then
    echo "[$(basename "$0")] ERROR: no working container engine: podman is missing or fails" \
         "(scripts/podman.sh info), and docker has no reachable daemon (docker info)." >&2
    exit 3
fi
export ENGINE
log "container engine: $ENGINE"

# --- binary -----------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" = 1 ] && [ -x "$BIN" ]; then
    log "SKIP_BUILD=1: reusing $BIN"
else
    [ "${SKIP_BUILD:-0}" = 1 ] && log "SKIP_BUILD=1 but $BIN is missing: building it"
    "$REPO_ROOT/scripts/build-static.sh"
fi

# --- build context: Dockerfile + binary + empty data/ -------------------------
ctx="$(mktemp -d "${TMPDIR:-/tmp}/sidelog-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp Dockerfile "$ctx/Dockerfile"
cp "$BIN" "$ctx/sidelog"
mkdir "$ctx/data"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
log "building image $IMAGE (version ${version:-unknown})"
engine build --build-arg "VERSION=${version:-dev}" -t "$IMAGE" -f "$ctx/Dockerfile" "$ctx" >&2 \
    || die "$ENGINE build failed"

size="$(engine image inspect --format '{{.Size}}' "$IMAGE")"
mib=$(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "image: $IMAGE"
echo "image size: $size bytes ($mib MiB)"
