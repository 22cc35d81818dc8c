#!/usr/bin/env python3
"""Write throughput of a large group with few voters, side by side with a
small one (issue 18): N agents with the default `--voters 3` (the others are
non-voters holding full replicas) against 3 agents, in alternating rounds,
fresh data dirs every round. Reports the median records/s of each, their
ratio, and the leader's CPU time per record (utime + stime from /proc).

    scripts/bench-voters.py --bin target/release/sidelog --big 12 --rounds 3
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_compare", os.path.join(HERE, "bench-compare.py"))
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)


def round_of(binary, tmp, n, tag, a):
    procs = bc.Procs(tmp)
    try:
        nodes, handles, leader = bc.start_sidelog(procs, binary, tmp, n, tag)
        pid = handles[leader].pid
        before = bc.cpu_seconds(pid)
        rate, p50, p99 = bc.perf(binary, f"127.0.0.1:{nodes[leader][0]}", "stream", a)
        used = bc.cpu_seconds(pid) - before
        return rate, p50, p99, used / a.records * 1e6
    finally:
        procs.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/sidelog")
    ap.add_argument("--big", type=int, default=12, help="agents in the large group")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=256)
    a = ap.parse_args()
    results = {3: [], a.big: []}
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-voters-") as tmp:
        for r in range(a.rounds):
            for n in (3, a.big):
                rate, p50, p99, cpu = round_of(a.bin, tmp, n, f"r{r}n{n}", a)
                results[n].append((rate, cpu))
                print(f"round {r}: {n:>2} agents  {rate:>9.0f} records/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
                      f"leader CPU {cpu:.2f} us/record", flush=True)
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for n, v in results.items()}
    print(f"\nmedians over {a.rounds} rounds ({a.records} x {a.size} B, {a.inflight} in flight, fsync always):")
    for n, (rate, cpu) in med.items():
        print(f"  {n:>2} agents (3 voters): {rate:>9.0f} records/s, leader CPU {cpu:.2f} us/record")
    print(f"  ratio {a.big}/3: {med[a.big][0] / med[3][0]:.2f}x throughput, "
          f"{med[a.big][1] / med[3][1]:.2f}x leader CPU per record")


if __name__ == "__main__":
    sys.exit(main())
