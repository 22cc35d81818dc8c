#!/usr/bin/env bash
# Installs everything scripts/test.sh needs on a fresh Debian machine, every
# step idempotent (cheap when all is there): Debian packages, the musl target,
# and the Python venv for tests/e2e. scripts/test.sh runs it first.
#
#   RUN_IMAGE_TEST=0   skip the image test's installs (musl target, musl-tools, podman)
#   RUN_FAULT_TEST=0   skip the fault-injection test's installs (iproute2, iptables; root only)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

echo "==> install"
have cargo  || die "cargo not found: this machine needs the Rust toolchain (rustup)"
have python3 || die "python3 not found"

# Debian packages: curl (e2e HTTP tests), file (static-binary check); for the
# image test, musl-tools (musl-gcc for ring) and podman + runc + netavark +
# aardvark-dns (container DNS: the chart and DNS-discovery tests need it).
pkgs=(curl file)
if [ "${RUN_IMAGE_TEST:-1}" != 0 ]; then
    pkgs+=(musl-tools podman runc netavark aardvark-dns)
    if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        rustup target add x86_64-unknown-linux-musl || die "rustup target add x86_64-unknown-linux-musl failed"
    fi
fi
# The fault-injection step (scripts/faults/harness.py --ci) runs only as root:
# iproute2 (namespaces, veth, bridge, tc) and iptables (partitions).
if [ "${RUN_FAULT_TEST:-1}" != 0 ] && [ "$(id -u)" -eq 0 ]; then
    pkgs+=(iproute2 iptables)
fi
apt_install "${pkgs[@]}"

# Python venv for tests/e2e (pytest, grpcio, grpcio-tools, grpcurl); tests/faults
# and scripts/faults/harness.py use the same venv (grpcio, grpcio-tools, pytest).
if ! "$E2E_VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$E2E_VENV"
    python3 -m venv "$E2E_VENV" || die "python3 -m venv $E2E_VENV failed"
fi
"$E2E_VENV/bin/pip" install -q --disable-pip-version-check -r tests/e2e/requirements.txt \
    || die "pip install -r tests/e2e/requirements.txt failed"

cargo --version
"$E2E_VENV/bin/python" --version
"$E2E_VENV/bin/grpcurl" -version 2>&1 || die "grpcurl from the venv does not run"

