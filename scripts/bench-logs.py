#!/usr/bin/env python3
"""Named logs (issue 19), measured side by side in one run:

  one    one log: produce throughput of this build against --old (another
         build), single node, alternating rounds;
  many   3 nodes, 8 producer processes: all on one log, or each on its own
         log (8 logs, leaders spread); aggregate records/s and who leads;
  idle   3 nodes with 100 idle logs: CPU (% of one core) and RSS per node
         over --idle-secs, and a restarted node's time to ready;
  churn  3 nodes: 1,000 logs created and deleted; time, and what is left
         on disk under logs/ on every node.

    scripts/bench-logs.py --bin target/release/sidelog --old target/bench-old/sidelog all
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_compare", os.path.join(HERE, "bench-compare.py"))
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http(method, port, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def create_logs(nodes, names):
    for name in names:
        code, body = http("POST", nodes[0][2], "/v1/logs", {"name": name})
        if code != 201:
            sys.exit(f"creating {name}: {code} {body}")


def wait_ready(http_port, deadline):
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2)
            return
        except Exception:
            if time.time() > deadline:
                sys.exit(f"node on {http_port} not ready in time")
            time.sleep(0.02)


def bench_one(a):
    """One log, this build against the old one, single node."""
    results = {"new": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-one-") as tmp:
        for r in range(a.rounds):
            for tag, binary in (("old", a.old), ("new", a.bin)):
                procs = bc.Procs(tmp)
                try:
                    nodes, _, leader = bc.start_sidelog(procs, binary, tmp, 1, f"{tag}{r}")
                    rate, _, _ = bc.perf(binary, f"127.0.0.1:{nodes[leader][0]}", "stream", a)
                    results[tag].append(rate)
                    print(f"round {r} {tag}: {rate:.0f} records/s", flush=True)
                finally:
                    procs.stop()
    new, old = statistics.median(results["new"]), statistics.median(results["old"])
    print(f"one log, single node, stream, {a.records} x {a.size} B, {a.inflight} in flight, fsync always")
    print(f"  this build: {new:.0f} records/s (median of {a.rounds})")
    print(f"  old build:  {old:.0f} records/s")
    print(f"  ratio: {new / old:.3f}")


def parallel_perf(binary, addrs, logs, records, a):
    """One perf process per entry of `logs` (log name, '' = default);
    returns the aggregate records/s over the wall time."""
    procs = []
    start = time.time()
    for addr, log in zip(addrs, logs):
        args = [binary, "perf", "produce", "--addr", addr, "--mode", "stream", "--records", str(records),
                "--size", str(a.size), "--inflight", str(a.inflight)]
        if log:
            args += ["--log", log]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"perf failed: {err.strip()[-400:]}")
    return records * len(logs) / (time.time() - start)


def bench_many(a):
    n_logs = 8
    per = a.records // n_logs
    results = {"one": [], "many": []}
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-many-") as tmp:
        for r in range(a.rounds):
            for kind in ("one", "many"):
                procs = bc.Procs(tmp)
                try:
                    nodes, _, _ = bc.start_sidelog(procs, a.bin, tmp, 3, f"{kind}{r}")
                    addrs = ",".join(f"127.0.0.1:{c}" for c, _, _ in nodes)
                    if kind == "one":
                        logs = [""] * n_logs
                    else:
                        logs = [f"log{i}" for i in range(n_logs)]
                        create_logs(nodes, logs)
                        for _, _, h in nodes:
                            wait_ready(h, time.time() + 30)
                    rate = parallel_perf(a.bin, [addrs] * n_logs, logs, per, a)
                    results[kind].append(rate)
                    leaders = ""
                    if kind == "many":
                        _, body = http("GET", nodes[0][2], "/v1/logs")
                        led = {}
                        for l in json.loads(body)["logs"]:
                            if l["name"] != "default":
                                led[l["leader"]] = led.get(l["leader"], 0) + 1
                        leaders = f"  leaders: {dict(sorted(led.items()))}"
                    print(f"round {r} {kind}: {rate:.0f} records/s{leaders}", flush=True)
                finally:
                    procs.stop()
    one, many = statistics.median(results["one"]), statistics.median(results["many"])
    print(f"3 nodes, {n_logs} producer processes (stream, {a.inflight} in flight each), {a.records} x {a.size} B")
    print(f"  all on one log:     {one:.0f} records/s (median of {a.rounds})")
    print(f"  each on its own log: {many:.0f} records/s")
    print(f"  ratio: {many / one:.2f}")


def bench_idle(a):
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-idle-") as tmp:
        procs = bc.Procs(tmp)
        try:
            nodes, handles, _ = bc.start_sidelog(procs, a.bin, tmp, 3, "idle")
            names = [f"idle{i}" for i in range(100)]
            t = time.time()
            create_logs(nodes, names)
            print(f"created 100 logs in {time.time() - t:.1f} s")
            for _, _, h in nodes:
                wait_ready(h, time.time() + 60)
            time.sleep(5)
            before = [bc.cpu_seconds(h.pid) for h in handles]
            time.sleep(a.idle_secs)
            cpu = [(bc.cpu_seconds(h.pid) - b) / a.idle_secs * 100 for h, b in zip(handles, before)]
            rss = [rss_mib(h.pid) for h in handles]
            print(f"100 idle logs on 3 nodes, over {a.idle_secs} s:")
            for i in range(3):
                print(f"  node-{i}: CPU {cpu[i]:.1f} % of one core, RSS {rss[i]:.1f} MiB")
            # Restart node 2 (SIGTERM, same data dir) and time it to ready.
            h = handles[2]
            h.terminate()
            h.wait(timeout=30)
            client, peer, hp = nodes[2]
            join = ",".join(f"127.0.0.1:{p}" for _, p, _ in nodes)
            t = time.time()
            procs.start("idle-restart", [
                a.bin, "agent", "--node-id", "node-2", "--data-dir", os.path.join(tmp, "sl-idle-2"),
                "--client-addr", f"127.0.0.1:{client}", "--peer-addr", f"127.0.0.1:{peer}",
                "--http-addr", f"127.0.0.1:{hp}", "--log-level", "warn", "--join", join, "--bootstrap-expect", "3"])
            wait_ready(hp, time.time() + 120)
            print(f"  node-2 restarted with 100 logs: ready after {time.time() - t:.2f} s")
        finally:
            procs.stop()


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def bench_churn(a):
    with tempfile.TemporaryDirectory(prefix="sidelog-bench-churn-") as tmp:
        procs = bc.Procs(tmp)
        try:
            nodes, _, _ = bc.start_sidelog(procs, a.bin, tmp, 3, "churn")
            before = [du(os.path.join(tmp, f"sl-churn-{i}")) for i in range(3)]
            t = time.time()
            errors = 0
            for i in range(a.churn):
                name = f"churn{i}"
                code, body = http("POST", nodes[i % 3][2], "/v1/logs", {"name": name})
                if code != 201:
                    errors += 1
                    print(f"create {name}: {code} {body}", file=sys.stderr)
                code, body = http("DELETE", nodes[(i + 1) % 3][2], f"/v1/logs/{name}")
                if code != 200:
                    errors += 1
                    print(f"delete {name}: {code} {body}", file=sys.stderr)
            took = time.time() - t
            # Every node applies the deletes; wait for their directories to go.
            deadline = time.time() + 60
            left = None
            while time.time() < deadline:
                left = [os.listdir(os.path.join(tmp, f"sl-churn-{i}", "logs"))
                        if os.path.isdir(os.path.join(tmp, f"sl-churn-{i}", "logs")) else [] for i in range(3)]
                if not any(left):
                    break
                time.sleep(0.2)
            after = [du(os.path.join(tmp, f"sl-churn-{i}")) for i in range(3)]
            print(f"{a.churn} logs created and deleted on 3 nodes: {took:.1f} s "
                  f"({a.churn * 2 / took:.0f} catalog changes/s), {errors} errors")
            for i in range(3):
                print(f"  node-{i}: log dirs left {len(left[i])}, data dir {before[i] / 1024:.0f} KiB before, "
                      f"{after[i] / 1024:.0f} KiB after")
        finally:
            procs.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["one", "many", "idle", "churn", "all"])
    ap.add_argument("--bin", default="target/release/sidelog")
    ap.add_argument("--old", help="the build to compare with (one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--idle-secs", type=int, default=30)
    ap.add_argument("--churn", type=int, default=1000)
    a = ap.parse_args()
    if a.what in ("one", "all"):
        if not a.old:
            sys.exit("one: --old BIN is required")
        bench_one(a)
    if a.what in ("many", "all"):
        bench_many(a)
    if a.what in ("idle", "all"):
        bench_idle(a)
    if a.what in ("churn", "all"):
        bench_churn(a)


if __name__ == "__main__":
    main()
