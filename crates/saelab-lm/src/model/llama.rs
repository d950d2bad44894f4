//! The LLaMA family (SmolLM2, LLaMA 2/3 without RoPE scaling, TinyLlama, …): its
//! hyperparameters, its tensor names in GGUF and Hugging Face checkpoints, and its block.
//!
//! The block is shared with families that differ from LLaMA only in what a [`Variant`]
//! says (biases on the query, key and value projections; the row order of the query
//! and key projections in GGUF): `qwen2.rs` is such a family, and runs this file's
//! forward, cache and export.
//!
//! A block, on the residual stream `x [B·T, d]`, with its hook points:
//!
//! ```text
//! resid_pre = x
//! attn_out  = W_o · attention(rope(W_qkv · rms_norm(x) · g_attn + b_qkv))   (causal, grouped-query)
//! resid_mid = resid_pre + attn_out
//! ln2.hook_normalized = resid_mid / √(mean(resid_mid²) + ε)
//! mlp_out   = W_down · (silu(W_gate · n) ⊙ (W_up · n)),  n = ln2.hook_normalized · g_mlp
//! resid_post = resid_mid + mlp_out
//! ```
//!
//! The final norm is RMSNorm with gain `g_final`; logits are `norm(x) · W_Uᵀ`, with `W_U`
//! the token embedding when the checkpoint ties them.
//!
//! Weights are f32, row-major in PyTorch's `[out, in]` orientation. The query, key and
//! value projections are fused into one `[(H + 2·KV)·hd, d]` matrix whose query and key
//! rows use the *interleaved* RoPE order of GGUF/llama.cpp (pairs `2i, 2i+1`); gate and
//! up are fused into one `[2F, d]` matrix (gate rows first). Hugging Face checkpoints
//! order each query/key head for the "rotate half" RoPE (pairs `i, i + hd/2`);
//! llama.cpp's converter permutes those rows when writing GGUF. Loading HF weights
//! applies the same permutation ([`hf_rows_to_interleaved`]) and exporting undoes it
//! ([`interleaved_rows_to_hf`]), so both sources give the same attention. Families
//! whose GGUF keeps the Hugging Face order (llama.cpp's "NEOX" RoPE, e.g. Qwen2) get the
//! same permutation on GGUF loading too ([`Variant::gguf_rotate_half`]). Permuting the
//! rows of both queries and keys alike leaves every attention score `q · k` unchanged,
//! so one RoPE kernel serves both conventions. The bias `b_qkv` (`None` for LLaMA, then
//! no addition is done) is permuted with its rows.

use std::path::Path;

use saelab_core::{Error, Result};

use super::activation::Placement;
use super::checkpoint::{write_hf_dir, GgufFile, HfConfig, HfTensors, NamedTensor, TensorSource};
use super::hooks::{HookKind, Hooks};
use super::info::ModelInfo;
use super::kernels::{self, AttnShape, KvRows, RopeTable};
use super::kv_cache::{KvCache, Past};
use super::{Family, Loader, Shape};

/// The registry entry of the family (see [`super::FAMILIES`]).
pub(crate) const LOADER: Loader = Loader {
    gguf_architecture: LLAMA.arch,
    hf_model_types: &[LLAMA.hf_model_type],
    from_gguf: |f| load_gguf(f, &LLAMA),
    from_hf: |c, dir| load_hf(c, dir, &LLAMA),
};

/// What a family built on this file's block differs in from LLaMA.
#[derive(Debug)]
pub(crate) struct Variant {
    /// GGUF `general.architecture`, the prefix of its hyperparameter keys
    /// (`{arch}.block_count`, …) and [`ModelInfo::family`].
    pub arch: &'static str,
    /// Hugging Face `model_type`, read and written.
    pub hf_model_type: &'static str,
    /// Hugging Face `architectures` entry written on export.
    pub hf_architecture: &'static str,
    /// Whether the query, key and value projections carry biases (`attn_q.bias`, …,
    /// `q_proj.bias`, …), required then.
    pub qkv_bias: bool,
    /// Whether the GGUF stores query and key rows in the Hugging Face "rotate half"
    /// order (llama.cpp's NEOX RoPE) rather than the interleaved one.
    pub gguf_rotate_half: bool,
}

/// LLaMA itself.
const LLAMA: Variant = Variant {
    arch: "llama",
    hf_model_type: "llama",
    hf_architecture: "LlamaForCausalLM",
    qkv_bias: false,
    gguf_rotate_half: false,
};

/// The hook points of every LLaMA block, in forward order.
const HOOK_KINDS: &[HookKind] = &[
    HookKind::ResidPre,
    HookKind::AttnOut,
    HookKind::ResidMid,
    HookKind::Ln2Normalized,
    HookKind::MlpOut,
    HookKind::ResidPost,
];

/// The hyperparameters the forward needs.
///
/// Checked by [`LlamaConfig::validate`] before a model is built, so a loaded model can
/// rely on `d_model = n_heads · head_dim` and `n_heads % n_kv_heads == 0`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LlamaConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ffn: usize,
    /// RoPE base frequency θ.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size (rows of the embedding and unembedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for; longer inputs are refused.
    pub context_length: usize,
    /// Beginning-of-sequence token, when the checkpoint names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, when the checkpoint names one.
    pub eos_token_id: Option<u32>,
    /// Whether the unembedding reuses the token-embedding matrix.
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// Check that the numbers describe a model this crate can run; `origin` names the
    /// file they came from.
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
        if self.d_ffn == 0 {
            return bad("MLP width is 0".into());
        }
        if self.rope_base.is_nan()
            || self.rope_base <= 0.0
            || self.rms_eps.is_nan()
            || self.rms_eps < 0.0
        {
            return bad(format!(
                "invalid RoPE base {} or RMSNorm epsilon {}",
                self.rope_base, self.rms_eps
            ));
        }
        if self.context_length == 0 {
            return bad("context length is 0".into());
        }
        Ok(())
    }

    /// Width of the fused query/key/value projection output: `(n_heads + 2·n_kv_heads) · head_dim`.
    fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// The hyperparameters from GGUF metadata (`{arch}.*` keys, `llama.*` for LLaMA).
    /// `vocab_rows` is the number of rows of `token_embd.weight`, used when the
    /// metadata has no `{arch}.vocab_size`.
    fn from_gguf(f: &GgufFile, vocab_rows: usize, arch: &str) -> Result<Self> {
        let path = f.path();
        let key = |k: &str| format!("{arch}.{k}");
        if let Some(kind) = f.string(&key("rope.scaling.type")) {
            if kind != "none" {
                return Err(Error::bad_file(
                    path,
                    format!("RoPE scaling '{kind}' is not supported"),
                ));
            }
        }
        if f.int(&key("expert_count"))?.unwrap_or(0) > 1 {
            return Err(Error::bad_file(
                path,
                "mixture-of-experts models are not supported",
            ));
        }
        let d_model = f.need(&key("embedding_length"))?;
        let n_heads = f.need(&key("attention.head_count"))?;
        let n_kv_heads = f
            .int(&key("attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = d_model.checked_div(n_heads).unwrap_or(0);
        if let Some(rope_dim) = f.int(&key("rope.dimension_count"))? {
            if rope_dim as usize != head_dim {
                return Err(Error::bad_file(
                    path,
                    format!("partial RoPE ({rope_dim} of {head_dim} dims) is not supported"),
                ));
            }
        }
        let cfg = LlamaConfig {
            n_layers: f.need(&key("block_count"))?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ffn: f.need(&key("feed_forward_length"))?,
            rope_base: f.float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rms_eps: f
                .float(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5) as f32,
            vocab_size: f
                .int(&key("vocab_size"))?
                .map(|v| v as usize)
                .unwrap_or(vocab_rows),
            context_length: f
                .int(&key("context_length"))?
                .map(|v| v as usize)
                .unwrap_or(4096),
            bos_token_id: f.int("tokenizer.ggml.bos_token_id")?.map(|v| v as u32),
            eos_token_id: f.int("tokenizer.ggml.eos_token_id")?.map(|v| v as u32),
            tie_embeddings: !f.has("output.weight"),
        };
        if d_model != n_heads * head_dim {
            return Err(Error::bad_file(
                path,
                format!("embedding width {d_model} is not divisible by {n_heads} heads"),
            ));
        }
        Ok(cfg)
    }

    /// The hyperparameters from a Hugging Face `config.json` (LLaMA naming, which
    /// Qwen2 shares). `attention_bias` is refused unless the variant has the biases.
    fn from_hf(c: &HfConfig, variant: &Variant) -> Result<Self> {
        let path = c.path();
        if let Some(scaling) = c.get("rope_scaling") {
            if !scaling.is_null() {
                let kind = scaling
                    .get("rope_type")
                    .or_else(|| scaling.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("?");
                if kind != "default" {
                    return Err(Error::bad_file(
                        path,
                        format!("RoPE scaling '{kind}' is not supported"),
                    ));
                }
            }
        }
        if c.flag("use_sliding_window") == Some(true) {
            return Err(Error::bad_file(
                path,
                "use_sliding_window = true is not supported",
            ));
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if c.flag(flag) == Some(true) && !(flag == "attention_bias" && variant.qkv_bias) {
                return Err(Error::bad_file(
                    path,
                    format!("{flag} = true is not supported"),
                ));
            }
        }
        let d_model = c.need("hidden_size")?;
        let n_heads = c.need("num_attention_heads")?;
        let head_dim = match c.uint("head_dim")? {
            Some(h) => h,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        if d_model != n_heads * head_dim {
            return Err(Error::bad_file(
                path,
                format!("hidden_size {d_model} != {n_heads} heads × head_dim {head_dim}"),
            ));
        }
        Ok(LlamaConfig {
            n_layers: c.need("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: c.uint("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            d_ffn: c.need("intermediate_size")?,
            rope_base: c.num("rope_theta")?.unwrap_or(10_000.0),
            rms_eps: c.num("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            vocab_size: c.need("vocab_size")?,
            context_length: c.uint("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: c.token("bos_token_id"),
            eos_token_id: c.token("eos_token_id"),
            tie_embeddings: c.flag("tie_word_embeddings").unwrap_or(false),
        })
    }

    /// A Hugging Face `config.json` object describing this model (LLaMA naming, the
    /// variant's `model_type`), with `name` as `_name_or_path`.
    fn to_hf(&self, name: &str, variant: &Variant) -> serde_json::Value {
        serde_json::json!({
            "_name_or_path": name,
            "model_type": variant.hf_model_type,
            "architectures": [variant.hf_architecture],
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ffn,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_base,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.context_length,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": self.tie_embeddings,
            "rope_scaling": null,
            "hidden_act": "silu",
        })
    }
}

/// The tensors of a checkpoint that are not per block.
#[derive(Clone, Copy)]
enum Global {
    Embed,
    FinalNorm,
    Unembed,
}

/// The tensors of one block.
#[derive(Clone, Copy)]
enum Part {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    MlpNorm,
}

/// How a checkpoint names the tensors.
#[derive(Clone, Copy)]
enum Layout {
    /// llama.cpp's GGUF names (`blk.{L}.attn_q.weight`).
    Gguf,
    /// Hugging Face's names (`model.layers.{L}.self_attn.q_proj.weight`).
    Hf,
}

impl Layout {
    fn global(self, t: Global) -> &'static str {
        match (self, t) {
            (Layout::Gguf, Global::Embed) => "token_embd.weight",
            (Layout::Gguf, Global::FinalNorm) => "output_norm.weight",
            (Layout::Gguf, Global::Unembed) => "output.weight",
            (Layout::Hf, Global::Embed) => "model.embed_tokens.weight",
            (Layout::Hf, Global::FinalNorm) => "model.norm.weight",
            (Layout::Hf, Global::Unembed) => "lm_head.weight",
        }
    }

    /// The name of a block's weight.
    fn block(self, layer: usize, p: Part) -> String {
        format!("{}.weight", self.block_stem(layer, p))
    }

    /// The name of a block's bias (query, key and value of variants with biases).
    fn block_bias(self, layer: usize, p: Part) -> String {
        format!("{}.bias", self.block_stem(layer, p))
    }

    /// A block tensor's name without its `.weight` / `.bias` suffix.
    fn block_stem(self, layer: usize, p: Part) -> String {
        let (prefix, name) = match self {
            Layout::Gguf => (
                "blk",
                match p {
                    Part::Q => "attn_q",
                    Part::K => "attn_k",
                    Part::V => "attn_v",
                    Part::O => "attn_output",
                    Part::Gate => "ffn_gate",
                    Part::Up => "ffn_up",
                    Part::Down => "ffn_down",
                    Part::AttnNorm => "attn_norm",
                    Part::MlpNorm => "ffn_norm",
                },
            ),
            Layout::Hf => (
                "model.layers",
                match p {
                    Part::Q => "self_attn.q_proj",
                    Part::K => "self_attn.k_proj",
                    Part::V => "self_attn.v_proj",
                    Part::O => "self_attn.o_proj",
                    Part::Gate => "mlp.gate_proj",
                    Part::Up => "mlp.up_proj",
                    Part::Down => "mlp.down_proj",
                    Part::AttnNorm => "input_layernorm",
                    Part::MlpNorm => "post_attention_layernorm",
                },
            ),
        };
        format!("{prefix}.{layer}.{name}")
    }
}

/// Weights of one block (shapes in the module docs' orientation).
#[derive(Clone, Debug)]
struct BlockWeights {
    /// RMSNorm gain before attention, `[d]`.
    attn_norm: Vec<f32>,
    /// Fused Q/K/V projection, `[(H + 2·KV)·hd, d]`, Q/K rows in interleaved-RoPE order.
    wqkv: Vec<f32>,
    /// Fused Q/K/V bias, `[(H + 2·KV)·hd]` in the rows' order; `None` without biases.
    bqkv: Option<Vec<f32>>,
    /// Attention output projection, `[d, H·hd]`.
    wo: Vec<f32>,
    /// RMSNorm gain before the MLP, `[d]`.
    mlp_norm: Vec<f32>,
    /// Fused gate (rows `0..F`) and up (rows `F..2F`) projections, `[2F, d]`.
    w_gate_up: Vec<f32>,
    /// MLP down projection, `[d, F]`.
    w_down: Vec<f32>,
}

/// A loaded model of this block: LLaMA, or a [`Variant`] of it.
struct Llama {
    cfg: LlamaConfig,
    variant: &'static Variant,
    info: ModelInfo,
    /// Token embedding, `[V, d]`.
    embed: Vec<f32>,
    blocks: Vec<BlockWeights>,
    /// Final RMSNorm gain, `[d]`.
    final_norm: Vec<f32>,
    /// Unembedding `[V, d]`; `None` when tied to `embed`.
    unembed: Option<Vec<f32>>,
    rope: RopeTable,
}

/// Reorder the rows of a query or key projection `[n_heads·hd, d]` from the Hugging Face
/// "rotate half" order to the interleaved order: within each head, new row `2i + j` is
/// old row `j·hd/2 + i` (`j ∈ {0, 1}`).
pub(super) fn hf_rows_to_interleaved(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    d: usize,
) -> Vec<f32> {
    permute_head_rows(w, n_heads, head_dim, d, true)
}

/// Inverse of [`hf_rows_to_interleaved`].
pub(super) fn interleaved_rows_to_hf(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    d: usize,
) -> Vec<f32> {
    permute_head_rows(w, n_heads, head_dim, d, false)
}

/// Moves, within each head, row `j·hd/2 + i` (Hugging Face order) to row `2i + j`
/// (interleaved order) when `to_interleaved`, and back otherwise.
fn permute_head_rows(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    d: usize,
    to_interleaved: bool,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let interleaved = h * head_dim + 2 * i + j;
                let hf = h * head_dim + j * half + i;
                let (dst, src) = if to_interleaved {
                    (interleaved, hf)
                } else {
                    (hf, interleaved)
                };
                out[dst * d..(dst + 1) * d].copy_from_slice(&w[src * d..(src + 1) * d]);
            }
        }
    }
    out
}

impl Llama {
    /// Reads every weight named by `layout` from `src` and assembles the model.
    fn assemble(
        src: &mut dyn TensorSource,
        cfg: LlamaConfig,
        name: String,
        layout: Layout,
        variant: &'static Variant,
    ) -> Result<Self> {
        let (d, v, f) = (cfg.d_model, cfg.vocab_size, cfg.d_ffn);
        let (hq, hkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let embed = src.get(layout.global(Global::Embed), &[v, d])?;
        let final_norm = src.get(layout.global(Global::FinalNorm), &[d])?;
        let unembed_name = layout.global(Global::Unembed);
        let unembed = if !cfg.tie_embeddings && src.has(unembed_name) {
            Some(src.get(unembed_name, &[v, d])?)
        } else {
            None
        };
        let permute_qk_from_hf = matches!(layout, Layout::Hf) || variant.gguf_rotate_half;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |p: Part| layout.block(l, p);
            let mut q = src.get(&n(Part::Q), &[hq * hd, d])?;
            let mut k = src.get(&n(Part::K), &[hkv * hd, d])?;
            let vw = src.get(&n(Part::V), &[hkv * hd, d])?;
            if permute_qk_from_hf {
                q = hf_rows_to_interleaved(&q, hq, hd, d);
                k = hf_rows_to_interleaved(&k, hkv, hd, d);
            }
            let mut wqkv = q;
            wqkv.extend_from_slice(&k);
            wqkv.extend_from_slice(&vw);
            let bqkv = if variant.qkv_bias {
                let mut bias = |p: Part, heads: usize| -> Result<Vec<f32>> {
                    let b = src.get(&layout.block_bias(l, p), &[heads * hd])?;
                    Ok(if permute_qk_from_hf && !matches!(p, Part::V) {
                        hf_rows_to_interleaved(&b, heads, hd, 1)
                    } else {
                        b
                    })
                };
                let mut b = bias(Part::Q, hq)?;
                b.extend(bias(Part::K, hkv)?);
                b.extend(bias(Part::V, hkv)?);
                Some(b)
            } else {
                None
            };
            let mut w_gate_up = src.get(&n(Part::Gate), &[f, d])?;
            w_gate_up.extend_from_slice(&src.get(&n(Part::Up), &[f, d])?);
            blocks.push(BlockWeights {
                attn_norm: src.get(&n(Part::AttnNorm), &[d])?,
                wqkv,
                bqkv,
                wo: src.get(&n(Part::O), &[d, hq * hd])?,
                mlp_norm: src.get(&n(Part::MlpNorm), &[d])?,
                w_gate_up,
                w_down: src.get(&n(Part::Down), &[d, f])?,
            });
        }
        let info = ModelInfo {
            family: variant.arch,
            name,
            d_model: d,
            n_layers: cfg.n_layers,
            vocab_size: v,
            context_length: cfg.context_length,
            bos_token_id: cfg.bos_token_id,
            eos_token_id: cfg.eos_token_id,
            hook_kinds: HOOK_KINDS,
        };
        let rope = RopeTable::new(cfg.head_dim, cfg.rope_base, cfg.context_length);
        Ok(Llama {
            cfg,
            variant,
            info,
            embed,
            blocks,
            final_norm,
            unembed,
            rope,
        })
    }
}

/// The last component of `path` (without its extension when `stem`).
pub(super) fn path_name(path: &Path, stem: bool) -> String {
    let name = if stem {
        path.file_stem()
    } else {
        path.file_name()
    };
    name.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads a GGUF model of `variant` (`general.architecture` = `variant.arch`):
/// hyperparameters from the metadata, every weight dequantised to f32.
pub(crate) fn load_gguf(mut f: GgufFile, variant: &'static Variant) -> Result<Box<dyn Family>> {
    let vocab_rows = f
        .dims(Layout::Gguf.global(Global::Embed))
        .map(|dims| dims[0])
        .ok_or_else(|| Error::bad_file(f.path(), "tensor token_embd.weight is missing"))?;
    let cfg = LlamaConfig::from_gguf(&f, vocab_rows, variant.arch)?;
    cfg.validate(f.path())?;
    let name = f
        .string("general.name")
        .map(str::to_string)
        .unwrap_or_else(|| path_name(f.path(), true));
    Ok(Box::new(Llama::assemble(
        &mut f,
        cfg,
        name,
        Layout::Gguf,
        variant,
    )?))
}

/// Loads a Hugging Face checkpoint directory (`config.json` + safetensors) of
/// `variant`.
pub(crate) fn load_hf(
    c: &HfConfig,
    dir: &Path,
    variant: &'static Variant,
) -> Result<Box<dyn Family>> {
    let mut cfg = LlamaConfig::from_hf(c, variant)?;
    cfg.validate(c.path())?;
    let mut src = HfTensors::open(dir)?;
    if !cfg.tie_embeddings && !src.has(Layout::Hf.global(Global::Unembed)) {
        // Some checkpoints omit lm_head without saying tie_word_embeddings.
        cfg.tie_embeddings = true;
    }
    let name = c
        .string("_name_or_path")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| path_name(dir, false));
    Ok(Box::new(Llama::assemble(
        &mut src,
        cfg,
        name,
        Layout::Hf,
        variant,
    )?))
}

/// The incremental forward's attention at block `layer`, for any family whose fused
/// `qkv [B·T, (H + 2·KV)·hd]` rows hold the query, key and value heads in that order:
/// rotates the new rows' query and key heads by `rope` at their absolute positions,
/// appends their keys and values to their streams in `cache`, and attends over each
/// stream's positions (within `s.window`) into `attn`.
pub(super) fn attend_cached(
    rope: &RopeTable,
    layer: usize,
    qkv: &mut [f32],
    s: AttnShape,
    places: &[Placement],
    cache: &mut KvCache,
    attn: &mut [f32],
) {
    let (hq, hkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
    let qkv_dim = (hq + 2 * hkv) * hd;
    let starts: Vec<usize> = places.iter().map(|p| p.start).collect();
    rope.apply_interleaved_at(qkv, qkv_dim, hq + hkv, s.seq_len, &starts);
    let streams = cache.layer_mut(layer);
    for (b, p) in places.iter().enumerate() {
        let kv = &mut streams[p.stream];
        let rows = &qkv[b * s.seq_len * qkv_dim..(b + 1) * s.seq_len * qkv_dim];
        for row in rows.chunks_exact(qkv_dim) {
            kv.keys.extend_from_slice(&row[hq * hd..(hq + hkv) * hd]);
            kv.values.extend_from_slice(&row[(hq + hkv) * hd..]);
        }
    }
    let kv: Vec<KvRows<'_>> = places
        .iter()
        .map(|p| KvRows {
            keys: &streams[p.stream].keys,
            values: &streams[p.stream].values,
            first: streams[p.stream].first,
        })
        .collect();
    kernels::cached_attention(qkv, s, &kv, attn);
}

impl Family for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, tokens: &[u32], x: &mut [f32]) {
        kernels::gather_rows(&self.embed, tokens, x);
    }

    fn kv_width(&self) -> usize {
        self.cfg.n_kv_heads * self.cfg.head_dim
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
            kernels::rms_norm(x, &bw.attn_norm, cfg.rms_eps, &mut h);
            product.linear(&h, n, &bw.wqkv, d, qkv_dim, &mut qkv);
            if let Some(b) = &bw.bqkv {
                kernels::add_row_bias(&mut qkv, b);
            }
            let attn_shape = AttnShape {
                batch,
                seq_len,
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: hd,
                window: None,
            };
            match &mut past {
                Past::None => {
                    self.rope
                        .apply_interleaved(&mut qkv, qkv_dim, hq + hkv, seq_len);
                    kernels::causal_attention(&qkv, attn_shape, &mut attn);
                }
                Past::Cached { places, cache } => {
                    attend_cached(
                        &self.rope, layer, &mut qkv, attn_shape, places, cache, &mut attn,
                    );
                }
            }
            product.linear(&attn, n, &bw.wo, hq * hd, d, &mut branch);
            hooks.visit(layer, HookKind::AttnOut, &mut branch)?;
            kernels::add_assign(x, &branch);
            hooks.visit(layer, HookKind::ResidMid, x)?;
            // MLP; the normalised input is split from the gain only for its hook (same
            // values either way: `v · s · g` is `(v · s) · g`).
            if hooks.wants(layer, HookKind::Ln2Normalized) {
                kernels::rms_normalize(x, d, cfg.rms_eps, &mut h);
                hooks.visit(layer, HookKind::Ln2Normalized, &mut h)?;
                kernels::scale_columns(&mut h, &bw.mlp_norm);
            } else {
                kernels::rms_norm(x, &bw.mlp_norm, cfg.rms_eps, &mut h);
            }
            product.linear(&h, n, &bw.w_gate_up, d, 2 * f, &mut gu);
            kernels::swiglu(&gu, f, &mut act);
            product.linear(&act, n, &bw.w_down, f, d, &mut branch);
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
        self.cfg.to_hf(&self.info.name, self.variant)
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
        let mut tensors: Vec<NamedTensor> = vec![
            (
                hf.global(Global::Embed).into(),
                vec![cfg.vocab_size, d],
                self.embed.clone(),
            ),
            (
                hf.global(Global::FinalNorm).into(),
                vec![d],
                self.final_norm.clone(),
            ),
        ];
        if let Some(u) = &self.unembed {
            tensors.push((
                hf.global(Global::Unembed).into(),
                vec![cfg.vocab_size, d],
                u.clone(),
            ));
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let n = |p: Part| hf.block(l, p);
            let (q, rest) = b.wqkv.split_at(hq * hd * d);
            let (k, v) = rest.split_at(hkv * hd * d);
            let (gate, up) = b.w_gate_up.split_at(f * d);
            tensors.push((
                n(Part::Q),
                vec![hq * hd, d],
                interleaved_rows_to_hf(q, hq, hd, d),
            ));
            tensors.push((
                n(Part::K),
                vec![hkv * hd, d],
                interleaved_rows_to_hf(k, hkv, hd, d),
            ));
            tensors.push((n(Part::V), vec![hkv * hd, d], v.to_vec()));
            if let Some(bias) = &b.bqkv {
                let nb = |p: Part| hf.block_bias(l, p);
                let (q, rest) = bias.split_at(hq * hd);
                let (k, v) = rest.split_at(hkv * hd);
                tensors.push((
                    nb(Part::Q),
                    vec![hq * hd],
                    interleaved_rows_to_hf(q, hq, hd, 1),
                ));
                tensors.push((
                    nb(Part::K),
                    vec![hkv * hd],
                    interleaved_rows_to_hf(k, hkv, hd, 1),
                ));
                tensors.push((nb(Part::V), vec![hkv * hd], v.to_vec()));
            }
            tensors.push((n(Part::O), vec![d, hq * hd], b.wo.clone()));
            tensors.push((n(Part::Gate), vec![f, d], gate.to_vec()));
            tensors.push((n(Part::Up), vec![f, d], up.to_vec()));
            tensors.push((n(Part::Down), vec![d, f], b.w_down.clone()));
            tensors.push((n(Part::AttnNorm), vec![d], b.attn_norm.clone()));
            tensors.push((n(Part::MlpNorm), vec![d], b.mlp_norm.clone()));
        }
        write_hf_dir(dir, &self.hf_config(), tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_round_trips_and_moves_pairs_together() {
        let (heads, hd, d) = (3, 6, 2);
        let w: Vec<f32> = (0..heads * hd * d).map(|i| i as f32).collect();
        let p = hf_rows_to_interleaved(&w, heads, hd, d);
        assert_eq!(interleaved_rows_to_hf(&p, heads, hd, d), w);
        // head 1, pair i = 2: HF rows 6+2 and 6+2+3 become interleaved rows 6+4, 6+5.
        let row = |m: &[f32], r: usize| m[r * d..(r + 1) * d].to_vec();
        assert_eq!(row(&p, 10), row(&w, 8));
        assert_eq!(row(&p, 11), row(&w, 11));
    }

    #[test]
    fn tensor_names_follow_each_layout() {
        assert_eq!(
            Layout::Gguf.block(3, Part::MlpNorm),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(
            Layout::Hf.block(3, Part::MlpNorm),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(Layout::Gguf.block(0, Part::O), "blk.0.attn_output.weight");
        assert_eq!(
            Layout::Hf.block(0, Part::Gate),
            "model.layers.0.mlp.gate_proj.weight"
        );
        assert_eq!(Layout::Hf.global(Global::Unembed), "lm_head.weight");
    }
}
