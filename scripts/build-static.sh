#!/usr/bin/env bash
# Build the static release binary for the container image:
#   target/x86_64-unknown-linux-musl/release/sidelog
#
# Installs what it needs when missing (idempotent): the rustup musl target and
# Debian's musl-tools (musl-gcc, the C compiler ring needs for this target;
# .cargo/config.toml sets CC_x86_64_unknown_linux_musl=musl-gcc), and `file`
# for the final check. Extra arguments are passed on to `cargo build`.
#
# Fails (exit 1) if the build fails, the result is not statically linked, or
# it is over the binary budget (8 MiB; BINARY_BUDGET_BYTES overrides it).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TARGET=x86_64-unknown-linux-musl
BIN="target/$TARGET/release/sidelog"

# --- toolchain --------------------------------------------------------------
have cargo  || die "cargo not found (install Rust with rustup)"
have rustup || die "rustup not found: it is needed to add the $TARGET target"
if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "adding rustup target $TARGET"
    rustup target add "$TARGET" >&2 || die "rustup target add $TARGET failed"
fi
if ! have musl-gcc; then
    apt_install musl-tools
    have musl-gcc || die "musl-gcc still missing after installing musl-tools"
fi
have file || apt_install file

# --- build ------------------------------------------------------------------
log "cargo build --release --locked --target $TARGET -j2 --bin sidelog${*:+ $*}"
cargo build --release --locked --target "$TARGET" -j2 --bin sidelog "$@" \
    || die "release build for $TARGET failed"
[ -x "$BIN" ] || die "build succeeded but $BIN is missing"

# --- check ------------------------------------------------------------------
# `file` says "statically linked" for a classic static binary and
# "static-pie linked" for a static PIE (what Rust's musl target makes);
# anything "dynamically linked" (with an interpreter) would not run FROM scratch.
desc="$(file -b "$BIN")"
case "$desc" in
    *"dynamically linked"*|*"interpreter"*)
        die "$BIN is not statically linked: $desc" ;;
    *"statically linked"*|*"static-pie linked"*)
        ;;
    *)
        die "cannot tell whether $BIN is statically linked: $desc" ;;
esac

size=$(stat -c %s "$BIN")
mib=$(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }')
# The binary budget (issue 22): what a sidecar may cost in every pod.
# BINARY_BUDGET_BYTES lowers or raises it (e.g. to see this check fail).
budget="${BINARY_BUDGET_BYTES:-8388608}"
budget_mib=$(awk -v b="$budget" 'BEGIN { printf "%.2f", b / 1048576 }')
if [ "$size" -gt "$budget" ]; then
    die "$BIN is $size bytes ($mib MiB), over the budget of $budget bytes ($budget_mib MiB)"
fi
log "static binary OK: $desc"
echo "$BIN"
echo "size: $size bytes ($mib MiB), budget $budget_mib MiB"
