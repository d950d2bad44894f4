"""An independent reference for saelab-embed: sentence-transformers' all-MiniLM-L6-v2
embedding computed by hand in float64 NumPy, one sentence at a time (no batching, no
padding), from the model folder's own files.

  python minilm_reference.py MODEL_DIR OUT.json      (scripts/minilm_reference.sh runs it)

Only `tokenizers` (tokenising tokenizer.json) and `safetensors` (reading the weights)
come from outside; the forward is written here from the BERT paper and Hugging Face's
BertModel semantics: embeddings (word + position + token type 0) → LayerNorm, then per
layer self-attention (12 heads, softmax(q·kᵀ/√d_head)), output projection + residual →
LayerNorm, GELU (erf) MLP + residual → LayerNorm; then the mean of the final states of
the tokens (sentence-transformers' mean pooling over the attention mask) and, when
modules.json lists Normalize, division by the L2 norm. Texts are stripped and truncated
at sentence_bert_config.json's max_seq_length, as sentence-transformers does.
"""

import json
import math
import os
import sys

import numpy as np
import safetensors
import tokenizers
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "A man is playing a guitar.",
    "Instruct: Retrieve sentences that could be related to the explanation.\n"
    'Query: the word "the" after verbs of motion',
    "",
    "Café, naïve résumé — 東京タワー and emoji 🙂, ünïcödé Straße!",
    "The committee met on Tuesday to discuss the annual budget, the new library wing, "
    "and the repairs to the old stone bridge over the river. " * 12,
    "   Tabs\tand\nnewlines,   and   extra   spaces   ",
    "x = 42; y = x ** 2  # 1764 <html> https://example.com/a?b=c&d=e",
    "The stock market fell sharply today after the central bank raised interest rates.",
]

erf = np.vectorize(math.erf, otypes=[np.float64])


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main(model_dir, out_path):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    sbert = json.load(open(os.path.join(model_dir, "sentence_bert_config.json")))
    modules = json.load(open(os.path.join(model_dir, "modules.json")))
    pooling = json.load(open(os.path.join(model_dir, "1_Pooling", "config.json")))
    assert cfg["model_type"] == "bert" and cfg["hidden_act"] == "gelu"
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    normalize = any(m["type"].endswith(".Normalize") for m in modules)
    max_len = sbert["max_seq_length"]
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    dh = d // heads

    w = {k: v.astype(np.float64) for k, v in
         load_file(os.path.join(model_dir, "model.safetensors")).items()
         if v.dtype != np.int64}
    W = lambda name: w[name]

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)

    def lin(x, prefix):
        return x @ W(prefix + ".weight").T + W(prefix + ".bias")

    def embed(ids):
        n = len(ids)
        x = (W("embeddings.word_embeddings.weight")[ids]
             + W("embeddings.position_embeddings.weight")[:n]
             + W("embeddings.token_type_embeddings.weight")[0])
        x = layer_norm(x, W("embeddings.LayerNorm.weight"), W("embeddings.LayerNorm.bias"), eps)
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (lin(x, p + "attention.self." + m).reshape(n, heads, dh).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            ctx = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(dh)) @ v  # [heads, n, dh]
            ctx = ctx.transpose(1, 0, 2).reshape(n, d)
            a = layer_norm(lin(ctx, p + "attention.output.dense") + x,
                           W(p + "attention.output.LayerNorm.weight"),
                           W(p + "attention.output.LayerNorm.bias"), eps)
            h = lin(a, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = layer_norm(lin(h, p + "output.dense") + a,
                           W(p + "output.LayerNorm.weight"), W(p + "output.LayerNorm.bias"), eps)
        e = x.mean(axis=0)
        norm = float(np.linalg.norm(e))
        if normalize:
            e = e / max(norm, 1e-12)
        return e, norm

    out = []
    for text in SENTENCES:
        ids = tok.encode(text.strip()).ids
        e, norm = embed(ids)
        out.append({
            "text": text,
            "ids": ids,
            "pooled_norm": round(norm, 8),
            "embedding": [round(float(v), 8) for v in e],
        })
        print(f"{len(ids):4d} tokens  |e| before normalising {norm:.5f}  {text[:40]!r}",
              file=sys.stderr)
    doc = {
        "about": "all-MiniLM-L6-v2 embeddings by scripts/minilm_reference.py (float64 "
                 "NumPy forward, one sentence at a time); written by "
                 "scripts/minilm_reference.sh",
        "versions": {"numpy": np.__version__, "safetensors": safetensors.__version__,
                     "tokenizers": tokenizers.__version__},
        "max_seq_length": max_len,
        "normalized": normalize,
        "sentences": out,
    }
    with open(out_path + ".tmp", "w") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    os.replace(out_path + ".tmp", out_path)
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
