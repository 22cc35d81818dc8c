#!/usr/bin/env bash
# sidelog vs NATS JetStream and etcd, side by side (see scripts/bench-compare.py):
#   scripts/bench-compare.sh [--nodes 1|3|both] [--records N] [--size B] [--inflight W] [--rounds R] [--no-etcd]
# Installs nats-server and etcd (Debian) and builds the release binary if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nats-server >/dev/null; then
    apt-get install -y nats-server >/dev/null
fi
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    apt-get install -y etcd-server etcd-client >/dev/null
fi
[ -x target/release/sidelog ] || cargo build --release --locked -j2 --bin sidelog
exec python3 scripts/bench-compare.py "$@"
