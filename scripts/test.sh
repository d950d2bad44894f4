#!/usr/bin/env bash
# The whole test suite: fetch the real model and corpus (idempotent), check formatting
# and lints, then run every test in release mode (the real-model tests need the speed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release

# The main job, small (real model: setup, extract, train, evaluate, in-model evaluation),
# in a fresh folder; CHECK fails it unless its figures are those of a working pipeline
# (finite, held-out FVU < 1, 0 < CE loss score <= 1, finite KL).
rm -rf target/ci-main
EXTRACT_TOKENS=20000 HELDOUT_TOKENS=4096 TRAIN_TOKENS=40960 EVAL_EVERY=0 INMODEL_TOKENS=2048 \
  RUN_DIR=target/ci-main CHECK=1 ./scripts/main.sh
