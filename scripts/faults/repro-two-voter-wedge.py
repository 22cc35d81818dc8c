#!/usr/bin/env python3
"""Reproduces a wedge the churn fault found: one node's death stops a
3-node group for good right after another node came back (3 nodes on
127.0.0.1, no root needed).

With --dead-member-timeout 5s, a voter paused (or cut off) for longer than
that is removed although no non-voter can take its place: {n1, n2, n3}
becomes {n1, n3}. When n2 comes back it rejoins as a non-voter and is
promoted a second or so later. If n3 dies before that promotion commits,
no quorum is left and nothing recovers it, though n1 and n2 are alive and
caught up: nothing commits, the dead voter cannot be replaced (its old voter
set has no live majority), the joint change under way never finishes, a
replacement node cannot join. The group needs --force-new-cluster. (Builds
with the odd-voter rule demoted n3 too and promoted back 1 -> 2 -> 3: the
same window, at the 2-voter step.)

The script pauses a follower for --pause s, resumes it, waits until the
leader has 2 voters and the returned node is a non-voter at most --max-lag
entries behind, kills the other non-leader voter, and watches writes.

  scripts/faults/repro-two-voter-wedge.py [--bin PATH] [--trials N]
Exit 0 when every trial recovered, 1 when one wedged, 2 on setup errors.
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

BASE = 18600  # client 18601..3, peer 18611..3, http 18621..3 on 127.0.0.1


class N:
    def __init__(self, i, work: Path, bin_: Path, trial: int):
        self.i, self.name = i, f"n{i}"
        self.client = f"127.0.0.1:{BASE + i}"
        self.peer = f"127.0.0.1:{BASE + 10 + i}"
        self.http = f"127.0.0.1:{BASE + 20 + i}"
        self.data = work / f"t{trial}" / self.name
        self.log = work / f"t{trial}-{self.name}.log"
        self.bin = bin_
        self.proc = None

    def start(self, join, timeout):
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [str(self.bin), "agent", "--node-id", self.name, "--data-dir", str(self.data),
                 "--client-addr", self.client, "--peer-addr", self.peer, "--http-addr", self.http,
                 "--join", join, "--bootstrap-expect", "3", "--dead-member-timeout", timeout],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def trial(a, api, work, t):
    grpc, pb = api.grpc, api.log
    nodes = [N(i, work, a.bin, t) for i in (1, 2, 3)]
    join = ",".join(n.peer for n in nodes)
    chans = {n.name: api.channel(n.client) for n in nodes}
    log = {k: api.log_grpc.LogStub(c) for k, c in chans.items()}
    cl = {k: api.peer_grpc.ClusterStub(c) for k, c in chans.items()}
    t0 = time.monotonic()
    say = lambda msg: print(f"  [{time.monotonic() - t0:6.2f}s] {msg}", flush=True)  # noqa: E731

    def status(n):
        try:
            return cl[n.name].Status(api.peer.StatusRequest(), timeout=0.5)
        except grpc.RpcError:
            return None

    def leader(skip=()):
        for n in nodes:
            if n in skip:
                continue
            s = status(n)
            if s is not None and s.state == "leader":
                return n, s
        return None, None

    def wait_for(cond, timeout, step=0.01):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = cond()
            if r:
                return r
            time.sleep(step)
        return None

    acks = []
    stop = threading.Event()

    def writer():
        j = 0
        while not stop.is_set():
            j += 1
            for n in nodes:
                if stop.is_set():
                    return
                if n.proc.poll() is not None:
                    continue
                try:
                    log[n.name].Produce(pb.ProduceRequest(record=pb.Record(value=f"t{t}-{j}".encode())), timeout=1)
                    acks.append(time.monotonic())
                except grpc.RpcError:
                    pass
            time.sleep(0.02)

    try:
        for n in nodes:
            n.start(join, a.dead_member_timeout)
        if not wait_for(lambda: leader()[0], 30, 0.1):
            say("no leader within 30 s")
            return None
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        time.sleep(1)
        lead, _ = leader()
        paused = next(n for n in nodes if n is not lead)
        say(f"leader {lead.name}; SIGSTOP {paused.name} for {a.pause:.0f} s")
        paused.signal(signal.SIGSTOP)
        time.sleep(a.pause)

        def voters():
            ld, s = leader(skip=(paused,))
            if not s:
                return None
            return ld, s, sorted(m.id for m in s.members if m.voter), sorted(m.id for m in s.members)
        v = voters()
        say(f"voters while {paused.name} is stopped: {v[2] if v else '?'}, members {v[3] if v else '?'} "
            f"(leader {v[0].name if v else None})")
        paused.signal(signal.SIGCONT)
        say(f"SIGCONT {paused.name}: waiting until the leader has 2 voters and the third node is a caught-up "
            f"non-voter (lag <= {a.max_lag})")

        def window():
            r = voters()
            if not r or len(r[2]) != 2 or len(r[3]) != 3:
                return None
            third = next(m for m in r[1].members if not m.voter)
            return r if third.HasField("lag") and third.lag <= a.max_lag else None
        got = wait_for(window, a.window)
        if not got:
            v = voters()
            say(f"never saw that within {a.window:.0f} s (voters now {v[2] if v else '?'}, members "
                f"{v[3] if v else '?'}): no wedge window this trial")
            return False
        ld, s, vs, _ = got
        other = next(n for n in nodes if n.name in vs and n is not ld)
        third = next(m for m in s.members if not m.voter)
        say(f"voters {vs} (leader {ld.name}), {third.id} a non-voter {third.lag} entries behind: "
            f"kill -9 {other.name}")
        other.kill9()
        t_kill = time.monotonic()
        time.sleep(a.observe)
        after = [x for x in acks if x > t_kill + 2]
        ld2, s2 = leader(skip=(other,))
        members = (", ".join(f"{m.id}({'voter' if m.voter else 'non-voter'})" for m in s2.members)
                   if s2 else "no leader")
        wedged = not after
        say(f"{len(after)} writes acknowledged from 2 s after the kill to {a.observe:.0f} s after it; "
            f"leader {ld2.name if ld2 else None}, members {members}"
            + ("  => WEDGED" if wedged else "  => recovered"))
        return wedged
    finally:
        stop.set()
        for n in nodes:
            n.kill9()
        for c in chans.values():
            c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("SIDELOG_BIN", harness.DEFAULT_BIN)))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--dead-member-timeout", default="5s")
    ap.add_argument("--pause", type=float, default=9.0, help="seconds the follower stays SIGSTOPped")
    ap.add_argument("--window", type=float, default=30.0, help="seconds to wait for the 2-voter state")
    ap.add_argument("--observe", type=float, default=30.0, help="seconds after the kill to watch for writes")
    ap.add_argument("--max-lag", type=int, default=100,
                    help="the returning node must be a non-voter at most this many entries behind before the kill")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sidelog-two-voter-wedge-"))
    api = harness.Api(harness.REPO / "proto", work / "stubs")
    wedged = 0
    ran = 0
    for t in range(1, a.trials + 1):
        print(f"trial {t}:")
        r = trial(a, api, work, t)
        if r is None:
            return 2
        ran += 1
        wedged += bool(r)
    print(f"{wedged} of {ran} trials wedged; node logs in {work}")
    return 1 if wedged else 0


if __name__ == "__main__":
    sys.exit(main())
