//! Tests of the Gemma 3 family and its SentencePiece tokenizer on Gemma-3-270M (base),
//! the opt-in model of `scripts/setup.sh --model gemma3-270m` (Gemma Terms of Use).
//!
//! The model is not part of the default setup, so these tests skip with a message when
//! its GGUF is absent, under CI too; the corpus they read is the default one
//! (`saelab_testkit::real_data`, whose CI rule applies once the model is there).
//!
//! References are independent implementations:
//! - logits: candle-transformers' `gemma3` (its Hugging Face port, GELU-tanh MLP,
//!   `1 + w` norms) fed the GGUF's tensors dequantised to f32 under their Hugging Face
//!   names, norm gains minus the 1 that llama.cpp's converter added. Not candle's
//!   `quantized_gemma3`, which is wrong for Gemma 3 in candle 0.11.1: its MLP uses
//!   SiLU where Gemma uses GELU-tanh, and both candle files let a local block see 513
//!   positions where Hugging Face and llama.cpp see 512 (`j + w < i` masked instead of
//!   `j + w ≤ i`), so the reference is given a window of 511 to see the right 512;
//! - tokens: llama.cpp's SPM tokenizer through node-llama-cpp (the oracle of
//!   `tokenizer_oracle.rs`) and token ids it gave for a fixed set of strings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{MutexGuard, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use candle_transformers::models::gemma3;
use saelab_lm::generate::GenerateOptions;
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::text::{Corpus, HeldOut, LoadOptions, Part};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{real_data, serial};

mod common;
use common::ce::held_out_window_ce;
use common::compare::argmax;
use common::oracle::{assert_corpus_matches_llama_cpp, assert_fixed_ids, Fixed};
use common::parity::assert_last_logits_match;

/// The sliding window of the model's local blocks.
const WINDOW: usize = 512;

/// The Gemma GGUF, or `None` (with a message) when it was not set up.
fn gemma_path() -> Option<PathBuf> {
    saelab_testkit::data::opt_in_model("gemma3-270m")
}

/// The model (loaded once per test binary), its tokenizer and the lock that runs the
/// real-model tests one at a time, or `None` without the model.
fn gemma() -> Option<(
    &'static HookedModel,
    &'static Tokenizer,
    MutexGuard<'static, ()>,
)> {
    static M: OnceLock<(HookedModel, Tokenizer)> = OnceLock::new();
    let p = gemma_path()?;
    let guard = serial();
    let (m, t) = M.get_or_init(|| {
        (
            HookedModel::from_gguf(&p).expect("load the Gemma GGUF"),
            Tokenizer::from_gguf(&p).expect("the Gemma tokenizer"),
        )
    });
    Some((m, t, guard))
}

/// Held-out documents of the default corpus (every 20th), or `None` without it.
fn held_out_texts() -> Option<Vec<String>> {
    let data = real_data()?;
    let corpus = Corpus::load(&data.corpus, &LoadOptions::default()).unwrap();
    Some(
        corpus
            .part(Part::HeldOut, HeldOut::default())
            .iter()
            .map(|d| d.text.clone())
            .collect(),
    )
}

/// The Hugging Face name of a GGUF tensor of Gemma 3, and whether it is a norm gain.
fn hf_name(gguf: &str) -> (String, bool) {
    match gguf {
        "token_embd.weight" => ("model.embed_tokens.weight".into(), false),
        "output_norm.weight" => ("model.norm.weight".into(), true),
        _ => {
            let rest = gguf.strip_prefix("blk.").expect("a block tensor");
            let (layer, name) = rest.split_once('.').unwrap();
            let hf = match name {
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "attn_q_norm.weight" => "self_attn.q_norm.weight",
                "attn_k_norm.weight" => "self_attn.k_norm.weight",
                "attn_norm.weight" => "input_layernorm.weight",
                "post_attention_norm.weight" => "post_attention_layernorm.weight",
                "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
                "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => panic!("unexpected tensor {gguf} ({other})"),
            };
            (format!("model.layers.{layer}.{hf}"), name.contains("norm"))
        }
    }
}

/// candle-transformers' Hugging Face Gemma 3 on the GGUF at `path`, every tensor
/// dequantised to f32 (see the module docs for the window and the norm gains).
fn candle_gemma3_f32(path: &Path) -> gemma3::Model {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let t = content
            .tensor(&mut f, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let (hf, norm) = hf_name(name);
        tensors.insert(hf, if norm { (t - 1.0).unwrap() } else { t });
    }
    let md = |k: &str| content.metadata[&format!("gemma3.{k}")].to_u32().unwrap() as usize;
    let cfg: gemma3::Config = serde_json::from_value(serde_json::json!({
        "attention_bias": false,
        "head_dim": md("attention.key_length"),
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": md("embedding_length"),
        "intermediate_size": md("feed_forward_length"),
        "num_attention_heads": md("attention.head_count"),
        "num_hidden_layers": md("block_count"),
        "num_key_value_heads": md("attention.head_count_kv"),
        "rms_norm_eps": content.metadata["gemma3.attention.layer_norm_rms_epsilon"]
            .to_f32()
            .unwrap() as f64,
        "rope_theta": content.metadata["gemma3.rope.freq_base"].to_f32().unwrap() as f64,
        "rope_local_base_freq": 10000.0,
        "vocab_size": 262_144,
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "query_pre_attn_scalar": md("attention.key_length"),
        "sliding_window": md("attention.sliding_window") - 1,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 2048,
    }))
    .unwrap();
    assert_eq!(md("attention.sliding_window"), WINDOW);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    gemma3::Model::new(false, &cfg, vb).unwrap()
}

#[test]
fn last_position_logits_match_candle_gemma3_in_f32() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let info = model.info();
    assert_eq!(info.family, "gemma3");
    assert_eq!(
        (info.n_layers, info.d_model, info.vocab_size),
        (18, 640, 262_144)
    );
    let bos = tok.bos_id().unwrap();
    let mut prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "In 1492, Columbus sailed the ocean blue; 3 ships, 90 men and",
    ]
    .iter()
    .map(|t| [vec![bos], tok.encode(t).unwrap()].concat())
    .collect();
    if let Some(texts) = held_out_texts() {
        // Longer than the window: local and global blocks see different positions.
        let ids = tok.encode(&texts[0]).unwrap();
        assert!(ids.len() >= 700);
        prompts.push([vec![bos], ids[..699].to_vec()].concat());
    }
    let mut reference = candle_gemma3_f32(model.source());
    assert_last_logits_match(model, tok, &prompts, |ids| {
        reference.clear_kv_cache();
        reference.forward(ids, 0).unwrap()
    });
}

#[test]
fn kv_cached_greedy_generation_beyond_the_window_equals_recomputation() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let Some(texts) = held_out_texts() else {
        return;
    };
    // A prompt just short of the window, continued past it: the first cached steps see
    // every position in the local blocks, the last ones only the window.
    let bos = tok.bos_id().unwrap();
    let ids = tok.encode(&texts[1]).unwrap();
    let prompt: Vec<u32> = [vec![bos], ids[..WINDOW - 21].to_vec()].concat();
    let gen = GenerateOptions {
        max_new_tokens: 40,
        stop_tokens: Some(Vec::new()),
        ..Default::default()
    };
    let cached = model
        .generate(&[&prompt], &gen, &ForwardOptions::new())
        .unwrap()
        .remove(0);
    assert_eq!(cached.tokens.len(), 40);
    let seq = [prompt.clone(), cached.tokens.clone()].concat();
    assert!(seq.len() > WINDOW + 10);
    // Greedy recomputation, step by step, is the argmax of the full forward's logits at
    // each position, given the same tokens before it (the forward is causal).
    let all = model
        .forward(&[&seq], &ForwardOptions::new().logits(Logits::All))
        .unwrap()
        .logits
        .unwrap();
    let v = model.vocab_size();
    let logits = all.as_slice();
    let recomputed: Vec<u32> = (prompt.len() - 1..seq.len() - 1)
        .map(|t| argmax(&logits[t * v..(t + 1) * v]) as u32)
        .collect();
    eprintln!(
        "greedy continuation over positions {}..{}: {:?}",
        prompt.len(),
        seq.len(),
        tok.decode(&cached.tokens).unwrap()
    );
    assert_eq!(
        cached.tokens, recomputed,
        "cached vs recomputed greedy tokens"
    );
}

#[test]
fn kv_cache_of_local_blocks_stays_within_the_window() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let Some(texts) = held_out_texts() else {
        return;
    };
    // A stream fed 300 tokens, then 1 at a time up to 3 windows and more: a local
    // block holds at most the window plus 64 positions, a global block all of them,
    // and the steps' logits at three positions past the first trim equal the full
    // forward's (up to the difference of one position's product in a batch and alone).
    let bos = tok.bos_id().unwrap();
    let ids: Vec<u32> = texts
        .iter()
        .map(|t| tok.encode(t).unwrap())
        .find(|ids| ids.len() >= 3 * WINDOW + 100)
        .expect("a held-out document of 1 636 tokens");
    let seq: Vec<u32> = [vec![bos], ids[..3 * WINDOW + 99].to_vec()].concat();
    let checked = [WINDOW + 70, 2 * WINDOW + 3, seq.len() - 1];
    let mut cache = model.kv_cache(1);
    let last = ForwardOptions::new().logits(Logits::Last);
    model
        .forward_cached(&[&seq[..300]], &mut cache, &[0], &last)
        .unwrap();
    let mut worst = 0f32;
    for p in 300..seq.len() {
        let out = model
            .forward_cached(&[&seq[p..p + 1]], &mut cache, &[0], &last)
            .unwrap();
        if checked.contains(&p) {
            let want = model.forward(&[&seq[..=p]], &last).unwrap().logits.unwrap();
            let got = out.logits.unwrap();
            assert_eq!(
                argmax(got.as_slice()),
                argmax(want.as_slice()),
                "position {p}"
            );
            worst = worst.max(common::compare::max_abs_diff(
                got.as_slice(),
                want.as_slice(),
            ));
        }
        for layer in 0..model.n_layers() {
            let held = cache.held_positions(layer, 0);
            if layer % 6 == 5 {
                assert_eq!(held, p + 1, "global block {layer} at position {p}");
            } else {
                assert!(held <= WINDOW + 64, "local block {layer} holds {held}");
            }
        }
    }
    let local = cache.held_positions(0, 0);
    eprintln!(
        "after {} positions: a local block holds {local}, a global one {}; worst \
         |Δlogit| of the cached steps {worst:.2e}",
        seq.len(),
        cache.held_positions(5, 0)
    );
    assert!(local < seq.len() / 2);
    assert!(worst < 1e-3, "cached vs full logits differ by {worst}");
}

#[test]
fn next_token_cross_entropy_on_held_out_text_is_plausible() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let Some(texts) = held_out_texts() else {
        return;
    };
    // Windows of 256 tokens from inside held-out documents, after BOS.
    let (ce, per) = held_out_window_ce(model, tok, &texts, tok.bos_id().unwrap());
    eprintln!(
        "next-token CE on 8 held-out windows of 256 tokens: {ce:.4} nats (per window {per:.2?})"
    );
    assert!(
        (1.5..5.0).contains(&ce),
        "cross-entropy {ce} nats is not plausible"
    );
}

#[test]
fn identity_patch_leaves_logits_unchanged() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let batch = [[
        vec![tok.bos_id().unwrap()],
        tok.encode("Sparse autoencoders split activations into features")
            .unwrap(),
    ]
    .concat()];
    let clean = model
        .forward(&batch, &ForwardOptions::new().logits(Logits::All))
        .unwrap();
    for hook in [
        "blocks.0.hook_resid_pre",
        "blocks.5.hook_attn_out",
        "blocks.9.ln2.hook_normalized",
        "blocks.11.hook_mlp_out",
        "blocks.17.hook_resid_post",
    ] {
        let patched = model
            .forward(
                &batch,
                &ForwardOptions::new()
                    .patch(hook, |a| {
                        a.as_mut_slice().iter_mut().for_each(|v| *v += 0.0);
                        Ok(())
                    })
                    .logits(Logits::All),
            )
            .unwrap();
        assert_eq!(
            clean.logits.as_ref().unwrap().as_slice(),
            patched.logits.as_ref().unwrap().as_slice(),
            "{hook}"
        );
    }
}

#[test]
fn greedy_continuations_of_fixed_prompts() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let prompts = [
        ("The capital of France is", "France"),
        ("The three primary colours are red,", "yellow"),
        ("Once upon a time, in a small village,", "there lived"),
    ];
    let bos = tok.bos_id().unwrap();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|(p, _)| [vec![bos], tok.encode(p).unwrap()].concat())
        .collect();
    let gen = GenerateOptions {
        max_new_tokens: 40,
        ..Default::default()
    };
    let out = model.generate(&ids, &gen, &ForwardOptions::new()).unwrap();
    for ((p, want), g) in prompts.iter().zip(&out) {
        let text = tok.decode(&g.tokens).unwrap();
        eprintln!("{p}|{text}| ({:?})", g.finish);
        assert!(text.contains(want), "continuation of {p:?} lacks {want:?}");
    }
}

#[test]
fn hf_export_reloads_to_the_same_logits() {
    let Some((model, tok, _g)) = gemma() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gemma3_text");
    assert_eq!(config["sliding_window"], WINDOW);
    let reloaded = HookedModel::load(dir.path()).unwrap();
    assert_eq!(reloaded.info().family, "gemma3");
    let batch = [[
        vec![tok.bos_id().unwrap()],
        tok.encode("Norm gains lose their 1 and get it back.")
            .unwrap(),
    ]
    .concat()];
    let opts = ForwardOptions::new().logits(Logits::All);
    let a = model.forward(&batch, &opts).unwrap().logits.unwrap();
    let b = reloaded.forward(&batch, &opts).unwrap().logits.unwrap();
    // Row permutations are exact inverses, and so is `g − 1 + 1` for these gains.
    assert_eq!(a.as_slice(), b.as_slice());
}

/// Strings with digits, whitespace runs, Unicode, emoji, control characters and
/// special-token text, and their ids by llama.cpp (node-llama-cpp 3.21.1) on this
/// GGUF: as data (`encode`), and where they differ, with control tokens
/// (`encode_with_special`).
const FIXED: &[Fixed] = &[
    ("Hello world", &[9259, 1902], None),
    (
        "In 1999, 12345678 people paid $3.14.",
        &[
            902, 236743, 236770, 236819, 236819, 236819, 236764, 236743, 236770, 236778, 236800,
            236812, 236810, 236825, 236832, 236828, 1331, 6382, 609, 236800, 236761, 236770,
            236812, 236761,
        ],
        None,
    ),
    (
        "  two  spaces\tand\ttabs\n\n\nthree newlines   \n  end  ",
        &[
            138, 13498, 138, 35220, 255968, 624, 255968, 39218, 109, 19891, 861, 8721, 139, 107,
            138, 643, 138,
        ],
        None,
    ),
    (
        "Größe naïve café 日本語のテキスト 🙂👍🏽 Ελληνικά привет",
        &[
            9322, 237001, 16756, 120362, 33443, 33375, 238582, 236945, 95830, 57235, 240493,
            242713, 23883, 109959, 42220, 36097,
        ],
        None,
    ),
    (
        "don't I'LL we've SHE'S",
        &[
            13246, 236789, 236745, 564, 236789, 2182, 692, 236789, 560, 52131, 236789, 236773,
        ],
        None,
    ),
    (
        "def f(x):\n    return x**2  # square\n",
        &[
            2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 1018, 236778, 138, 236865, 6281,
            107,
        ],
        None,
    ),
    (
        "<bos>Hi<start_of_turn>user\nHello<end_of_turn>\n<eos>",
        &[
            236820, 46757, 236813, 10979, 236820, 3041, 236779, 1340, 236779, 887, 236813, 2364,
            107, 9259, 236820, 643, 236779, 1340, 236779, 887, 236813, 107, 236820, 211827, 236813,
        ],
        Some(&[2, 10979, 105, 2364, 107, 9259, 106, 107, 1]),
    ),
    (
        "x\r\ny\r\n\r\nz",
        &[236781, 251, 107, 236762, 251, 107, 251, 107, 236802],
        None,
    ),
    ("   ", &[139], None),
    (
        " leading space and trailing ",
        &[5830, 2557, 532, 45330, 236743],
        None,
    ),
    (
        "1 2 3 4.5e-10 0x1F",
        &[
            236770, 236743, 236778, 236743, 236800, 236743, 236812, 236761, 236810, 236744, 236772,
            236770, 236771, 236743, 236771, 236781, 236770, 236811,
        ],
        None,
    ),
    (
        "\u{1}\u{7} control \u{7f} chars \u{10FFFD}",
        &[
            249732, 245, 2256, 236743, 251541, 56256, 236743, 482, 381, 429, 427,
        ],
        None,
    ),
    (
        "a<start_of_image>b[multimodal]c",
        &[236746, 255999, 236763, 5, 236755],
        None,
    ),
];

#[test]
fn tokenizer_ids_of_fixed_strings_match_llama_cpp() {
    let Some(path) = gemma_path() else { return };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    assert!(tok.represents_all_bytes());
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!(tok.bos_id(), tok.token_to_id("<bos>"));
    assert_eq!(tok.eos_id(), tok.token_to_id("<eos>"));
    assert_fixed_ids(&tok, FIXED);
}

#[test]
fn every_corpus_document_round_trips_and_tokenizes_as_llama_cpp_does() {
    let Some(path) = gemma_path() else { return };
    let Some(data) = real_data() else { return };
    assert_corpus_matches_llama_cpp(&path, &data.corpus, 2_000_000);
}
