"""A three-node cluster of real sidelog binaries on loopback: it forms with
--bootstrap-expect 3, a follower accepts writes, every node serves them,
`sidelog cluster status` reports the members, and SIGTERM with
--leave-on-terminate is a graceful leave that shrinks the membership."""
from __future__ import annotations

import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2

from conftest import Agent, free_ports, health_status, sidelog_bin, stop_agent


def status(addr: str) -> str:
    out = subprocess.run([str(sidelog_bin()), "cluster", "status", "--addr", addr],
                         capture_output=True, text=True, timeout=10)
    return out.stdout if out.returncode == 0 else ""


def wait_for(what: str, cond, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_three_binaries_form_a_cluster_replicate_and_leave(tmp_path, proto):
    ports = [free_ports(3) for _ in range(3)]
    join = ",".join(f"127.0.0.1:{p[1]}" for p in ports)
    agents: list[Agent] = []
    try:
        for i, (client, peer, http) in enumerate(ports):
            log_path = tmp_path / f"node-{i}.log"
            a = Agent(proc=None, data_dir=tmp_path / f"data-{i}", log_path=log_path,  # type: ignore[arg-type]
                      client_addr=f"127.0.0.1:{client}", peer_addr=f"127.0.0.1:{peer}",
                      http_addr=f"127.0.0.1:{http}")
            with open(log_path, "wb") as log:
                a.proc = subprocess.Popen(
                    [str(sidelog_bin()), "agent", "--node-id", f"node-{i}", "--data-dir", str(a.data_dir),
                     "--client-addr", a.client_addr, "--peer-addr", a.peer_addr, "--http-addr", a.http_addr,
                     "--join", join, "--bootstrap-expect", "3", "--leave-on-terminate"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
            agents.append(a)
        for a in agents:
            wait_for(f"{a.client_addr} SERVING",
                     lambda a=a: health_status(a.client_addr) == health_pb2.HealthCheckResponse.SERVING)

        leader = next(i for i, a in enumerate(agents) if "(leader)" in status(a.client_addr))
        text = status(agents[leader].client_addr)
        for i in range(3):
            assert f"node-{i}" in text, text
        follower = (leader + 1) % 3
        with grpc.insecure_channel(agents[follower].client_addr) as ch:
            stub = proto.grpc.LogStub(ch)
            offsets = [stub.Produce(proto.pb2.ProduceRequest(record=proto.pb2.Record(value=f"v{i}".encode()))).offset
                       for i in range(10)]
        assert offsets == list(range(10))
        for a in agents:
            with grpc.insecure_channel(a.client_addr) as ch:
                stub = proto.grpc.LogStub(ch)

                def committed(stub=stub):
                    try:
                        return stub.Consume(proto.pb2.ConsumeRequest(offset=9)).record.value == b"v9"
                    except grpc.RpcError:
                        return False
                wait_for(f"offset 9 on {a.client_addr}", committed)

        # SIGTERM on a follower: it leaves, exits 0, and the others see two members.
        stop_agent(agents[follower])
        remaining = [a for i, a in enumerate(agents) if i != follower]
        def members(addr):
            return [line for line in status(addr).splitlines() if line.startswith("node-")]
        wait_for("membership of two", lambda: len(members(remaining[0].client_addr)) == 2)
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait()
