#!/usr/bin/env bash
# The main job, end to end, in one command: the real SmolLM2-135M model, real English
# text, activations of a middle layer, a TopK SAE, its evaluation on held-out text.
#
#   scripts/main.sh
#
#   1. scripts/setup.sh            model and corpus into data/ (checksummed, idempotent)
#   2. cargo build --release
#   3. saelab extract              EXTRACT_TOKENS rows of $HOOK from the train documents,
#                                  HELDOUT_TOKENS rows from the held-out documents
#                                  (every 20th), BOS positions excluded
#   4. saelab train                TopK, d_sae = EXPANSION x 576, k = K, on the train cache
#   5. saelab eval                 FVU, L0, dead fraction, ... on the held-out cache
#   6. saelab eval --model       CE loss score, ΔCE and KL with the SAE spliced into the
#                                  model on INMODEL_TOKENS held-out tokens
#   7. a summary
#
# Idempotent: a complete cache is reused (`saelab extract` says so and exits), a
# finished SAE is not trained again, and an interrupted step (Ctrl-C) continues where
# it stopped when the script is run again.
#
# Environment (defaults in brackets):
#   EXTRACT_TOKENS  [1000000]   training activations to extract
#   HELDOUT_TOKENS  [65536]     held-out activations for evaluation
#   TRAIN_TOKENS    [4000000]   training tokens (epochs over the cache: TRAIN/EXTRACT)
#   HOOK            [blocks.15.hook_resid_post]
#   K [32]  EXPANSION [16]  LR [1e-3]  BATCH_SIZE [4096]  CTX_LEN [128]  BATCH [8]
#   INMODEL_TOKENS  [16384]     held-out tokens for the in-model evaluation
#   EVAL_EVERY      [50]        steps between validation evaluations during training
#   RUN_DIR         [runs/main] where caches, the SAE and the summary go
#   SAELAB_THREADS  [all cores] threads for the model and the trainer
#
# CI runs a small version, e.g.
#   EXTRACT_TOKENS=20000 HELDOUT_TOKENS=4096 TRAIN_TOKENS=40960 RUN_DIR=target/ci-main \
#     scripts/main.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

EXTRACT_TOKENS="${EXTRACT_TOKENS:-1000000}"
HELDOUT_TOKENS="${HELDOUT_TOKENS:-65536}"
TRAIN_TOKENS="${TRAIN_TOKENS:-4000000}"
HOOK="${HOOK:-blocks.15.hook_resid_post}"
K="${K:-32}"
EXPANSION="${EXPANSION:-16}"
LR="${LR:-1e-3}"
BATCH_SIZE="${BATCH_SIZE:-4096}"
CTX_LEN="${CTX_LEN:-128}"
BATCH="${BATCH:-8}"
EVAL_EVERY="${EVAL_EVERY:-50}"
INMODEL_TOKENS="${INMODEL_TOKENS:-16384}"
RUN_DIR="${RUN_DIR:-runs/main}"
export RAYON_NUM_THREADS="${SAELAB_THREADS:-${RAYON_NUM_THREADS:-$(nproc)}}"

data="${SAELAB_DATA:-$root/data}"
MODEL="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS="$data/corpus"
TRAIN_CACHE="$RUN_DIR/acts/train-$HOOK"
HELDOUT_CACHE="$RUN_DIR/acts/heldout-$HOOK"
SAE_RUN="$RUN_DIR/sae-$HOOK-topk-k$K-x$EXPANSION-t$TRAIN_TOKENS"
SAELAB="${CARGO_TARGET_DIR:-$root/target}/release/saelab"

step() { echo; echo "== $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

step "1/7 setup: model and corpus"
./scripts/setup.sh

step "2/7 build"
t0=$(now)
cargo build --release -p saelab-cli
t_build=$(secs "$t0" "$(now)")

mkdir -p "$RUN_DIR/acts"
common=(--model "$MODEL" --hook "$HOOK" --corpus "$CORPUS" --ctx-len "$CTX_LEN" --batch "$BATCH")

step "3/7 extract $EXTRACT_TOKENS train + $HELDOUT_TOKENS held-out activations of $HOOK"
t0=$(now)
"$SAELAB" extract "${common[@]}" --part train --tokens "$EXTRACT_TOKENS" --out "$TRAIN_CACHE" \
  | tee "$RUN_DIR/extract-train.log"
t_extract=$(secs "$t0" "$(now)")
t0=$(now)
"$SAELAB" extract "${common[@]}" --part heldout --tokens "$HELDOUT_TOKENS" --out "$HELDOUT_CACHE" \
  | tee "$RUN_DIR/extract-heldout.log"
t_heldout=$(secs "$t0" "$(now)")

step "4/7 train TopK (k = $K, d_sae = $EXPANSION x d) on $TRAIN_TOKENS tokens"
t0=$(now)
if [ -f "$SAE_RUN/sae/cfg.json" ]; then
  echo "$SAE_RUN: already trained"
elif [ -f "$SAE_RUN/run.json" ]; then
  "$SAELAB" train --resume "$SAE_RUN"
else
  "$SAELAB" train --acts "$TRAIN_CACHE" --arch topk --k "$K" --expansion "$EXPANSION" \
    --tokens "$TRAIN_TOKENS" --batch-size "$BATCH_SIZE" --lr "$LR" --eval-every "$EVAL_EVERY" \
    --out "$SAE_RUN"
fi
t_train=$(secs "$t0" "$(now)")

step "5/7 evaluate on the held-out cache"
t0=$(now)
"$SAELAB" eval --sae "$SAE_RUN" --acts "$HELDOUT_CACHE" --json > "$RUN_DIR/eval-heldout.json"
t_eval=$(secs "$t0" "$(now)")

step "6/7 in-model evaluation (CE / KL with the SAE spliced in)"
t0=$(now)
"$SAELAB" eval --sae "$SAE_RUN" --model "$MODEL" --corpus "$CORPUS" --ctx-len "$CTX_LEN" \
  --tokens "$INMODEL_TOKENS" --out "$SAE_RUN/eval.json"
t_inmodel=$(secs "$t0" "$(now)")

step "7/7 summary"
python3 - "$TRAIN_CACHE" "$HELDOUT_CACHE" "$SAE_RUN" "$RUN_DIR" \
  "$t_build" "$t_extract" "$t_heldout" "$t_train" "$t_eval" "$t_inmodel" <<'EOF' | tee "$RUN_DIR/summary.txt"
import json, os, sys
train, held, run, run_dir = sys.argv[1:5]
t_build, t_extract, t_heldout, t_train, t_eval, t_inmodel = map(float, sys.argv[5:11])
mt = json.load(open(os.path.join(train, "manifest.json")))
mh = json.load(open(os.path.join(held, "manifest.json")))
cfg = json.load(open(os.path.join(run, "sae", "cfg.json")))
ev = json.load(open(os.path.join(run_dir, "eval-heldout.json")))
k = cfg.get("k", "-")
print(f"model      {mt['model']['path']}  ({mt['model']['n_layers']} blocks, d = {mt['d']})")
print(f"hook       {mt['hook']}  (contexts of {mt['tokens']['ctx_len']} tokens, BOS excluded)")
print(f"train      {mt['rows']} activations from {mt['corpus']['documents']} documents "
      f"({len(mt['shards'])} shards, {mt['dtype']})  extract {t_extract:.1f} s")
print(f"held-out   {mh['rows']} activations from {mh['corpus']['documents']} documents  "
      f"extract {t_heldout:.1f} s")
print(f"SAE        {cfg['architecture']} d_sae = {cfg['d_sae']}, k = {k}, "
      f"{cfg['metadata'].get('training_tokens')} training tokens  train {t_train:.1f} s")
print(f"held-out   FVU {ev['fvu']:.4f}  (explained variance {ev['explained_variance']:.4f})  "
      f"L0 {ev['l0']:.2f}  dead {ev['dead_frac']:.4f}  cos {ev['cos_sim']:.4f}  "
      f"({ev['tokens']} tokens, eval {t_eval:.1f} s)")
m = json.load(open(os.path.join(run, "eval.json")))
def g(key):
    v = m.get(key)
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
print(f"in-model   CE clean {g('ce_clean')}  SAE {g('ce_sae')}  zero {g('ce_zero')}  "
      f"mean {g('ce_mean')}  nats")
print(f"           ce_loss_score {g('ce_loss_score')}  delta_ce {g('delta_ce')}  "
      f"kl_sae {g('kl_sae')}  ({m.get('scored_tokens', '?')} tokens, {t_inmodel:.1f} s)")
print(f"SAE files  {os.path.join(run, 'sae')}")
EOF
