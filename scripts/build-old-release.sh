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
COMMIT=25baf55d428e23c6a2f8fa6cf3c598ae6afa42e6
OUT="$REPO_ROOT/target/old-release"
SRC="$REPO_ROOT/target/old-release-src"

# The tag, else its commit (a clone without tags), else fetch the tag (a
# shallow clone).
ref="$TAG"
if ! git rev-parse -q --verify "$TAG^{commit}" >/dev/null; then
    ref="$COMMIT"
    if ! git cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
        git fetch --depth=1 origin tag "$TAG" >&2 || die "neither tag $TAG nor commit $COMMIT is here, and fetching the tag failed"
        ref="$TAG"
    fi
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
# The shared target dir's debug binary is this version's: keep it.
CUR="$REPO_ROOT/target/debug/sidelog"
[ -f "$CUR" ] && cp -p "$CUR" "$CUR.keep"
restore() { if [ -f "$CUR.keep" ]; then mv -f "$CUR.keep" "$CUR"; fi; }
trap restore EXIT
log "building the first release ($TAG, $want)"
(cd "$SRC" && CARGO_TARGET_DIR="$REPO_ROOT/target" cargo build --locked -j2 --bin sidelog) \
    || die "building $TAG failed"
mkdir -p "$OUT"
cp "$CUR" "$OUT/sidelog"
echo "$want" > "$OUT/commit"
git worktree remove --force "$SRC" >/dev/null 2>&1 || true
"$OUT/sidelog" --version >&2
echo "$OUT/sidelog"
