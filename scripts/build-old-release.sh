#!/usr/bin/env bash
# Builds the first release's binary (tag v0.1.0) for the upgrade tests:
#   target/old-release/sidelog
# from a detached worktree of the tag (its commit when tags were not
# cloned), with this checkout's target/ as the target dir, so only the
# sidelog crate itself compiles (the dependencies are shared). Run it
# before building this version: it leaves the old binary in
# target/debug/sidelog until the next build replaces it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TAG=v0.1.0
OUT="$REPO_ROOT/target/old-release"
SRC="$REPO_ROOT/target/old-release-src"

ref="$TAG"
if ! git rev-parse -q --verify "$TAG^{commit}" >/dev/null; then
    # A clone without tags: the release's commit, by its subject.
    ref="$(git log --format=%H --grep='^tests/cluster: one produce_at helper' -n 1)"
    [ -n "$ref" ] || die "neither tag $TAG nor its commit is in this clone"
fi
want="$(git rev-parse "$ref^{commit}")"
if [ -x "$OUT/sidelog" ] && [ "$(cat "$OUT/commit" 2>/dev/null)" = "$want" ]; then
    log "first release already built: $OUT/sidelog ($want)"
    echo "$OUT/sidelog"
    exit 0
fi
git worktree remove --force "$SRC" >/dev/null 2>&1 || rm -rf "$SRC"
git worktree prune
git worktree add --detach "$SRC" "$want" >/dev/null
log "building the first release ($TAG, $want)"
(cd "$SRC" && CARGO_TARGET_DIR="$REPO_ROOT/target" cargo build --locked -j2 --bin sidelog) \
    || die "building $TAG failed"
mkdir -p "$OUT"
cp "$REPO_ROOT/target/debug/sidelog" "$OUT/sidelog"
echo "$want" > "$OUT/commit"
git worktree remove --force "$SRC" >/dev/null 2>&1 || true
"$OUT/sidelog" --version >&2
echo "$OUT/sidelog"
