#!/usr/bin/env bash
# Reproduces a crash found by the diskfull fault: a node whose disk fills up
# at the moment its segment index needs a new page dies of SIGBUS (no log
# line, exit status 135) instead of reporting the storage error and exiting
# cleanly like every other disk-full case.
#
# Why: the active segment's index (NNN.idx) is a sparse file sized by
# set_len() to its full capacity and written through a writable mmap. A store
# into a page that has no backing block yet needs one from the filesystem; on
# a full filesystem the kernel answers the page fault with SIGBUS (tmpfs,
# ext4, xfs alike). The .log file is written with write(), which gets ENOSPC.
#
# Steps (one node on 127.0.0.1:1840x/1808x, data dir on a 16 MiB tmpfs):
# produce N records, fill the tmpfs, produce one more record. The index holds
# 256 entries (16 bytes) a page; with N = 254 (+ the two entries Raft writes
# at start) the next record is the first one of a new index page, while the
# .log's current page still has room: SIGBUS. Other N: the node keeps serving
# (or, later, stops cleanly with "No space left on device").
#
#   sudo scripts/faults/repro-diskfull-sigbus.sh [--bin PATH] [N...]   # default N: 252..256
# Exit 0 when no N crashed, 1 when one did (the bug is there).
set -uo pipefail
BIN="${SIDELOG_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/sidelog}"
if [ "${1:-}" = --bin ]; then BIN="$2"; shift 2; fi
[ "$(id -u)" -eq 0 ] || { echo "needs root (mount -t tmpfs)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no sidelog binary at $BIN (--bin PATH)" >&2; exit 2; }
NS=("$@"); [ "${#NS[@]}" -gt 0 ] || NS=(252 253 254 255 256)
WORK="$(mktemp -d /tmp/sidelog-sigbus-XXXXXX)"
DISK="$WORK/disk"
PID=
cleanup() {
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    mountpoint -q "$DISK" && umount "$DISK"
}
trap cleanup EXIT
post() { curl -s --noproxy '*' -m 5 -X POST 127.0.0.1:18080 -d '{"record":{"value":"aGVsbG8K"}}'; }
crashed=0
for n in "${NS[@]}"; do
    mkdir -p "$DISK" && mount -t tmpfs -o size=16m tmpfs "$DISK" || exit 2
    "$BIN" agent --data-dir "$DISK/data" --node-id r1 --client-addr 127.0.0.1:18400 \
        --http-addr 127.0.0.1:18080 --peer-addr 127.0.0.1:18401 --fatal-exit-delay 2s \
        >"$WORK/agent-$n.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' 127.0.0.1:18080/readyz)" = 200 ] && break
        sleep 0.2
    done
    for _ in $(seq "$n"); do post >/dev/null; done
    cat /dev/zero >"$DISK/filler" 2>/dev/null
    answer="$(post)"
    sleep 4
    if kill -0 "$PID" 2>/dev/null; then
        echo "N=$n: produce after the disk filled -> ${answer:-no answer}; node still running"
        kill -9 "$PID"; wait "$PID" 2>/dev/null
    else
        wait "$PID"; rc=$?
        if [ "$rc" -gt 128 ]; then
            crashed=1
            echo "N=$n: produce after the disk filled -> ${answer:-no answer}; node KILLED by signal $((rc - 128))$([ $rc = 135 ] && echo ' (SIGBUS)'), last log line: $(tail -1 "$WORK/agent-$n.log" | cut -c1-120)"
        else
            echo "N=$n: produce after the disk filled -> ${answer:-no answer}; node exited with status $rc: $(tail -1 "$WORK/agent-$n.log" | cut -c1-160)"
        fi
    fi
    PID=
    umount "$DISK"
done
echo "logs: $WORK"
exit "$crashed"
