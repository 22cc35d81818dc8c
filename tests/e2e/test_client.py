"""End-to-end tests of the client-facing surface of a real `sidelog agent`,
from outside Rust: a Python gRPC client (stubs generated from the repo's
proto/log/v1/log.proto at test time), `curl` against the HTTP/JSON API exactly
as in the book's first chapter, and `grpcurl` against health and reflection.

Each test gets a fresh single-node agent (see conftest.py), so offsets start
at 0. Run: SIDELOG_BIN=target/debug/sidelog pytest -q tests/e2e
"""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

RPC_TIMEOUT = 10  # seconds, per RPC


# --------------------------------------------------------------------------
# gRPC: log.v1.Log
# --------------------------------------------------------------------------

def produce(agent, proto, value: bytes) -> int:
    resp = agent.stub.Produce(
        proto.pb2.ProduceRequest(record=proto.pb2.Record(value=value)), timeout=RPC_TIMEOUT)
    return resp.offset


def consume(agent, proto, offset: int):
    return agent.stub.Consume(proto.pb2.ConsumeRequest(offset=offset), timeout=RPC_TIMEOUT).record


def test_produce_then_consume_by_offset(agent, proto):
    assert produce(agent, proto, b"hello world") == 0
    assert produce(agent, proto, b"second record") == 1

    r0 = consume(agent, proto, 0)
    assert (r0.value, r0.offset) == (b"hello world", 0)
    r1 = consume(agent, proto, 1)
    assert (r1.value, r1.offset) == (b"second record", 1)


def test_consume_stream_from_zero_yields_records_in_order(agent, proto):
    values = [b"first", b"second"]
    for i, v in enumerate(values):
        assert produce(agent, proto, v) == i

    call = agent.stub.ConsumeStream(proto.pb2.ConsumeRequest(offset=0), timeout=RPC_TIMEOUT)
    try:
        it = iter(call)
        got = [next(it).record for _ in values]
    finally:
        call.cancel()  # the stream follows the tail: it never ends by itself
    assert [(r.value, r.offset) for r in got] == [(v, i) for i, v in enumerate(values)]


def test_consume_stream_follows_the_tail(agent, proto):
    assert produce(agent, proto, b"before") == 0
    call = agent.stub.ConsumeStream(proto.pb2.ConsumeRequest(offset=0), timeout=RPC_TIMEOUT)
    try:
        it = iter(call)
        first = next(it).record
        assert (first.value, first.offset) == (b"before", 0)
        # Produced after the stream reached the end: it must still arrive.
        assert produce(agent, proto, b"after") == 1
        second = next(it).record
        assert (second.value, second.offset) == (b"after", 1)
    finally:
        call.cancel()


def test_consume_past_the_end_is_out_of_range(agent, proto):
    assert produce(agent, proto, b"only") == 0
    with pytest.raises(grpc.RpcError) as e:
        consume(agent, proto, 12345)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value
    assert "12345" in (e.value.details() or ""), e.value.details()


def test_produce_batch_returns_consecutive_offsets(agent, proto):
    assert produce(agent, proto, b"single") == 0
    values = [b"b1", b"b2", b"b3"]
    resp = agent.stub.ProduceBatch(
        proto.pb2.ProduceBatchRequest(records=[proto.pb2.Record(value=v) for v in values]),
        timeout=RPC_TIMEOUT)
    assert list(resp.offsets) == [1, 2, 3]
    for off, v in zip(resp.offsets, values):
        r = consume(agent, proto, off)
        assert (r.value, r.offset) == (v, off)


def test_produce_stream_answers_each_request_in_order(agent, proto):
    values = [b"s0", b"s1", b"s2"]
    reqs = (proto.pb2.ProduceRequest(record=proto.pb2.Record(value=v)) for v in values)
    offsets = [r.offset for r in agent.stub.ProduceStream(reqs, timeout=RPC_TIMEOUT)]
    assert offsets == [0, 1, 2]
    assert [consume(agent, proto, i).value for i in range(3)] == values


def test_get_servers_lists_this_node_as_leader(agent, proto):
    resp = agent.stub.GetServers(proto.pb2.GetServersRequest(), timeout=RPC_TIMEOUT)
    assert [(s.id, s.is_leader) for s in resp.servers] == [("e2e", True)]


# --------------------------------------------------------------------------
# HTTP/JSON, with the book's curl lines
# --------------------------------------------------------------------------

def curl_json(curl: str, method: str, url: str, body: str) -> tuple[int, object]:
    """Run curl like the book does (`curl -X METHOD URL -d BODY`, so no JSON
    Content-Type header); return (HTTP status, parsed JSON body)."""
    out = subprocess.run(
        [curl, "-sS", "-m", "10", "-X", method, url, "-d", body, "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"curl failed ({out.returncode}): {out.stderr}"
    text, _, status = out.stdout.rpartition("\n")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"{method} {url} -d {body!r}: HTTP {status}, body is not JSON: {text!r}")
    return int(status), parsed


def test_http_json_api_as_in_the_book(agent, proto, curl):
    url = agent.http_url
    # curl -X POST localhost:8080 -d '{"record":{"value":"TGV0J3MgR28gIzEK"}}'
    assert curl_json(curl, "POST", url, '{"record":{"value":"TGV0J3MgR28gIzEK"}}') == (200, {"offset": 0})
    assert curl_json(curl, "POST", url, '{"record":{"value":"TGV0J3MgR28gIzIK"}}') == (200, {"offset": 1})
    # curl -X GET localhost:8080 -d '{"offset":0}'
    assert curl_json(curl, "GET", url, '{"offset":0}') == (
        200, {"record": {"value": "TGV0J3MgR28gIzEK", "offset": 0}})
    assert curl_json(curl, "GET", url, '{"offset":1}') == (
        200, {"record": {"value": "TGV0J3MgR28gIzIK", "offset": 1}})
    # The same records over gRPC: HTTP values are base64 of the bytes.
    assert consume(agent, proto, 0).value == b"Let's Go #1\n"
    assert consume(agent, proto, 1).value == b"Let's Go #2\n"


def test_http_bad_json_is_400_with_json_error(agent, curl):
    status, body = curl_json(curl, "POST", agent.http_url, '{"record":')
    assert status == 400
    assert isinstance(body, dict) and "error" in body, body


def test_http_get_past_the_end_is_404_with_json_error(agent, curl):
    assert curl_json(curl, "POST", agent.http_url, '{"record":{"value":"TGV0J3MgR28gIzEK"}}') == (
        200, {"offset": 0})
    status, body = curl_json(curl, "GET", agent.http_url, '{"offset":7}')
    assert status == 404
    assert isinstance(body, dict) and "error" in body, body


# --------------------------------------------------------------------------
# grpcurl: reflection and health, as an operator would use them
# --------------------------------------------------------------------------

def run_grpcurl(grpcurl: str, *args: str) -> str:
    out = subprocess.run([grpcurl, "-plaintext", "-max-time", "10", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"grpcurl {' '.join(args)} failed ({out.returncode}): {out.stderr}"
    return out.stdout


def test_grpcurl_lists_log_and_health_services(agent, grpcurl):
    services = run_grpcurl(grpcurl, agent.client_addr, "list").split()
    assert "log.v1.Log" in services, services
    assert "grpc.health.v1.Health" in services, services


def test_grpcurl_health_check_is_serving(agent, grpcurl):
    out = run_grpcurl(grpcurl, agent.client_addr, "grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}, out
