//! Test-only helper: a random LLaMA checkpoint in the Hugging Face layout
//! (`model.safetensors` and `config.json`), for the tests that need a model but not the
//! real data. Shared by the integration tests (`tests/common`) and the crate's unit
//! tests (`src/test_support.rs` includes this file by path).

use std::path::Path;

/// The shape and settings of a tiny random LLaMA.
pub struct TinyLlama {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width.
    pub d: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Whether the output projection is the embedding (no `lm_head.weight`).
    pub tie: bool,
    /// How the weights are stored (`F32` or `BF16`).
    pub dtype: safetensors::Dtype,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `bos_token_id`.
    pub bos: u32,
    /// `eos_token_id` (a number or a list).
    pub eos: serde_json::Value,
}

impl TinyLlama {
    /// Writes the checkpoint into `dir`. Every weight is drawn with
    /// `saelab_testkit::lcg_uniform`, seeded by its place in the file: the norm gains in
    /// 1 ± 0.3, the embedding in ±1, the other matrices in ±0.2 or ±0.3.
    pub fn write(&self, dir: &Path) {
        let TinyLlama {
            vocab: v,
            d,
            heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            ffn: f,
            layers,
            ..
        } = *self;
        // (name, shape, scale); scale 0: a norm gain.
        let mut specs: Vec<(String, Vec<usize>, f32)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, d], 1.0),
            ("model.norm.weight".into(), vec![d], 0.0),
        ];
        if !self.tie {
            specs.push(("lm_head.weight".into(), vec![v, d], 0.2));
        }
        for l in 0..layers {
            for (n, shape, s) in [
                ("self_attn.q_proj", vec![hq * hd, d], 0.3),
                ("self_attn.k_proj", vec![hkv * hd, d], 0.3),
                ("self_attn.v_proj", vec![hkv * hd, d], 0.2),
                ("self_attn.o_proj", vec![d, hq * hd], 0.2),
                ("mlp.gate_proj", vec![f, d], 0.2),
                ("mlp.up_proj", vec![f, d], 0.2),
                ("mlp.down_proj", vec![d, f], 0.2),
                ("input_layernorm", vec![d], 0.0),
                ("post_attention_layernorm", vec![d], 0.0),
            ] {
                specs.push((format!("model.layers.{l}.{n}.weight"), shape, s));
            }
        }
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = specs
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape, scale))| {
                let n: usize = shape.iter().product();
                let seed = i as u64 + 7;
                let vals: Vec<f32> = if scale == 0.0 {
                    let gains = saelab_testkit::lcg_uniform(n, seed, 0.3);
                    gains.into_iter().map(|x| 1.0 + x).collect()
                } else {
                    saelab_testkit::lcg_uniform(n, seed, scale)
                };
                let bytes = match self.dtype {
                    safetensors::Dtype::F32 => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::BF16 => vals
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    other => panic!("no tiny LLaMA in {other:?}"),
                };
                (name, shape, bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(n, s, b)| {
                let view = safetensors::tensor::TensorView::new(self.dtype, s.clone(), b);
                (n.clone(), view.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        let cfg = serde_json::json!({
            "model_type": "llama",
            "hidden_size": d, "intermediate_size": f, "vocab_size": v,
            "num_hidden_layers": layers, "num_attention_heads": hq, "num_key_value_heads": hkv,
            "rms_norm_eps": 1e-5, "rope_theta": 500.0,
            "max_position_embeddings": self.max_positions,
            "tie_word_embeddings": self.tie, "bos_token_id": self.bos, "eos_token_id": self.eos,
        });
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    }
}
