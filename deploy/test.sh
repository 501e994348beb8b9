#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of every crate.
# Installs missing system packages first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
echo "==> the bank scenario's web app (python3 -m unittest)"
(cd deploy/bank-web && python3 -m unittest -q test_bank)
