#!/usr/bin/env bash
# The whole test suite: fetch the real model and corpus and the tokenizer oracle
# (idempotent), check formatting, lints and the docs, run every test in release mode (the
# real-model tests need the speed), saelab-core's tests once more on the portable
# kernels (SAELAB_KERNELS=portable: what a CPU without AVX-512 runs), then saelab-core's
# unit tests in the dev profile, where the debug_asserts in front of unsafe code and
# overflow checks are on.
#
# SAELAB_REQUIRE_DATA=1: a test that needs the real data fails instead of skipping, so
# this script cannot pass without the real-model tests (CI sets CI=true, which does
# the same).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every step says how long it took (CI must stay well under 30 minutes on 2 cores).
start=$SECONDS
step() {
  local name=$1 t=$SECONDS
  shift
  "$@"
  echo "test.sh: $name took $((SECONDS - t)) s ($((SECONDS - start)) s in all)" >&2
}

# saelab-core's test binaries of the workspace build, run again with the portable
# kernels. Run from the workspace build rather than `cargo test -p saelab-core`, whose
# narrower feature set would build the dependencies a second time.
portable_core_tests() {
  local bins
  bins=$(cargo test --workspace --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] != "build-script-build" \
            and m["package_id"].split("#")[0].endswith("saelab-core") \
            and m["profile"]["test"]:
        print(m["executable"])')
  [ -n "$bins" ] || { echo "test.sh: no saelab-core test binaries found" >&2; exit 1; }
  for bin in $bins; do
    (cd crates/saelab-core && SAELAB_KERNELS=portable "$bin" -q)
  done
}

step setup ./scripts/setup.sh --oracle
step test_setup ./scripts/test_setup.sh     # setup: nothing fetched twice, a damaged encoder folder, its refusals
step browser_setup ./scripts/setup-browser.sh   # Debian's chromium + chromedriver, for the dashboard's browser test
export SAELAB_REQUIRE_DATA=1

step fmt cargo fmt --all -- --check
# Modules declared inside a macro (the architecture registry) are not reached from the
# crate roots, so rustfmt is also given every tracked Rust file by name.
git ls-files -z '*.rs' | xargs -0 rustfmt --check --edition 2021
step clippy cargo clippy --workspace --all-targets --release -- -D warnings
# The library crates' docs: every public item documented (#![warn(missing_docs)]) and
# every intra-doc link resolving.
RUSTDOCFLAGS="-D warnings" step doc cargo doc --release --no-deps --quiet \
  -p saelab-core -p saelab-lm -p saelab-eval -p saelab-jobs -p saelab-features \
  -p saelab-neuronpedia -p saelab-web -p saelab-steer -p saelab-testkit -p saelab-embed -p saelab-llm -p saelab-interp
step tests cargo test --workspace --release
step portable_kernels portable_core_tests
step core_dev_profile cargo test -p saelab-core --lib

# The main job, small (real model: setup, extract, train, evaluate, in-model evaluation,
# features pass), in a fresh folder, with the binary the tests built; CHECK fails it
# unless its figures are those of a working pipeline (finite, held-out FVU < 1,
# 0 < CE loss score <= 1, finite KL).
rm -rf target/ci-main
EXTRACT_TOKENS=20000 HELDOUT_TOKENS=4096 TRAIN_TOKENS=40960 EVAL_EVERY=0 INMODEL_TOKENS=2048 \
  FEATURES_TOKENS=8192 \
  RUN_DIR=target/ci-main CHECK=1 SAELAB_PREBUILT=1 step main_job ./scripts/main.sh

# Its SAE's features folder exported for Neuronpedia, and every invariant of the two
# layouts checked (docs/neuronpedia.md).
run=$(ls -d target/ci-main/sae-*/)
rm -rf target/ci-neuronpedia
step neuronpedia target/release/saelab export-neuronpedia --features "${run}features" --sae "${run}sae" \
  --out target/ci-neuronpedia --model-id smollm2-135m-instruct
python3 scripts/check_neuronpedia.py target/ci-neuronpedia
rm -rf target/ci-neuronpedia
