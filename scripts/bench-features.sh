#!/usr/bin/env bash
# Resources of the features pass (BENCHMARKS.md, "The features pass"): peak RSS of the
# whole process (model included) during loading + Stage A and during Stage B, the wall
# time of each stage, and the plain forward to the SAE's hook over the same machine in
# the same run (`saelab bench --model`, E1 capture at the hook), so that the pass's
# Stage A rate can be stated as a ratio to it.
#
#   scripts/bench-features.sh SAE TOKENS OUT
#
# SAE: an SAE directory or run; TOKENS: tokens of the pass; OUT: a fresh features folder
# (removed first). RSS is sampled every 0.2 s from /proc; Stage B starts when the first
# file appears under OUT/stats.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sae="$1" tokens="$2" out="$3"
data="${SAELAB_DATA:-$root/data}"
model="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
saelab="${CARGO_TARGET_DIR:-$root/target}/release/saelab"
rm -rf "$out"

t0=$(date +%s.%N)
"$saelab" features --sae "$sae" --model "$model" --corpus "$data/corpus" --tokens "$tokens" \
  --out "$out" > "$out.log" 2>&1 &
pid=$!
peak_a=0 peak_b=0 t_b=""
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  rss=${rss:-0}
  if [ -z "$t_b" ] && [ -n "$(ls -A "$out/stats" 2>/dev/null)" ]; then t_b=$(date +%s.%N); fi
  if [ -z "$t_b" ]; then
    [ "$rss" -gt "$peak_a" ] && peak_a=$rss
  else
    [ "$rss" -gt "$peak_b" ] && peak_b=$rss
  fi
  sleep 0.2
done
wait "$pid"
t1=$(date +%s.%N)
tail -n 2 "$out.log"
awk -v a="$peak_a" -v b="$peak_b" -v t0="$t0" -v tb="$t_b" -v t1="$t1" 'BEGIN {
  printf "peak RSS: load + Stage A %.0f MiB, Stage B %.0f MiB\n", a / 1024, b / 1024
  printf "wall: load + Stage A %.1f s, Stage B %.1f s, total %.1f s\n", tb - t0, t1 - tb, t1 - t0
}'
hook=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['hook'])" "$out/features.json")
"$saelab" bench --model "$model" --corpus "$data/corpus" --hook "$hook" --batches 8 | tail -n 4
