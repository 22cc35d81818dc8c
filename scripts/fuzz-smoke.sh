#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target in fuzz/ for a short time
# over its committed corpus (fuzz/corpus/<target>/) and fails on any crash,
# timeout or out-of-memory. The long runs are described in fuzz/README.md.
#
# It installs what it needs: the nightly toolchain (minimal profile) and
# cargo-fuzz, when missing.
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   space-separated targets (default: all of `cargo fuzz list`)
#   FUZZ_JOBS      cargo build jobs (default 2)
#
# One fuzzing process per target, one target at a time (no -jobs: with it
# libFuzzer forks workers and writes their output to fuzz-N.log files).
# The corpus is not modified: new inputs go to a scratch directory that is
# removed afterwards. A crash leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT/fuzz"

seconds="${FUZZ_SECONDS:-20}"
jobs="${FUZZ_JOBS:-2}"

have rustup || die "rustup not found (https://rustup.rs)"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
start=$SECONDS
log "building: $(echo "$targets" | tr '\n' ' ')"
CARGO_BUILD_JOBS="$jobs" nice -n 10 cargo +nightly fuzz build
log "built in $((SECONDS - start))s"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $targets; do
    mkdir -p "$scratch/$t" "corpus/$t"
    log "running $t for ${seconds}s"
    # New inputs go to the scratch dir (first corpus dir); the committed
    # corpus is only read.
    if ! nice -n 10 cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log" >&2
        failed+=("$t")
        continue
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$scratch/$t.log" >&2 || true
done
log "done in $((SECONDS - start))s"
[ "${#failed[@]}" -eq 0 ] || die "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)"
