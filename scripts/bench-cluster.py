#!/usr/bin/env python3
"""Benchmark a local 3-node cluster: 100-byte records, 256 in flight, fsync
always (the default). Starts three agents from BIN on loopback with
--bootstrap-expect 3, waits until the cluster has a leader, runs
`sidelog perf produce` against the leader's client port, and reports:

  records/s and p50/p99 latency (from `sidelog perf`),
  fsyncs per record on the leader (its /metrics, before and after),
  bytes written to disk per payload byte on the leader (/proc/PID/io
  write_bytes, before and after, divided by records x size).

Usage: scripts/bench-cluster.py [BIN] [--records N] [--mode stream|unary]
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_ports(n):
    """n distinct free ports (all held open while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def metric(http, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def status(binary, addr):
    out = subprocess.run([binary, "cluster", "status", "--addr", addr], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else ""



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin", nargs="?", default="target/x86_64-unknown-linux-musl/release/sidelog")
    ap.add_argument("--records", type=int, default=300000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--mode", default="stream")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sidelog-bench-")
    p = free_ports(9)
    ports = [tuple(p[i * 3:i * 3 + 3]) for i in range(3)]
    join = ",".join(f"127.0.0.1:{p[1]}" for p in ports)
    procs = []
    try:
        for i, (client, peer, http) in enumerate(ports):
            log = open(os.path.join(tmp, f"node-{i}.log"), "wb")
            procs.append(subprocess.Popen([
                a.bin, "agent", "--node-id", f"node-{i}", "--data-dir", os.path.join(tmp, f"data-{i}"),
                "--client-addr", f"127.0.0.1:{client}", "--peer-addr", f"127.0.0.1:{peer}",
                "--http-addr", f"127.0.0.1:{http}", "--join", join, "--bootstrap-expect", "3",
                "--log-level", "warn",
            ], stdout=log, stderr=subprocess.STDOUT))
        leader = None
        deadline = time.time() + 30
        while leader is None and time.time() < deadline:
            for i, (client, _, _) in enumerate(ports):
                s = status(a.bin, f"127.0.0.1:{client}")
                if f"node:      node-{i} (leader)" in s:
                    leader = i
            time.sleep(0.2)
        if leader is None:
            sys.exit("no leader within 30 s")
        client, _, http = ports[leader]
        pid = procs[leader].pid
        print(f"leader node-{leader}: client {client}, http {http}", flush=True)
        f0, w0 = metric(http, "sidelog_fsyncs_total"), write_bytes(pid)
        out = subprocess.run([
            a.bin, "perf", "produce", "--addr", f"127.0.0.1:{client}", "--mode", a.mode,
            "--records", str(a.records), "--size", str(a.size), "--inflight", str(a.inflight),
        ], capture_output=True, text=True)
        print(out.stdout, end="")
        if out.returncode != 0:
            sys.exit(f"perf failed: {out.stderr}")
        f1, w1 = metric(http, "sidelog_fsyncs_total"), write_bytes(pid)
        payload = a.records * a.size
        print(f"leader fsyncs per record: {(f1 - f0) / a.records:.4f} ({int(f1 - f0)} fsyncs)")
        print(f"leader bytes written per payload byte: {(w1 - w0) / payload:.3f} ({w1 - w0} B for {payload} B)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
