#!/usr/bin/env python3
"""Two builds of sidelog side by side: `perf produce --mode stream` and
`perf consume` against a fresh group of each (1 or 3 agents), in
alternating rounds, so both see the same machine. Reports medians and the
B/A ratio. Used to decide build settings (issue 22: opt-level "s" vs 3).

    scripts/bench-ab.py --a /tmp/sidelog-o3 --b /tmp/sidelog-os --nodes 1 --rounds 4
"""

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_compare", os.path.join(HERE, "bench-compare.py"))
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)


def consume(binary, addr, records):
    out = subprocess.run([binary, "perf", "consume", "--addr", addr, "--records", str(records)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"perf consume against {addr} failed: {out.stderr.strip()[-500:]}")
    return float(re.search(r"([\d.]+) records/s", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=256)
    a = ap.parse_args()
    res = {"a": ([], []), "b": ([], [])}
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-ab-") as tmp:
        for r in range(a.rounds):
            for key in ("a", "b") if r % 2 == 0 else ("b", "a"):
                binary = getattr(a, key)
                procs = bc.Procs(tmp)
                try:
                    nodes, _, leader = bc.start_sidelog(procs, binary, tmp, a.nodes, f"r{r}{key}")
                    addr = f"127.0.0.1:{nodes[leader][0]}"
                    rate, p50, p99 = bc.perf(binary, addr, "stream", a)
                    crate = consume(binary, addr, a.records)
                finally:
                    procs.stop()
                res[key][0].append(rate)
                res[key][1].append(crate)
                print(f"round {r} {key}: produce {rate:>9.0f}/s (p50 {p50:.3f} ms, p99 {p99:.3f} ms), "
                      f"consume {crate:>10.0f}/s", flush=True)
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in res.items()}
    print(f"\n{a.nodes} node(s), medians of {a.rounds}: "
          f"A produce {med['a'][0]:.0f}/s consume {med['a'][1]:.0f}/s; "
          f"B produce {med['b'][0]:.0f}/s consume {med['b'][1]:.0f}/s; "
          f"B/A produce {med['b'][0] / med['a'][0]:.2f}x, consume {med['b'][1] / med['a'][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
