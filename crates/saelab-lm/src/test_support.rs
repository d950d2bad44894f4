//! Test helpers shared by the unit tests of the crate: a tiny byte-level BPE tokenizer
//! and a tiny random LLaMA in the Hugging Face layout, so that the contexts, the cache
//! and the stream can be tested without the real model; and the real SmolLM2 tokenizer
//! and corpus for the tokenizer and text tests (through [`saelab_testkit::real_data`]:
//! `None` with a message when `scripts/setup.sh` has not fetched them, a panic when
//! `CI` or `SAELAB_REQUIRE_DATA` is set).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as V;

use crate::model::HookedModel;
use crate::text::{Corpus, LoadOptions};
use crate::tokenizer::Tokenizer;

/// A byte-level BPE: BOS (`<s>`, id 0) + the 256 byte symbols + a few merges
/// (262 tokens).
pub fn tiny_tokenizer() -> Tokenizer {
    let mut tokens = vec!["<s>".to_string()];
    let mut next = 256u32;
    for b in 0u32..256 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
        tokens.push(c.to_string());
    }
    let merges = ["t h", "th e", "Ġ the", "a n", "an d"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let strs = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
    let mut md = HashMap::new();
    md.insert("tokenizer.ggml.model".to_string(), V::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".to_string(), V::String("smollm".into()));
    let mut types = vec![V::I32(1); tokens.len()];
    types[0] = V::I32(3);
    md.insert("tokenizer.ggml.token_type".to_string(), V::Array(types));
    md.insert("tokenizer.ggml.tokens".to_string(), strs(tokens));
    md.insert(
        "tokenizer.ggml.merges".to_string(),
        strs(merges.iter().map(|s| s.to_string()).collect()),
    );
    md.insert("tokenizer.ggml.bos_token_id".to_string(), V::U32(0));
    Tokenizer::from_gguf_metadata(&md, "tiny.gguf").unwrap()
}

/// Deterministic pseudo-random values in [−scale, scale].
fn lcg(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes a random 3-layer LLaMA (d 32, 4 heads, 2 KV heads, vocabulary 262) in the
/// Hugging Face layout into `dir` and loads it.
pub fn tiny_model(dir: &Path) -> HookedModel {
    let (v, d, hq, hkv, hd, f, layers) = (262usize, 32usize, 4usize, 2usize, 8usize, 48usize, 3);
    let mut specs: Vec<(String, Vec<usize>, f32)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, d], 1.0),
        ("model.norm.weight".into(), vec![d], 0.0),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
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
            specs.push((format!("{p}.{n}.weight"), shape, s));
        }
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape, scale))| {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = if scale == 0.0 {
                lcg(n, i as u64 + 7, 0.3)
                    .into_iter()
                    .map(|x| 1.0 + x)
                    .collect()
            } else {
                lcg(n, i as u64 + 7, scale)
            };
            (
                name,
                shape,
                vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "model_type": "llama",
        "hidden_size": d, "intermediate_size": f, "vocab_size": v,
        "num_hidden_layers": layers, "num_attention_heads": hq, "num_key_value_heads": hkv,
        "rms_norm_eps": 1e-5, "rope_theta": 500.0, "max_position_embeddings": 256,
        "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    HookedModel::load(dir).unwrap()
}

/// 40 short English-like documents (ids 0..40; with the default rule, 19 and 39 are
/// held out).
pub fn tiny_corpus() -> Corpus {
    let words = [
        "the", "cat", "and", "dog", "ran", "then", "a", "ship", "sailed", "north", "whale", "sea",
        "union", "state", "of", "is", "strong",
    ];
    let texts = (0..40usize).map(|i| {
        let n = 12 + (i * 7) % 30;
        let text: Vec<&str> = (0..n)
            .map(|j| words[(i * 5 + j * j + j) % words.len()])
            .collect();
        (format!("doc{i}"), text.join(" "))
    });
    Corpus::from_texts(texts, &LoadOptions::default())
}

/// The SmolLM2 GGUF, or `None` (with a message) when the real data is absent.
pub fn smollm2_gguf() -> Option<PathBuf> {
    Some(saelab_testkit::real_data()?.model)
}

/// The SmolLM2 tokenizer, or `None` when the real data is absent.
pub fn smollm2() -> Option<Tokenizer> {
    Some(Tokenizer::from_gguf(smollm2_gguf()?).expect("load the SmolLM2 tokenizer"))
}

/// The real corpus (all three collections), or `None` when the real data is absent.
pub fn real_corpus() -> Option<Corpus> {
    let dir = saelab_testkit::real_data()?.corpus;
    Some(Corpus::load(&dir, &LoadOptions::default()).expect("load the real corpus"))
}
