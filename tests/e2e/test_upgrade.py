"""Rolling upgrade under load from the first release (v0.1.0) to this build.

Three agents of the first release's binary (SIDELOG_OLD_BIN; scripts/test.sh
builds it from the tag) form a cluster and take writes from four producers;
each is stopped with SIGTERM (0.1.0 leaves the cluster on SIGTERM) and
started again with this build on the same data dir, waiting for it to be
SERVING before the next, as a StatefulSet rollout does. Then this build's
features are used: every member reports this build and peer protocol 1 in
`cluster status`, and a fourth agent joins as a non-voter (`--voters 3`;
0.1.0 made every member a voter). Nothing acknowledged is lost or
duplicated, every node holds the same records in the same order, and the
longest stretch without an acknowledged write is reported and bounded.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from conftest import REPO_ROOT, free_ports, health_status, sidelog_bin

SERVING = health_pb2.HealthCheckResponse.SERVING


def old_bin() -> Path:
    p = os.environ.get("SIDELOG_OLD_BIN")
    if not p:
        if os.environ.get("CI"):
            pytest.fail("SIDELOG_OLD_BIN is not set (scripts/test.sh builds v0.1.0 and sets it)", pytrace=False)
        pytest.skip("SIDELOG_OLD_BIN not set: build v0.1.0 (see scripts/build-old-release.sh)")
    path = Path(p)
    if not path.is_absolute():
        path = REPO_ROOT / path
    assert path.is_file(), f"SIDELOG_OLD_BIN {path} does not exist"
    return path


def wait_for(what: str, cond, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(addr: str) -> str:
    out = subprocess.run([str(sidelog_bin()), "cluster", "status", "--addr", addr],
                         capture_output=True, text=True, timeout=10)
    return out.stdout if out.returncode == 0 else ""


class Node:
    def __init__(self, tmp: Path, i: int, join: str, ports):
        self.i, self.tmp, self.join = i, tmp, join
        self.client, self.peer, self.http = ports
        self.data = tmp / f"data-{i}"
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.client}"

    def start(self, binary: Path, tag: str, extra=()):
        log = open(self.tmp / f"node-{self.i}-{tag}.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "agent", "--node-id", f"node-{self.i}", "--data-dir", str(self.data),
             "--client-addr", self.addr, "--peer-addr", f"127.0.0.1:{self.peer}",
             "--http-addr", f"127.0.0.1:{self.http}", "--join", self.join, *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.tmp)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, f"node-{self.i} did not exit 0 on SIGTERM"


class Load:
    """Producers writing fresh values through random live nodes."""

    def __init__(self, proto, addrs):
        self.proto, self.addrs = proto, list(addrs)
        self.acked: list[tuple[bytes, int]] = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.last_ack = time.monotonic()
        self.longest_gap = 0.0
        self.threads = [threading.Thread(target=self.run, args=(p,), daemon=True) for p in range(4)]
        for t in self.threads:
            t.start()

    def run(self, p: int):
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            value = f"p{p}-{n}".encode()
            addr = random.choice(self.addrs)
            try:
                with grpc.insecure_channel(addr) as ch:
                    stub = self.proto.grpc.LogStub(ch)
                    off = stub.Produce(self.proto.pb2.ProduceRequest(record=self.proto.pb2.Record(value=value)),
                                       timeout=5).offset
            except grpc.RpcError:
                time.sleep(0.02)
                continue
            with self.lock:
                self.acked.append((value, off))
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - self.last_ack)
                self.last_ack = now

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=30)


def read_all(proto, addr: str, upto: int, deadline: float = 60) -> list[tuple[int, bytes]]:
    with grpc.insecure_channel(addr) as ch:
        stub = proto.grpc.LogStub(ch)
        out = []
        for resp in stub.ConsumeStream(proto.pb2.ConsumeRequest(offset=0), timeout=deadline):
            out.append((resp.record.offset, resp.record.value))
            if resp.record.offset + 1 >= upto:
                break
        return out


def test_a_rolling_upgrade_from_the_first_release_under_load_keeps_every_record(tmp_path, proto):
    old, new = old_bin(), sidelog_bin()
    flat = free_ports(12)
    ports = [flat[i * 3:i * 3 + 3] for i in range(4)]
    join = ",".join(f"127.0.0.1:{p[1]}" for p in ports[:3])
    nodes = [Node(tmp_path, i, join, ports[i]) for i in range(3)]
    load = None
    try:
        for n in nodes:
            n.start(old, "old", ["--bootstrap-expect", "3"])
        for n in nodes:
            wait_for(f"{n.addr} SERVING (old)", lambda n=n: health_status(n.addr) == SERVING)
        load = Load(proto, [n.addr for n in nodes])
        wait_for("writes before the upgrade", lambda: len(load.acked) > 50)
        for n in nodes:
            n.stop()
            load.addrs = [m.addr for m in nodes if m is not n]
            n.start(new, "new")
            wait_for(f"{n.addr} SERVING after the upgrade", lambda n=n: health_status(n.addr) == SERVING)
            load.addrs = [m.addr for m in nodes]
            before = len(load.acked)
            wait_for("writes after upgrading a node", lambda: len(load.acked) > before + 20)
        # Every member runs this build: the leader reports it (its survey of
        # builds runs every 10 s) and the cluster protocol reaches this
        # build's peer protocol ("build: ... (peer protocol N)").
        import re
        protocol = re.search(r"peer protocol (\d+)", status(nodes[0].addr)).group(1)

        def all_new():
            for n in nodes:
                text = status(n.addr)
                if "node-0 (leader)" in text or "node-1 (leader)" in text or "node-2 (leader)" in text:
                    return f"cluster protocol: {protocol}" in text and text.count(f" p{protocol}") == 3
            return False
        wait_for(f"every member on this build (cluster protocol {protocol})", all_new, timeout=90)
        # A feature of this build: a fourth member joins as a non-voter.
        fourth = Node(tmp_path, 3, join, ports[3])
        fourth.start(new, "new", ["--bootstrap-expect", "0"])
        nodes.append(fourth)
        wait_for("the fourth node SERVING", lambda: health_status(fourth.addr) == SERVING)

        def rows():
            return [line for line in status(nodes[0].addr).splitlines() if line.startswith("node-")]
        wait_for("four members, node-3 the only non-voter",
                 lambda: len(rows()) == 4
                 and [r.split()[0] for r in rows() if r.split()[1] == "non-voter"] == ["node-3"])
        load.stop()
        acked = sorted(load.acked, key=lambda a: a[1])
        assert acked, "nothing acknowledged"
        top = acked[-1][1] + 1
        print(f"\nrolling upgrade: {len(acked)} records acknowledged, longest time without an "
              f"acknowledged write {load.longest_gap:.2f} s")
        logs = {}
        def has_all(n):
            try:
                return len(read_all(proto, n.addr, top, deadline=10)) >= top
            except grpc.RpcError:
                return False
        for n in nodes:
            wait_for(f"every record on node-{n.i}", lambda n=n: has_all(n), timeout=60)
            logs[n.i] = read_all(proto, n.addr, top)
        reference = logs[0]
        values = [v for _, v in reference]
        assert len(values) == len(set(values)), "a record appears twice"
        at = dict(reference)
        for value, off in acked:
            assert at.get(off) == value, f"acknowledged {value!r} at {off}, found {at.get(off)!r}"
        for i, log in logs.items():
            assert log == reference, f"node-{i} disagrees with node-0"
        # An election takes about a second; a leave-and-rejoin of 0.1.0 a
        # few. Generous, for a loaded CI machine.
        assert load.longest_gap < 15, f"writes stopped for {load.longest_gap:.1f} s"
        # The data dirs now say which formats and build wrote them.
        for n in nodes[:3]:
            fmt = (n.data / "FORMAT").read_text()
            assert '"data_format":1' in fmt and "0.2.0" in fmt, fmt
    finally:
        if load:
            load.stop()
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
