#!/usr/bin/env python3
"""Side-by-side produce benchmark: sidelog vs NATS JetStream (Debian's
nats-server, file storage) and etcd (Debian's etcd-server), same client,
same load.

All are driven by `sidelog perf produce`: `--mode stream` against sidelog
(one ProduceStream, --inflight records awaiting their offsets),
`--mode jetstream` against NATS (one connection, --inflight publishes
awaiting their JetStream acks) and `--mode etcd` against etcd (one
connection, --inflight concurrent KV Put calls; etcd has no streaming
write). Rounds alternate (JetStream, etcd, sidelog, JetStream, ...) and
medians are reported, so all see the same machine.

  one node:    one nats-server (-js), one etcd  vs one agent (fsync always)
  three nodes: three clustered nats-servers (R3), three etcd members
               vs three agents; sidelog at the leader and through a
               follower (forwarding); etcd at its leader

Extra sidelog figures: leader fsyncs per record (its /metrics) and bytes
written to disk per payload byte on the leader and a follower
(/proc/PID/io write_bytes).

Usage: scripts/bench-compare.py [--bin BIN] [--nodes 1|3|both] [--records N]
           [--size B] [--inflight W] [--rounds R] [--no-etcd]
JetStream 2.9 does not fsync each write (sync_interval defaults to 2 min);
etcd and sidelog acknowledge after fdatasync on a quorum.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_ports(n):
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


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat (1-based); after the
    # command name they are at 11 and 12 (0-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def wait_port(port, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout} s")


def perf(binary, addr, mode, a, extra=()):
    out = subprocess.run([
        binary, "perf", "produce", "--addr", addr, "--mode", mode, "--records", str(a.records),
        "--size", str(a.size), "--inflight", str(a.inflight), *extra,
    ], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"perf {mode} against {addr} failed: {out.stderr.strip()[-500:]}")
    rate = float(re.search(r"([\d.]+) records/s", out.stdout).group(1))
    lat = re.search(r"p50 ([\d.]+)\s+p99 ([\d.]+)", out.stdout)
    return rate, float(lat.group(1)), float(lat.group(2))


class Procs:
    def __init__(self, tmp):
        self.tmp, self.procs = tmp, []

    def start(self, name, args):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        # Write back what the stopped servers left dirty (JetStream does not
        # fsync; etcd's database is written back lazily), so that the next
        # one's fsyncs do not pay for it.
        os.sync()


def start_nats(procs, tmp, n, tag):
    ports = free_ports(2 * n)
    client = ports[:n]
    routes = ports[n:]
    for i in range(n):
        args = ["nats-server", "-a", "127.0.0.1", "-p", str(client[i]), "-js",
                "-sd", os.path.join(tmp, f"nats-{tag}-{i}"), "-n", f"n{tag}{i}"]
        if n > 1:
            others = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(n) if j != i)
            args += ["--cluster_name", f"bench{tag}", "--cluster", f"nats://127.0.0.1:{routes[i]}",
                     "--routes", others]
        procs.start(f"nats-{tag}-{i}", args)
    for p in client:
        wait_port(p, "nats-server")
    return client


def start_etcd(procs, tmp, n, tag):
    ports = free_ports(2 * n)
    client, peer = ports[:n], ports[n:]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{peer[i]}" for i in range(n))
    for i in range(n):
        procs.start(f"etcd-{tag}-{i}", [
            "etcd", "--name", f"e{i}", "--data-dir", os.path.join(tmp, f"etcd-{tag}-{i}"),
            "--listen-client-urls", f"http://127.0.0.1:{client[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"bench{tag}", "--logger", "zap", "--log-level", "warn"])
    for p in client:
        wait_port(p, "etcd")
    # Writable once a leader exists: retry one Put until it succeeds.
    deadline = time.time() + 30
    while subprocess.run(["etcdctl", "--endpoints", f"127.0.0.1:{client[0]}", "put", "warmup", "x"],
                         capture_output=True).returncode != 0:
        if time.time() > deadline:
            sys.exit("etcd: no leader within 30 s")
        time.sleep(0.1)
    # The leader's client port first, as sidelog is driven at its leader.
    eps = ",".join(f"127.0.0.1:{c}" for c in client)
    out = subprocess.run(["etcdctl", "--endpoints", eps, "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True).stdout
    lead = None
    for st in json.loads(out or "[]"):
        if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
            lead = int(st["Endpoint"].rsplit(":", 1)[1])
    if lead is None:
        sys.exit(f"etcd: no leader among {eps} (etcdctl endpoint status said {out!r})")
    client.remove(lead)
    client.insert(0, lead)
    return client


def start_sidelog(procs, binary, tmp, n, tag):
    p = free_ports(3 * n)
    nodes = [tuple(p[i * 3:i * 3 + 3]) for i in range(n)]
    join = ",".join(f"127.0.0.1:{peer}" for _, peer, _ in nodes)
    handles = []
    for i, (client, peer, http) in enumerate(nodes):
        args = [binary, "agent", "--node-id", f"node-{i}", "--data-dir", os.path.join(tmp, f"sl-{tag}-{i}"),
                "--client-addr", f"127.0.0.1:{client}", "--peer-addr", f"127.0.0.1:{peer}",
                "--http-addr", f"127.0.0.1:{http}", "--log-level", "warn"]
        if n > 1:
            args += ["--join", join, "--bootstrap-expect", str(n)]
        handles.append(procs.start(f"sidelog-{tag}-{i}", args))
    deadline = time.time() + 30
    leader = None
    while leader is None:
        if time.time() > deadline:
            sys.exit("sidelog: no leader within 30 s")
        for i, (client, _, _) in enumerate(nodes):
            out = subprocess.run([binary, "cluster", "status", "--addr", f"127.0.0.1:{client}"],
                                 capture_output=True, text=True).stdout
            if f"node-{i} (leader)" in out:
                leader = i
        time.sleep(0.1)
    # Every node ready (a member that knows the leader).
    for _, _, http in nodes:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2)
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit("sidelog: nodes not ready within 30 s")
                time.sleep(0.05)
    return nodes, handles, leader


def fmt(rows):
    rate = statistics.median(r[0] for r in rows)
    p50 = statistics.median(r[1] for r in rows)
    p99 = statistics.median(r[2] for r in rows)
    return rate, f"{rate:>10.0f} records/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"


def compare(a, n):
    tmp = tempfile.mkdtemp(prefix="sidelog-compare-")
    procs = Procs(tmp)
    try:
        js, ed, sl, fw = [], [], [], []
        fsyncs = writes_leader = writes_follower = 0.0
        for r in range(a.rounds):
            nats = start_nats(procs, tmp, n, f"{n}r{r}")
            js.append(perf(a.bin, f"nats://127.0.0.1:{nats[0]}", "jetstream", a,
                           ["--nats-replicas", str(n), "--nats-stream", f"bench{r}"]))
            procs.stop()
            if a.etcd:
                etcd = start_etcd(procs, tmp, n, f"{n}r{r}")
                ed.append(perf(a.bin, f"127.0.0.1:{etcd[0]}", "etcd", a, ["--etcd-prefix", f"bench{r}"]))
                procs.stop()
            nodes, handles, leader = start_sidelog(procs, a.bin, tmp, n, f"{n}r{r}")
            client, _, http = nodes[leader]
            follower = next((i for i in range(n) if i != leader), None)
            f0, wl0 = metric(http, "sidelog_fsyncs_total"), write_bytes(handles[leader].pid)
            wf0 = write_bytes(handles[follower].pid) if follower is not None else 0
            sl.append(perf(a.bin, f"127.0.0.1:{client}", "stream", a))
            f1, wl1 = metric(http, "sidelog_fsyncs_total"), write_bytes(handles[leader].pid)
            wf1 = write_bytes(handles[follower].pid) if follower is not None else 0
            payload = a.records * a.size
            fsyncs += (f1 - f0) / a.records / a.rounds
            writes_leader += (wl1 - wl0) / payload / a.rounds
            writes_follower += (wf1 - wf0) / payload / a.rounds
            if follower is not None:
                fw.append(perf(a.bin, f"127.0.0.1:{nodes[follower][0]}", "stream", a))
            procs.stop()
        label = "one node" if n == 1 else "three nodes"
        js_rate, js_line = fmt(js)
        sl_rate, sl_line = fmt(sl)
        print(f"\n== {label}: {a.records} records of {a.size} B, {a.inflight} in flight, "
              f"median of {a.rounds} round(s) ==")
        print(f"{'JetStream R3:' if n > 1 else 'JetStream:':<22}{js_line}")
        if ed:
            ed_rate, ed_line = fmt(ed)
            print(f"{'etcd (3 members):' if n > 1 else 'etcd:':<22}{ed_line}")
        vs_etcd = f", {sl_rate / ed_rate:.2f}x etcd" if ed else ""
        print(f"sidelog (leader):     {sl_line}   ratio {sl_rate / js_rate:.2f}x JetStream{vs_etcd}")
        if fw:
            fw_rate, fw_line = fmt(fw)
            print(f"sidelog (follower):   {fw_line}   ratio {fw_rate / sl_rate:.2f}x the leader's")
        print(f"sidelog leader fsyncs per record: {fsyncs:.4f}; bytes written per payload byte: "
              f"leader {writes_leader:.3f}" + (f", follower {writes_follower:.3f}" if fw else ""))
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/sidelog")
    ap.add_argument("--nodes", default="both", choices=["1", "3", "both"])
    ap.add_argument("--records", type=int, default=300000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-etcd", dest="etcd", action="store_false", help="skip etcd")
    a = ap.parse_args()
    if not shutil.which("nats-server"):
        sys.exit("nats-server not found: apt-get install -y nats-server")
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: cargo build --release (or pass --bin)")
    if a.etcd and not (shutil.which("etcd") and shutil.which("etcdctl")):
        sys.exit("etcd not found: apt-get install -y etcd-server etcd-client (or pass --no-etcd)")
    for n in ([1, 3] if a.nodes == "both" else [int(a.nodes)]):
        compare(a, n)


if __name__ == "__main__":
    main()
