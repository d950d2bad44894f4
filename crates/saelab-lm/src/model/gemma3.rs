//! The Gemma 3 family, text only (Gemma-3-270M: 18 blocks, d = 640, 4 query heads of
//! width 256 over 1 key/value head, MLP width 2048, a 262 144-token vocabulary).
//!
//! Gemma 3 is its own block, not a variant of LLaMA's: four norms per block, norms on
//! the queries and keys, a GELU MLP, a scaled embedding and interleaved local and
//! global attention layers. A block, on the residual stream `x [B·T, d]`, with its
//! hook points:
//!
//! ```text
//! resid_pre = x
//! q, k, v   = W_qkv · rms_norm(x) · g_attn
//! q, k      = rope_L(rms_norm_head(q) · g_q, rms_norm_head(k) · g_k)    (per head of width hd)
//! attn_out  = rms_norm(W_o · attention_L(q, k, v)) · g_post_attn          (grouped-query)
//! resid_mid = resid_pre + attn_out
//! ln2.hook_normalized = resid_mid / √(mean(resid_mid²) + ε)
//! mlp_out   = rms_norm(W_down · (gelu_tanh(W_gate · n) ⊙ (W_up · n))) · g_post_ffw,
//!             n = ln2.hook_normalized · g_ffn
//! resid_post = resid_mid + mlp_out
//! ```
//!
//! - The embedding is scaled: `resid_pre` of block 0 is `√d_model · W_E[token]`.
//! - `attn_out` and `mlp_out` are what is added to the residual stream, i.e. after the
//!   post-attention and post-MLP norms (`post_attention_norm`, `post_ffw_norm`).
//! - Layers alternate local and global attention as llama.cpp and Hugging Face decide
//!   it: every 6th block (`L % 6 == 5`: 5, 11, 17) is global, causal over every
//!   earlier position with RoPE base `gemma3.rope.freq_base` (1e6); the others are
//!   local, attending to the last `gemma3.attention.sliding_window` (512) positions,
//!   themselves included, with RoPE base 10 000. Neither has RoPE scaling in this
//!   model (a file asking for it is refused).
//! - Attention scores are scaled by `gemma3.attention.scale` when the file has it,
//!   else by `1/√head_dim` (`head_dim` = `gemma3.attention.key_length`, 256), as
//!   llama.cpp does for every size but 27B (whose files need the key).
//! - The final norm is RMSNorm with gain `g_final`; logits are `norm(x) · W_Eᵀ` (the
//!   embedding is tied; a file with `output.weight` uses that), with no soft-capping
//!   (a file asking for it is refused).
//!
//! Norm gains: Gemma's RMSNorm multiplies by `1 + w`, and llama.cpp's converter already
//! stores `1 + w` in the GGUF (its `norm_shift`), so GGUF gains are used as they are;
//! Hugging Face checkpoints store `w`, and loading one adds 1, exporting subtracts it.
//!
//! RoPE: llama.cpp runs Gemma 3 with its NEOX ("rotate half") RoPE and keeps the query
//! and key rows of the GGUF in the Hugging Face order; they are permuted to the
//! interleaved order on loading (as `llama.rs` does for Qwen2) and so are the query
//! and key norm gains, which are per position within a head. The permutation changes no
//! score `q · k`, so `kernels`' one RoPE kernel serves.
//!
//! The KV cache holds every position of the global blocks and, of a local block, only
//! the window's last positions (`Family::kv_window`; `kv_cache.rs` drops the older
//! ones), so cached generation beyond the window equals the full forward and the local
//! blocks' memory stays bounded.

use std::path::Path;

use saelab_core::{Error, Result};

use super::checkpoint::{write_hf_dir, GgufFile, HfConfig, HfTensors, NamedTensor, TensorSource};
use super::hooks::{HookKind, Hooks};
use super::info::ModelInfo;
use super::kernels::{self, AttnShape, RopeTable};
use super::kv_cache::Past;
use super::llama::{attend_cached, hf_rows_to_interleaved, interleaved_rows_to_hf, path_name};
use super::{Family, Loader, Shape};

/// The registry entry of the family (see [`super::FAMILIES`]).
pub(crate) const LOADER: Loader = Loader {
    gguf_architecture: "gemma3",
    hf_model_types: &[HF_MODEL_TYPE],
    from_gguf: load_gguf,
    from_hf: load_hf,
};

/// Hugging Face `model_type` of the text-only Gemma 3 checkpoints.
const HF_MODEL_TYPE: &str = "gemma3_text";

/// Every this-many-th block is global (llama.cpp's `set_swa_pattern(6)`, Hugging Face's
/// `sliding_window_pattern = 6`).
const GLOBAL_EVERY: usize = 6;

/// RoPE base of the local (sliding-window) blocks (llama.cpp's
/// `rope_freq_base_train_swa`, Hugging Face's `rope_local_base_freq`).
const LOCAL_ROPE_BASE: f64 = 10_000.0;

/// The hook points of every Gemma 3 block, in forward order.
const HOOK_KINDS: &[HookKind] = &[
    HookKind::ResidPre,
    HookKind::AttnOut,
    HookKind::ResidMid,
    HookKind::Ln2Normalized,
    HookKind::MlpOut,
    HookKind::ResidPost,
];

/// The hyperparameters the forward needs, checked by [`Gemma3Config::validate`].
#[derive(Clone, Debug, PartialEq)]
struct Gemma3Config {
    n_layers: usize,
    d_model: usize,
    n_heads: usize,
    n_kv_heads: usize,
    /// Width of one query, key and value head (`key_length`; `d_model` need not be
    /// `n_heads · head_dim`: 640 vs 4 × 256).
    head_dim: usize,
    d_ffn: usize,
    /// RoPE base of the global blocks.
    rope_base: f64,
    rms_eps: f32,
    vocab_size: usize,
    context_length: usize,
    /// Positions a local block attends to (itself included).
    sliding_window: usize,
    /// Attention score scale.
    attn_scale: f32,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    tie_embeddings: bool,
}

impl Gemma3Config {
    /// Check that the numbers describe a model this file can run.
    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::bad_file(origin, msg));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!(
                "model has a zero dimension (layers {}, d_model {}, heads {}, vocab {})",
                self.n_layers, self.d_model, self.n_heads, self.vocab_size
            ));
        }
        if self.n_heads.checked_rem(self.n_kv_heads) != Some(0) {
            return bad(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim & 1 == 1 {
            return bad(format!("head width {} must be even and > 0", self.head_dim));
        }
        if self.d_ffn == 0 || self.context_length == 0 || self.sliding_window == 0 {
            return bad(format!(
                "MLP width {}, context length {} or sliding window {} is 0",
                self.d_ffn, self.context_length, self.sliding_window
            ));
        }
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !finite_pos(self.rope_base)
            || !finite_pos(self.attn_scale as f64)
            || self.rms_eps.is_nan()
            || self.rms_eps < 0.0
        {
            return bad(format!(
                "invalid RoPE base {}, attention scale {} or RMSNorm epsilon {}",
                self.rope_base, self.attn_scale, self.rms_eps
            ));
        }
        Ok(())
    }

    /// Width of the fused query/key/value projection output.
    fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Whether block `layer` is global (full causal attention, the global RoPE base).
    fn is_global(layer: usize) -> bool {
        layer % GLOBAL_EVERY == GLOBAL_EVERY - 1
    }

    /// The hyperparameters from GGUF metadata (`gemma3.*`). `vocab_rows` is the number
    /// of rows of `token_embd.weight`.
    fn from_gguf(f: &GgufFile, vocab_rows: usize) -> Result<Self> {
        let path = f.path();
        let key = |k: &str| format!("gemma3.{k}");
        if let Some(kind) = f.string(&key("rope.scaling.type")) {
            if kind != "none" {
                return Err(Error::bad_file(
                    path,
                    format!("RoPE scaling '{kind}' is not supported"),
                ));
            }
        }
        if let Some(factor) = f.float(&key("rope.scaling.factor"))? {
            if factor != 1.0 {
                return Err(Error::bad_file(
                    path,
                    format!("RoPE scaling by {factor} is not supported"),
                ));
            }
        }
        for cap in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if f.float(&key(cap))?.is_some_and(|c| c != 0.0) {
                return Err(Error::bad_file(
                    path,
                    format!("{} is not supported", key(cap)),
                ));
            }
        }
        let head_dim = f.need(&key("attention.key_length"))?;
        let value_dim = f.need(&key("attention.value_length"))?;
        if value_dim != head_dim {
            return Err(Error::bad_file(
                path,
                format!("value heads of width {value_dim} differ from key heads of {head_dim}"),
            ));
        }
        let n_heads = f.need(&key("attention.head_count"))?;
        Ok(Gemma3Config {
            n_layers: f.need(&key("block_count"))?,
            d_model: f.need(&key("embedding_length"))?,
            n_heads,
            n_kv_heads: f
                .int(&key("attention.head_count_kv"))?
                .map_or(n_heads, |v| v as usize),
            head_dim,
            d_ffn: f.need(&key("feed_forward_length"))?,
            rope_base: f.float(&key("rope.freq_base"))?.unwrap_or(1e6),
            rms_eps: f
                .float(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6) as f32,
            vocab_size: vocab_rows,
            context_length: f
                .int(&key("context_length"))?
                .map_or(32_768, |v| v as usize),
            sliding_window: f.need(&key("attention.sliding_window"))?,
            attn_scale: f
                .float(&key("attention.scale"))?
                .map_or(1.0 / (head_dim as f32).sqrt(), |s| s as f32),
            bos_token_id: f.int("tokenizer.ggml.bos_token_id")?.map(|v| v as u32),
            eos_token_id: f.int("tokenizer.ggml.eos_token_id")?.map(|v| v as u32),
            tie_embeddings: !f.has("output.weight"),
        })
    }

    /// The hyperparameters from a Hugging Face `gemma3_text` `config.json`.
    fn from_hf(c: &HfConfig) -> Result<Self> {
        let path = c.path();
        if c.get("rope_scaling").is_some_and(|s| !s.is_null()) {
            return Err(Error::bad_file(path, "RoPE scaling is not supported"));
        }
        for cap in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if c.get(cap).is_some_and(|v| !v.is_null()) {
                return Err(Error::bad_file(path, format!("{cap} is not supported")));
            }
        }
        if let Some(act) = c.string("hidden_activation") {
            if act != "gelu_pytorch_tanh" {
                return Err(Error::bad_file(
                    path,
                    format!("hidden_activation '{act}' is not supported (gelu_pytorch_tanh)"),
                ));
            }
        }
        if c.uint("sliding_window_pattern")?.unwrap_or(GLOBAL_EVERY) != GLOBAL_EVERY {
            return Err(Error::bad_file(
                path,
                format!("only sliding_window_pattern = {GLOBAL_EVERY} is supported"),
            ));
        }
        if c.num("rope_local_base_freq")?.unwrap_or(LOCAL_ROPE_BASE) != LOCAL_ROPE_BASE {
            return Err(Error::bad_file(
                path,
                format!("only rope_local_base_freq = {LOCAL_ROPE_BASE} is supported"),
            ));
        }
        let n_heads = c.need("num_attention_heads")?;
        let head_dim = c.need("head_dim")?;
        let scalar = c.num("query_pre_attn_scalar")?.unwrap_or(head_dim as f64);
        Ok(Gemma3Config {
            n_layers: c.need("num_hidden_layers")?,
            d_model: c.need("hidden_size")?,
            n_heads,
            n_kv_heads: c.uint("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            d_ffn: c.need("intermediate_size")?,
            rope_base: c.num("rope_theta")?.unwrap_or(1e6),
            rms_eps: c.num("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            vocab_size: c.need("vocab_size")?,
            context_length: c.uint("max_position_embeddings")?.unwrap_or(32_768),
            sliding_window: c.need("sliding_window")?,
            attn_scale: (1.0 / scalar.sqrt()) as f32,
            bos_token_id: c.token("bos_token_id"),
            eos_token_id: c.token("eos_token_id"),
            tie_embeddings: c.flag("tie_word_embeddings").unwrap_or(true),
        })
    }

    /// A Hugging Face `gemma3_text` `config.json` object describing this model.
    fn to_hf(&self, name: &str) -> serde_json::Value {
        let scalar = 1.0 / (self.attn_scale as f64 * self.attn_scale as f64);
        serde_json::json!({
            "_name_or_path": name,
            "model_type": HF_MODEL_TYPE,
            "architectures": ["Gemma3ForCausalLM"],
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ffn,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_base,
            "rope_local_base_freq": LOCAL_ROPE_BASE,
            "rope_scaling": null,
            "sliding_window": self.sliding_window,
            "sliding_window_pattern": GLOBAL_EVERY,
            "query_pre_attn_scalar": scalar.round(),
            "final_logit_softcapping": null,
            "attn_logit_softcapping": null,
            "attention_bias": false,
            "hidden_activation": "gelu_pytorch_tanh",
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.context_length,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": self.tie_embeddings,
        })
    }
}

/// The tensors of one block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Q,
    K,
    V,
    O,
    QNorm,
    KNorm,
    AttnNorm,
    PostAttnNorm,
    FfnNorm,
    PostFfwNorm,
    Gate,
    Up,
    Down,
}

impl Part {
    /// Whether the tensor is a norm gain (stored as `1 + w` in GGUF, `w` in HF).
    fn is_norm(self) -> bool {
        matches!(
            self,
            Part::QNorm
                | Part::KNorm
                | Part::AttnNorm
                | Part::PostAttnNorm
                | Part::FfnNorm
                | Part::PostFfwNorm
        )
    }
}

/// How a checkpoint names the tensors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// llama.cpp's GGUF names (`blk.{L}.attn_q.weight`).
    Gguf,
    /// Hugging Face's names (`model.layers.{L}.self_attn.q_proj.weight`).
    Hf,
}

impl Layout {
    fn embed(self) -> &'static str {
        match self {
            Layout::Gguf => "token_embd.weight",
            Layout::Hf => "model.embed_tokens.weight",
        }
    }

    fn final_norm(self) -> &'static str {
        match self {
            Layout::Gguf => "output_norm.weight",
            Layout::Hf => "model.norm.weight",
        }
    }

    fn unembed(self) -> &'static str {
        match self {
            Layout::Gguf => "output.weight",
            Layout::Hf => "lm_head.weight",
        }
    }

    /// The name of a block's weight.
    fn block(self, layer: usize, p: Part) -> String {
        let name = match self {
            Layout::Gguf => match p {
                Part::Q => "attn_q",
                Part::K => "attn_k",
                Part::V => "attn_v",
                Part::O => "attn_output",
                Part::QNorm => "attn_q_norm",
                Part::KNorm => "attn_k_norm",
                Part::AttnNorm => "attn_norm",
                Part::PostAttnNorm => "post_attention_norm",
                Part::FfnNorm => "ffn_norm",
                Part::PostFfwNorm => "post_ffw_norm",
                Part::Gate => "ffn_gate",
                Part::Up => "ffn_up",
                Part::Down => "ffn_down",
            },
            Layout::Hf => match p {
                Part::Q => "self_attn.q_proj",
                Part::K => "self_attn.k_proj",
                Part::V => "self_attn.v_proj",
                Part::O => "self_attn.o_proj",
                Part::QNorm => "self_attn.q_norm",
                Part::KNorm => "self_attn.k_norm",
                Part::AttnNorm => "input_layernorm",
                Part::PostAttnNorm => "post_attention_layernorm",
                Part::FfnNorm => "pre_feedforward_layernorm",
                Part::PostFfwNorm => "post_feedforward_layernorm",
                Part::Gate => "mlp.gate_proj",
                Part::Up => "mlp.up_proj",
                Part::Down => "mlp.down_proj",
            },
        };
        let prefix = match self {
            Layout::Gguf => "blk",
            Layout::Hf => "model.layers",
        };
        format!("{prefix}.{layer}.{name}.weight")
    }

    /// What to add to a stored norm gain to get the multiplier (`1 + w` for HF).
    fn norm_shift(self) -> f32 {
        match self {
            Layout::Gguf => 0.0,
            Layout::Hf => 1.0,
        }
    }
}

/// Weights of one block, f32, PyTorch's `[out, in]` orientation.
#[derive(Clone, Debug)]
struct BlockWeights {
    /// RMSNorm gain before attention, `[d]`.
    attn_norm: Vec<f32>,
    /// Fused Q/K/V projection, `[(H + 2·KV)·hd, d]`, Q/K rows in interleaved-RoPE order.
    wqkv: Vec<f32>,
    /// Per-head RMSNorm gains of the queries and keys, `[hd]` each, interleaved order.
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    /// Attention output projection, `[d, H·hd]`.
    wo: Vec<f32>,
    /// RMSNorm gain of the attention output, `[d]`.
    post_attn_norm: Vec<f32>,
    /// RMSNorm gain before the MLP, `[d]`.
    ffn_norm: Vec<f32>,
    /// Fused gate (rows `0..F`) and up (rows `F..2F`) projections, `[2F, d]`.
    w_gate_up: Vec<f32>,
    /// MLP down projection, `[d, F]`.
    w_down: Vec<f32>,
    /// RMSNorm gain of the MLP output, `[d]`.
    post_ffw_norm: Vec<f32>,
}

/// A loaded Gemma 3 model.
struct Gemma3 {
    cfg: Gemma3Config,
    info: ModelInfo,
    /// Token embedding, `[V, d]` (unscaled, as stored).
    embed: Vec<f32>,
    blocks: Vec<BlockWeights>,
    /// Final RMSNorm gain, `[d]`.
    final_norm: Vec<f32>,
    /// Unembedding `[V, d]`; `None` when tied to `embed`.
    unembed: Option<Vec<f32>>,
    /// RoPE of the local blocks (base 10 000) and of the global blocks.
    rope_local: RopeTable,
    rope_global: RopeTable,
}

impl Gemma3 {
    /// Reads every weight named by `layout` from `src` and assembles the model. Both
    /// layouts hold query and key rows in the Hugging Face order.
    fn assemble(
        src: &mut dyn TensorSource,
        cfg: Gemma3Config,
        name: String,
        layout: Layout,
    ) -> Result<Self> {
        let (d, v, f) = (cfg.d_model, cfg.vocab_size, cfg.d_ffn);
        let (hq, hkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let shift = layout.norm_shift();
        let norm = |src: &mut dyn TensorSource, name: &str, n: usize| -> Result<Vec<f32>> {
            let mut g = src.get(name, &[n])?;
            if shift != 0.0 {
                g.iter_mut().for_each(|x| *x += shift);
            }
            Ok(g)
        };
        let embed = src.get(layout.embed(), &[v, d])?;
        let final_norm = norm(src, layout.final_norm(), d)?;
        let unembed = if !cfg.tie_embeddings && src.has(layout.unembed()) {
            Some(src.get(layout.unembed(), &[v, d])?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |p: Part| layout.block(l, p);
            let mut wqkv = hf_rows_to_interleaved(&src.get(&n(Part::Q), &[hq * hd, d])?, hq, hd, d);
            wqkv.extend(hf_rows_to_interleaved(
                &src.get(&n(Part::K), &[hkv * hd, d])?,
                hkv,
                hd,
                d,
            ));
            wqkv.extend(src.get(&n(Part::V), &[hkv * hd, d])?);
            let mut w_gate_up = src.get(&n(Part::Gate), &[f, d])?;
            w_gate_up.extend(src.get(&n(Part::Up), &[f, d])?);
            blocks.push(BlockWeights {
                attn_norm: norm(src, &n(Part::AttnNorm), d)?,
                wqkv,
                q_norm: hf_rows_to_interleaved(&norm(src, &n(Part::QNorm), hd)?, 1, hd, 1),
                k_norm: hf_rows_to_interleaved(&norm(src, &n(Part::KNorm), hd)?, 1, hd, 1),
                wo: src.get(&n(Part::O), &[d, hq * hd])?,
                post_attn_norm: norm(src, &n(Part::PostAttnNorm), d)?,
                ffn_norm: norm(src, &n(Part::FfnNorm), d)?,
                w_gate_up,
                w_down: src.get(&n(Part::Down), &[d, f])?,
                post_ffw_norm: norm(src, &n(Part::PostFfwNorm), d)?,
            });
        }
        let info = ModelInfo {
            family: "gemma3",
            name,
            d_model: d,
            n_layers: cfg.n_layers,
            vocab_size: v,
            context_length: cfg.context_length,
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id,
            hook_kinds: HOOK_KINDS,
        };
        let rope_local = RopeTable::new(hd, LOCAL_ROPE_BASE, cfg.context_length);
        let rope_global = RopeTable::new(hd, cfg.rope_base, cfg.context_length);
        Ok(Gemma3 {
            cfg,
            info,
            embed,
            blocks,
            final_norm,
            unembed,
            rope_local,
            rope_global,
        })
    }
}

/// Loads a GGUF Gemma 3 model: hyperparameters from the metadata, every weight
/// dequantised to f32.
fn load_gguf(mut f: GgufFile) -> Result<Box<dyn Family>> {
    let vocab_rows = f
        .dims(Layout::Gguf.embed())
        .map(|dims| dims[0])
        .ok_or_else(|| Error::bad_file(f.path(), "tensor token_embd.weight is missing"))?;
    let cfg = Gemma3Config::from_gguf(&f, vocab_rows)?;
    cfg.validate(f.path())?;
    let name = f
        .string("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| path_name(f.path(), true));
    Ok(Box::new(Gemma3::assemble(&mut f, cfg, name, Layout::Gguf)?))
}

/// Loads a Hugging Face `gemma3_text` checkpoint directory.
fn load_hf(c: &HfConfig, dir: &Path) -> Result<Box<dyn Family>> {
    let cfg = Gemma3Config::from_hf(c)?;
    cfg.validate(c.path())?;
    let mut src = HfTensors::open(dir)?;
    let name = c
        .string("_name_or_path")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| path_name(dir, false));
    Ok(Box::new(Gemma3::assemble(&mut src, cfg, name, Layout::Hf)?))
}

impl Family for Gemma3 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, tokens: &[u32], x: &mut [f32]) {
        kernels::gather_rows(&self.embed, tokens, x);
        kernels::scale_all(x, (self.cfg.d_model as f32).sqrt());
    }

    fn kv_width(&self) -> usize {
        self.cfg.n_kv_heads * self.cfg.head_dim
    }

    fn kv_window(&self, layer: usize) -> Option<usize> {
        (!Gemma3Config::is_global(layer)).then_some(self.cfg.sliding_window)
    }

    fn blocks(
        &self,
        x: &mut [f32],
        shape: Shape,
        n_blocks: usize,
        mut past: Past<'_>,
        hooks: &mut Hooks<'_, '_, '_>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let Shape { batch, seq_len } = shape;
        let (d, n) = (cfg.d_model, batch * seq_len);
        let (hq, hkv, hd, f) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ffn);
        let qkv_dim = cfg.qkv_dim();
        let eps = cfg.rms_eps;
        // The attention kernels scale scores by 1/√hd; another scale goes on the queries.
        let q_mult = cfg.attn_scale * (hd as f32).sqrt();
        let product = kernels::Product::for_forward(matches!(past, Past::Cached { .. }), seq_len);
        let mut h = vec![0f32; n * d];
        let mut qkv = vec![0f32; n * qkv_dim];
        let mut attn = vec![0f32; n * hq * hd];
        let mut branch = vec![0f32; n * d];
        let mut gu = vec![0f32; n * 2 * f];
        let mut act = vec![0f32; n * f];
        for (layer, bw) in self.blocks.iter().enumerate().take(n_blocks) {
            hooks.visit(layer, HookKind::ResidPre, x)?;
            // Attention.
            kernels::rms_norm(x, &bw.attn_norm, eps, &mut h);
            product.linear(&h, n, &bw.wqkv, d, qkv_dim, &mut qkv);
            kernels::rms_norm_heads(&mut qkv, qkv_dim, 0, hq, &bw.q_norm, eps);
            kernels::rms_norm_heads(&mut qkv, qkv_dim, hq, hkv, &bw.k_norm, eps);
            if q_mult != 1.0 {
                for row in qkv.chunks_exact_mut(qkv_dim) {
                    row[..hq * hd].iter_mut().for_each(|v| *v *= q_mult);
                }
            }
            let global = Gemma3Config::is_global(layer);
            let rope = if global {
                &self.rope_global
            } else {
                &self.rope_local
            };
            let attn_shape = AttnShape {
                batch,
                seq_len,
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: hd,
                window: (!global).then_some(cfg.sliding_window),
            };
            match &mut past {
                Past::None => {
                    rope.apply_interleaved(&mut qkv, qkv_dim, hq + hkv, seq_len);
                    kernels::causal_attention(&qkv, attn_shape, &mut attn);
                }
                Past::Cached { places, cache } => {
                    attend_cached(rope, layer, &mut qkv, attn_shape, places, cache, &mut attn);
                }
            }
            product.linear(&attn, n, &bw.wo, hq * hd, d, &mut branch);
            kernels::rms_norm_in_place(&mut branch, &bw.post_attn_norm, eps);
            hooks.visit(layer, HookKind::AttnOut, &mut branch)?;
            kernels::add_assign(x, &branch);
            hooks.visit(layer, HookKind::ResidMid, x)?;
            // MLP; the normalised input is split from the gain only for its hook.
            if hooks.wants(layer, HookKind::Ln2Normalized) {
                kernels::rms_normalize(x, d, eps, &mut h);
                hooks.visit(layer, HookKind::Ln2Normalized, &mut h)?;
                kernels::scale_columns(&mut h, &bw.ffn_norm);
            } else {
                kernels::rms_norm(x, &bw.ffn_norm, eps, &mut h);
            }
            product.linear(&h, n, &bw.w_gate_up, d, 2 * f, &mut gu);
            kernels::geglu_tanh(&gu, f, &mut act);
            product.linear(&act, n, &bw.w_down, f, d, &mut branch);
            kernels::rms_norm_in_place(&mut branch, &bw.post_ffw_norm, eps);
            hooks.visit(layer, HookKind::MlpOut, &mut branch)?;
            kernels::add_assign(x, &branch);
            hooks.visit(layer, HookKind::ResidPost, x)?;
        }
        Ok(())
    }

    fn final_norm(&self, x: &mut [f32]) {
        kernels::rms_norm_in_place(x, &self.final_norm, self.cfg.rms_eps);
    }

    fn embedding(&self) -> &[f32] {
        &self.embed
    }

    fn unembedding(&self) -> &[f32] {
        self.unembed.as_deref().unwrap_or(&self.embed)
    }

    fn hf_config(&self) -> serde_json::Value {
        self.cfg.to_hf(&self.info.name)
    }

    fn save_hf(&self, dir: &Path) -> Result<()> {
        let cfg = &self.cfg;
        let (d, hq, hkv, hd, f) = (
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.d_ffn,
        );
        let hf = Layout::Hf;
        let unshift = |g: &[f32]| -> Vec<f32> { g.iter().map(|x| x - 1.0).collect() };
        let mut tensors: Vec<NamedTensor> = vec![
            (
                hf.embed().into(),
                vec![cfg.vocab_size, d],
                self.embed.clone(),
            ),
            (hf.final_norm().into(), vec![d], unshift(&self.final_norm)),
        ];
        if let Some(u) = &self.unembed {
            tensors.push((hf.unembed().into(), vec![cfg.vocab_size, d], u.clone()));
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let (q, rest) = b.wqkv.split_at(hq * hd * d);
            let (k, v) = rest.split_at(hkv * hd * d);
            let (gate, up) = b.w_gate_up.split_at(f * d);
            let parts: [(Part, Vec<usize>, Vec<f32>); 13] = [
                (
                    Part::Q,
                    vec![hq * hd, d],
                    interleaved_rows_to_hf(q, hq, hd, d),
                ),
                (
                    Part::K,
                    vec![hkv * hd, d],
                    interleaved_rows_to_hf(k, hkv, hd, d),
                ),
                (Part::V, vec![hkv * hd, d], v.to_vec()),
                (Part::O, vec![d, hq * hd], b.wo.clone()),
                (
                    Part::QNorm,
                    vec![hd],
                    interleaved_rows_to_hf(&b.q_norm, 1, hd, 1),
                ),
                (
                    Part::KNorm,
                    vec![hd],
                    interleaved_rows_to_hf(&b.k_norm, 1, hd, 1),
                ),
                (Part::AttnNorm, vec![d], b.attn_norm.clone()),
                (Part::PostAttnNorm, vec![d], b.post_attn_norm.clone()),
                (Part::FfnNorm, vec![d], b.ffn_norm.clone()),
                (Part::PostFfwNorm, vec![d], b.post_ffw_norm.clone()),
                (Part::Gate, vec![f, d], gate.to_vec()),
                (Part::Up, vec![f, d], up.to_vec()),
                (Part::Down, vec![d, f], b.w_down.clone()),
            ];
            for (p, dims, values) in parts {
                let values = if p.is_norm() {
                    unshift(&values)
                } else {
                    values
                };
                tensors.push((hf.block(l, p), dims, values));
            }
        }
        write_hf_dir(dir, &self.hf_config(), tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_block_is_global() {
        let global: Vec<usize> = (0..18).filter(|&l| Gemma3Config::is_global(l)).collect();
        assert_eq!(global, [5, 11, 17]);
    }

    #[test]
    fn tensor_names_follow_each_layout() {
        assert_eq!(
            Layout::Gguf.block(2, Part::PostFfwNorm),
            "blk.2.post_ffw_norm.weight"
        );
        assert_eq!(
            Layout::Hf.block(2, Part::FfnNorm),
            "model.layers.2.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            Layout::Hf.block(0, Part::KNorm),
            "model.layers.0.self_attn.k_norm.weight"
        );
    }
}
