//! Tests of the incremental forward, generation and the chat template.
//!
//! Real-model tests use the SmolLM2 GGUF fetched by `scripts/setup.sh` (through
//! `saelab_testkit::real_data`: they skip with a message when it is absent, and fail
//! instead under CI or `SAELAB_REQUIRE_DATA`). The tiny-model tests need no data. All
//! are kept short (a few forwards of short prompts): the suite runs on 2 cores.
//!
//! The reference for the KV cache is the full forward: at every step of a greedy
//! generation, the full forward's logits at the last position of the sequence so far
//! must pick the token the cached generation picked. The causal full forward's logits
//! at position `p` depend on tokens `≤ p` only, so one full forward over the final
//! sequence (every position's logits) holds every step's recomputation.

#[path = "common/tiny_llama.rs"]
mod tiny_llama;

use std::cell::RefCell;
use std::sync::{MutexGuard, OnceLock};

use saelab_core::Error;
use saelab_lm::chat::{ChatTemplate, Message};
use saelab_lm::generate::{Finish, GenerateOptions};
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::tokenizer::Tokenizer;
use saelab_testkit::{assert_mentions, real_data, serial};

use tiny_llama::TinyLlama;

/// The SmolLM2 model and tokenizer (loaded once per test binary) and the lock that
/// runs the real-model tests one at a time, or `None` without the data.
fn smollm() -> Option<(
    &'static HookedModel,
    &'static Tokenizer,
    MutexGuard<'static, ()>,
)> {
    static M: OnceLock<(HookedModel, Tokenizer)> = OnceLock::new();
    let path = real_data()?.model;
    let (m, t) = M.get_or_init(|| {
        (
            HookedModel::from_gguf(&path).expect("load SmolLM2 GGUF"),
            Tokenizer::from_gguf(&path).expect("SmolLM2 tokenizer"),
        )
    });
    Some((m, t, serial()))
}

/// BOS + the tokens of `text`.
fn plain_prompt(model: &HookedModel, tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut p = vec![model.bos_token_id().expect("SmolLM2 names a BOS")];
    p.extend(tok.encode(text).unwrap());
    p
}

/// Three prompts of different lengths: two plain texts and a chat prompt.
fn prompts(model: &HookedModel, tok: &Tokenizer) -> Vec<Vec<u32>> {
    let chat = ChatTemplate::from_tokenizer(tok).unwrap();
    vec![
        plain_prompt(model, tok, "The whale"),
        chat.encode(
            tok,
            &[Message::user("What is the capital of France?")],
            true,
        )
        .unwrap(),
        plain_prompt(
            model,
            tok,
            "In the year 1851, Herman Melville published a novel about",
        ),
    ]
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The lowest index of the largest value, and the gap to the second largest.
fn argmax_margin(row: &[f32]) -> (u32, f32) {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    (best as u32, row[best] - second)
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        stop_tokens: Some(vec![]),
        ..GenerateOptions::default()
    }
}

#[test]
fn kv_cached_greedy_generation_equals_recomputing_the_whole_sequence() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    let prompts = prompts(model, tok);
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(lens[0] < lens[2] && lens[2] < lens[1], "lengths {lens:?}");
    let gens = model
        .generate(&prompts, &greedy(64), &ForwardOptions::new())
        .unwrap();
    let mut min_margin = f32::INFINITY;
    for (p, g) in prompts.iter().zip(&gens) {
        assert_eq!((g.tokens.len(), g.finish), (64, Finish::Length));
        let mut seq = p.clone();
        seq.extend_from_slice(&g.tokens[..63]);
        let logits = model
            .forward(&[&seq], &ForwardOptions::new().logits(Logits::All))
            .unwrap()
            .take_logits()
            .unwrap();
        for (k, &tok_k) in g.tokens.iter().enumerate() {
            let (best, margin) = argmax_margin(logits.at(0, p.len() - 1 + k));
            assert_eq!(best, tok_k, "prompt of {} tokens, step {k}", p.len());
            min_margin = min_margin.min(margin);
        }
    }
    eprintln!(
        "greedy: 3 prompts ({lens:?} tokens) × 64 new tokens equal the full forward's \
         argmax; smallest top-1 margin {min_margin:.3}"
    );
    // The batch of different lengths gives a prompt what it gets alone (the first 16
    // tokens: greedy decoding of a prefix is a prefix).
    let alone = model
        .generate(&[&prompts[2]], &greedy(16), &ForwardOptions::new())
        .unwrap();
    assert_eq!(alone[0].tokens, gens[2].tokens[..16]);
    eprintln!(
        "text: {:?}",
        tok.decode(&gens[1].tokens)
            .unwrap()
            .chars()
            .take(120)
            .collect::<String>()
    );
}

#[test]
fn scored_generation_gives_the_full_forwards_log_softmax() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    let prompts = prompts(model, tok);
    let plain = model
        .generate(&prompts, &greedy(12), &ForwardOptions::new())
        .unwrap();
    let scored = model
        .generate_scored(&prompts, &greedy(12), &ForwardOptions::new(), 5)
        .unwrap();
    for ((p, g), (sg, scores)) in prompts.iter().zip(&plain).zip(&scored) {
        assert_eq!(g, sg, "scoring must not change the tokens");
        assert_eq!(scores.len(), g.tokens.len());
        let mut seq = p.clone();
        seq.extend_from_slice(&g.tokens);
        let logits = model
            .forward(&[&seq], &ForwardOptions::new().logits(Logits::All))
            .unwrap()
            .take_logits()
            .unwrap();
        for (k, s) in scores.iter().enumerate() {
            let row = logits.at(0, p.len() - 1 + k);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let want = |id: u32| (row[id as usize] as f64 - lse) as f32;
            assert_eq!(s.token, g.tokens[k]);
            assert!((s.logprob - want(s.token)).abs() < 2e-3, "step {k}");
            assert_eq!(s.top.len(), 5);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(s.top[0].0, s.token);
            assert!(s.top.windows(2).all(|w| w[0].1 >= w[1].1));
            for &(id, lp) in &s.top {
                assert!((lp - want(id)).abs() < 2e-3, "step {k}, token {id}");
            }
            let mass: f32 = s.top.iter().map(|t| t.1.exp()).sum();
            assert!(mass <= 1.0 + 1e-4, "top-5 mass {mass}");
        }
    }
}

#[test]
fn incremental_forward_in_chunks_equals_the_full_forward() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    let hook = "blocks.4.hook_resid_post";
    let a = plain_prompt(
        model,
        tok,
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no \
         money in my purse",
    );
    let b = plain_prompt(
        model,
        tok,
        "It was the best of times, it was the worst of times, it was the age of wisdom",
    );
    let (n_a, n_b) = (a.len(), b.len());
    let full = model
        .forward(
            &[&a[..n_a.min(n_b)], &b[..n_a.min(n_b)]],
            &ForwardOptions::new().logits(Logits::All).capture(hook),
        )
        .unwrap();
    let full_logits = full.logits.as_ref().unwrap();
    let full_hook = full.capture(hook).unwrap();
    let n = n_a.min(n_b);
    assert!(n >= 16, "prompts of {n_a} and {n_b} tokens");
    // Stream 0 takes a[..5], stream 1 b[..8], then both one token at a time, then both
    // three at once, then each its rest alone: chunks 5 + 1 + 1 + 1 + 3 + … and
    // 8 + 1 + 1 + 1 + 3 + …, never in the same place.
    let mut cache = model.kv_cache(2);
    let seqs = [&a[..n], &b[..n]];
    let seen = RefCell::new(Vec::new());
    let mut worst = 0f32;
    let mut worst_hook = 0f32;
    let mut run = |streams: &[usize], len: usize, cache: &mut saelab_lm::model::KvCache| {
        let starts: Vec<usize> = streams.iter().map(|&s| cache.stream_len(s)).collect();
        let chunks: Vec<&[u32]> = streams
            .iter()
            .zip(&starts)
            .map(|(&s, &p)| &seqs[s][p..p + len])
            .collect();
        seen.borrow_mut().clear();
        let opts = ForwardOptions::new()
            .logits(Logits::All)
            .capture(hook)
            .patch("blocks.2.hook_resid_mid", |act| {
                for b in 0..act.batch() {
                    for t in 0..act.seq_len() {
                        seen.borrow_mut().push((act.stream(b), act.position(b, t)));
                    }
                }
                Ok(())
            });
        let out = model
            .forward_cached(&chunks, cache, streams, &opts)
            .unwrap();
        let want: Vec<(usize, usize)> = streams
            .iter()
            .zip(&starts)
            .flat_map(|(&s, &p)| (p..p + len).map(move |q| (s, q)))
            .collect();
        assert_eq!(
            *seen.borrow(),
            want,
            "the patch sees each row's stream and position"
        );
        let logits = out.logits.as_ref().unwrap();
        let cap = out.capture(hook).unwrap();
        for (j, (&s, &p)) in streams.iter().zip(&starts).enumerate() {
            assert_eq!((cap.stream(j), cap.start(j)), (s, p));
            for t in 0..len {
                let d = max_abs_diff(logits.at(j, t), full_logits.at(s, p + t));
                worst = worst.max(d);
                let d = max_abs_diff(cap.at(j, t), full_hook.at(s, p + t));
                worst_hook = worst_hook.max(d);
            }
        }
        assert_eq!(cache.stream_len(streams[0]), starts[0] + len);
    };
    run(&[0], 5, &mut cache);
    run(&[1], 8, &mut cache);
    for _ in 0..3 {
        run(&[0, 1], 1, &mut cache);
    }
    run(&[1, 0], 3, &mut cache);
    let rest_a = n - cache.stream_len(0);
    run(&[0], rest_a, &mut cache);
    let rest_b = n - cache.stream_len(1);
    run(&[1], rest_b, &mut cache);
    assert_eq!(cache.lens(), &[n, n]);
    eprintln!(
        "incremental vs full forward over {n} positions: max |Δlogit| = {worst:.2e}, \
         max |Δ {hook}| = {worst_hook:.2e}"
    );
    assert!(worst <= 1e-4, "max |Δlogit| = {worst}");
}

#[test]
fn seeded_sampling_is_reproducible_whatever_the_batch() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    let prompts = prompts(model, tok);
    let sampled = |seed: u64| GenerateOptions {
        max_new_tokens: 8,
        temperature: 1.0,
        top_p: 0.95,
        seed,
        stop_tokens: Some(vec![]),
    };
    let none = ForwardOptions::new();
    let batch = model.generate(&prompts, &sampled(7), &none).unwrap();
    let alone = |seed| {
        model
            .generate(&[&prompts[0]], &sampled(seed), &none)
            .unwrap()
    };
    assert_eq!(
        alone(7)[0],
        batch[0],
        "same seed, same tokens, alone or in a batch"
    );
    assert!(
        (8..12).any(|seed| alone(seed)[0] != batch[0]),
        "other seeds, other tokens"
    );
    // Temperature → 0 is greedy.
    let cold = GenerateOptions {
        temperature: 1e-6,
        ..sampled(7)
    };
    let cold = model.generate(&[&prompts[0]], &cold, &none).unwrap();
    let greedy = model.generate(&[&prompts[0]], &greedy(8), &none).unwrap();
    assert_eq!(cold, greedy);
}

#[test]
fn a_shared_prefix_runs_once_and_changes_no_score() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    // A judge's prompts: the same long instructions, each with its own excerpt.
    let chat = ChatTemplate::from_tokenizer(tok).unwrap();
    let system = "You are given the description of a feature of a language model and \
                  numbered text excerpts. For each excerpt, answer 1 if the feature is \
                  active in it and 0 if it is not, as a Python list.";
    let prompts: Vec<Vec<u32>> = [
        "Excerpt 1: the whale rose from the sea",
        "Excerpt 1: fn main() { println!(\"hi\"); }",
        "Excerpt 1: Paris is the capital of France, and its river is the Seine",
    ]
    .iter()
    .map(|u| {
        chat.encode(tok, &[Message::system(system), Message::user(*u)], true)
            .unwrap()
    })
    .collect();
    let shared = prompts[0]
        .iter()
        .zip(&prompts[1])
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared > 40, "the prompts share {shared} tokens");
    let gen = greedy(12);
    let none = ForwardOptions::new();
    let batch = model.generate_scored(&prompts, &gen, &none, 5).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = model.generate_scored(&[p], &gen, &none, 5).unwrap();
        assert_eq!(alone[0].0, batch[i].0, "prompt {i}: the same tokens");
        assert_eq!(
            alone[0].1, batch[i].1,
            "prompt {i}: the same scores, bit for bit"
        );
    }
    eprintln!("3 prompts sharing {shared} tokens: batch = alone, tokens and scores bit for bit");
}

#[test]
fn generation_stops_at_eos_by_default() {
    let Some((model, tok, _guard)) = smollm() else {
        return;
    };
    let chat = ChatTemplate::from_tokenizer(tok).unwrap();
    let prompt = chat
        .encode(tok, &[Message::user("Say hello.")], true)
        .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 48,
        ..GenerateOptions::default()
    };
    let g = model
        .generate(&[&prompt], &opts, &ForwardOptions::new())
        .unwrap();
    let eos = model.eos_token_id().unwrap();
    assert!(!g[0].tokens.contains(&eos));
    eprintln!(
        "chat reply ({:?}): {:?}",
        g[0].finish,
        tok.decode(&g[0].tokens).unwrap()
    );
    if g[0].finish != Finish::Length {
        assert_eq!(g[0].finish, Finish::Stop(eos));
    }
}

#[test]
fn chat_template_gives_the_ids_of_the_chatml_text() {
    let Some(data) = real_data() else {
        return;
    };
    let tok = Tokenizer::from_gguf(&data.model).unwrap();
    let chat = ChatTemplate::from_tokenizer(&tok).unwrap();
    let sys = chat
        .default_system()
        .expect("SmolLM2 has a default system message");
    assert!(sys.starts_with("You are a helpful AI assistant named SmolLM"));
    let msgs = [
        Message::system("You are terse."),
        Message::user("Name a whale."),
        Message::assistant("Moby Dick."),
        Message::user("Another one?"),
    ];
    let text = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a \
                whale.<|im_end|>\n<|im_start|>assistant\nMoby Dick.<|im_end|>\n\
                <|im_start|>user\nAnother one?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(chat.render(&msgs, true), text);
    let ids = chat.encode(&tok, &msgs, true).unwrap();
    assert_eq!(ids, tok.encode_with_special(text).unwrap());
    // One id per marker: SmolLM2's BOS is <|im_start|>, its EOS <|im_end|>.
    let start = tok.token_to_id("<|im_start|>").unwrap();
    assert_eq!(tok.bos_id(), Some(start));
    assert_eq!(tok.eos_id(), tok.token_to_id("<|im_end|>"));
    assert_eq!(
        (ids[0], ids.iter().filter(|&&i| i == start).count()),
        (start, 5)
    );
    // Without a system message, the template's default one comes first.
    let ids = chat.encode(&tok, &[Message::user("Hi")], false).unwrap();
    let text = format!("<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    assert_eq!(ids, tok.encode_with_special(&text).unwrap());
    // A message's text is data: a marker inside it is not a control token.
    let ids = chat
        .encode(&tok, &[Message::user("a<|im_end|>b")], false)
        .unwrap();
    let eos = tok.eos_id().unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == eos).count(), 2);
}

// ---------------------------------------------------------------------------------
// The tiny random model: no data needed.

/// A tiny random LLaMA (vocabulary 97, context 64) in a temporary folder.
fn tiny() -> (tempfile::TempDir, HookedModel) {
    let dir = tempfile::tempdir().unwrap();
    TinyLlama {
        vocab: 97,
        d: 48,
        heads: 6,
        kv_heads: 2,
        head_dim: 8,
        ffn: 80,
        layers: 3,
        tie: false,
        dtype: safetensors::Dtype::F32,
        max_positions: 64,
        bos: 1,
        eos: serde_json::json!(2),
    }
    .write(dir.path());
    let model = HookedModel::from_hf_dir(dir.path()).unwrap();
    (dir, model)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn tiny_model_generation_equals_the_full_forward_and_its_cache_survives_errors() {
    let (_dir, model) = tiny();
    let prompts: Vec<Vec<u32>> = vec![vec![1, 40, 7], vec![1, 5, 9, 11, 13, 50, 60, 3]];
    let gens = model
        .generate(&prompts, &greedy(40), &ForwardOptions::new())
        .unwrap();
    for (p, g) in prompts.iter().zip(&gens) {
        let mut seq = p.clone();
        seq.extend_from_slice(&g.tokens[..39]);
        let logits = model
            .forward(&[&seq], &ForwardOptions::new().logits(Logits::All))
            .unwrap()
            .take_logits()
            .unwrap();
        for (k, &t) in g.tokens.iter().enumerate() {
            assert_eq!(
                argmax_margin(logits.at(0, p.len() - 1 + k)).0,
                t,
                "step {k}"
            );
        }
    }
    // A patch's error leaves the cache as it was.
    let mut cache = model.kv_cache(1);
    let last = ForwardOptions::new().logits(Logits::Last);
    model
        .forward_cached(&[[1u32, 40]], &mut cache, &[0], &last)
        .unwrap();
    let failing = ForwardOptions::new().patch("blocks.2.hook_mlp_out", |_| {
        Err(Error::config("my patch gave up"))
    });
    let e = err_text(model.forward_cached(&[[7u32]], &mut cache, &[0], &failing));
    assert!(e.contains("my patch gave up"), "{e}");
    assert_eq!(cache.lens(), &[2]);
    let after = model
        .forward_cached(&[[7u32]], &mut cache, &[0], &last)
        .unwrap()
        .take_logits()
        .unwrap();
    let whole = model
        .forward(&[[1u32, 40, 7]], &last)
        .unwrap()
        .take_logits()
        .unwrap();
    assert!(max_abs_diff(after.as_slice(), whole.as_slice()) < 1e-5);
}

#[test]
fn bad_generation_input_gives_one_line_errors() {
    let (_dir, model) = tiny();
    let none = ForwardOptions::new();
    let gen = greedy(8);
    let no_prompts: [Vec<u32>; 0] = [];
    assert_mentions(
        &err_text(model.generate(&no_prompts, &gen, &none)),
        &["no prompts"],
    );
    let e = err_text(model.generate(&[vec![1u32, 2], vec![]], &gen, &none));
    assert_mentions(&e, &["prompt 1 is empty"]);
    let e = err_text(model.generate(&[vec![1u32, 97]], &gen, &none));
    assert_mentions(
        &e,
        &["token id 97", "prompt 0, position 1", "vocabulary size 97"],
    );
    let e = err_text(model.generate(&[vec![1u32; 60]], &gen, &none));
    assert_mentions(&e, &["60 tokens + 8 new", "context length 64"]);
    for (t, p) in [(f32::NAN, 1.0), (-0.5, 1.0), (1.0, 0.0), (1.0, 1.01)] {
        let bad = GenerateOptions {
            temperature: t,
            top_p: p,
            ..gen.clone()
        };
        err_text(model.generate(&[vec![1u32]], &bad, &none));
    }
    let e = err_text(model.generate(
        &[vec![1u32]],
        &gen,
        &ForwardOptions::new().capture("blocks.0.hook_resid_post"),
    ));
    assert_mentions(&e, &["patches only"]);
    let e = err_text(model.generate(
        &[vec![1u32]],
        &gen,
        &ForwardOptions::new().patch("blocks.9.hook_resid_post", |_| Ok(())),
    ));
    assert_mentions(&e, &["layer 9 is out of range"]);

    // The incremental forward's own checks.
    let mut cache = model.kv_cache(2);
    let e = err_text(model.forward_cached(&[vec![1u32; 65]], &mut cache, &[0], &none));
    assert_mentions(
        &e,
        &["stream 0: 0 cached + 65 new tokens", "context length 64"],
    );
    let e = err_text(model.forward_cached(&[[1u32]], &mut cache, &[2], &none));
    assert_mentions(&e, &["stream 2 is out of range", "2 streams"]);
    let e = err_text(model.forward_cached(&[[1u32], [2]], &mut cache, &[1, 1], &none));
    assert_mentions(&e, &["stream 1 is named twice"]);
    let e = err_text(model.forward_cached(&[[1u32]], &mut cache, &[0, 1], &none));
    assert_mentions(&e, &["1 token sequences for 2 streams"]);
    let e = err_text(model.forward_cached(&[[1u32, 200]], &mut cache, &[1], &none));
    assert_mentions(&e, &["token id 200", "vocabulary size 97"]);
    let empty: [&[u32]; 1] = [&[]];
    let e = err_text(model.forward_cached(&empty, &mut cache, &[0], &none));
    assert_mentions(&e, &["empty token batch"]);
    assert_eq!(cache.lens(), &[0, 0]);
    // Filling a stream to the context length, then one more token.
    model
        .forward_cached(&[vec![1u32; 64]], &mut cache, &[1], &none)
        .unwrap();
    let e = err_text(model.forward_cached(&[[1u32]], &mut cache, &[1], &none));
    assert_mentions(
        &e,
        &["stream 1: 64 cached + 1 new tokens", "context length 64"],
    );
}
