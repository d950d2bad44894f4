#!/usr/bin/env bash
# The whole test suite: fetch the real model and corpus (idempotent), check formatting
# and lints, then run every test in release mode (the real-model tests need the speed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
