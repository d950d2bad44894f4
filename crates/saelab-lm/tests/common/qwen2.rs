//! The checks of the Qwen2 family, run by `qwen2.rs` on Qwen2.5-Coder-0.5B-Instruct and
//! by `qwen2_1_5b.rs` on Qwen2.5-Coder-1.5B-Instruct (opt-in models of
//! `scripts/setup.sh --model NAME`; each check skips with a message when its GGUF is
//! absent, under CI too).
//!
//! References are independent implementations: candle-transformers'
//! `quantized_qwen2` on the same GGUF with every weight dequantised to f32 (so both
//! sides compute in f32), llama.cpp's tokenizer through node-llama-cpp (the oracle of
//! `tokenizer_oracle.rs`) and token ids it gave for a fixed set of strings (the two
//! sizes share one vocabulary).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_qwen2;
use saelab_lm::chat::{ChatTemplate, Message};
use saelab_lm::generate::GenerateOptions;
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::text::{Corpus, HeldOut, LoadOptions, Part};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{real_data, serial};

use super::ce::held_out_window_ce;
use super::compare::argmax;
use super::f32_gguf::f32_gguf;
use super::oracle::{assert_corpus_matches_llama_cpp, assert_fixed_ids, Fixed};
use super::parity::assert_last_logits_match;

/// One Qwen2 checkpoint under test.
pub struct Size {
    /// Its name for `scripts/setup.sh --model`.
    pub name: &'static str,
    /// Blocks and residual width.
    pub n_layers: usize,
    /// The residual width.
    pub d_model: usize,
}

/// The loaded model and its tokenizer, kept between the tests of one binary; `None`
/// until a test loads it, and again while the parity test holds candle's f32 copy
/// (the 1.5 B model is 7 GB in f32 on each side).
type Slot = Option<(HookedModel, Tokenizer)>;
static LOADED: Mutex<Slot> = Mutex::new(None);

/// The real-model tests of a binary run one at a time, holding this.
pub struct Held {
    slot: MutexGuard<'static, Slot>,
    _serial: MutexGuard<'static, ()>,
    /// Where the GGUF is.
    pub path: PathBuf,
}

impl Held {
    /// The model and tokenizer, loaded on first use.
    pub fn get(&mut self) -> (&HookedModel, &Tokenizer) {
        let path = &self.path;
        let (m, t) = self.slot.get_or_insert_with(|| {
            (
                HookedModel::from_gguf(path).expect("load the Qwen GGUF"),
                Tokenizer::from_gguf(path).expect("the Qwen tokenizer"),
            )
        });
        (m, t)
    }

    /// Drops the loaded model, if any, to make room.
    pub fn unload(&mut self) {
        *self.slot = None;
    }
}

/// The lock and slot of the model `size`, or `None` (with a message) when its GGUF
/// was not set up.
pub fn hold(size: &Size) -> Option<Held> {
    let path = saelab_testkit::data::opt_in_model(size.name)?;
    let serial = serial();
    Some(Held {
        slot: LOADED.lock().unwrap_or_else(|e| e.into_inner()),
        _serial: serial,
        path,
    })
}

/// candle's `quantized_qwen2` on the GGUF at `path` with every tensor dequantised and
/// stored as an F32 QTensor (so its matmuls are plain f32 products).
fn candle_qwen2_f32(path: &Path) -> quantized_qwen2::ModelWeights {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors = names
        .iter()
        .map(|n| {
            let t = content.tensor(&mut f, n, &Device::Cpu).unwrap();
            (n.as_str(), t.dequantize(&Device::Cpu).unwrap())
        })
        .collect();
    let (ct32, mut buf) = f32_gguf(&content.metadata, tensors);
    quantized_qwen2::ModelWeights::from_gguf(ct32, &mut buf, &Device::Cpu).unwrap()
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

/// Last-position logits of five prompts (prose, code, digits, a chat turn, held-out
/// text) match candle's within 1e-3 with the same argmax. candle's logits are computed
/// first and its model dropped before saelab's is loaded, so that only one f32 copy is
/// resident at a time.
pub fn check_last_position_logits_match_candle(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    held.unload();
    let tok = Tokenizer::from_gguf(&held.path).unwrap();
    let chat = ChatTemplate::from_tokenizer(&tok).unwrap();
    let mut prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "In 1492, Columbus sailed the ocean blue; 3 ships, 90 men and",
    ]
    .iter()
    .map(|t| tok.encode(t).unwrap())
    .collect();
    prompts.push(
        chat.encode(&tok, &[Message::user("What is 17 + 25?")], true)
            .unwrap(),
    );
    if let Some(texts) = held_out_texts() {
        let ids = tok.encode(&texts[0]).unwrap();
        prompts.push(ids[..ids.len().min(200)].to_vec());
    }
    let mut theirs: Vec<Tensor> = {
        let mut reference = candle_qwen2_f32(&held.path);
        prompts
            .iter()
            .map(|p| {
                let ids = Tensor::new(p.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                reference.clear_kv_cache();
                reference.forward(&ids, 0).unwrap()
            })
            .collect()
    };
    theirs.reverse();
    let (model, tok) = held.get();
    let info = model.info();
    assert_eq!(info.family, "qwen2");
    assert_eq!(
        (info.n_layers, info.d_model, info.vocab_size),
        (size.n_layers, size.d_model, 151_936)
    );
    assert_last_logits_match(model, tok, &prompts, |_| theirs.pop().unwrap());
}

/// KV-cached greedy generation gives the tokens a full forward at every step gives.
pub fn check_kv_cached_generation_equals_recomputation(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    let (model, tok) = held.get();
    let prompts = [
        tok.encode("The three primary colours are").unwrap(),
        tok.encode("fn main() {\n    let x = 5;\n").unwrap(),
    ];
    let gen = GenerateOptions {
        max_new_tokens: 12,
        stop_tokens: Some(Vec::new()),
        ..Default::default()
    };
    let cached = model
        .generate(&prompts, &gen, &ForwardOptions::new())
        .unwrap();
    for (p, g) in prompts.iter().zip(&cached) {
        // Recompute: a full forward over the prompt and the tokens so far, each step.
        let mut seq = p.clone();
        for _ in 0..gen.max_new_tokens {
            let out = model
                .forward(&[&seq], &ForwardOptions::new().logits(Logits::Last))
                .unwrap();
            seq.push(argmax(out.logits.unwrap().as_slice()) as u32);
        }
        eprintln!("{:?}", tok.decode(&seq).unwrap());
        assert_eq!(
            g.tokens,
            seq[p.len()..],
            "cached vs recomputed greedy tokens"
        );
    }
}

/// Next-token cross-entropy on held-out prose is plausible, and the coder is much
/// better on Rust source.
pub fn check_cross_entropy_is_plausible(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    let Some(texts) = held_out_texts() else {
        return;
    };
    let (model, tok) = held.get();
    // Windows of 256 tokens from inside held-out documents, after the document
    // separator `<|endoftext|>` (the GGUF's BOS id), as Qwen2 saw text in training.
    let sep = model.bos_token_id().unwrap();
    let (ce, per) = held_out_window_ce(model, tok, &texts, sep);
    eprintln!(
        "{}: next-token CE on 8 held-out windows of 256 tokens: {ce:.4} nats (per window \
         {per:.2?})",
        size.name
    );
    // The model is a coder: its own domain, Rust source (this file, past its doc
    // comment, which is prose), is much easier.
    let code: Vec<u32> = std::iter::once(sep)
        .chain(
            tok.encode(include_str!("qwen2.rs")).unwrap()[256..767]
                .iter()
                .copied(),
        )
        .collect();
    let loss = model
        .forward(&[code], &ForwardOptions::new().loss(true))
        .unwrap()
        .loss
        .unwrap();
    let ce_code = loss.data.iter().map(|&v| v as f64).sum::<f64>() / loss.data.len() as f64;
    eprintln!(
        "{}: next-token CE on 511 tokens of Rust source: {ce_code:.4} nats",
        size.name
    );
    assert!(
        (1.5..5.5).contains(&ce),
        "cross-entropy {ce} nats is not plausible"
    );
    assert!(ce_code < ce - 1.0, "code CE {ce_code} vs prose CE {ce}");
}

/// Patching `+ 0.0` into the first, a middle and the last block (the residual, the
/// MLP's normalised input and its output) leaves every logit bit-identical.
pub fn check_identity_patch_leaves_logits_unchanged(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    let (model, tok) = held.get();
    let batch = [tok
        .encode("Sparse autoencoders split activations into features")
        .unwrap()];
    let clean = model
        .forward(&batch, &ForwardOptions::new().logits(Logits::All))
        .unwrap();
    let mid = size.n_layers / 2 - 1;
    for hook in [
        "blocks.0.hook_resid_pre".to_string(),
        format!("blocks.{mid}.ln2.hook_normalized"),
        format!("blocks.{mid}.hook_mlp_out"),
        format!("blocks.{}.hook_resid_post", size.n_layers - 1),
    ] {
        let patched = model
            .forward(
                &batch,
                &ForwardOptions::new()
                    .patch(&hook, |a| {
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

/// Greedy answers to three fixed questions in the ChatML template, each containing
/// the word a correct answer must; prints them and the generation speed.
pub fn check_chatml_answers_are_coherent(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    let (model, tok) = held.get();
    let chat = ChatTemplate::from_tokenizer(tok).unwrap();
    assert_eq!(
        chat.default_system(),
        Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    );
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(model.eos_token_id(), Some(im_end));
    let questions = [
        (
            "What is the capital of France? Answer in one sentence.",
            "Paris",
        ),
        (
            "Write a Python function that returns the square of a number.",
            "def ",
        ),
        ("How many days are there in a week?", "7"),
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|(q, _)| chat.encode(tok, &[Message::user(*q)], true).unwrap())
        .collect();
    let gen = GenerateOptions {
        max_new_tokens: 80,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let answers = model
        .generate(&prompts, &gen, &ForwardOptions::new())
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let new: usize = answers.iter().map(|a| a.tokens.len()).sum();
    eprintln!(
        "{}: {new} tokens generated for 3 prompts in one batch in {secs:.1} s",
        size.name
    );
    for ((q, want), a) in questions.iter().zip(&answers) {
        let text = tok.decode(&a.tokens).unwrap();
        eprintln!("Q: {q}\nA ({:?}): {text}\n", a.finish);
        assert!(
            text.contains(want),
            "answer to {q:?} lacks {want:?}: {text:?}"
        );
    }
}

/// The model saved as a Hugging Face directory reloads to bit-identical logits.
pub fn check_hf_export_reloads_to_the_same_logits(size: &Size) {
    let Some(mut held) = hold(size) else { return };
    let (model, tok) = held.get();
    let dir = tempfile::tempdir().unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen2");
    let reloaded = HookedModel::load(dir.path()).unwrap();
    assert_eq!(reloaded.info().family, "qwen2");
    let batch = [tok
        .encode("Biases on Q, K and V survive the export.")
        .unwrap()];
    let opts = ForwardOptions::new().logits(Logits::All);
    let a = model.forward(&batch, &opts).unwrap().logits.unwrap();
    let b = reloaded.forward(&batch, &opts).unwrap().logits.unwrap();
    // The row permutations of the export and the reload are exact inverses.
    assert_eq!(a.as_slice(), b.as_slice());
}

/// The tokenizer gives llama.cpp's ids for [`FIXED`] and names its special tokens.
pub fn check_fixed_ids_match_llama_cpp(size: &Size) {
    let Some(path) = saelab_testkit::data::opt_in_model(size.name) else {
        return;
    };
    let tok = Tokenizer::from_gguf(&path).unwrap();
    assert!(tok.represents_all_bytes());
    assert_eq!(tok.bos_id(), tok.token_to_id("<|endoftext|>"));
    assert_eq!(tok.eos_id(), tok.token_to_id("<|im_end|>"));
    assert_fixed_ids(&tok, FIXED);
}

/// Every corpus document round-trips and tokenizes as llama.cpp does.
pub fn check_corpus_matches_llama_cpp(size: &Size) {
    let Some(path) = saelab_testkit::data::opt_in_model(size.name) else {
        return;
    };
    let Some(data) = real_data() else { return };
    assert_corpus_matches_llama_cpp(&path, &data.corpus, 2_000_000);
}

/// Strings with digits, whitespace runs, Unicode, contractions, code and control-token
/// text, and their ids by llama.cpp (node-llama-cpp 3.21.1) on the 0.5 B GGUF: as data
/// (`encode`), and where they differ, with control tokens (`encode_with_special`).
pub const FIXED: &[Fixed] = &[
    ("Hello world", &[9707, 1879], None),
    (
        "In 1999, 12345678 people paid $3.14.",
        &[
            641, 220, 16, 24, 24, 24, 11, 220, 16, 17, 18, 19, 20, 21, 22, 23, 1251, 7171, 400, 18,
            13, 16, 19, 13,
        ],
        None,
    ),
    (
        "  two  spaces\tand\ttabs\n\n\nthree newlines   \n  end  ",
        &[
            220, 1378, 220, 12621, 52477, 3244, 3435, 1406, 27856, 501, 7969, 5872, 220, 835, 256,
        ],
        None,
    ),
    (
        "Größe naïve café 日本語のテキスト 🙂👍🏽 Ελληνικά привет",
        &[
            6464, 78940, 94880, 586, 51950, 75402, 21894, 102819, 15767, 56833, 61803, 70534,
            27484, 144349, 145375, 7851, 243, 33486, 33486, 41424, 33269, 29762, 67337, 74134,
            12281, 26991, 8178,
        ],
        None,
    ),
    (
        "don't I'LL we've SHE'S",
        &[15007, 944, 358, 6, 4086, 582, 3003, 53595, 13272],
        None,
    ),
    (
        "def f(x):\n    return x**2  # square\n",
        &[
            750, 282, 2075, 982, 262, 470, 856, 334, 17, 220, 671, 9334, 198,
        ],
        None,
    ),
    (
        "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
        &[
            27, 91, 318, 4906, 91, 29, 872, 198, 13048, 27, 91, 318, 6213, 91, 397, 27, 91, 8691,
            723, 427, 91, 29,
        ],
        Some(&[151644, 872, 198, 13048, 151645, 198, 151643]),
    ),
    ("a<tool_call>b</tool_call>", &[64, 151657, 65, 151658], None),
    ("x\r\ny\r\n\r\nz", &[87, 319, 88, 871, 89], None),
    ("   ", &[262], None),
    (
        "1 2 3 4.5e-10 0x1F",
        &[
            16, 220, 17, 220, 18, 220, 19, 13, 20, 68, 12, 16, 15, 220, 15, 87, 16, 37,
        ],
        None,
    ),
];

/// The `#[test]` functions of every check above for the checkpoint `$size` (a
/// [`Size`] constant), one per check, so that each size's binary lists them by name.
#[macro_export]
macro_rules! qwen2_tests {
    ($size:expr) => {
        #[test]
        fn last_position_logits_match_candle_quantized_qwen2_in_f32() {
            check_last_position_logits_match_candle(&$size);
        }
        #[test]
        fn kv_cached_greedy_generation_equals_recomputation() {
            check_kv_cached_generation_equals_recomputation(&$size);
        }
        #[test]
        fn next_token_cross_entropy_on_held_out_text_is_plausible() {
            check_cross_entropy_is_plausible(&$size);
        }
        #[test]
        fn identity_patch_leaves_logits_unchanged() {
            check_identity_patch_leaves_logits_unchanged(&$size);
        }
        #[test]
        fn chatml_greedy_answers_are_coherent() {
            check_chatml_answers_are_coherent(&$size);
        }
        #[test]
        fn hf_export_reloads_to_the_same_logits() {
            check_hf_export_reloads_to_the_same_logits(&$size);
        }
        #[test]
        fn tokenizer_ids_of_fixed_strings_match_llama_cpp() {
            check_fixed_ids_match_llama_cpp(&$size);
        }
        #[test]
        fn every_corpus_document_round_trips_and_tokenizes_as_llama_cpp_does() {
            check_corpus_matches_llama_cpp(&$size);
        }
    };
}
