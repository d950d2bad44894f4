#!/usr/bin/env bash
# Writes crates/saelab-embed/tests/fixtures/minilm_reference.json: the embeddings of a
# few fixed sentences by scripts/minilm_reference.py, a NumPy forward of
# all-MiniLM-L6-v2 written apart from saelab-embed (and from candle). Its Python packages
# go into a virtual environment of their own, target/minilm-reference-venv, pinned below;
# nothing is installed elsewhere. Needs a completed scripts/setup.sh (the model folder).
#
#   scripts/minilm_reference.sh [MODEL_DIR [OUT]]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${SAELAB_DATA:-$root/data}"
model="${1:-$data/models/all-MiniLM-L6-v2}"
out="${2:-$root/crates/saelab-embed/tests/fixtures/minilm_reference.json}"
venv="$root/target/minilm-reference-venv"
[ -f "$model/model.safetensors" ] || { echo "minilm_reference: no $model/model.safetensors (run scripts/setup.sh)" >&2; exit 1; }
if ! "$venv/bin/python" -c "import numpy, safetensors, tokenizers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 \
    || { echo "minilm_reference: could not install numpy, safetensors, tokenizers from PyPI" >&2; exit 1; }
fi
"$venv/bin/python" "$root/scripts/minilm_reference.py" "$model" "$out"
