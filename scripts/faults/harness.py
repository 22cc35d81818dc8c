#!/usr/bin/env python3
"""Fault injection for a sidelog cluster of real binaries, one network
namespace per node, with a client history checked at the end.

  sudo scripts/faults/harness.py --ci                       # 3 nodes, 8 rounds of kill -9 / partitions / pause (~2 min)
  sudo scripts/faults/harness.py --nodes 5 --rounds 20 --faults all
  sudo scripts/faults/harness.py --faults churn --rounds 100     # replace a voter 100 times
  sudo scripts/faults/harness.py cleanup                    # remove what a killed harness left behind
                                                            # (a new run also does this itself)

Layout: a bridge slfbr0 (10.77.0.1/24) in the root namespace; node i
(n1..nN) runs in namespace sl-f<i> at 10.77.0.<10+i> behind a veth pair;
clients (threads of this process) reach the nodes through the bridge. Nothing
is sent anywhere else.

Faults (--faults, comma-separated; "partition" = the four partition kinds, "all" = every kind):
  kill                 kill -9 a node (the leader half of the time), restart it
  partition-leader     the leader cut off from every peer (clients still reach it)
  partition-minority   a minority cut off from the majority
  partition-oneway     every peer drops what one node (often the leader) sends
  flap                 partitions that come and go every 0.3-1.5 s
  netem                delay 50±30 ms, 5 % loss, reordering on every node (tc netem);
                       without sch_netem in the kernel: 5 % loss (iptables statistic)
                       and a 2 Mbit/s tbf link instead (no reordering)
  pause                SIGSTOP a node (the leader half of the time), SIGCONT later
  diskfull             the last node's data dir is a tmpfs (--disk-size); fill it, hold,
                       free it, restart the node if it exited: it must serve again
  churn                kill -9 a voter (the leader half of the time) for good: its data dir
                       is deleted and its namespace (so its address) removed; after
                       0.5..--fault-duration s a replacement with a new name (n4, n5, ...),
                       a new namespace and address, and an empty data dir joins the live
                       nodes (--bootstrap-expect 0: as a non-voter). The round ends when the
                       leader's membership is exactly the live nodes with its voters whole,
                       every member heard from, every node ready, and a write acknowledged
                       after that (--churn-timeout, else a problem and no more rounds).
                       The agents run with --dead-member-timeout 5s when churn is selected.
                       Not in --ci (see README). --churn-keep-address leaves the dead host's
                       namespace in place (connections refused rather than timing out).
Clock jumps are not injected: sidelog's timers use the monotonic clock, and
setting the wall clock would change it for the whole machine.

Workload: --producers threads, each sending Produce (70 %) or ProduceBatch of
2-5 records (30 %) to a random node (followers forward to the leader), and
--readers threads doing linearizable reads (ConsumeRequest.linearizable,
served on any node through the leader's read index) of the highest offset
acknowledged before the read starts. Every operation is logged to
RUN_DIR/history.jsonl (see check_history.py for the format); an error after
the request may have reached a node is "info" (unknown outcome).

Named logs (--logs N, default 0: only the default log): once the cluster is
up the harness creates log0..log{N-1} (Cluster/CreateLog, retried until a
leader takes it) and waits until every node serves each of them with a
leader; producer k writes log k % N (at least N producers), readers read the
logs in turn, every operation's history events carry "log", and the check
runs per log (dense offsets from 0, nothing acknowledged lost, duplicated or
misplaced within its log, no record in another log than its own:
wrong_log). The default log is dumped and checked too (nothing writes it).

Every round records its write outage: the longest time without an
acknowledged write from the fault's start until the cluster recovered (with
--logs, also per log, from that log's own acknowledgements).

At the end: heal everything, restart dead nodes, wait until every node has
committed the same offsets, dump every live node's log (ConsumeStream from
its first offset, which must be 0: every node, a churn replacement too, holds
the whole log) to RUN_DIR/dumps/, and run check_history.py. Exit 0 when it
passes; 1 on any violation, unexpected node exit, or a node that does not
recover (RUN_DIR is kept, its path printed); 2 usage; 3 setup failure.
Cleanup (processes, mounts, namespaces, bridge, firewall rules) always runs,
also on Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_BIN = next((p for p in (REPO / "target" / "release" / "sidelog", REPO / "target" / "debug" / "sidelog")
                    if p.is_file()), REPO / "target" / "release" / "sidelog")

NS_PREFIX = "sl-f"
BRIDGE = "slfbr0"
NET = "10.77.0"
BRIDGE_IP = f"{NET}.1"
CLIENT_PORT, PEER_PORT, HTTP_PORT = 8400, 8401, 8080
FWD_COMMENT = "sidelog-faults"
MARKER = ".sidelog-faults-run"
# Held (flock) by a running harness for its whole life. Whoever gets it knows
# no other harness is alive, so anything named like ours is a killed run's.
# In /run (root-only, unlike /run/lock and /tmp), opened without following
# symlinks.
LOCK_FILE = Path("/run/sidelog-faults.lock")
MAX_HOST = 244  # 10.77.0.(10+i) stays below .255: the initial nodes plus churn replacements

PARTITION_KINDS = ["partition-leader", "partition-minority", "partition-oneway", "flap"]
ALL_KINDS = ["kill", *PARTITION_KINDS, "netem", "pause", "diskfull", "churn"]
# --ci: 8 rounds in this order (kill and partition-leader twice), ~2 min.
CI_FAULTS = "kill,partition-leader,partition-minority,partition-oneway,flap,pause"


def venv_python_candidates():
    env = os.environ.get("SIDELOG_FAULTS_PYTHON")
    if env:
        yield Path(env)
    for v in ("e2e-venv", "faults-venv"):
        yield REPO / "target" / v / "bin" / "python"


def ensure_grpc():
    """Re-executes under a venv that has grpcio + grpcio-tools when this
    Python lacks them."""
    import importlib.util
    if importlib.util.find_spec("grpc") and importlib.util.find_spec("grpc_tools"):
        return
    if os.environ.get("_SIDELOG_FAULTS_REEXEC"):
        sys.exit("harness: grpcio / grpcio-tools not importable even in the venv")
    for py in venv_python_candidates():
        if py.is_file() and os.access(py, os.X_OK):
            os.environ["_SIDELOG_FAULTS_REEXEC"] = "1"
            os.execv(str(py), [str(py), __file__, *sys.argv[1:]])
    sys.exit("harness: needs grpcio and grpcio-tools. Create a venv:\n"
             "  python3 -m venv target/e2e-venv && target/e2e-venv/bin/pip install -r tests/e2e/requirements.txt\n"
             "or set SIDELOG_FAULTS_PYTHON to a python that has them")


def die(msg: str, code: int = 3):
    print(f"harness: {msg}", file=sys.stderr)
    sys.exit(code)


def run(cmd, check=True, quiet=False, timeout=30):
    """Runs a command (list); returns CompletedProcess. Raises on failure when check."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    if not quiet and p.returncode != 0 and os.environ.get("SIDELOG_FAULTS_DEBUG"):
        print(f"  [{p.returncode}] {' '.join(cmd)}: {p.stderr.strip()}", file=sys.stderr)
    return p


def nsexec(ns, *cmd, check=True):
    return run(["ip", "netns", "exec", ns, *cmd], check=check)


# --------------------------------------------------------------------------
# Cleanup
# --------------------------------------------------------------------------

class Cleanup:
    """Undo actions, run in reverse order, each one guarded."""

    def __init__(self):
        self.actions = []
        self.done = False
        self.lock = threading.Lock()

    def push(self, what, fn):
        self.actions.append((what, fn))

    def run(self):
        with self.lock:
            if self.done:
                return
            self.done = True
            for what, fn in reversed(self.actions):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - keep cleaning
                    print(f"harness: cleanup: {what}: {e}", file=sys.stderr)


def leftovers():
    """Namespaces, bridge, rules and mounts a previous run left behind (by name)."""
    found = []
    ns = run(["ip", "netns", "list"], check=False).stdout
    found += [ln.split()[0] for ln in ns.splitlines() if ln.startswith(NS_PREFIX)]
    if run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        found.append(BRIDGE)
    if shutil.which("iptables"):
        rules = run(["iptables", "-S", "FORWARD"], check=False).stdout
        found += [f"iptables FORWARD rule ({FWD_COMMENT})" for ln in rules.splitlines() if FWD_COMMENT in ln]
    for m in our_mounts():
        found.append(f"mount {m}")
    return found


def our_mounts():
    out = []
    try:
        with open("/proc/mounts") as f:
            for ln in f:
                parts = ln.split()
                if len(parts) > 2 and parts[2] == "tmpfs" and parts[1].endswith("/disk"):
                    run_dir = Path(parts[1].replace("\\040", " ")).parent.parent
                    if (run_dir / MARKER).exists():
                        out.append(parts[1])
    except OSError:
        pass
    return out


def take_run_lock():
    """Takes the harness lock for the rest of this process (the kernel drops
    it when the process dies, however it dies), or exits if another harness
    holds it."""
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        die(f"cannot open the run lock {LOCK_FILE}: {e}", 2)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        die(f"another harness (pid {holder}) is running: it holds {LOCK_FILE}", 2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd  # kept open: closing it would release the lock


def cleanup_leftovers():
    """Removes everything named like ours: processes in our namespaces, our
    mounts, namespaces, bridge and FORWARD rule."""
    ns_list = [ln.split()[0] for ln in run(["ip", "netns", "list"], check=False).stdout.splitlines()
               if ln.startswith(NS_PREFIX)]
    for ns in ns_list:
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGCONT)
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(0.3)
    for m in our_mounts():
        run(["umount", "-l", m], check=False)
    for ns in ns_list:
        run(["ip", "netns", "del", ns], check=False)
    run(["ip", "link", "del", BRIDGE], check=False)
    if shutil.which("iptables"):
        for ln in run(["iptables", "-S", "FORWARD"], check=False).stdout.splitlines():
            if FWD_COMMENT in ln and ln.startswith("-A "):
                run(["iptables", "-D", *split_rule(ln[3:])], check=False)


def split_rule(s):
    import shlex
    return shlex.split(s)


# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------

class Net:
    def __init__(self, n: int, cleanup: Cleanup):
        self.n = n
        self.cleanup = cleanup
        self.netem = False
        self.hosts: list[int] = []  # host numbers in use (churn adds and removes some)

    @staticmethod
    def ns(i):
        return f"{NS_PREFIX}{i}"

    @staticmethod
    def ip(i):
        return f"{NET}.{10 + i}"

    def setup(self):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        self.cleanup.push("delete bridge", lambda: run(["ip", "link", "del", BRIDGE], check=False))
        run(["ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Bridged frames go through the root FORWARD chain when br_netfilter
        # is on: accept ours explicitly in case the policy drops.
        if shutil.which("iptables"):
            rule = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", FWD_COMMENT, "-j", "ACCEPT"]
            if run(["iptables", "-I", *rule[:1], "1", *rule[1:]], check=False).returncode == 0:
                self.cleanup.push("delete FORWARD rule", lambda: run(["iptables", "-D", *rule], check=False))
        for i in range(1, self.n + 1):
            self.add_host(i)
        if shutil.which("tc"):
            ns = self.ns(1)
            ok = nsexec(ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms", check=False)
            self.netem = ok.returncode == 0
            if self.netem:
                nsexec(ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        # Reachability from the root namespace.
        if shutil.which("ping"):
            for i in self.hosts:
                if run(["ping", "-c", "1", "-W", "2", self.ip(i)], check=False).returncode != 0:
                    raise RuntimeError(f"{self.ip(i)} does not answer ping through {BRIDGE}")

    def add_host(self, i):
        """Namespace sl-f<i> at 10.77.0.<10+i> behind a veth pair on the bridge."""
        if not 1 <= i <= MAX_HOST:
            raise RuntimeError(f"host number {i} is outside 1..{MAX_HOST} ({NET}.0/24)")
        ns, host, peer = self.ns(i), f"slf{i}h", f"slf{i}n"
        run(["ip", "netns", "add", ns])
        self.cleanup.push(f"delete {ns}", lambda ns=ns: run(["ip", "netns", "del", ns], check=False))
        run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
        self.cleanup.push(f"delete {host}", lambda h=host: run(["ip", "link", "del", h], check=False, quiet=True))
        run(["ip", "link", "set", peer, "netns", ns])
        run(["ip", "link", "set", host, "master", BRIDGE, "up"])
        nsexec(ns, "ip", "link", "set", peer, "name", "eth0")
        nsexec(ns, "ip", "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
        nsexec(ns, "ip", "link", "set", "eth0", "up")
        nsexec(ns, "ip", "link", "set", "lo", "up")
        if shutil.which("iptables"):
            # Partition rules live in SLF_PART (both directions), loss in SLF_LOSS.
            nsexec(ns, "iptables", "-N", "SLF_PART")
            nsexec(ns, "iptables", "-N", "SLF_LOSS")
            nsexec(ns, "iptables", "-A", "INPUT", "-j", "SLF_PART")
            nsexec(ns, "iptables", "-A", "OUTPUT", "-j", "SLF_PART")
            nsexec(ns, "iptables", "-A", "INPUT", "-j", "SLF_LOSS")
        self.hosts.append(i)

    def remove_host(self, i):
        """Deletes host i's namespace (and so its veth pair): its address is
        gone, as a machine that died for good. Its processes must be dead."""
        run(["ip", "netns", "del", self.ns(i)], check=False)
        run(["ip", "link", "del", f"slf{i}h"], check=False, quiet=True)
        if i in self.hosts:
            self.hosts.remove(i)

    # Partitions ------------------------------------------------------------

    def cut(self, a, b, oneway=False):
        """Drops traffic between nodes a and b (oneway: only what a sends to b)."""
        nsexec(self.ns(b), "iptables", "-A", "SLF_PART", "-s", self.ip(a), "-j", "DROP")
        if not oneway:
            nsexec(self.ns(a), "iptables", "-A", "SLF_PART", "-s", self.ip(b), "-j", "DROP")
            nsexec(self.ns(a), "iptables", "-A", "SLF_PART", "-d", self.ip(b), "-j", "DROP")
            nsexec(self.ns(b), "iptables", "-A", "SLF_PART", "-d", self.ip(a), "-j", "DROP")

    def split(self, side, oneway=False):
        """Cuts `side` (node numbers) off from the other nodes."""
        others = [j for j in self.hosts if j not in side]
        for a in side:
            for b in others:
                self.cut(a, b, oneway=oneway)

    def heal_partitions(self):
        for i in self.hosts:
            nsexec(self.ns(i), "iptables", "-F", "SLF_PART", check=False)

    # Link quality ----------------------------------------------------------

    def degrade(self):
        """Returns a description of what was applied."""
        for i in self.hosts:
            ns = self.ns(i)
            if self.netem:
                nsexec(ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                       "delay", "50ms", "30ms", "loss", "5%", "reorder", "10%", "50%")
            else:
                nsexec(ns, "iptables", "-A", "SLF_LOSS", "-i", "eth0", "-m", "statistic",
                       "--mode", "random", "--probability", "0.05", "-j", "DROP")
                nsexec(ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                       "rate", "2mbit", "burst", "32kbit", "latency", "300ms", check=False)
        if self.netem:
            return "netem delay 50ms 30ms loss 5% reorder 10% 50%"
        return "no sch_netem in this kernel: iptables statistic 5% loss + tbf 2mbit (no delay jitter, no reorder)"

    def heal_links(self):
        for i in self.hosts:
            ns = self.ns(i)
            nsexec(ns, "iptables", "-F", "SLF_LOSS", check=False)
            nsexec(ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    def heal(self):
        self.heal_partitions()
        self.heal_links()


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------

class Node:
    def __init__(self, i, args, run_dir: Path, secret: Path, join_hosts, bootstrap_expect: int):
        """Node n<i> in namespace sl-f<i>. join_hosts: host numbers for --join;
        bootstrap_expect: the initial nodes' count, 0 for a node joining an
        existing cluster (a churn replacement: it joins as a non-voter)."""
        self.i = i
        self.name = f"n{i}"
        self.ns = Net.ns(i)
        self.ip = Net.ip(i)
        self.client = f"{self.ip}:{CLIENT_PORT}"
        self.http = f"http://{self.ip}:{HTTP_PORT}"
        self.dir = run_dir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = None  # tmpfs mount point when this node's disk can fill
        self.data = self.dir / "data"
        self.log_path = self.dir / "agent.log"
        self.proc = None
        self.expect_exit = False
        self.paused = False
        self.starts = 0
        self.retired = False  # killed for good by churn: never restarted
        join = ",".join(f"{Net.ip(j)}:{PEER_PORT}" for j in join_hosts)
        membership = []
        if args.dead_member_timeout and not any(x.startswith("--dead-member-timeout") for x in args.agent_arg):
            membership = ["--dead-member-timeout", args.dead_member_timeout]
        self.cmd_tail = [
            "--node-id", self.name,
            "--client-addr", self.client,
            "--http-addr", f"{self.ip}:{HTTP_PORT}",
            "--peer-addr", f"{self.ip}:{PEER_PORT}",
            "--join", join,
            "--bootstrap-expect", str(bootstrap_expect),
            "--insecure",  # the client port is plaintext on a non-loopback address
            "--cluster-secret-file", str(secret),
            "--segment-max-bytes", args.segment_max_bytes,
            "--fatal-exit-delay", "2s",
            "--shutdown-grace", "5s",
            *membership,
            *args.agent_arg,
        ]
        self.bin = str(args.bin)

    def use_tmpfs(self, size: str, cleanup: Cleanup):
        self.disk = self.dir / "disk"
        self.disk.mkdir(exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.disk)])
        cleanup.push(f"umount {self.disk}", lambda d=self.disk: run(["umount", "-l", str(d)], check=False))
        self.data = self.disk / "data"

    def start(self):
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDELOG_")}
        env.setdefault("RUST_LOG", "info,openraft=warn")
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== harness: start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, self.bin, "agent", "--data-dir", str(self.data), *self.cmd_tail],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)  # Ctrl-C reaches the harness only
        self.expect_exit = False
        self.paused = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.expect_exit = True
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False

    def pause(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def ready(self, timeout=1.0):
        try:
            with NO_PROXY.open(f"{self.http}/readyz", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def healthz(self, timeout=1.0):
        try:
            with NO_PROXY.open(f"{self.http}/healthz", timeout=timeout) as r:
                return f"{r.status} {r.read(300).decode(errors='replace').strip()}"
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read(300).decode(errors='replace').strip()}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            return f"unreachable ({getattr(e, 'reason', e)})"

    def log_tail(self, nbytes=200_000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------

class Api:
    """Stubs compiled from the repo's protos at run time (as tests/e2e do)."""

    def __init__(self, proto_root: Path, out: Path):
        import grpc
        from grpc_tools import protoc
        import importlib.resources
        self.grpc = grpc
        out.mkdir(parents=True, exist_ok=True)
        wkt = importlib.resources.files("grpc_tools") / "_proto"
        for proto in ("log/v1/log.proto", "sidelog/v1/peer.proto"):
            rc = protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"-I{wkt}",
                              f"--python_out={out}", f"--grpc_python_out={out}", str(proto_root / proto)])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {proto}")
        sys.path.insert(0, str(out))
        self.log = importlib.import_module("log.v1.log_pb2")
        self.log_grpc = importlib.import_module("log.v1.log_pb2_grpc")
        self.peer = importlib.import_module("sidelog.v1.peer_pb2")
        self.peer_grpc = importlib.import_module("sidelog.v1.peer_pb2_grpc")

    def channel(self, addr):
        return self.grpc.insecure_channel(addr, options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])

    def status(self, node: Node, timeout=1.0):
        """Cluster.Status of a node, or None."""
        if not node.alive() or node.paused:
            return None
        try:
            with self.channel(node.client) as ch:
                return self.peer_grpc.ClusterStub(ch).Status(self.peer.StatusRequest(), timeout=timeout)
        except self.grpc.RpcError:
            return None

    def describe(self, node: Node, name: str, timeout=1.0):
        """Cluster.DescribeLog of a named log on a node (that node's view of
        the log's group: leader, first and committed offsets), or None."""
        if not node.alive() or node.paused:
            return None
        try:
            with self.channel(node.client) as ch:
                return self.peer_grpc.ClusterStub(ch).DescribeLog(self.peer.DescribeLogRequest(name=name),
                                                                  timeout=timeout)
        except self.grpc.RpcError:
            return None

    def create_log(self, node: Node, name: str, timeout=10.0):
        """Cluster.CreateLog(name, if_not_exists) on a node; raises RpcError."""
        with self.channel(node.client) as ch:
            return self.peer_grpc.ClusterStub(ch).CreateLog(
                self.peer.CreateLogRequest(name=name, if_not_exists=True), timeout=timeout)


# --------------------------------------------------------------------------
# History and workload
# --------------------------------------------------------------------------

class History:
    def __init__(self, path: Path):
        self.f = open(path, "w", buffering=1 << 16)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.op_ids = itertools.count(1)
        self.max_acked = -1
        self.ack_times: list[float] = []  # when each acknowledged write completed (for outages)
        # Named logs (--logs): each log's highest acknowledged offset and acknowledgement times.
        self.max_acked_by: dict[str, int] = {}
        self.ack_times_by: dict[str, list[float]] = {}

    def now(self):
        return time.monotonic() - self.t0

    def write(self, ev: dict, acked_upto: int | None = None, log: str = "") -> dict:
        """log: the named log an acknowledged write went to (empty: the default log)."""
        with self.lock:
            if self.f.closed:
                return ev
            ev = {"t": round(self.now(), 6), **ev}
            if acked_upto is not None:
                if log:
                    self.max_acked_by[log] = max(self.max_acked_by.get(log, -1), acked_upto)
                    self.ack_times_by.setdefault(log, []).append(ev["t"])
                else:
                    self.max_acked = max(self.max_acked, acked_upto)
                self.ack_times.append(ev["t"])
            self.f.write(json.dumps(ev, separators=(",", ":")) + "\n")
        return ev

    def invoke_read(self, proc, node, log: str = ""):
        """Logs a read's invoke with the highest offset acknowledged so far
        (in `log`, when named), atomically."""
        with self.lock:
            h = self.max_acked_by.get(log, -1) if log else self.max_acked
            if h < 0 or self.f.closed:
                return None, None
            op = next(self.op_ids)
            ev = {"t": round(self.now(), 6), "proc": proc, "op": op, "type": "invoke", "f": "read",
                  "offset": h, "node": node}
            if log:
                ev["log"] = log
            self.f.write(json.dumps(ev, separators=(",", ":")) + "\n")
        return op, h

    def fault(self, kind, phase, **detail):
        self.write({"proc": "nemesis", "type": "info", "f": "fault", "fault": kind, "phase": phase, **detail})

    def close(self):
        with self.lock:
            if not self.f.closed:
                self.f.flush()
                self.f.close()


DEFINITE = {"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "UNIMPLEMENTED"}


def classify(err) -> tuple[str, str]:
    """("fail" | "info", message) for a failed write. "fail" only when the
    request certainly was not written: refused by validation, or never sent
    (the client had no connection)."""
    code = err.code().name if err.code() else "UNKNOWN"
    details = err.details() or ""
    msg = f"{code}: {details}"[:300]
    if code in DEFINITE:
        return "fail", msg
    if code == "UNAVAILABLE" and "failed to connect to all addresses" in details:
        return "fail", msg
    return "info", msg


def longest_gap(acks, t_from, t_to, now):
    """The longest time without an acknowledged write that overlaps
    [t_from, t_to], and when it started. acks: sorted acknowledgement times.
    A gap runs from the last acknowledgement at or before t_from (t_from if
    none) to the first one at or after t_to (now if none yet)."""
    import bisect
    lo = bisect.bisect_right(acks, t_from) - 1
    hi = bisect.bisect_left(acks, t_to)
    pts = ([acks[lo]] if lo >= 0 else [t_from]) + acks[lo + 1:hi + 1]
    if hi >= len(acks):
        pts.append(now)  # nothing acknowledged since: the outage lasts until now
    best, at = 0.0, t_from
    for x, y in zip(pts, pts[1:]):
        if y - x > best:
            best, at = y - x, x
    return best, at


class Stubs:
    """One thread's channels, one per node it sends to; a node that left the
    target list (churn retired it) has its channel closed, so no client keeps
    reconnecting to an address that is gone."""

    def __init__(self, api: Api):
        self.api = api
        self.open = {}  # node name -> (channel, LogStub)

    def get(self, node: Node):
        if node.name not in self.open:
            ch = self.api.channel(node.client)
            self.open[node.name] = (ch, self.api.log_grpc.LogStub(ch))
        return self.open[node.name][1]

    def prune(self, nodes):
        names = {n.name for n in nodes}
        for name in [k for k in self.open if k not in names]:
            self.open.pop(name)[0].close()

    def close(self):
        for ch, _ in self.open.values():
            ch.close()
        self.open.clear()


class Workload:
    def __init__(self, api: Api, nodes, history: History, args):
        """nodes: a callable returning the nodes clients send to now."""
        self.api = api
        self.nodes = nodes
        self.h = history
        self.args = args
        self.stop = threading.Event()
        self.threads = []
        self.errors = []

    def start(self):
        for k in range(1, self.args.producers + 1):
            self.threads.append(threading.Thread(target=self.guard, args=(self.producer, k), daemon=True))
        for k in range(1, self.args.readers + 1):
            self.threads.append(threading.Thread(target=self.guard, args=(self.reader, k), daemon=True))
        for t in self.threads:
            t.start()

    def guard(self, fn, k):
        try:
            fn(k)
        except Exception:  # noqa: BLE001
            self.errors.append(traceback.format_exc())
            self.stop.set()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.args.op_timeout + 10)

    def producer(self, k):
        grpc = self.api.grpc
        pb = self.api.log
        rng = random.Random(self.args.seed * 1000 + k)
        stubs = Stubs(self.api)
        seq = 0
        proc = f"p{k}"
        names = self.args.log_names
        log = names[k % len(names)] if names else ""  # producer k writes log k % N
        tag = {"log": log} if log else {}
        try:
            while not self.stop.is_set():
                targets = self.nodes()
                stubs.prune(targets)
                target = rng.choice(targets)
                stub = stubs.get(target)
                node = target.name
                batch = rng.random() < 0.3
                size = rng.randint(2, 5) if batch else 1
                values = []
                for _ in range(size):
                    seq += 1
                    values.append(f"{proc}-{seq}")
                f = "batch" if batch else "produce"
                op = next(self.h.op_ids)
                self.h.write({"proc": proc, "op": op, "type": "invoke", "f": f, "values": values, "node": node,
                              **tag})
                try:
                    if batch:
                        resp = stub.ProduceBatch(
                            pb.ProduceBatchRequest(records=[pb.Record(value=v.encode()) for v in values], log=log),
                            timeout=self.args.op_timeout)
                        offsets = list(resp.offsets)
                        self.h.write({"proc": proc, "op": op, "type": "ok", "f": f, "offset": offsets[0],
                                      "offsets": offsets, **tag}, acked_upto=max(offsets), log=log)
                    else:
                        resp = stub.Produce(pb.ProduceRequest(record=pb.Record(value=values[0].encode()), log=log),
                                            timeout=self.args.op_timeout)
                        self.h.write({"proc": proc, "op": op, "type": "ok", "f": f, "offset": resp.offset, **tag},
                                     acked_upto=resp.offset, log=log)
                    if self.args.pause_ms:
                        time.sleep(self.args.pause_ms / 1000)
                except grpc.RpcError as e:
                    typ, msg = classify(e)
                    self.h.write({"proc": proc, "op": op, "type": typ, "f": f, "error": msg, **tag})
                    time.sleep(0.05 + rng.random() * 0.1)
        finally:
            stubs.close()

    def reader(self, k):
        grpc = self.api.grpc
        pb = self.api.log
        rng = random.Random(self.args.seed * 1000 + 500 + k)
        stubs = Stubs(self.api)
        proc = f"r{k}"
        names = self.args.log_names
        turn = 0
        try:
            while not self.stop.is_set():
                time.sleep(0.05 + rng.random() * 0.1)
                targets = self.nodes()
                stubs.prune(targets)
                target = rng.choice(targets)
                log = names[(k + turn) % len(names)] if names else ""  # the logs in turn
                turn += 1
                tag = {"log": log} if log else {}
                op, h = self.h.invoke_read(proc, target.name, log)
                if op is None:
                    continue
                try:
                    resp = stubs.get(target).Consume(pb.ConsumeRequest(offset=h, linearizable=True, log=log),
                                                     timeout=self.args.op_timeout)
                    self.h.write({"proc": proc, "op": op, "type": "ok", "f": "read", "found": True,
                                  "values": [resp.record.value.decode(errors="replace")], **tag})
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                        self.h.write({"proc": proc, "op": op, "type": "ok", "f": "read", "found": False,
                                      "error": (e.details() or "")[:200], **tag})
                    else:
                        # A read has no effect: a failed one is just "fail".
                        self.h.write({"proc": proc, "op": op, "type": "fail", "f": "read",
                                      "error": f"{e.code().name}: {e.details()}"[:300], **tag})
        finally:
            stubs.close()


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

class Harness:
    def __init__(self, args, cleanup: Cleanup):
        self.args = args
        self.cleanup = cleanup
        self.rng = random.Random(args.seed)
        self.run_dir = args.run_dir
        self.net = Net(args.nodes, cleanup)
        self.nodes: list[Node] = []
        self.problems: list[str] = []  # unexpected exits, nodes that did not recover
        self.notes: list[str] = []
        self.disk_obs: list[dict] = []
        self.disk_node: Node | None = None  # the node whose data dir is a tmpfs (diskfull)
        self.retired: list[Node] = []  # killed for good by churn
        self.churn_obs: list[dict] = []
        self.round_obs: list[dict] = []  # every round: its fault and longest time without an acknowledged write
        self.stop_rounds = False  # set when the cluster cannot safely take another fault
        self.workload = None
        self.history = None
        self.api = None

    def say(self, msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # Setup -----------------------------------------------------------------

    def setup(self):
        a = self.args
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / MARKER).write_text("sidelog fault-injection run\n")
        self.api = Api(a.proto_dir, self.run_dir / "stubs")
        secret = self.run_dir / "cluster-secret"
        secret.write_text(secrets.token_hex(24) + "\n")
        secret.chmod(0o600)
        self.say(f"network: {BRIDGE} {BRIDGE_IP}/24, {a.nodes} namespaces")
        self.net.setup()
        if not self.net.netem and "netem" in a.fault_kinds:
            self.notes.append("sch_netem is not available in this kernel: 'netem' uses iptables loss + tbf instead")
        self.secret = secret
        initial = range(1, a.nodes + 1)
        self.nodes = [Node(i, a, self.run_dir, secret, initial, a.nodes) for i in initial]
        self.next_host = a.nodes + 1
        if "diskfull" in a.fault_kinds:
            self.disk_node = self.nodes[-1]
            self.disk_node.use_tmpfs(a.disk_size, self.cleanup)
        self.cleanup.push("stop nodes", self.kill_all)  # runs before the umount
        for n in self.nodes:
            n.start()
        self.say(f"nodes: {', '.join(f'{n.name}@{n.ip}' for n in self.nodes)} ({a.bin})")
        if not self.wait(lambda: all(n.ready() for n in self.nodes), a.start_timeout):
            self.check_exits()
            raise RuntimeError(f"the cluster did not become ready within {a.start_timeout}s; logs under {self.run_dir}")
        lead = self.leader()
        self.say(f"cluster ready, leader {lead.name if lead else None}")

    def create_logs(self):
        """--logs N: creates log0..log{N-1} (CreateLog with if_not_exists,
        the leader first, retried: creating needs a leader and every member
        speaking named logs), then waits until every node serves each log and
        agrees on its leader."""
        a = self.args
        if not a.log_names:
            return
        t0 = time.monotonic()
        deadline = t0 + a.start_timeout
        for name in a.log_names:
            last = None
            while True:
                lead = self.leader()
                order = ([lead] if lead else []) + [n for n in self.nodes if n is not lead and n.alive()]
                try:
                    self.api.create_log(order[0], name)
                    break
                except self.api.grpc.RpcError as e:
                    last = f"{order[0].name}: {e.code().name}: {e.details()}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not create log {name} within {a.start_timeout}s: {last}")
                time.sleep(0.5)
        why = ["not checked"]
        if not self.wait(lambda: self.logs_led(why), max(10.0, deadline - time.monotonic()), step=0.3):
            raise RuntimeError(f"the named logs did not get a leader on every node within {a.start_timeout}s: "
                               f"{why[0]}")
        self.say(f"logs: {len(a.log_names)} created in {time.monotonic() - t0:.1f}s; {why[0]}")

    def log_views(self, name):
        """node name -> its DescribeLog of `name` (None: no answer)."""
        return {n.name: self.api.describe(n, name) for n in self.nodes}

    def logs_led(self, why=None) -> bool:
        """Every named log: every node answers DescribeLog and names the same
        leader, a live node. True without named logs."""
        leaders = []
        for name in self.args.log_names:
            views = self.log_views(name)
            missing = [k for k, v in views.items() if v is None]
            seen = {v.leader if v.HasField("leader") else "" for v in views.values() if v is not None}
            if missing or len(seen) != 1 or "" in seen:
                if why is not None:
                    why[0] = f"{name}: " + (f"no answer from {missing}" if missing else f"leaders {sorted(seen)}")
                return False
            lead = seen.pop()
            node = next((n for n in self.nodes if n.name == lead), None)
            if node is None or not node.alive() or node.paused:
                if why is not None:
                    why[0] = f"{name}: leader {lead} is not a live node"
                return False
            leaders.append(f"{name} {lead}")
        if why is not None:
            why[0] = "leaders " + ", ".join(leaders)
        return True

    def kill_all(self):
        for n in [*self.nodes, *self.retired]:
            try:
                n.kill9()
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    def wait(cond, timeout, step=0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(step)
        return cond()

    def statuses(self):
        return {n.name: self.api.status(n) for n in self.nodes}

    def leader(self):
        """The leader's Node, if any node reports one it agrees with."""
        for n in self.nodes:
            s = self.api.status(n)
            if s is not None and s.state == "leader":
                return n
        return None

    def node_by_name(self, name):
        return next(n for n in self.nodes if n.name == name)

    def check_exits(self, during_diskfull: Node | None = None):
        """Records nodes that exited without being killed and restarts them."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None and not n.expect_exit:
                code = n.proc.returncode
                if n is during_diskfull:
                    continue
                msg = f"{n.name} exited by itself with code {code} (log: {n.log_path})"
                self.problems.append(msg)
                self.say("UNEXPECTED EXIT: " + msg)
                if self.history:
                    self.history.fault("crash", "start", node=n.name, code=code)
                n.expect_exit = True

    def pick(self, prefer_leader=0.5):
        alive = [n for n in self.nodes if n.alive()]
        lead = self.leader()
        if lead is not None and self.rng.random() < prefer_leader:
            return lead
        return self.rng.choice(alive or self.nodes)

    # Faults ----------------------------------------------------------------

    def fault(self, kind):
        d = self.args.fault_duration
        h = self.history
        lead = self.leader()
        lead_name = lead.name if lead else None
        if kind == "kill":
            n = self.pick()
            h.fault(kind, "start", node=n.name, leader=lead_name)
            n.kill9()
            time.sleep(self.rng.uniform(0.5, max(0.6, d / 2)))
            n.start()
            self.say(f"  kill -9 {n.name}{' (leader)' if n is lead else ''}, restarted")
            h.fault(kind, "end", node=n.name)
        elif kind == "partition-leader":
            n = lead or self.pick()
            h.fault(kind, "start", nodes=[n.name], leader=lead_name)
            self.net.split([n.i])
            self.say(f"  {n.name}{' (leader)' if n is lead else ''} cut off from its peers for {d}s")
            time.sleep(d)
            self.net.heal_partitions()
            h.fault(kind, "end")
        elif kind == "partition-minority":
            k = (len(self.nodes) - 1) // 2
            side = self.rng.sample([n.i for n in self.nodes], k)
            if lead and self.rng.random() < 0.5 and lead.i not in side:
                side[0] = lead.i
            names = [f"n{i}" for i in side]
            h.fault(kind, "start", nodes=names, leader=lead_name)
            self.net.split(side)
            self.say(f"  minority {names} cut off (leader {lead_name}) for {d}s")
            time.sleep(d)
            self.net.heal_partitions()
            h.fault(kind, "end")
        elif kind == "partition-oneway":
            n = lead if (lead and self.rng.random() < 0.7) else self.pick()
            h.fault(kind, "start", nodes=[n.name], leader=lead_name, direction="from")
            self.net.split([n.i], oneway=True)
            self.say(f"  every peer drops what {n.name} sends (one-way; leader {lead_name}) for {d}s")
            time.sleep(d)
            self.net.heal_partitions()
            h.fault(kind, "end")
        elif kind == "flap":
            h.fault(kind, "start", leader=lead_name)
            end = time.monotonic() + d
            flips = 0
            while time.monotonic() < end:
                self.net.heal_partitions()
                if self.rng.random() < 0.6:
                    k = self.rng.randint(1, (len(self.nodes) - 1) // 2)
                    self.net.split(self.rng.sample([n.i for n in self.nodes], k),
                                   oneway=self.rng.random() < 0.3)
                    flips += 1
                time.sleep(self.rng.uniform(0.3, 1.5))
            self.net.heal_partitions()
            self.say(f"  flapping partitions for {d}s ({flips} cuts)")
            h.fault(kind, "end", cuts=flips)
        elif kind == "netem":
            what = self.net.degrade()
            h.fault(kind, "start", detail=what)
            self.say(f"  links degraded for {d}s: {what}")
            time.sleep(d)
            self.net.heal_links()
            h.fault(kind, "end")
        elif kind == "pause":
            n = self.pick()
            h.fault(kind, "start", node=n.name, leader=lead_name)
            n.pause()
            self.say(f"  SIGSTOP {n.name}{' (leader)' if n is lead else ''} for {d}s")
            time.sleep(d)
            n.resume()
            h.fault(kind, "end", node=n.name)
        elif kind == "diskfull":
            self.disk_full(lead_name)
        elif kind == "churn":
            self.churn(lead)
        else:
            raise ValueError(kind)

    # Churn -----------------------------------------------------------------

    def churn(self, lead):
        """kill -9 a voter for good (its data dir deleted, its namespace and
        address gone), start a replacement with a new name, a new address and
        an empty data dir that joins the live nodes (--bootstrap-expect 0: as
        a non-voter), and wait until the group has its voters again, every
        member alive, the dead one removed, and a write acknowledged after
        that. Records the longest time without an acknowledged write."""
        a = self.args
        h = self.history
        st = self.api.status(lead) if lead else None
        if st is None:
            st = next((s for s in (self.api.status(n) for n in self.nodes) if s is not None), None)
        voters = {m.id for m in st.members if m.voter} if st is not None else {n.name for n in self.nodes}
        candidates = [n for n in self.nodes if n.name in voters and n.alive() and n is not self.disk_node]
        if not candidates:
            self.say("  churn: no live voter to replace; skipped")
            self.notes.append(f"churn round skipped at t={h.now():.1f}s: no live voter")
            return
        # The leader half of the time (when it can be chosen), else another voter.
        others = [n for n in candidates if n is not lead]
        victim = lead if lead in candidates and (self.rng.random() < 0.5 or not others) else self.rng.choice(others)
        was_leader = victim is lead
        i = self.next_host
        if i > MAX_HOST:
            raise RuntimeError(f"churn: no address left for n{i} ({NET}.0/24 ends at .{10 + MAX_HOST})")
        t_kill = h.now()
        h.fault("churn", "start", node=victim.name, leader=lead.name if lead else None)
        victim.kill9()
        victim.retired = True
        self.retired.append(victim)
        self.nodes = [n for n in self.nodes if n is not victim]  # clients stop sending to it
        shutil.rmtree(victim.data, ignore_errors=True)  # its disk is gone (its agent.log is kept)
        if not a.churn_keep_address:
            self.net.remove_host(victim.i)  # and its address: connections to it time out
        delay = self.rng.uniform(0.5, max(0.6, a.fault_duration))
        time.sleep(delay)
        self.next_host += 1
        self.net.add_host(i)
        new = Node(i, a, self.run_dir, self.secret, [n.i for n in self.nodes], 0)
        new.start()
        self.nodes = [*self.nodes, new]
        self.say(f"  kill -9 {victim.name}{' (leader)' if was_leader else ''} for good; "
                 f"{new.name}@{new.ip} (empty data dir) joins after {delay:.1f}s")
        deadline = time.monotonic() + a.churn_timeout
        why = ["not checked"]
        settled = self.wait(lambda: self.churn_settled(why), a.churn_timeout, step=0.5)
        t_settled = h.now()
        acked_after = settled and self.wait(lambda: bool(h.ack_times) and h.ack_times[-1] > t_settled,
                                            max(1.0, deadline - time.monotonic()), step=0.1)
        t_done = h.now()
        outage, gap_at = self.longest_gap(t_kill, t_settled if acked_after else t_done)
        obs = {"round": len(self.churn_obs) + 1, "dead": victim.name, "dead_was_leader": was_leader,
               "replacement": new.name, "replacement_started_after_s": round(delay, 2),
               "settled_after_s": round(t_settled - t_kill, 2) if settled else None,
               "write_outage_s": round(outage, 3), "outage_at_t": round(gap_at, 3),
               "ok": bool(settled and acked_after)}
        self.churn_obs.append(obs)
        h.fault("churn", "end", node=victim.name, replacement=new.name, settled=obs["settled_after_s"],
                outage=obs["write_outage_s"])
        if obs["ok"]:
            self.say(f"  {new.name} in, {victim.name} out: voters whole {t_settled - t_kill:.1f}s after the kill; "
                     f"longest write outage {outage:.2f}s")
            return
        what = why[0] if not settled else "no write acknowledged after the membership settled"
        msg = (f"churn round {obs['round']} ({victim.name} killed, {new.name} joining): the group did not get "
               f"its voters back and accept writes within {a.churn_timeout:.0f}s: {what}")
        self.problems.append(msg)
        self.say("  " + msg)
        # Another churn could take a quorum away for good: stop injecting.
        self.stop_rounds = True

    def churn_settled(self, why: list) -> bool:
        """The leader's membership is exactly the live nodes, with as many
        voters as it wants (--voters, fewer while fewer nodes exist), every
        other member heard from recently, and every node ready. why[0] says
        what is missing."""
        lead = self.leader()
        st = self.api.status(lead) if lead else None
        if st is None:
            why[0] = "no leader"
            return False
        live = {n.name for n in self.nodes}
        members = {m.id: m for m in st.members}
        voters = sorted(m.id for m in st.members if m.voter)
        want = min(st.voters_target or 3, len(live))
        # Builds with the odd-voter rule keep one voter fewer when `want` is even.
        wanted = {want, max(1, want - 1 + want % 2)}
        desc = (f"leader {lead.name}, members " +
                ", ".join(f"{m.id}({'voter' if m.voter else 'non-voter'}"
                          + (f", {m.last_contact_ms} ms" if m.HasField("last_contact_ms") else "") + ")"
                          for m in st.members) + f"; live nodes {sorted(live)}")
        if set(members) != live:
            why[0] = f"membership is not the live nodes: {desc}"
            return False
        if len(voters) not in wanted:
            why[0] = f"{len(voters)} voters, {want} wanted: {desc}"
            return False
        stale = [m.id for m in st.members if m.id != lead.name
                 and not (m.HasField("last_contact_ms") and m.last_contact_ms < 2000)]
        if stale:
            why[0] = f"not heard from recently: {stale}: {desc}"
            return False
        unready = [n.name for n in self.nodes if not n.ready()]
        if unready:
            why[0] = f"not ready: {unready}: {desc}"
            return False
        why[0] = desc
        return True

    def longest_gap(self, t_from, t_to, log=""):
        """log: that named log's acknowledgements only (empty: every write's)."""
        with self.history.lock:
            acks = list(self.history.ack_times_by.get(log, []) if log else self.history.ack_times)
        return longest_gap(acks, t_from, t_to, self.history.now())

    def disk_full(self, lead_name):
        n = self.disk_node
        d = max(self.args.fault_duration, 5)
        h = self.history
        h.fault("diskfull", "start", node=n.name, leader=lead_name)
        filler = n.disk / "filler"
        written = 0
        # Unbuffered: a buffered file would keep the bytes that did not fit
        # and raise ENOSPC again when closed.
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                buf = b"\0" * chunk
                while True:
                    try:
                        k = os.write(fd, buf)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    written += k
                    if k == 0:
                        break
        finally:
            os.close(fd)
        self.say(f"  {n.name}'s disk filled ({written >> 20} MiB filler, leader {lead_name}) for {d}s")
        seen_health = None
        exit_code = None
        end = time.monotonic() + d
        while time.monotonic() < end:
            if n.proc.poll() is not None:
                exit_code = n.proc.returncode
                break
            hz = n.healthz()
            if not hz.startswith("200"):
                seen_health = seen_health or hz
            time.sleep(0.5)
        if exit_code is None and n.proc.poll() is not None:
            exit_code = n.proc.returncode
        log = n.log_tail()
        enospc = bool(re.search(r"No space left|ENOSPC|StorageFull|disk full", log, re.I))
        filler.unlink()
        obs = {"healthz": seen_health, "exit_code": exit_code, "log_mentions_enospc": enospc}
        if exit_code is not None:
            n.expect_exit = True
            n.start()
        recovered = self.wait(n.ready, self.args.recover_timeout)
        obs["served_again"] = recovered
        h.fault("diskfull", "end", node=n.name, **obs)
        self.say(f"  disk freed: healthz during fault {seen_health!r}, exit code {exit_code}, "
                 f"log mentions ENOSPC: {enospc}, serving again: {recovered}")
        self.disk_obs.append(obs)
        if not recovered:
            self.problems.append(f"{n.name} did not serve again within {self.args.recover_timeout}s after its disk was freed")
        if exit_code is not None and exit_code < 0:
            # A fatal storage error must end the process cleanly (exit code,
            # log line); a signal is a crash (SIGBUS: a write into an mmap'ed
            # file the full disk could not back).
            sig = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
            self.problems.append(f"{n.name} was killed by {sig} when its disk filled (log: {n.log_path})")

    def heal_all(self):
        self.net.heal()
        for n in self.nodes:
            if n.paused:
                n.resume()
        if self.disk_node is not None:
            try:
                (self.disk_node.disk / "filler").unlink()
            except FileNotFoundError:
                pass

    def recover(self):
        """After a fault: every node alive, a leader, every node ready."""
        self.check_exits()
        for n in self.nodes:
            if not n.alive():
                n.start()
        ok = self.wait(lambda: self.leader() is not None and all(n.ready() for n in self.nodes)
                       and self.logs_led(), self.args.recover_timeout, step=0.3)
        if not ok:
            self.notes.append(f"cluster not fully ready {self.args.recover_timeout}s after a fault "
                              f"(t={self.history.now():.1f}s)")
            self.say("  (cluster not fully ready yet; continuing)")
        return ok

    def rounds(self):
        a = self.args
        kinds = a.fault_kinds
        time.sleep(a.quiet)
        for r in range(a.rounds):
            if self.workload.stop.is_set():
                raise RuntimeError("a workload thread failed:\n" + "\n".join(self.workload.errors))
            kind = kinds[r % len(kinds)] if a.order == "cycle" else self.rng.choice(kinds)
            self.say(f"round {r + 1}/{a.rounds}: {kind}")
            t_start = self.history.now()
            try:
                self.fault(kind)
            finally:
                self.heal_all()
            self.check_exits(during_diskfull=None)
            self.recover()
            t_end = self.history.now()
            outage, _ = self.longest_gap(t_start, t_end)
            obs = {"round": r + 1, "fault": kind, "write_outage_s": round(outage, 3)}
            if a.log_names:
                obs["write_outage_per_log_s"] = {name: round(self.longest_gap(t_start, t_end, log=name)[0], 3)
                                                 for name in a.log_names}
            self.round_obs.append(obs)
            if self.stop_rounds:
                self.say(f"no more faults after round {r + 1}: {self.problems[-1] if self.problems else ''}")
                break
            time.sleep(a.quiet)

    def converge(self):
        """Waits until every node has committed and applied the same entries."""
        a = self.args
        self.heal_all()
        self.check_exits()
        for n in self.nodes:
            if not n.alive():
                n.start()
        deadline = time.monotonic() + a.converge_timeout
        prev = None
        while time.monotonic() < deadline:
            st = self.statuses()
            if all(s is not None for s in st.values()):
                key = {(s.next_offset, s.applied_index, s.last_log_index) for s in st.values()}
                leaders = {s.leader for s in st.values()}
                if len(key) == 1 and len(leaders) == 1 and None not in leaders and "" not in leaders:
                    if a.log_names:
                        # Every named log: every node's committed offset and leader the same.
                        logs_key = self.logs_converged()
                        key = None if logs_key is None else (frozenset(key), logs_key)
                    if key is not None and prev == key:
                        return st
                    prev = key
                else:
                    prev = None
            time.sleep(1.0)
        st = self.statuses()
        desc = ", ".join(f"{k}: " + (f"next {s.next_offset} applied {s.applied_index} leader {s.leader}"
                                     if s else "no answer") for k, s in st.items())
        for name in a.log_names:
            desc += f"; {name}: " + ", ".join(
                f"{k} " + (f"next {v.next_offset} leader {v.leader if v.HasField('leader') else None}" if v
                           else "no answer") for k, v in self.log_views(name).items())
        self.problems.append(f"nodes did not converge within {a.converge_timeout}s: {desc}")
        return st

    def logs_converged(self):
        """(per named log: (committed offset, leader)) when every node agrees
        on both for every log, else None."""
        out = []
        for name in self.args.log_names:
            views = self.log_views(name).values()
            if any(v is None or not v.HasField("leader") or not v.leader for v in views):
                return None
            key = {(v.next_offset, v.leader) for v in views}
            if len(key) != 1:
                return None
            out.append((name, *key.pop()))
        return tuple(out)

    def dump(self, statuses):
        """Each node's whole committed log, read from that node; with --logs,
        each named log too (dumps/<log>/dump-<node>.jsonl)."""
        out_dir = self.run_dir / "dumps"
        out_dir.mkdir(exist_ok=True)
        known = [s.next_offset for s in statuses.values() if s is not None]
        for n in self.nodes:
            s = statuses.get(n.name)
            first = s.first_offset if s else 0
            end = s.next_offset if s else (max(known) if known else None)
            rows, nxt = self.dump_node(n, first, end)
            with open(out_dir / f"dump-{n.name}.jsonl", "w") as f:
                f.write(json.dumps({"node": n.name, "first_offset": first, "next_offset": end}) + "\n")
                for row in rows:
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
            self.say(f"  {n.name}: {len(rows)} records dumped (offsets {first}..{nxt})")
        self.log_final = {}
        for name in self.args.log_names:
            views = self.log_views(name)
            self.log_final[name] = views
            known = [v.next_offset for v in views.values() if v is not None]
            log_dir = out_dir / name
            log_dir.mkdir(exist_ok=True)
            parts = []
            for n in self.nodes:
                v = views.get(n.name)
                first = v.first_offset if v else 0
                end = v.next_offset if v else (max(known) if known else None)
                rows, nxt = self.dump_node(n, first, end, log=name)
                with open(log_dir / f"dump-{n.name}.jsonl", "w") as f:
                    f.write(json.dumps({"node": n.name, "log": name, "first_offset": first, "next_offset": end})
                            + "\n")
                    for row in rows:
                        f.write(json.dumps(row, separators=(",", ":")) + "\n")
                parts.append(f"{n.name} {len(rows)} (offsets {first}..{nxt})")
            self.say(f"  {name}: records dumped: {', '.join(parts)}")

    def dump_node(self, n, first, end, log=""):
        """(rows, next offset): node n's records of `log` from `first` to `end`
        (None: until the stream ends or times out), read from n itself."""
        pb = self.api.log
        rows = []
        nxt = first
        for attempt in range(3):
            if end is not None and nxt >= end:
                break
            try:
                with self.api.channel(n.client) as ch:
                    stream = self.api.log_grpc.LogStub(ch).ConsumeStream(
                        pb.ConsumeRequest(offset=nxt, log=log), timeout=self.args.dump_timeout)
                    for resp in stream:
                        r = resp.record
                        row = {"offset": r.offset}
                        try:
                            row["value"] = r.value.decode("utf-8")
                        except UnicodeDecodeError:
                            row["value_hex"] = r.value.hex()
                        rows.append(row)
                        nxt = r.offset + 1
                        if end is not None and nxt >= end:
                            stream.cancel()
                            break
            except self.api.grpc.RpcError as e:
                if e.code() == self.api.grpc.StatusCode.CANCELLED:
                    break
                self.say(f"  dump of {n.name}{f' ({log})' if log else ''} interrupted at {nxt}: "
                         f"{e.code().name} {e.details()}")
                time.sleep(1)
        return rows, nxt

    def check_full_replicas(self, statuses):
        """Every node, a churn replacement too, must hold the whole log: the
        checker skips what lies below a node's first offset (retention), so a
        replica that started above 0 would go unchecked there."""
        if any("retention" in x for x in self.args.agent_arg):
            return
        for name, s in statuses.items():
            if s is not None and s.first_offset != 0:
                self.problems.append(f"{name}'s log starts at offset {s.first_offset}, not 0, though no retention "
                                     f"is configured: records below it are not checked on {name}")
        for log, views in getattr(self, "log_final", {}).items():
            for name, v in views.items():
                if v is None:
                    self.problems.append(f"{name} did not describe log {log} before the dump")
                elif v.first_offset != 0:
                    self.problems.append(f"{name}'s log {log} starts at offset {v.first_offset}, not 0, though no "
                                         f"retention is configured: records below it are not checked on {name}")

    def membership_changes(self):
        """Automatic membership changes the leaders logged, by reason (every
        node's log, the retired nodes' too)."""
        counts = {}
        for n in [*self.retired, *self.nodes]:
            try:
                text = n.log_path.read_text(errors="replace")
            except OSError:
                continue
            for ln in text.splitlines():
                if "changing the membership" in ln:
                    m = re.search(r'"reason":"([a-z_]+)"', ln) or re.search(r"reason=([a-z_]+)", ln)
                    if m:
                        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts

    def outage_summary(self):
        import statistics
        by = {}
        for o in self.round_obs:
            by.setdefault(o["fault"], []).append(o["write_outage_s"])
        return {k: {"rounds": len(v), "median_s": round(statistics.median(v), 2), "max_s": round(max(v), 2)}
                for k, v in by.items()}

    def log_outage_summary(self):
        """--logs: per log, and per fault kind the worst log of each round."""
        import statistics
        per_log, worst = {}, {}
        for o in self.round_obs:
            per = o.get("write_outage_per_log_s")
            if not per:
                continue
            for name, x in per.items():
                per_log.setdefault(name, []).append(x)
            worst.setdefault(o["fault"], []).append(max(per.values()))
        summ = lambda v: {"rounds": len(v), "median_s": round(statistics.median(v), 2),  # noqa: E731
                          "max_s": round(max(v), 2)}
        return {"per_log": {k: summ(v) for k, v in per_log.items()},
                "worst_log_per_fault": {k: summ(v) for k, v in worst.items()}}

    def churn_summary(self):
        obs = self.churn_obs
        if not obs:
            return None
        import statistics
        outages = [o["write_outage_s"] for o in obs]
        settled = [o["settled_after_s"] for o in obs if o["settled_after_s"] is not None]
        worst = max(obs, key=lambda o: o["write_outage_s"])
        return {
            "rounds": len(obs),
            "settled_rounds": sum(o["ok"] for o in obs),
            "dead_was_leader": sum(o["dead_was_leader"] for o in obs),
            "write_outage_max_s": worst["write_outage_s"],
            "write_outage_max_round": worst["round"],
            "write_outage_median_s": round(statistics.median(outages), 3),
            "settled_median_s": round(statistics.median(settled), 2) if settled else None,
            "settled_max_s": max(settled) if settled else None,
            "retired": [n.name for n in self.retired],
            "membership_changes": self.membership_changes(),
        }

    def sabotage(self):
        """Drops the last acknowledged record from every dump, as a lost fsync
        would: the checker must fail (--sabotage; proves the CI mode catches it)."""
        if self.args.log_names:
            return self.sabotage_logs()
        acked = -1
        with open(self.run_dir / "history.jsonl") as f:
            for ln in f:
                e = json.loads(ln)
                if e.get("type") == "ok" and e.get("f") in ("produce", "batch"):
                    acked = max(acked, max(e.get("offsets") or [e["offset"]]))
        for p in (self.run_dir / "dumps").glob("*.jsonl"):
            lines = p.read_text().splitlines()
            kept = [ln for ln in lines if json.loads(ln).get("offset", -1) < acked]
            p.write_text("".join(ln + "\n" for ln in kept))
        self.say(f"  SABOTAGE: offset {acked} and later removed from every dump")

    def sabotage_logs(self):
        """--sabotage with --logs: each named log's last acknowledged record
        dropped from that log's dumps."""
        acked, log_of_op = {}, {}
        with open(self.run_dir / "history.jsonl") as f:
            for ln in f:
                e = json.loads(ln)
                if e.get("type") == "invoke":
                    log_of_op[e.get("op")] = e.get("log") or ""
                elif e.get("type") == "ok" and e.get("f") in ("produce", "batch"):
                    log = log_of_op.get(e.get("op"), "")
                    acked[log] = max(acked.get(log, -1), max(e.get("offsets") or [e["offset"]]))
        for log, upto in sorted(acked.items()):
            if not log:
                continue
            for p in (self.run_dir / "dumps" / log).glob("*.jsonl"):
                lines = p.read_text().splitlines()
                kept = [ln for ln in lines if json.loads(ln).get("offset", -1) < upto]
                p.write_text("".join(ln + "\n" for ln in kept))
            self.say(f"  SABOTAGE: {log}: offset {upto} and later removed from every dump")

    def main(self):
        a = self.args
        self.setup()
        self.create_logs()
        self.history = History(self.run_dir / "history.jsonl")
        self.cleanup.push("close the history", self.history.close)
        self.workload = Workload(self.api, lambda: self.nodes, self.history, a)
        self.workload.start()
        t0 = time.monotonic()
        try:
            self.rounds()
        finally:
            self.say("stopping the workload")
            self.workload.finish()
        if self.workload.errors:
            raise RuntimeError("a workload thread failed:\n" + "\n".join(self.workload.errors))
        self.say("healing, waiting for every node to converge")
        t1 = time.monotonic()
        st = self.converge()
        self.say(f"converged in {time.monotonic() - t1:.1f}s" if not any("converge" in p for p in self.problems)
                 else "NOT converged")
        self.dump(st)
        self.check_full_replicas(st)
        self.history.close()
        if a.sabotage:
            self.sabotage()
        sys.path.insert(0, str(HERE))
        import check_history
        events = check_history.load_history(self.run_dir / "history.jsonl")
        dumps = check_history.load_run_dumps(self.run_dir)
        report = check_history.check_logs(events, dumps, tolerate=a.tolerate)
        churn = self.churn_summary()
        outages = self.outage_summary()
        log_outages = self.log_outage_summary() if a.log_names else None
        out = report.to_json()
        out["write_outages"] = {"per_fault": outages, "per_round": self.round_obs}
        if log_outages:
            out["logs"] = a.log_names
            out["write_outages"].update(log_outages)
        if churn:
            out["churn"] = {**churn, "per_round": self.churn_obs}
        (self.run_dir / "report.json").write_text(json.dumps(out, indent=1))
        print(report.summary())
        if churn:
            print(f"churn: {churn['rounds']} rounds ({churn['dead_was_leader']} killed the leader), "
                  f"{churn['settled_rounds']} settled; voters whole after median {churn['settled_median_s']}s, "
                  f"max {churn['settled_max_s']}s; write outage per round: longest {churn['write_outage_max_s']}s "
                  f"(round {churn['write_outage_max_round']}), median {churn['write_outage_median_s']}s")
            print(f"churn: membership changes {churn['membership_changes']}; nodes now "
                  f"{', '.join(n.name for n in self.nodes)} ({len(self.retired)} retired)")
        if outages:
            print("write outage (longest time without an acknowledged write, from a fault's start until the cluster "
                  "recovered): " + "; ".join(f"{k} median {v['median_s']}s max {v['max_s']}s"
                                            for k, v in sorted(outages.items())))
        if log_outages and log_outages["per_log"]:
            print("write outage per log (from that log's own acknowledgements): worst log of each round: "
                  + "; ".join(f"{k} median {v['median_s']}s max {v['max_s']}s"
                              for k, v in sorted(log_outages["worst_log_per_fault"].items()))
                  + "; per log: " + "; ".join(f"{k} median {v['median_s']}s max {v['max_s']}s"
                                              for k, v in sorted(log_outages["per_log"].items())))
        print(f"duration: {time.monotonic() - t0:.0f}s of faults and workload; nodes {a.nodes}; rounds {a.rounds}; "
              f"faults {','.join(a.fault_kinds)}; seed {a.seed}"
              + (f"; logs {len(a.log_names)} ({a.producers} producers)" if a.log_names else ""))
        for o in self.disk_obs:
            print(f"disk full: {o}")
        for note in self.notes:
            print(f"note: {note}")
        for p in self.problems:
            print(f"PROBLEM: {p}")
        failed = report.failed or bool(self.problems)
        return 1 if failed else 0


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="sidelog fault injection (needs root)",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("command", nargs="?", default="run", choices=["run", "cleanup"])
    ap.add_argument("--ci", action="store_true",
                    help=f"short CI run (~2 min): 3 nodes, 8 rounds of {CI_FAULTS} (unless given explicitly)")
    ap.add_argument("--nodes", type=int, choices=[3, 5])
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("SIDELOG_BIN", DEFAULT_BIN)))
    ap.add_argument("--proto-dir", type=Path, default=REPO / "proto")
    ap.add_argument("--run-dir", type=Path, help="default: /tmp/sidelog-faults-<time>")
    ap.add_argument("--faults", help=f"comma-separated: {', '.join(ALL_KINDS)}, partition, all")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--order", choices=["cycle", "random"], default="cycle")
    ap.add_argument("--fault-duration", type=float, default=8.0, help="seconds a fault is held")
    ap.add_argument("--quiet", type=float, default=4.0, help="seconds without faults between rounds")
    ap.add_argument("--producers", type=int, default=6)
    ap.add_argument("--logs", type=int, default=0,
                    help="named logs to create (log0..log{N-1}) and write, producer k to log k %% N (at least N "
                         "producers); 0: only the default log")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--pause-ms", type=float, default=10.0, help="producer pause after each acknowledged op")
    ap.add_argument("--op-timeout", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--disk-size", default="64m", help="tmpfs size of the diskfull node")
    ap.add_argument("--segment-max-bytes", default="4MiB")
    ap.add_argument("--agent-arg", action="append", default=[], help="extra flag for every agent (repeatable)")
    ap.add_argument("--dead-member-timeout",
                    help="the agents' --dead-member-timeout (default: 5s when churn is among the faults, "
                         "else the agent's own default)")
    ap.add_argument("--churn-keep-address", action="store_true",
                    help="churn leaves the dead node's namespace and address in place (connections to it are "
                         "refused at once) instead of deleting them (connections to it time out)")
    ap.add_argument("--churn-timeout", type=float, default=120.0,
                    help="seconds a churn round may take, from the kill, until the voters are whole again "
                         "(dead member removed, replacement in) and a write is acknowledged")
    ap.add_argument("--start-timeout", type=float, default=60.0)
    ap.add_argument("--recover-timeout", type=float, default=30.0)
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--dump-timeout", type=float, default=120.0)
    ap.add_argument("--keep", action="store_true", help="keep RUN_DIR even when the run passes")
    ap.add_argument("--sabotage", action="store_true",
                    help="drop the last acknowledged record from the dumps before checking (must fail)")
    ap.add_argument("--tolerate", default="",
                    help="checker categories (e.g. stale_read) reported without failing the run: for a known, "
                         "not yet fixed bug")
    a = ap.parse_args(argv)
    if a.ci:
        a.nodes = a.nodes or 3
        a.rounds = a.rounds if a.rounds is not None else 8
        a.faults = a.faults or CI_FAULTS
    a.nodes = a.nodes or 3
    a.rounds = a.rounds if a.rounds is not None else 5
    kinds = []
    for k in (a.faults or "kill,partition").split(","):
        k = k.strip()
        if k == "all":
            kinds += ALL_KINDS
        elif k == "partition":
            kinds += PARTITION_KINDS
        elif k in ALL_KINDS:
            kinds.append(k)
        elif k:
            ap.error(f"unknown fault {k!r} (known: {', '.join(ALL_KINDS)}, partition, all)")
    a.fault_kinds = list(dict.fromkeys(kinds))
    if not 0 <= a.logs <= 256:
        ap.error("--logs: 0 to 256 (the agents' default --max-logs)")
    a.log_names = [f"log{i}" for i in range(a.logs)]
    if a.logs:
        a.producers = max(a.producers, a.logs)
    if "churn" in a.fault_kinds:
        if a.dead_member_timeout is None:
            a.dead_member_timeout = "5s"
        # Every churn round takes a new host number (address 10.77.0.<10+i>).
        if a.nodes + a.rounds > MAX_HOST:
            ap.error(f"--rounds: at most {MAX_HOST - a.nodes} rounds with churn (each takes a new address)")
    sys.path.insert(0, str(HERE))
    import check_history
    a.tolerate = [c.strip() for c in a.tolerate.split(",") if c.strip()]
    for c in a.tolerate:
        if c not in check_history.CATEGORIES:
            ap.error(f"--tolerate: unknown category {c!r} (known: {', '.join(check_history.CATEGORIES)})")
    if not a.fault_kinds and a.rounds:
        ap.error("no faults given")
    if a.run_dir is None:
        a.run_dir = Path(f"/tmp/sidelog-faults-{time.strftime('%Y%m%d-%H%M%S')}")
    return a


def preflight(a):
    if os.geteuid() != 0:
        die("needs root (network namespaces, veth, iptables, tc, mount): run it with sudo", 2)
    if not shutil.which("ip"):
        die("`ip` (iproute2) is missing: apt-get install -y iproute2", 2)
    need = {"iptables": any(k.startswith("partition") or k in ("flap", "netem") for k in a.fault_kinds),
            "tc": "netem" in a.fault_kinds, "mount": "diskfull" in a.fault_kinds}
    for tool, needed in need.items():
        if needed and not shutil.which(tool):
            die(f"`{tool}` is missing and the faults {a.fault_kinds} need it", 2)
    if not (a.bin.is_file() and os.access(a.bin, os.X_OK)):
        die(f"sidelog binary not found at {a.bin} (--bin or SIDELOG_BIN)", 2)
    if a.run_dir.exists() and any(a.run_dir.iterdir()):
        # The nodes' data dirs live there: an old run's log would be reused.
        die(f"run dir {a.run_dir} exists and is not empty: give a new --run-dir", 2)
    take_run_lock()
    left = leftovers()
    if left:
        # We hold the lock, so no live harness owns these: a killed run (a
        # reboot, SIGKILL, a CI timeout) left them. Removing them is safe.
        print(f"harness: removing what a killed run left behind: {left}", file=sys.stderr)
        cleanup_leftovers()
        still = leftovers()
        if still:
            die(f"could not remove what a previous run left behind: {still}", 2)
    used = run(["ip", "-o", "addr"], check=False).stdout
    if f" {NET}." in used:
        die(f"{NET}.0/24 is already in use on this machine: refusing to touch it", 2)


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    if a.command == "cleanup":
        if os.geteuid() != 0:
            die("needs root", 2)
        take_run_lock()
        before = leftovers()
        cleanup_leftovers()
        after = leftovers()
        print(f"removed: {before or 'nothing'}" + (f"; still there: {after}" if after else ""))
        return 1 if after else 0
    ensure_grpc()  # may re-execute this script: before the lock is taken
    preflight(a)
    cleanup = Cleanup()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    h = Harness(a, cleanup)
    code = 3
    try:
        code = h.main()
    except KeyboardInterrupt as e:
        print(f"\nharness: interrupted ({e or 'Ctrl-C'}), cleaning up", file=sys.stderr)
        code = 130
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        code = 3
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish
        if h.workload:
            h.workload.stop.set()
        cleanup.run()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if code == 0 and not a.keep:
        shutil.rmtree(a.run_dir, ignore_errors=True)
        print("PASS (run dir removed; --keep keeps it)")
    elif code == 0:
        print(f"PASS; run dir kept: {a.run_dir}")
    else:
        print(f"FAIL (exit {code}); history, dumps, node logs and report kept in {a.run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
