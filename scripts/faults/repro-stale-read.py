#!/usr/bin/env python3
"""Reproduces a stale linearizable read the kill fault found (3 nodes on
127.0.0.1, no root needed).

A leader acknowledges a record and is killed -9 at once, before the
followers learn the new commit index; it restarts before the followers elect
another leader. openraft 0.9 restores a restarted node's leadership when its
vote is committed and its own (Engine::startup), with noop_log_id = the first
entry of its old term and a committed index rebuilt from the state machine
(sidelog stores no committed index: no save_committed). Its read index,
max(noop_log_id, committed), is then lower than the record it acknowledged,
so a follower that asks for it (ConsumeRequest.linearizable = true) serves
its own older commit watermark: OUT_OF_RANGE for an acknowledged offset. The
record is not lost: it shows up once the leader commits something new.

  scripts/faults/repro-stale-read.py [--bin PATH] [--trials N]
Exit 0 when no trial saw a stale read, 1 when one did, 2 on setup errors.
Needs grpcio + grpcio-tools (run it with target/e2e-venv/bin/python).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402  (Api: stubs compiled from the repo's protos)

BASE = 18500  # client 18501..3, peer 18511..3, http 18521..3 on 127.0.0.1


class N:
    def __init__(self, i, work: Path, bin_: Path):
        self.i, self.name = i, f"n{i}"
        self.client = f"127.0.0.1:{BASE + i}"
        self.peer = f"127.0.0.1:{BASE + 10 + i}"
        self.http = f"127.0.0.1:{BASE + 20 + i}"
        self.data = work / self.name
        self.log = work / f"{self.name}.log"
        self.bin = bin_
        self.proc = None

    def start(self, join):
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [str(self.bin), "agent", "--node-id", self.name, "--data-dir", str(self.data),
                 "--client-addr", self.client, "--peer-addr", self.peer, "--http-addr", self.http,
                 "--join", join, "--bootstrap-expect", "3"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("SIDELOG_BIN", harness.DEFAULT_BIN)))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--writers", type=int, default=4, help="threads writing to the leader before the kill")
    ap.add_argument("--readers", type=int, default=3, help="reader threads per node after the kill")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sidelog-stale-read-"))
    api = harness.Api(harness.REPO / "proto", work / "stubs")
    grpc, pb = api.grpc, api.log
    nodes = [N(i, work, a.bin) for i in (1, 2, 3)]
    join = ",".join(n.peer for n in nodes)
    chans = {n.name: api.channel(n.client) for n in nodes}
    log = {k: api.log_grpc.LogStub(c) for k, c in chans.items()}
    cl = {k: api.peer_grpc.ClusterStub(c) for k, c in chans.items()}

    def leader():
        for n in nodes:
            try:
                if cl[n.name].Status(api.peer.StatusRequest(), timeout=0.5).state == "leader":
                    return n
            except grpc.RpcError:
                pass
        return None

    def wait_leader(t=20):
        end = time.monotonic() + t
        while time.monotonic() < end:
            lead = leader()
            if lead:
                return lead
            time.sleep(0.1)
        return None

    stale = 0
    try:
        for n in nodes:
            n.start(join)
        if not wait_leader(30):
            print("no leader within 30 s; logs in", work)
            return 2
        for trial in range(1, a.trials + 1):
            lead = wait_leader()
            st = cl[lead.name].Status(api.peer.StatusRequest(), timeout=2)
            # Writers keep the leader busy, so that a commit index reaches the
            # followers only with a later AppendEntries; the leader is killed
            # right after an acknowledgement.
            acked = []
            stop = threading.Event()

            def writer(k, stub=log[lead.name]):
                j = 0
                while not stop.is_set():
                    j += 1
                    try:
                        r = stub.Produce(pb.ProduceRequest(record=pb.Record(value=f"t{trial}-{k}-{j}".encode())),
                                         timeout=2)
                    except grpc.RpcError:
                        return
                    if not stop.is_set():
                        acked.append(r.offset)
            ws = [threading.Thread(target=writer, args=(k,)) for k in range(a.writers)]
            for w in ws:
                w.start()
            time.sleep(0.5)
            n_acked = len(acked)
            while len(acked) == n_acked:
                pass
            stop.set()
            off = max(acked)
            lead.kill9()  # right after an acknowledgement
            for w in ws:
                w.join()
            # Readers on every node from before the restart until well after.
            results = []
            stop_r = threading.Event()

            def reader(n):
                stub = api.log_grpc.LogStub(api.channel(n.client))
                while not stop_r.is_set():
                    try:
                        r = stub.Consume(pb.ConsumeRequest(offset=off, linearizable=True), timeout=2)
                        assert r.record.offset == off
                        results.append(f"{n.name}:ok")
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                            results.append(f"{n.name}:STALE ({e.details()})")
                        else:
                            results.append(f"{n.name}:{e.code().name}")
                            time.sleep(0.002)
            rs = [threading.Thread(target=reader, args=(n,)) for n in nodes for _ in range(a.readers)]
            for r in rs:
                r.start()
            time.sleep(0.05)
            lead.start(join)
            time.sleep(2)
            stop_r.set()
            for r in rs:
                r.join()
            new = leader()
            bad = [r for r in results if "STALE" in r]
            stale += bool(bad)
            print(f"trial {trial}: leader {lead.name} (term {st.term}) acknowledged offset {off}, killed -9, "
                  f"restarted; leader now {new.name if new else None}; linearizable reads of {off}: "
                  + (f"{len(bad)} STALE, e.g. {bad[0]}" if bad else
                     f"{sum(r.endswith(':ok') for r in results)} ok, none stale"))
            time.sleep(1.5)
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.kill9()
        for c in chans.values():
            c.close()
    print(f"{stale} of {a.trials} trials saw a stale linearizable read; node logs in {work}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
