#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Run as root on Debian with the Rust toolchain installed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== dependencies"
./scripts/install-deps.sh
./scripts/ovs-start.sh
echo "== no protoc at build time"
# A fresh machine needs only Rust to build evio (README): every cargo step below runs with a
# protoc that fails, and no build dependency may be a protobuf code generator.
no_protoc=$(mktemp -d)
trap 'rm -rf "$no_protoc"' EXIT
printf '#!/bin/sh\necho "protoc was called: evio must build without it" >&2\nexit 1\n' >"$no_protoc/protoc"
chmod +x "$no_protoc/protoc"
export PATH="$no_protoc:$PATH" PROTOC="$no_protoc/protoc"
if cargo tree --workspace --locked -e build,normal,dev --prefix none | grep -E '^(prost-build|tonic-build|tonic-prost-build|protoc-bin-vendored|protobuf-codegen) '; then
    echo "a protobuf code generator is a build dependency again (see docs/decisions/etcd-json-gateway.md)" >&2
    exit 1
fi
echo "== no test hooks in the daemon"
# evio-raft's test-hooks feature (EVIO_TEST_DENY_PEERS) comes only through evio-test-support,
# a dev-dependency: a build of evio-node alone (the image's) must not turn it on.
if cargo tree -p evio-node --locked -e no-dev -f '{p} {f}' --prefix none | grep -E '^evio-raft .*test-hooks'; then
    echo "evio-node's release build enables evio-raft/test-hooks" >&2
    exit 1
fi
echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# Every test binary runs even after one fails, so one CI run shows every failure.
cargo test --workspace --locked --no-fail-fast
