#!/usr/bin/env bash
# The features pass against a plain forward over the same tokens, in the same run
# (BENCHMARKS.md, "The features pass"): `saelab extract` (the forward to the SAE's hook,
# writing f32 rows) and `saelab features` over the same first contexts of the train
# part (seed 0, 128-token contexts, 8 per forward), then `saelab bench --model` (E1) for
# reference. `saelab features` prints its Stage A time and, inside it, its own forward's.
#
#   scripts/bench-features-vs-forward.sh SAE TOKENS
#
# SAE: an SAE directory or run; TOKENS: tokens of both runs. Scratch folders go under
# ${TMPDIR:-/tmp} and are removed first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sae="$1" tokens="$2"
data="${SAELAB_DATA:-$root/data}"
model="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
saelab="${CARGO_TARGET_DIR:-$root/target}/release/saelab"
scratch="${TMPDIR:-/tmp}/saelab-bench-fvf"
rm -rf "$scratch"
mkdir -p "$scratch"
lscpu | grep "Model name"
uptime
hook=$(python3 -c "import json,sys,os; d=sys.argv[1]; d=d if os.path.isfile(os.path.join(d,'cfg.json')) else os.path.join(d,'sae'); print(json.load(open(os.path.join(d,'cfg.json')))['metadata']['hook_name'])" "$sae")
t0=$(date +%s.%N)
"$saelab" extract --model "$model" --corpus "$data/corpus" --hook "$hook" --tokens "$tokens" \
  --out "$scratch/acts" | tail -n 2
t1=$(date +%s.%N)
"$saelab" features --sae "$sae" --model "$model" --corpus "$data/corpus" --tokens "$tokens" \
  --out "$scratch/features" | tail -n 2
t2=$(date +%s.%N)
awk -v t0="$t0" -v t1="$t1" -v t2="$t2" 'BEGIN {
  printf "wall: extract %.1f s, features %.1f s (%.2fx)\n", t1 - t0, t2 - t1, (t2 - t1) / (t1 - t0)
}'
"$saelab" bench --model "$model" --corpus "$data/corpus" --hook "$hook" --batches 8 | tail -n 4
uptime
rm -rf "$scratch"
