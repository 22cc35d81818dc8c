#!/usr/bin/env bash
# Long fault-injection runs (issue 14): 100 rounds of kill -9, then 100 rounds
# of partitions (leader isolated, minority cut off, one-way, flapping), each
# checked by check_history.py. Optionally a phase of churn (a voter killed for
# good and replaced by a new, empty node) and a mixed phase of every fault kind.
#
#   sudo scripts/faults/run-long.sh                  # ~30-40 min on 2 cores
#   sudo NODES=3 KILL_ROUNDS=10 PARTITION_ROUNDS=10 scripts/faults/run-long.sh
#   sudo MIXED_ROUNDS=40 scripts/faults/run-long.sh --bin path/to/sidelog
#   sudo NODES=3 KILL_ROUNDS=0 PARTITION_ROUNDS=0 CHURN_ROUNDS=100 scripts/faults/run-long.sh
#
# Environment: NODES (5), KILL_ROUNDS (100), PARTITION_ROUNDS (100),
# CHURN_ROUNDS (0: skipped), MIXED_ROUNDS (0: skipped), FAULT_DURATION (4 s), QUIET (2 s), SEED,
# OUT (/tmp/sidelog-faults-long-<time>). Extra arguments go to harness.py.
# A phase that fails keeps its run directory (history, dumps, node logs)
# under OUT; OUT/<phase>.log is its full output and OUT/summary.txt collects
# the checkers' summaries. Exit 0 only when every phase passed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES="${NODES:-5}"
KILL_ROUNDS="${KILL_ROUNDS:-100}"
PARTITION_ROUNDS="${PARTITION_ROUNDS:-100}"
CHURN_ROUNDS="${CHURN_ROUNDS:-0}"
MIXED_ROUNDS="${MIXED_ROUNDS:-0}"
FAULT_DURATION="${FAULT_DURATION:-4}"
QUIET="${QUIET:-2}"
SEED="${SEED:-$((RANDOM * 7 + 1))}"
OUT="${OUT:-/tmp/sidelog-faults-long-$(date +%Y%m%d-%H%M%S)}"

if [ "$(id -u)" -ne 0 ]; then
    echo "run-long.sh: needs root (network namespaces, iptables, tc, mount): use sudo" >&2
    exit 2
fi
mkdir -p "$OUT"
failed=0

phase() {  # name rounds faults
    local name="$1" rounds="$2" faults="$3"
    shift 3
    [ "$rounds" -gt 0 ] || return 0
    echo "=== $name: $rounds rounds of $faults on $NODES nodes (seed $SEED) ===" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    python3 "$HERE/harness.py" --nodes "$NODES" --rounds "$rounds" --faults "$faults" --order random \
        --fault-duration "$FAULT_DURATION" --quiet "$QUIET" --seed "$SEED" \
        --run-dir "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name.log" |
        sed -n '/== sidelog history check ==/,$p' | tee -a "$OUT/summary.txt"
    local rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || failed=1
}

shift_args=("$@")
phase kill "$KILL_ROUNDS" kill "${shift_args[@]}"
phase partition "$PARTITION_ROUNDS" partition "${shift_args[@]}"
phase churn "$CHURN_ROUNDS" churn "${shift_args[@]}"
phase mixed "$MIXED_ROUNDS" all "${shift_args[@]}"

echo "summaries: $OUT/summary.txt"
exit "$failed"
