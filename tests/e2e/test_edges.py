"""The edges a user touches first (issue 23), against the real binary: the
CLI's exit codes and messages, flags that do what their help says, size
limits that agree between gRPC and HTTP, errors in the API's terms,
reflection, logs, and a connection flood under a low descriptor limit.

Each test fails on the build before issue 23. Run:
SIDELOG_BIN=target/debug/sidelog pytest -q tests/e2e/test_edges.py
"""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from conftest import free_ports, health_status, sidelog_bin

RPC_TIMEOUT = 10


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDELOG_")}
    env.update(extra)
    return env


class Proc:
    """A `sidelog agent` with the given extra flags on free loopback ports."""

    def __init__(self, tmp: Path, *args: str, preexec=None, name: str = "edge", ports=None, env=None,
                 data: Path | None = None, client_host: str = "127.0.0.1"):
        self.client, self.peer, self.http = ports or free_ports(3)
        self.client_addr = f"127.0.0.1:{self.client}"
        self.http_url = f"http://127.0.0.1:{self.http}"
        self.log_path = tmp / f"{name}.log"
        cmd = [str(sidelog_bin()), "agent", "--data-dir", str(data or tmp / f"{name}-data"), "--node-id", name,
               "--client-addr", f"{client_host}:{self.client}", "--http-addr", f"127.0.0.1:{self.http}",
               "--peer-addr", f"127.0.0.1:{self.peer}", *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env or clean_env(), preexec_fn=preexec, cwd=tmp)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while health_status(self.client_addr) != 1:
            assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"not serving within {timeout}s:\n{self.logs()}"
            time.sleep(0.05)
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


def cli(*args: str, env=None, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(sidelog_bin()), *args], input=stdin, capture_output=True,
                          env=env or clean_env(), timeout=timeout)


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


# --------------------------------------------------------------------------
# 6. The CLI and flags
# --------------------------------------------------------------------------

def test_consume_into_a_closed_pipe_exits_0_quietly(tmp_path, procs):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    for i in range(50):
        assert cli("produce", "--addr", a.client_addr, "--value", f"r{i}").returncode == 0
    # `sidelog consume | head -1`
    c = subprocess.Popen([str(sidelog_bin()), "consume", "--addr", a.client_addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    first = c.stdout.readline()
    c.stdout.close()
    code = c.wait(timeout=30)
    err = c.stderr.read().decode()
    assert first.startswith(b"0\t"), first
    assert code == 0 and err == "", (code, err)


def test_empty_stdin_lines_are_not_records(tmp_path, procs):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    out = cli("produce", "--addr", a.client_addr, stdin=b"one\n\n\ntwo\n\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["0", "1"], out.stdout
    listed = cli("consume", "--addr", a.client_addr).stdout.decode().splitlines()
    assert listed == ["0\tone", "1\ttwo"], listed


def test_the_client_ignores_the_agents_tls_variables(tmp_path, procs):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    # Inside the agent's pod SIDELOG_TLS_* name the server's files: the CLI
    # must not present them (here they do not even exist).
    env = clean_env(SIDELOG_TLS_CERT="/nonexistent/server.pem", SIDELOG_TLS_KEY="/nonexistent/server-key.pem",
                    SIDELOG_TLS_CA="/nonexistent/ca.pem")
    out = cli("produce", "--addr", a.client_addr, "--value", "x", env=env)
    assert out.returncode == 0, out.stderr
    help_text = cli("produce", "--help").stdout.decode()
    assert "SIDELOG_CLIENT_TLS_CA" in help_text and "SIDELOG_TLS_CA=" not in help_text, help_text


def test_listen_addresses_take_host_names(tmp_path, procs):
    client, peer, http = free_ports(3)
    a = Proc(tmp_path, ports=(client, peer, http), client_host="localhost")
    procs.append(a)
    a.wait_serving()


def test_bootstrap_expect_0_without_peers_is_refused(tmp_path):
    a = Proc(tmp_path, "--bootstrap-expect", "0")
    code = a.proc.wait(timeout=30)
    assert code == 2, a.logs()
    assert "bootstrap-expect" in a.logs() and "--join" in a.logs(), a.logs()


def test_a_second_node_with_the_same_name_is_named_in_the_log(tmp_path, procs):
    ports = free_ports(6)
    p1, p2 = ports[:3], ports[3:]
    join = f"127.0.0.1:{p1[1]},127.0.0.1:{p2[1]}"
    a = Proc(tmp_path, "--join", join, "--bootstrap-expect", "2", name="twin", ports=p1)
    (tmp_path / "b").mkdir()
    b = Proc(tmp_path / "b", "--join", join, "--bootstrap-expect", "2", name="twin", ports=p2)
    procs.extend([a, b])
    deadline = time.monotonic() + 30
    while "--node-id" not in a.logs():
        assert time.monotonic() < deadline, a.logs()
        time.sleep(0.2)
    assert f"127.0.0.1:{p2[1]}" in a.logs(), a.logs()


# --------------------------------------------------------------------------
# 3. The CLI names the cause
# --------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "certs"
    assert cli("dev-certs", "--out", str(d)).returncode == 0
    other = tmp_path / "other"
    assert cli("dev-certs", "--out", str(other)).returncode == 0
    return d, other


def test_the_cli_names_tls_and_authentication_causes(tmp_path, procs, pki):
    d, other = pki
    a = Proc(tmp_path, "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"),
             "--tls-ca", str(d / "ca.pem"))
    procs.append(a)
    addr = ["--addr", a.client_addr, "--value", "x"]
    root = ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "root-client.pem"), "--tls-key",
            str(d / "root-client-key.pem")]
    deadline = time.monotonic() + 30
    while cli("produce", *addr, *root).returncode != 0:
        assert time.monotonic() < deadline, a.logs()
        time.sleep(0.2)
    plaintext = cli("produce", *addr)
    assert plaintext.returncode == 1
    assert b"TLS" in plaintext.stderr and b"GetServers" not in plaintext.stderr, plaintext.stderr
    no_cert = cli("produce", *addr, "--tls-ca", str(d / "ca.pem"))
    assert b"client certificate" in no_cert.stderr, no_cert.stderr
    wrong_ca = cli("produce", *addr, "--tls-ca", str(other / "ca.pem"), "--tls-cert",
                   str(other / "root-client.pem"), "--tls-key", str(other / "root-client-key.pem"))
    assert b"certificate" in wrong_ca.stderr, wrong_ca.stderr
    ok = cli("produce", *addr, "--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "root-client.pem"),
             "--tls-key", str(d / "root-client-key.pem"))
    assert ok.returncode == 0, ok.stderr


# --------------------------------------------------------------------------
# 7. Reflection
# --------------------------------------------------------------------------

def test_reflection_lists_only_the_ports_services_and_needs_its_credentials(tmp_path, procs, pki, grpcurl):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    out = subprocess.run([grpcurl, "-plaintext", a.client_addr, "list"], capture_output=True, text=True,
                         timeout=30)
    services = out.stdout.split()
    assert "log.v1.Log" in services and "sidelog.v1.Peer" not in services, services
    d, _ = pki
    (tmp_path / "tls").mkdir()
    t = Proc(tmp_path / "tls", "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"),
             "--tls-ca", str(d / "ca.pem"), name="tls")
    procs.append(t)
    tls = ["-cacert", str(d / "ca.pem"), "-servername", "localhost"]
    deadline = time.monotonic() + 30
    while True:
        root = subprocess.run([grpcurl, *tls, "-cert", str(d / "root-client.pem"), "-key",
                               str(d / "root-client-key.pem"), t.client_addr, "list"],
                              capture_output=True, text=True, timeout=30)
        if root.returncode == 0:
            break
        assert time.monotonic() < deadline, (root.stderr, t.logs())
        time.sleep(0.2)
    assert "log.v1.Log" in root.stdout, root.stdout
    anonymous = subprocess.run([grpcurl, *tls, t.client_addr, "list"], capture_output=True, text=True,
                               timeout=30)
    assert anonymous.returncode != 0, anonymous.stdout
    assert "certificate" in anonymous.stderr, anonymous.stderr


# --------------------------------------------------------------------------
# 4 and 5. One size limit; errors in the API's terms
# --------------------------------------------------------------------------

def test_one_record_size_limit_on_every_api(tmp_path, procs, proto):
    a = Proc(tmp_path, "--max-record-bytes", "8MiB")
    procs.append(a)
    a.wait_serving()
    big = b"x" * (5 << 20)
    with grpc.insecure_channel(a.client_addr, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = proto.grpc.LogStub(ch)
        assert stub.Produce(proto.pb2.ProduceRequest(record=proto.pb2.Record(value=big)),
                            timeout=RPC_TIMEOUT).offset == 0
        with pytest.raises(grpc.RpcError) as over:
            stub.Produce(proto.pb2.ProduceRequest(record=proto.pb2.Record(value=b"x" * (9 << 20))),
                         timeout=RPC_TIMEOUT)
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT, over.value
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"record": {"value": base64.b64encode(big).decode()}}))
    code, text = curl("-X", "POST", a.http_url, "--data-binary", f"@{body}")
    assert (code, json.loads(text)) == (200, {"offset": 1}), text
    body.write_text(json.dumps({"record": {"value": base64.b64encode(b"x" * (9 << 20)).decode()}}))
    code, text = curl("-X", "POST", a.http_url, "--data-binary", f"@{body}")
    assert code == 413 and "error" in json.loads(text), text


def test_a_message_over_the_default_limit_is_invalid_argument_not_out_of_range(tmp_path, procs, proto):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    with grpc.insecure_channel(a.client_addr, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = proto.grpc.LogStub(ch)
        with pytest.raises(grpc.RpcError) as over:
            stub.Produce(proto.pb2.ProduceRequest(record=proto.pb2.Record(value=b"x" * (5 << 20))),
                         timeout=RPC_TIMEOUT)
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT, over.value


def test_http_errors_are_json_in_the_apis_terms(tmp_path, procs):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    for bad in ['{"offset":-1}', '{"offset":1.5}', '{"offset":null}']:
        code, text = curl("-X", "GET", a.http_url, "-d", bad)
        assert code == 400, (bad, code, text)
        message = json.loads(text)["error"]
        assert "offset" in message and "untagged" not in message, message
    code, text = curl("-X", "PUT", a.http_url)
    assert code == 405 and "error" in json.loads(text), text


def test_errors_say_each_cause_once_and_name_names(tmp_path, procs):
    a = Proc(tmp_path)
    procs.append(a)
    a.wait_serving()
    # The same ports again: address in use, said once.
    (tmp_path / "again").mkdir()
    b = Proc(tmp_path / "again", ports=(a.client, a.peer, a.http), name="again")
    assert b.proc.wait(timeout=30) == 1
    line = [l for l in b.logs().splitlines() if l.startswith("sidelog:")][-1]
    assert line.count("Address already in use") == 1, line
    # The same data dir again: in use, said once.
    c = Proc(tmp_path, name="same", ports=free_ports(3), data=tmp_path / "edge-data")
    assert c.proc.wait(timeout=30) == 1
    line = [l for l in c.logs().splitlines() if l.startswith("sidelog:")][-1]
    assert line.count("in use by another process") == 1, line
    # A data dir that is a file.
    (tmp_path / "file").write_text("")
    d = subprocess.run([str(sidelog_bin()), "agent", "--data-dir", str(tmp_path / "file")], capture_output=True,
                       text=True, env=clean_env(), timeout=30)
    assert d.returncode == 2 and "not a directory" in d.stderr, d.stderr
    # Names, not hashes.
    out = cli("cluster", "remove", "nosuch", "--addr", a.client_addr)
    assert out.returncode == 1 and b"no member named nosuch" in out.stderr, out.stderr


# --------------------------------------------------------------------------
# 8. Logs
# --------------------------------------------------------------------------

def test_text_logs_have_no_colours_off_a_terminal_and_no_raft_state_dumps(tmp_path, procs):
    a = Proc(tmp_path, "--log-format", "text")
    procs.append(a)
    a.wait_serving()
    assert cli("produce", "--addr", a.client_addr, "--value", "x").returncode == 0
    a.stop()
    logs = a.logs()
    assert "\x1b[" not in logs, logs[:2000]
    assert " INFO openraft" not in logs, [l for l in logs.splitlines() if "openraft" in l][:5]


# --------------------------------------------------------------------------
# 1. A connection flood under a low descriptor limit
# --------------------------------------------------------------------------

def test_a_connection_flood_under_a_low_descriptor_limit_leaves_the_agent_serving(tmp_path, procs, proto):
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    a = Proc(tmp_path, "--segment-max-bytes", "4KiB", preexec=low_limit)
    procs.append(a)
    a.wait_serving()
    flood = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", a.http))
            except OSError:
                s.close()
                continue
            flood.append(s)
        # Records over gRPC, one call each, roll many 4 KiB segments (each
        # roll opens files).
        with grpc.insecure_channel(a.client_addr) as ch:
            stub = proto.grpc.LogStub(ch)
            for i in range(300):
                value = b"record %04d %s" % (i, b"y" * 200)
                assert stub.Produce(proto.pb2.ProduceRequest(record=proto.pb2.Record(value=value)),
                                    timeout=RPC_TIMEOUT).offset == i
        assert a.proc.poll() is None, f"the agent died:\n{a.logs()[-3000:]}"
        assert health_status(a.client_addr) == 1
    finally:
        for s in flood:
            s.close()
    # Once the flood is gone, HTTP serves again.
    deadline = time.monotonic() + 10
    while True:
        code, _ = curl("-m", "2", f"{a.http_url}/healthz")
        if code == 200:
            break
        assert time.monotonic() < deadline, code
        time.sleep(0.2)
    assert "accept failed" not in a.logs() or a.logs().count("accept failed") < 20, a.logs()[-2000:]


def test_a_trickled_http_body_is_cut_off(tmp_path, procs):
    a = Proc(tmp_path, "--http-header-timeout", "2s")
    procs.append(a)
    a.wait_serving()
    s = socket.create_connection(("127.0.0.1", a.http), timeout=30)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    started = time.monotonic()
    answer = b""
    try:
        while not answer:
            s.sendall(b" ")
            s.settimeout(1)
            try:
                answer = s.recv(4096)
            except socket.timeout:
                pass
            assert time.monotonic() - started < 15, "the trickled body is still being read"
    finally:
        s.close()
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]


# --------------------------------------------------------------------------
# 9. The README's cluster example, beside the README's lone agent
# --------------------------------------------------------------------------

def test_the_readme_cluster_example_runs_beside_the_lone_agent(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### A cluster", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    binary = str(sidelog_bin())
    lone = subprocess.Popen([binary, "agent", "--data-dir", str(tmp_path / "lone")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    script = tmp_path / "cluster.sh"
    # The example as written, with `sidelog` on PATH being this build; the
    # script stops its agents at the end.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sidelog").symlink_to(binary)
    script.write_text("set -e\n"
                      "until sidelog cluster status --addr 127.0.0.1:8400 >/dev/null 2>&1; do sleep 0.1; done\n"
                      + block.replace("sidelog cluster status", "sleep 3; sidelog cluster status")
                      + "\nkill $(jobs -p) 2>/dev/null || true\nwait\n")
    env = clean_env()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    try:
        out = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=90,
                             env=env)
    finally:
        lone.send_signal(signal.SIGTERM)
        lone.wait(timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    # (The agents' logs share stdout.) The status names a leader, and the
    # produce printed its offset.
    lines = out.stdout.splitlines()
    assert any(l.startswith("leader:") and "node-" in l for l in lines), out.stdout[-3000:]
    assert "0" in lines, out.stdout[-3000:]


def test_cluster_status_answers_for_a_node_still_forming(tmp_path, procs):
    # It waits for two peers that never come.
    a = Proc(tmp_path, "--join", "127.0.0.1:9,127.0.0.1:10", "--bootstrap-expect", "3")
    procs.append(a)
    deadline = time.monotonic() + 30
    while True:
        out = cli("cluster", "status", "--addr", a.client_addr)
        if out.returncode == 0:
            break
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.2)
    assert b"node:      edge" in out.stdout and b"leader:    unknown" in out.stdout, out.stdout
    # A produce says why nothing happens instead of naming an RPC.
    produce = cli("produce", "--addr", a.client_addr, "--value", "x", timeout=60)
    assert produce.returncode == 1 and b"GetServers" not in produce.stderr, produce.stderr
    assert b"forming" in produce.stderr, produce.stderr
