#!/usr/bin/env bash
# The main job, end to end, in one command: the real SmolLM2-135M model, real English
# text, activations of a middle layer, a TopK SAE, its evaluation on held-out text.
#
#   scripts/main.sh
#
# It fetches the model and corpus (scripts/setup.sh), builds saelab, and runs
# `saelab run configs/main.toml`, which extracts the train and held-out caches, trains
# the SAE, evaluates it on held-out activations and in the model, and prints and
# writes the summary (RUN_DIR/summary.txt, RUN_DIR/summary.json). Idempotent: a
# complete step is not redone, and an interrupted step (Ctrl-C) continues where it
# stopped when the script is run again.
#
# Environment (defaults in brackets: those of configs/main.toml), each a --set override:
#   EXTRACT_TOKENS  [1000000]   training activations to extract   (extract.train_tokens)
#   HELDOUT_TOKENS  [65536]     held-out activations for evaluation (extract.heldout_tokens)
#   TRAIN_TOKENS    [4000000]   training tokens; epochs over the cache: TRAIN/EXTRACT
#                                                                 (train.total_tokens)
#   HOOK            [blocks.15.hook_resid_post]                   (hook)
#   K [32] (sae.k)  EXPANSION [16] (sae.expansion_factor)  LR [1e-3] (train.lr)
#   BATCH_SIZE [4096] (train.batch_size)  CTX_LEN [128] (ctx_len)  BATCH [8] (batch)
#   INMODEL_TOKENS  [16384]     held-out tokens for the in-model evaluation (inmodel.tokens)
#   FEATURES_TOKENS [262144]    training tokens of the features pass (features.tokens)
#   EVAL_EVERY      [50]        steps between validation evaluations (train.eval_every)
#   RUN_DIR         [runs/main] where caches, the SAE and the summary go (out)
#   SAELAB_PREBUILT  set: use the saelab binary already built (scripts/test.sh)
#   MODEL           [smollm2]   the model: smollm2, or a model scripts/setup.sh fetches on
#                               request (qwen2.5-0.5b: Qwen2.5-Coder-0.5B-Instruct, with
#                               HOOK blocks.12.hook_resid_post and RUN_DIR
#                               runs/main-qwen2.5-0.5b unless they are set; qwen2.5-1.5b:
#                               Qwen2.5-Coder-1.5B-Instruct, blocks.14.hook_resid_post,
#                               runs/main-qwen2.5-1.5b; gemma3-270m:
#                               Gemma-3-270M base, blocks.9.hook_resid_post,
#                               runs/main-gemma3-270m)
#   SAELAB_DATA     [data]      where setup.sh put the model and corpus (model, corpus)
#   SAELAB_THREADS  [all cores] threads for the model and the trainer
#   CHECK           [unset]     if set, fail unless the figures are within the bounds of
#                               a working pipeline (saelab run --check; CI sets it)
#
# CI runs a small version, e.g.
#   EXTRACT_TOKENS=20000 HELDOUT_TOKENS=4096 TRAIN_TOKENS=40960 RUN_DIR=target/ci-main \
#     scripts/main.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export RAYON_NUM_THREADS="${SAELAB_THREADS:-${RAYON_NUM_THREADS:-$(nproc)}}"
data="${SAELAB_DATA:-$root/data}"
SAELAB="${CARGO_TARGET_DIR:-$root/target}/release/saelab"

setup_args=()
case "${MODEL:-smollm2}" in
  smollm2) gguf=SmolLM2-135M-Instruct.Q4_1.gguf ;;
  qwen2.5-0.5b)
    gguf=Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
    setup_args=(--model qwen2.5-0.5b)
    HOOK="${HOOK:-blocks.12.hook_resid_post}"
    RUN_DIR="${RUN_DIR:-runs/main-qwen2.5-0.5b}" ;;
  qwen2.5-1.5b)
    gguf=Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
    setup_args=(--model qwen2.5-1.5b)
    HOOK="${HOOK:-blocks.14.hook_resid_post}"
    RUN_DIR="${RUN_DIR:-runs/main-qwen2.5-1.5b}" ;;
  gemma3-270m)
    gguf=gemma-3-270m.Q4_K_M.gguf
    setup_args=(--model gemma3-270m)
    HOOK="${HOOK:-blocks.9.hook_resid_post}"
    RUN_DIR="${RUN_DIR:-runs/main-gemma3-270m}" ;;
  *) echo "main.sh: unknown MODEL ${MODEL} (expected smollm2, qwen2.5-0.5b, qwen2.5-1.5b or gemma3-270m)" >&2; exit 2 ;;
esac

args=(--set "model=\"$data/models/$gguf\"" --set "corpus=\"$data/corpus\"")
set_from() { # ENV_VAR config.key [quoted]
  local v="${!1:-}"
  [ -n "$v" ] || return 0
  if [ "${3:-}" = quoted ]; then v="\"$v\""; fi
  args+=(--set "$2=$v")
}
set_from EXTRACT_TOKENS extract.train_tokens
set_from HELDOUT_TOKENS extract.heldout_tokens
set_from TRAIN_TOKENS train.total_tokens
set_from HOOK hook quoted
set_from K sae.k
set_from EXPANSION sae.expansion_factor
set_from LR train.lr
set_from BATCH_SIZE train.batch_size
set_from CTX_LEN ctx_len
set_from BATCH batch
set_from INMODEL_TOKENS inmodel.tokens
set_from EVAL_EVERY train.eval_every
set_from FEATURES_TOKENS features.tokens
set_from RUN_DIR out quoted
if [ -n "${CHECK:-}" ]; then args+=(--check); fi

echo "== setup: model and corpus"
./scripts/setup.sh "${setup_args[@]+"${setup_args[@]}"}"

echo
echo "== build"
if [ -n "${SAELAB_PREBUILT:-}" ]; then
  # The test suite's build already made the binary; a `cargo build` would build the
  # dependencies again, without the dev-dependencies' features.
  [ -x "$SAELAB" ] || { echo "main.sh: SAELAB_PREBUILT is set but $SAELAB is missing" >&2; exit 1; }
  echo "using $SAELAB"
else
  cargo build --release -p saelab-cli
fi

exec "$SAELAB" run configs/main.toml "${args[@]}"
