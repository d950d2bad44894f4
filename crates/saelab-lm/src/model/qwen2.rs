//! The Qwen2 family (Qwen2, Qwen2.5 and Qwen2.5-Coder; e.g. Qwen2.5-Coder-0.5B-Instruct,
//! 24 blocks, d = 896, 14 query heads over 2 key/value heads).
//!
//! A Qwen2 block is the LLaMA block of `llama.rs` with biases on the query, key and
//! value projections:
//!
//! ```text
//! attn_out = W_o · attention(rope(W_qkv · rms_norm(x) · g_attn + b_qkv))
//! ```
//!
//! and everything else the same: RMSNorm (ε from `qwen2.attention.layer_norm_rms_epsilon`,
//! 1e-6), RoPE with θ from `qwen2.rope.freq_base` (1e6), grouped-query causal attention,
//! the SwiGLU MLP, the final RMSNorm, the unembedding `output.weight` (the token
//! embedding when a checkpoint has none, as tied Hugging Face checkpoints). The hook
//! points are LLaMA's. Two things differ in the files: the `qwen2.*` metadata keys, and
//! the GGUF's query and key rows, which llama.cpp keeps in the Hugging Face "rotate
//! half" order (its NEOX RoPE) instead of permuting them to the interleaved order as it
//! does for LLaMA; `llama.rs` permutes them on loading (see its module docs), so one
//! forward, KV cache and export serve both families.
//!
//! Not supported (refused on loading): sliding-window attention
//! (`use_sliding_window = true`), RoPE scaling.

use super::llama::{self, Variant};
use super::Loader;

/// The registry entry of the family (see [`super::FAMILIES`]).
pub(crate) const LOADER: Loader = Loader {
    gguf_architecture: QWEN2.arch,
    hf_model_types: &[QWEN2.hf_model_type],
    from_gguf: |f| llama::load_gguf(f, &QWEN2),
    from_hf: |c, dir| llama::load_hf(c, dir, &QWEN2),
};

/// How Qwen2 differs from LLaMA.
const QWEN2: Variant = Variant {
    arch: "qwen2",
    hf_model_type: "qwen2",
    hf_architecture: "Qwen2ForCausalLM",
    qkv_bias: true,
    gguf_rotate_half: true,
};
