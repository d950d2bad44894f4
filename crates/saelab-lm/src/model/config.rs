//! Hyperparameters of a LLaMA-family decoder, read from GGUF metadata or from a Hugging
//! Face `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use saelab_core::{Error, Result};

/// The hyperparameters the hooked forward needs.
///
/// Every field is checked for consistency by [`LlamaConfig::validate`] before a model is
/// built, so a loaded model can rely on `d_model = n_heads · head_dim` and
/// `n_heads % n_kv_heads == 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
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
    /// Check that the numbers describe a model this crate can run.
    ///
    /// `origin` names the file the numbers came from, for the error message.
    pub fn validate(&self, origin: &Path) -> Result<()> {
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
    pub fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Read the hyperparameters from GGUF metadata (`general.architecture` must be `llama`).
    ///
    /// `vocab_rows` is the number of rows of `token_embd.weight`, used when the metadata
    /// has no `llama.vocab_size`.
    pub fn from_gguf_metadata(
        md: &HashMap<String, Value>,
        vocab_rows: usize,
        path: &Path,
    ) -> Result<Self> {
        let arch = match md.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(Error::bad_file(
                    path,
                    "no general.architecture in GGUF metadata",
                ))
            }
        };
        if arch != "llama" {
            return Err(Error::bad_file(
                path,
                format!("unsupported architecture '{arch}' (saelab-lm runs 'llama' models)"),
            ));
        }
        let int = |key: &str| -> Result<Option<u64>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => gguf_int(v).map(Some).ok_or_else(|| {
                    Error::bad_file(path, format!("metadata {key} is not an integer: {v:?}"))
                }),
            }
        };
        let need = |key: &str| -> Result<usize> {
            int(key)?
                .map(|v| v as usize)
                .ok_or_else(|| Error::bad_file(path, format!("metadata {key} is missing")))
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match md.get(key) {
                None => Ok(None),
                Some(Value::F32(v)) => Ok(Some(*v as f64)),
                Some(Value::F64(v)) => Ok(Some(*v)),
                Some(v) => Err(Error::bad_file(
                    path,
                    format!("metadata {key} is not a number: {v:?}"),
                )),
            }
        };
        if let Some(Value::String(kind)) = md.get("llama.rope.scaling.type") {
            if kind != "none" {
                return Err(Error::bad_file(
                    path,
                    format!("RoPE scaling '{kind}' is not supported"),
                ));
            }
        }
        if md.contains_key("llama.expert_count") && int("llama.expert_count")?.unwrap_or(0) > 1 {
            return Err(Error::bad_file(
                path,
                "mixture-of-experts models are not supported",
            ));
        }
        let d_model = need("llama.embedding_length")?;
        let n_heads = need("llama.attention.head_count")?;
        let n_kv_heads = int("llama.attention.head_count_kv")?
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = d_model.checked_div(n_heads).unwrap_or(0);
        if let Some(rope_dim) = int("llama.rope.dimension_count")? {
            if rope_dim as usize != head_dim {
                return Err(Error::bad_file(
                    path,
                    format!("partial RoPE ({rope_dim} of {head_dim} dims) is not supported"),
                ));
            }
        }
        let vocab_size = int("llama.vocab_size")?
            .map(|v| v as usize)
            .unwrap_or(vocab_rows);
        let cfg = LlamaConfig {
            n_layers: need("llama.block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ffn: need("llama.feed_forward_length")?,
            rope_base: float("llama.rope.freq_base")?.unwrap_or(10_000.0),
            rms_eps: float("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            vocab_size,
            context_length: int("llama.context_length")?
                .map(|v| v as usize)
                .unwrap_or(4096),
            bos_token_id: int("tokenizer.ggml.bos_token_id")?.map(|v| v as u32),
            eos_token_id: int("tokenizer.ggml.eos_token_id")?.map(|v| v as u32),
            tie_embeddings: false,
        };
        if d_model != n_heads * head_dim {
            return Err(Error::bad_file(
                path,
                format!("embedding width {d_model} is not divisible by {n_heads} heads"),
            ));
        }
        Ok(cfg)
    }

    /// Read the hyperparameters from a Hugging Face `config.json` (LLaMA naming).
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))?;
        let model_type = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("");
        if model_type != "llama" {
            return Err(Error::bad_file(
                path,
                format!("unsupported model_type '{model_type}' (saelab-lm runs 'llama' models)"),
            ));
        }
        let uint = |key: &str| -> Result<Option<usize>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|u| Some(u as usize)).ok_or_else(|| {
                    Error::bad_file(path, format!("{key} is not a non-negative integer: {x}"))
                }),
            }
        };
        let need = |key: &str| -> Result<usize> {
            uint(key)?.ok_or_else(|| Error::bad_file(path, format!("{key} is missing")))
        };
        let num = |key: &str| -> Result<Option<f64>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| Error::bad_file(path, format!("{key} is not a number: {x}"))),
            }
        };
        if let Some(scaling) = v.get("rope_scaling") {
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
        for flag in ["attention_bias", "mlp_bias"] {
            if v.get(flag).and_then(|x| x.as_bool()) == Some(true) {
                return Err(Error::bad_file(
                    path,
                    format!("{flag} = true is not supported"),
                ));
            }
        }
        let d_model = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let head_dim = match uint("head_dim")? {
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
        let token = |key: &str| -> Option<u32> {
            match v.get(key) {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|u| u as u32),
                Some(serde_json::Value::Array(a)) => {
                    a.first().and_then(|x| x.as_u64()).map(|u| u as u32)
                }
                _ => None,
            }
        };
        Ok(LlamaConfig {
            n_layers: need("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads: uint("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            d_ffn: need("intermediate_size")?,
            rope_base: num("rope_theta")?.unwrap_or(10_000.0),
            rms_eps: num("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            vocab_size: need("vocab_size")?,
            context_length: uint("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
        })
    }

    /// A Hugging Face `config.json` text describing this model (LLaMA naming).
    pub fn to_hf_json(&self) -> String {
        let v = serde_json::json!({
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
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
        });
        serde_json::to_string_pretty(&v).expect("JSON of plain numbers")
    }
}

/// Any GGUF integer value as `u64` (negative values are rejected).
fn gguf_int(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}
