#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace sink for benchmarks: accepts every Export call
and counts the bytes received. Usage: otlp-sink.py PORT"""
import sys, time
from concurrent import futures

import grpc

received = 0


def export(request: bytes, context) -> bytes:
    global received
    received += len(request)
    return b""  # an empty ExportTraceServiceResponse


handler = grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)},
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
try:
    while True:
        time.sleep(1)
except KeyboardInterrupt:
    print(f"received {received} bytes", file=sys.stderr)
