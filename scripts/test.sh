#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Run as root on Debian with the Rust toolchain installed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== dependencies"
./scripts/install-deps.sh
./scripts/ovs-start.sh
echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked
