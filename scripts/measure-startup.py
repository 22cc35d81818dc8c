#!/usr/bin/env python3
"""Measures exec -> gRPC health SERVING for `sidelog agent` on a fresh data
dir, or with --data-dir on an existing one (each run restarts the agent on
it after a SIGTERM, i.e. a clean shutdown; e.g. a 1 GiB log made with
`sidelog perf produce --size 65536 --records 16384 --inflight 64`).

Usage: target/e2e-venv/bin/python scripts/measure-startup.py BINARY [RUNS] [--data-dir DIR]

The clock starts just before the process is spawned and stops at the first
health Check that answers SERVING; it includes opening the Python client's
channel (~1-2 ms), so it overstates the agent's own start time. Prints
each run and the median, plus the agent's idle RSS.
"""
import os, socket, statistics, subprocess, sys, tempfile, time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(binary, data_dir=None):
    cport, hport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "agent", "--data-dir", data_dir or os.path.join(d, "data"),
                              "--client-addr", f"127.0.0.1:{cport}", "--http-addr", f"127.0.0.1:{hport}",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        channel = None
        try:
            # grpc-python's reconnect backoff (>= ~100 ms) would dominate the
            # figure, so poll the port with plain connects first (~50 us each)
            # and only then open a channel and ask for health.
            deadline = t0 + 10
            while True:
                if time.perf_counter() > deadline:
                    raise SystemExit("agent never opened its port")
                try:
                    socket.create_connection(("127.0.0.1", cport), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.0001)
            channel = grpc.insecure_channel(f"127.0.0.1:{cport}")
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if time.perf_counter() > deadline:
                    raise SystemExit("agent never became SERVING")
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1, wait_for_ready=True)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    elapsed = time.perf_counter() - t0
                    break
            time.sleep(0.5)
            with open(f"/proc/{p.pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
            return elapsed, rss
        finally:
            p.terminate()
            p.wait()
            if channel is not None:
                channel.close()


def main():
    args = sys.argv[1:]
    data_dir = None
    if "--data-dir" in args:
        i = args.index("--data-dir")
        data_dir = args[i + 1]
        del args[i:i + 2]
    binary = args[0]
    runs = int(args[1]) if len(args) > 1 else 20
    times, rss = [], []
    for _ in range(runs):
        t, r = one_run(binary, data_dir)
        times.append(t * 1000)
        rss.append(r)
    print("exec -> SERVING ms:", " ".join(f"{t:.2f}" for t in times))
    print(f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms; idle RSS median {statistics.median(rss) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
