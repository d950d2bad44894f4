//! Tests of the hooked LLaMA forward.
//!
//! Real-model tests use the SmolLM2 GGUF and the corpus fetched by `scripts/setup.sh`
//! (see `saelab_testkit::real_data`: they skip with a message when absent, and fail
//! instead under CI or `SAELAB_REQUIRE_DATA`). The tiny-model and error tests need no
//! data.
//!
//! References are independent implementations: candle-transformers' `quantized_llama`
//! (GGUF, run on weights dequantised to F32 so that both sides are f32, one token at a
//! time through its KV cache to get every position's logits), candle-transformers'
//! `llama` (Hugging Face layout, likewise), one block written with candle ops for the
//! hook values, and plain f64 loops.

mod common;
use common::compare::{argmax, max_abs_diff};
use common::f32_gguf::f32_gguf;

use std::path::{Path, PathBuf};
use std::sync::{MutexGuard, OnceLock};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as hf_llama;
use candle_transformers::models::quantized_llama;
use saelab_core::Error;
use saelab_lm::model::{Activation, ForwardOptions, HookedModel, Logits};
use saelab_testkit::{real_data, serial};

use common::gguf_bpe;
use common::tiny_llama::TinyLlama;

/// The real model file, or `None` (with a message; a panic under CI) without the data.
fn model_path() -> Option<PathBuf> {
    Some(real_data()?.model)
}

/// The SmolLM2 model (loaded once per test binary) and the lock that runs the
/// real-model tests one at a time, or `None` without the data.
fn smollm() -> Option<(&'static HookedModel, MutexGuard<'static, ()>)> {
    static M: OnceLock<HookedModel> = OnceLock::new();
    let p = model_path()?;
    let model = M.get_or_init(|| HookedModel::from_gguf(&p).expect("load SmolLM2 GGUF"));
    Some((model, serial()))
}

fn tokenizer() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| gguf_bpe::gguf_tokenizer(&model_path().expect("the real model")))
}

/// `n` contexts of the model's BOS + `len − 1` tokens of real text: consecutive windows
/// of the given corpus files.
fn contexts(model: &HookedModel, files: &[&str], n: usize, len: usize) -> Vec<Vec<u32>> {
    let bos = model.bos_token_id().expect("SmolLM2 names a BOS");
    let mut out = Vec::new();
    for f in files {
        let corpus = real_data().expect("the real corpus").corpus;
        let text =
            std::fs::read_to_string(corpus.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
        let ids = gguf_bpe::encode(tokenizer(), &text);
        for w in ids.chunks_exact(len - 1) {
            let mut c = vec![bos];
            c.extend_from_slice(w);
            out.push(c);
            if out.len() == n {
                return out;
            }
        }
    }
    assert_eq!(out.len(), n, "not enough text");
    out
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn mean(a: &[f32]) -> f64 {
    a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64
}

/// The values of a candle tensor, flattened.
fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// An activation as a candle tensor of the same shape.
fn to_candle(a: &Activation) -> Tensor {
    Tensor::from_slice(a.as_slice(), a.dims().to_vec(), &Device::Cpu).unwrap()
}

/// The GGUF at `path`, its tensors read on demand and dequantised to f32.
struct GgufF32 {
    path: PathBuf,
    content: gguf_file::Content,
}

impl GgufF32 {
    fn open(path: &Path) -> Self {
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        GgufF32 {
            path: path.to_path_buf(),
            content,
        }
    }

    fn get(&self, name: &str) -> Tensor {
        let mut f = std::fs::File::open(&self.path).unwrap();
        let q = self.content.tensor(&mut f, name, &Device::Cpu).unwrap();
        q.dequantize(&Device::Cpu).unwrap()
    }

    fn uint(&self, key: &str) -> usize {
        self.content.metadata[key].to_u32().unwrap() as usize
    }

    fn float(&self, key: &str) -> f32 {
        self.content.metadata[key].to_f32().unwrap()
    }

    /// candle's `quantized_llama` with every tensor dequantised and stored as an F32
    /// QTensor (so its matmuls are plain f32 products).
    fn quantized_llama(&self) -> quantized_llama::ModelWeights {
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let tensors = names.iter().map(|n| (n.as_str(), self.get(n))).collect();
        let (ct32, mut buf) = f32_gguf(&self.content.metadata, tensors);
        quantized_llama::ModelWeights::from_gguf(ct32, &mut buf, &Device::Cpu).unwrap()
    }
}

/// Every position's logits `[T·V]` of `prompt` from candle's `quantized_llama`, fed one
/// token at a time through its KV cache (its forward returns the last position only).
fn candle_all_position_logits(r: &mut quantized_llama::ModelWeights, prompt: &[u32]) -> Vec<f32> {
    r.clear_kv_cache();
    let mut out = Vec::new();
    for (pos, &tok) in prompt.iter().enumerate() {
        let ids = Tensor::new(&[tok], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        out.extend(values(&r.forward(&ids, pos).unwrap()));
    }
    out
}

#[test]
fn gguf_logits_match_candle_quantized_llama_at_every_position_in_f32() {
    let Some((model, _g)) = smollm() else { return };
    let mut reference = GgufF32::open(&model_path().unwrap()).quantized_llama();
    let v = model.vocab_size();
    let bos = model.bos_token_id().unwrap();
    let mut prompts = vec![vec![bos], {
        let mut p = vec![bos];
        p.extend(gguf_bpe::encode(tokenizer(), "The capital of France is"));
        p
    }];
    prompts.extend(contexts(model, &["moby/chapter_1.txt"], 1, 57));
    prompts.extend(contexts(
        model,
        &["sotu/1901_theodore_roosevelt_r.txt"],
        1,
        128,
    ));
    let (mut worst_last, mut worst_all) = (0f32, 0f32);
    for p in &prompts {
        // The last position, against candle's whole-prompt forward.
        let ours = model
            .forward(&[p], &ForwardOptions::new().logits(Logits::Last))
            .unwrap()
            .logits
            .unwrap();
        assert_eq!(ours.dims(), [1, 1, v]);
        let ids = Tensor::new(p.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        reference.clear_kv_cache();
        let theirs = values(&reference.forward(&ids, 0).unwrap());
        let diff = max_abs_diff(ours.as_slice(), &theirs);
        eprintln!(
            "prompt of {} tokens: last position max |Δlogit| = {diff:.2e} (max |logit| {:.1})",
            p.len(),
            max_abs(&theirs)
        );
        // Same argmax, and the logits agree to 1e-3.
        assert_eq!(argmax(ours.as_slice()), argmax(&theirs));
        worst_last = worst_last.max(diff);

        // Every position, against candle one token at a time.
        let ours = model
            .forward(&[p], &ForwardOptions::new().logits(Logits::All))
            .unwrap()
            .logits
            .unwrap();
        assert_eq!(ours.dims(), [1, p.len(), v]);
        let theirs = candle_all_position_logits(&mut reference, p);
        let per_position: Vec<f32> = (0..p.len())
            .map(|t| max_abs_diff(ours.at(0, t), &theirs[t * v..(t + 1) * v]))
            .collect();
        let diff = max_abs(&per_position);
        eprintln!(
            "prompt of {} tokens: every position max |Δlogit| = {diff:.2e}",
            p.len()
        );
        worst_all = worst_all.max(diff);
    }
    assert!(
        worst_last <= 1e-3,
        "last-position logit difference {worst_last} > 1e-3"
    );
    assert!(
        worst_all <= 1e-3,
        "all-position logit difference {worst_all} > 1e-3"
    );
}

/// One block of SmolLM2 written with candle ops from the dequantised GGUF tensors.
struct CandleBlock<'w> {
    w: &'w GgufF32,
    layer: usize,
}

impl CandleBlock<'_> {
    fn weight(&self, name: &str) -> Tensor {
        self.w.get(&format!("blk.{}.{name}.weight", self.layer))
    }

    fn eps(&self) -> f32 {
        self.w.float("llama.attention.layer_norm_rms_epsilon")
    }

    /// `hook_attn_out` from `hook_resid_pre` `[B, T, d]`: RMSNorm, Q/K/V, interleaved
    /// RoPE (GGUF's Q/K row order), causal softmax attention with grouped KV heads, output
    /// projection.
    fn attn_out(&self, resid_pre: &Tensor) -> Tensor {
        let (b, t, d) = resid_pre.dims3().unwrap();
        let hq = self.w.uint("llama.attention.head_count");
        let hkv = self.w.uint("llama.attention.head_count_kv");
        let hd = d / hq;
        let base = self.w.float("llama.rope.freq_base") as f64;
        let h = candle_nn::ops::rms_norm(resid_pre, &self.weight("attn_norm"), self.eps()).unwrap();
        let heads = |name: &str, n: usize| {
            h.broadcast_matmul(&self.weight(name).t().unwrap())
                .unwrap()
                .reshape((b, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (
            heads("attn_q", hq),
            heads("attn_k", hkv),
            heads("attn_v", hkv),
        );
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..t {
            for i in 0..hd / 2 {
                let a = p as f64 * base.powf(-2.0 * i as f64 / hd as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (t, hd / 2), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(sin, (t, hd / 2), &Device::Cpu).unwrap();
        let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin).unwrap();
        let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin).unwrap();
        let k = candle_transformers::utils::repeat_kv(k, hq / hkv)
            .unwrap()
            .contiguous()
            .unwrap();
        let v = candle_transformers::utils::repeat_kv(v, hq / hkv)
            .unwrap()
            .contiguous()
            .unwrap();
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, hq * hd))
            .unwrap()
            .broadcast_matmul(&self.weight("attn_output").t().unwrap())
            .unwrap()
    }

    /// `hook_mlp_out` from `hook_resid_mid` `[B, T, d]`: RMSNorm, SwiGLU, down projection.
    fn mlp_out(&self, resid_mid: &Tensor) -> Tensor {
        let n = candle_nn::ops::rms_norm(resid_mid, &self.weight("ffn_norm"), self.eps()).unwrap();
        let proj =
            |x: &Tensor, name: &str| x.broadcast_matmul(&self.weight(name).t().unwrap()).unwrap();
        let a =
            (candle_nn::ops::silu(&proj(&n, "ffn_gate")).unwrap() * proj(&n, "ffn_up")).unwrap();
        proj(&a, "ffn_down")
    }
}

/// Every hook value of two blocks at every position against an independent
/// computation: attention and MLP outputs from candle ops on the captured inputs, the
/// normalised MLP input in f64, and the residual sums exactly.
#[test]
fn every_hook_matches_an_independent_block_at_every_position() {
    let Some((model, _g)) = smollm() else { return };
    let weights = GgufF32::open(&model_path().unwrap());
    let batch = contexts(model, &["moby/chapter_3.txt"], 2, 64);
    for layer in [0usize, 15] {
        let name = |k: &str| format!("blocks.{layer}.{k}");
        let kinds = [
            "hook_resid_pre",
            "hook_attn_out",
            "hook_resid_mid",
            "ln2.hook_normalized",
            "hook_mlp_out",
            "hook_resid_post",
        ];
        let out = model
            .forward(
                &batch,
                &ForwardOptions::new().capture_all(kinds.iter().map(|k| name(k))),
            )
            .unwrap();
        let c = |k: &str| out.capture(&name(k)).unwrap();
        let block = CandleBlock { w: &weights, layer };
        for (kind, input) in [
            ("hook_attn_out", "hook_resid_pre"),
            ("hook_mlp_out", "hook_resid_mid"),
        ] {
            let x = to_candle(c(input));
            let want = if kind == "hook_attn_out" {
                block.attn_out(&x)
            } else {
                block.mlp_out(&x)
            };
            let want = values(&want);
            let diff = max_abs_diff(c(kind).as_slice(), &want);
            let scale = max_abs(&want);
            eprintln!(
                "{}: max |Δ| = {diff:.2e} (max |value| {scale:.2})",
                name(kind)
            );
            assert!(diff <= 1e-5 * (1.0 + scale), "{}: {diff}", name(kind));
        }
        // The sums are the forward's own f32 additions: exact.
        let sum = |a: &Activation, b: &Activation| -> Vec<f32> {
            a.as_slice()
                .iter()
                .zip(b.as_slice())
                .map(|(x, y)| x + y)
                .collect()
        };
        assert_eq!(
            c("hook_resid_mid").as_slice(),
            sum(c("hook_resid_pre"), c("hook_attn_out"))
        );
        assert_eq!(
            c("hook_resid_post").as_slice(),
            sum(c("hook_resid_mid"), c("hook_mlp_out"))
        );
        // ln2.hook_normalized = resid_mid / √(mean(resid_mid²) + ε), no gain.
        let eps = block.eps() as f64;
        let (mid, norm) = (c("hook_resid_mid"), c("ln2.hook_normalized"));
        for r in 0..mid.rows() {
            let x = mid.row(r);
            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
            for (&got, &xv) in norm.row(r).iter().zip(x) {
                let want = xv as f64 / (ms + eps).sqrt();
                assert!((got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }
}

/// Cross-entropy of SmolLM2 on real text, from the forward's loss output and,
/// independently, from all-position logits.
#[test]
fn cross_entropy_on_real_text_is_sane_and_ablation_raises_it() {
    let Some((model, _g)) = smollm() else { return };
    let batch = contexts(
        model,
        &[
            "sotu/2009_barack_obama_d.txt",
            "moby/chapter_42.txt",
            "brown/cf01.txt",
        ],
        4,
        128,
    );
    let out = model
        .forward(
            &batch,
            &ForwardOptions::new().logits(Logits::All).loss(true),
        )
        .unwrap();
    let loss = out.loss.unwrap();
    assert_eq!((loss.rows, loss.cols), (4, 127));
    let ce = mean(&loss.data);
    // Independent CE from the logits with candle's log_softmax.
    let logits = to_candle(out.logits.as_ref().unwrap());
    let lsm = candle_nn::ops::log_softmax(&logits.i((.., ..127, ..)).unwrap(), 2).unwrap();
    let targets: Vec<u32> = batch.iter().flat_map(|s| s[1..].to_vec()).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu)
        .unwrap()
        .reshape((4, 127, 1))
        .unwrap();
    let picked = lsm.gather(&targets, 2).unwrap();
    let ce2 = -mean(&values(&picked));
    eprintln!("next-token CE on real text: {ce:.4} nats (from logits: {ce2:.4})");
    assert!((ce - ce2).abs() < 1e-3, "loss output {ce} vs logits {ce2}");
    assert!(
        (2.5..4.5).contains(&ce),
        "cross-entropy {ce} nats is not plausible"
    );

    // Identity patch: same CE (bit for bit).
    let id = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch("blocks.15.hook_resid_post", |_| Ok(()))
                .loss(true),
        )
        .unwrap();
    assert_eq!(id.loss.unwrap().data, loss.data);

    // Zero-ablation of the residual after block 15.
    let ab = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch("blocks.15.hook_resid_post", |t| {
                    t.as_mut_slice().fill(0.0);
                    Ok(())
                })
                .loss(true),
        )
        .unwrap();
    let ce_ab = mean(&ab.loss.unwrap().data);
    eprintln!("CE with blocks.15.hook_resid_post zero-ablated: {ce_ab:.4} nats");
    assert!(ce_ab > ce + 2.0, "ablated CE {ce_ab} vs clean {ce}");
}

#[test]
fn identity_patch_leaves_logits_unchanged_and_patches_see_the_captured_value() {
    let Some((model, _g)) = smollm() else { return };
    let batch = contexts(model, &["brown/ca01.txt"], 2, 40);
    let hook = "blocks.7.hook_mlp_out";
    let clean = model
        .forward(
            &batch,
            &ForwardOptions::new().capture(hook).logits(Logits::All),
        )
        .unwrap();
    let seen = std::cell::RefCell::new(None);
    let patched = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch(hook, |t| {
                    *seen.borrow_mut() = Some(t.to_activation());
                    Ok(())
                })
                .logits(Logits::All),
        )
        .unwrap();
    assert_eq!(
        clean.logits.as_ref().unwrap().as_slice(),
        patched.logits.as_ref().unwrap().as_slice()
    );
    let seen = seen.into_inner().unwrap();
    assert_eq!(&seen, clean.capture(hook).unwrap());

    // A patch that adds a constant to resid_pre of block 3 shows in the capture there;
    // a second patch on the same hook sees the first one's result.
    let bumped = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch("blocks.3.hook_resid_pre", |t| {
                    t.as_mut_slice().iter_mut().for_each(|v| *v += 1.0);
                    Ok(())
                })
                .patch("blocks.3.hook_resid_pre", |t| {
                    t.row_mut(0).iter_mut().for_each(|v| *v += 1.0);
                    Ok(())
                })
                .capture("blocks.3.hook_resid_pre")
                .capture("blocks.2.hook_resid_post"),
        )
        .unwrap();
    let (a, b) = (
        bumped.capture("blocks.3.hook_resid_pre").unwrap(),
        bumped.capture("blocks.2.hook_resid_post").unwrap(),
    );
    let d: Vec<f32> = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| x - y)
        .collect();
    let w = a.width();
    assert!((mean(&d[..w]) - 2.0).abs() < 1e-6);
    assert!((mean(&d[w..]) - 1.0).abs() < 1e-6);
}

#[test]
fn captures_match_between_early_stop_and_full_run_and_hooks_compose() {
    let Some((model, _g)) = smollm() else { return };
    let batch = contexts(model, &["sotu/1950_harry_s_truman_d.txt"], 3, 64);
    let hooks = [
        "blocks.0.hook_resid_pre",
        "blocks.15.hook_attn_out",
        "blocks.15.hook_resid_mid",
        "blocks.15.ln2.hook_normalized",
        "blocks.15.hook_mlp_out",
        "blocks.15.hook_resid_post",
        "blocks.16.hook_resid_pre",
    ];
    let early = model
        .forward(&batch, &ForwardOptions::new().capture_all(hooks))
        .unwrap();
    assert_eq!(early.blocks_run, 17);
    assert!(early.logits.is_none());
    let full = model
        .forward(
            &batch,
            &ForwardOptions::new().capture_all(hooks).logits(Logits::All),
        )
        .unwrap();
    assert_eq!(full.blocks_run, model.n_layers());
    for h in hooks {
        let (a, b) = (early.capture(h).unwrap(), full.capture(h).unwrap());
        assert_eq!(a.dims(), [3, 64, model.d_model()]);
        assert_eq!(a, b, "{h}");
    }
    let c = |h| early.capture(h).unwrap();
    // resid_pre of block 0 is the token embedding.
    let (emb, d) = (model.embedding(), model.d_model());
    assert_eq!(emb.len(), model.vocab_size() * d);
    for (t, &tok) in batch[1].iter().enumerate() {
        let tok = tok as usize;
        assert_eq!(
            c("blocks.0.hook_resid_pre").at(1, t),
            &emb[tok * d..(tok + 1) * d]
        );
    }
    // resid_post(15) = resid_mid(15) + mlp_out(15) exactly; resid_pre(16) = resid_post(15).
    let sum: Vec<f32> = c("blocks.15.hook_resid_mid")
        .as_slice()
        .iter()
        .zip(c("blocks.15.hook_mlp_out").as_slice())
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(c("blocks.15.hook_resid_post").as_slice(), sum);
    assert_eq!(
        c("blocks.16.hook_resid_pre"),
        c("blocks.15.hook_resid_post")
    );
    // Mid-depth residual norms are large (docs/data.md: about 170 at block 15).
    let post = c("blocks.15.hook_resid_post");
    let norms: Vec<f32> = (0..3)
        .flat_map(|b| (1..64).map(move |t| (b, t)))
        .map(|(b, t)| post.at(b, t).iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    let m = mean(&norms);
    eprintln!("mean ‖resid_post(15)‖ = {m:.1}");
    assert!(m > 50.0, "mean residual norm {m}");
}

#[test]
fn a_batch_of_two_equals_the_two_single_runs() {
    let Some((model, _g)) = smollm() else { return };
    let batch = contexts(model, &["moby/chapter_10.txt", "brown/cn01.txt"], 2, 96);
    let opts = || {
        ForwardOptions::new()
            .capture("blocks.15.hook_resid_post")
            .logits(Logits::All)
    };
    let both = model.forward(&batch, &opts()).unwrap();
    for (b, seq) in batch.iter().enumerate() {
        let one = model.forward(&[seq], &opts()).unwrap();
        let cap = |o: &saelab_lm::model::ForwardOutput, i: usize| {
            o.capture("blocks.15.hook_resid_post")
                .unwrap()
                .sequence(i)
                .to_vec()
        };
        let d1 = max_abs_diff(&cap(&both, b), &cap(&one, 0));
        let d2 = max_abs_diff(
            both.logits.as_ref().unwrap().sequence(b),
            one.logits.as_ref().unwrap().sequence(0),
        );
        eprintln!("sequence {b}: batch vs single max diff: resid {d1:.2e}, logits {d2:.2e}");
        assert!(d1 < 1e-4 && d2 < 1e-4);
    }
}

/// GGUF → Hugging Face layout (Q/K rows un-permuted) → candle-transformers' HF `llama`
/// reproduces our GGUF logits at every position, and our HF loader reads the export
/// back exactly.
#[test]
fn hf_export_of_smollm2_matches_candle_hf_llama_and_reloads_exactly() {
    let Some((model, _g)) = smollm() else { return };
    let dir = tempfile::tempdir().unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let batch = contexts(model, &["sotu/1862_abraham_lincoln_r.txt"], 2, 48);
    let opts = || ForwardOptions::new().logits(Logits::All);
    let ours = model.forward(&batch, &opts()).unwrap().logits.unwrap();

    let reloaded = HookedModel::from_hf_dir(dir.path()).unwrap();
    assert_eq!(reloaded.info(), model.info());
    assert_eq!(reloaded.hf_config(), model.hf_config());
    let again = reloaded.forward(&batch, &opts()).unwrap().logits.unwrap();
    assert_eq!(ours, again);
    drop(reloaded);

    let theirs = CandleHfLlama::load(dir.path());
    let (last, all) = theirs.logits(&batch);
    let v = model.vocab_size();
    let ours_last: Vec<f32> = (0..2).flat_map(|b| ours.at(b, 47).to_vec()).collect();
    let diff = max_abs_diff(&ours_last, &last);
    let diff_all = max_abs_diff(ours.as_slice(), &all);
    assert_eq!(all.len(), 2 * 48 * v);
    eprintln!(
        "SmolLM2 HF export vs candle HF llama: max |Δlogit| = {diff:.2e} (last), \
         {diff_all:.2e} (every position)"
    );
    assert!(diff <= 1e-3);
    assert!(diff_all <= 1e-3);
}

/// candle-transformers' HF llama on a checkpoint directory.
struct CandleHfLlama {
    cfg: hf_llama::Config,
    llama: hf_llama::Llama,
}

impl CandleHfLlama {
    fn load(dir: &Path) -> Self {
        let cfg: hf_llama::LlamaConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let cfg = cfg.into_config(false);
        let files = vec![dir.join("model.safetensors")];
        // SAFETY: the file was just written by this test and is not modified.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }
            .unwrap();
        let llama = hf_llama::Llama::load(vb, &cfg).unwrap();
        CandleHfLlama { cfg, llama }
    }

    /// Last-position logits `[B·V]` from whole-sequence forwards, and every position's
    /// logits `[B·T·V]` from one token at a time through the KV cache.
    fn logits(&self, batch: &[Vec<u32>]) -> (Vec<f32>, Vec<f32>) {
        let (mut last, mut all) = (Vec::new(), Vec::new());
        for s in batch {
            let mut cache =
                hf_llama::Cache::new(false, DType::F32, &self.cfg, &Device::Cpu).unwrap();
            let ids = Tensor::new(s.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            last.extend(values(&self.llama.forward(&ids, 0, &mut cache).unwrap()));
            let mut cache =
                hf_llama::Cache::new(true, DType::F32, &self.cfg, &Device::Cpu).unwrap();
            for (pos, &tok) in s.iter().enumerate() {
                let ids = Tensor::new(&[tok], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                all.extend(values(&self.llama.forward(&ids, pos, &mut cache).unwrap()));
            }
        }
        (last, all)
    }
}

// ---------------------------------------------------------------------------------
// Tiny random model in Hugging Face layout (no data needed).

/// Writes a random LLaMA checkpoint (d 48, 6 heads, 2 KV heads, 3 layers, vocabulary
/// 97) in HF layout.
fn write_tiny_hf(dir: &Path, tie: bool, dtype: safetensors::Dtype) {
    TinyLlama {
        vocab: 97,
        d: 48,
        heads: 6,
        kv_heads: 2,
        head_dim: 8,
        ffn: 80,
        layers: 3,
        tie,
        dtype,
        max_positions: 64,
        bos: 1,
        eos: serde_json::json!([2, 3]),
    }
    .write(dir);
}

/// [`write_tiny_hf`] into a fresh temporary folder (kept alive with the model), loaded.
fn tiny_hf_model(tie: bool, dtype: safetensors::Dtype) -> (tempfile::TempDir, HookedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_hf(dir.path(), tie, dtype);
    let model = HookedModel::from_hf_dir(dir.path()).unwrap();
    (dir, model)
}

fn tiny_batch() -> Vec<Vec<u32>> {
    (0..3)
        .map(|b| {
            (0..37)
                .map(|t| ((b * 31 + t * 17 + t * t) % 97) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn tiny_hf_model_matches_candle_hf_llama() {
    for tie in [false, true] {
        let (dir, model) = tiny_hf_model(tie, safetensors::Dtype::F32);
        assert_eq!(model.hf_config()["num_key_value_heads"], 2);
        assert_eq!(model.hf_config()["tie_word_embeddings"], tie);
        assert_eq!(model.eos_token_id(), Some(2));
        assert_eq!(model.info().family, "llama");
        let batch = tiny_batch();
        let ours = model
            .forward(&batch, &ForwardOptions::new().logits(Logits::Last))
            .unwrap()
            .logits
            .unwrap();
        let ours_all = model
            .forward(&batch, &ForwardOptions::new().logits(Logits::All))
            .unwrap()
            .logits
            .unwrap();
        let (last, all) = CandleHfLlama::load(dir.path()).logits(&batch);
        let diff = max_abs_diff(ours.as_slice(), &last);
        let diff_all = max_abs_diff(ours_all.as_slice(), &all);
        let scale = max_abs(&last);
        eprintln!(
            "tiny HF model (tied: {tie}): max |Δlogit| = {diff:.2e} (last), {diff_all:.2e} \
             (every position), max |logit| {scale:.2}"
        );
        assert!(scale > 0.5, "degenerate logits");
        assert!(diff < 1e-4);
        assert!(diff_all < 1e-4);

        // Export and reload: same logits.
        let dir2 = tempfile::tempdir().unwrap();
        model.save_hf_dir(dir2.path()).unwrap();
        let again = HookedModel::from_hf_dir(dir2.path())
            .unwrap()
            .forward(&batch, &ForwardOptions::new().logits(Logits::Last))
            .unwrap()
            .logits
            .unwrap();
        assert_eq!(ours, again);
    }
}

#[test]
fn tiny_hf_model_in_bf16_loads_close_to_f32() {
    let batch = tiny_batch();
    let run = |dtype| {
        tiny_hf_model(false, dtype)
            .1
            .forward(&batch, &ForwardOptions::new().logits(Logits::Last))
            .unwrap()
            .logits
            .unwrap()
    };
    let (x, y) = (run(safetensors::Dtype::F32), run(safetensors::Dtype::BF16));
    let diff = max_abs_diff(x.as_slice(), y.as_slice());
    assert!(
        diff > 0.0 && diff < 0.1,
        "bf16 vs f32 logits differ by {diff}"
    );
}

/// Attention is causal: changing a later token leaves earlier positions unchanged.
#[test]
fn tiny_model_is_causal() {
    let (_dir, model) = tiny_hf_model(false, safetensors::Dtype::F32);
    let mut batch = tiny_batch();
    let opts = || ForwardOptions::new().logits(Logits::All);
    let a = model.forward(&batch, &opts()).unwrap().logits.unwrap();
    batch[1][20] = (batch[1][20] + 5) % 97;
    let b = model.forward(&batch, &opts()).unwrap().logits.unwrap();
    for s in 0..3 {
        for t in 0..20 {
            assert_eq!(a.at(s, t), b.at(s, t));
        }
    }
    let later = |x: &Activation| x.sequence(1)[20 * x.width()..].to_vec();
    assert!(max_abs_diff(&later(&a), &later(&b)) > 1e-3);
    assert_eq!(a.sequence(0), b.sequence(0));
}

/// The tensor `name` of a safetensors file, as f32.
fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `ln2.hook_normalized` is the MLP input before its gain: `mlp_out` is the SwiGLU of
/// it times the gain (checked in f64 from the checkpoint's weights), an identity patch
/// there changes nothing, and editing it moves `mlp_out` but not `resid_mid`.
#[test]
fn ln2_normalized_is_the_mlp_input_before_the_gain() {
    let (dir, model) = tiny_hf_model(false, safetensors::Dtype::F32);
    let batch = tiny_batch();
    let hooks = [
        "blocks.1.hook_resid_mid",
        "blocks.1.ln2.hook_normalized",
        "blocks.1.hook_mlp_out",
    ];
    let clean = model
        .forward(
            &batch,
            &ForwardOptions::new().capture_all(hooks).logits(Logits::All),
        )
        .unwrap();
    let (mid, norm, mlp) = (
        clean.capture(hooks[0]).unwrap(),
        clean.capture(hooks[1]).unwrap(),
        clean.capture(hooks[2]).unwrap(),
    );
    let st = dir.path().join("model.safetensors");
    let w = |n: &str| read_f32(&st, &format!("model.layers.1.{n}.weight"));
    let (g, wg, wu, wd) = (
        w("post_attention_layernorm"),
        w("mlp.gate_proj"),
        w("mlp.up_proj"),
        w("mlp.down_proj"),
    );
    let (d, f) = (48, 80);
    for r in 0..mid.rows() {
        let x = mid.row(r);
        let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        for (&got, &xv) in norm.row(r).iter().zip(x) {
            assert!((got as f64 - xv as f64 * inv).abs() <= 1e-5 * (1.0 + (xv as f64 * inv).abs()));
        }
        let n: Vec<f64> = norm
            .row(r)
            .iter()
            .zip(&g)
            .map(|(&a, &b)| a as f64 * b as f64)
            .collect();
        let dot = |m: &[f32], j: usize, v: &[f64]| -> f64 {
            m[j * v.len()..(j + 1) * v.len()]
                .iter()
                .zip(v)
                .map(|(&a, b)| a as f64 * b)
                .sum()
        };
        let a: Vec<f64> = (0..f)
            .map(|j| {
                let gate = dot(&wg, j, &n);
                gate / (1.0 + (-gate).exp()) * dot(&wu, j, &n)
            })
            .collect();
        for (i, &got) in mlp.row(r).iter().enumerate() {
            let want = dot(&wd, i, &a);
            assert!(
                (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "row {r}: {got} vs {want}"
            );
        }
    }
    let id = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch(hooks[1], |_| Ok(()))
                .logits(Logits::All),
        )
        .unwrap();
    assert_eq!(id.logits, clean.logits);
    let doubled = model
        .forward(
            &batch,
            &ForwardOptions::new()
                .patch(hooks[1], |t| {
                    t.as_mut_slice().iter_mut().for_each(|v| *v *= 2.0);
                    Ok(())
                })
                .capture_all(hooks),
        )
        .unwrap();
    assert_eq!(doubled.capture(hooks[0]).unwrap(), mid);
    let moved = max_abs_diff(
        doubled.capture(hooks[2]).unwrap().as_slice(),
        mlp.as_slice(),
    );
    assert!(moved > 1e-2, "mlp_out moved by {moved}");
}

// ---------------------------------------------------------------------------------
// Bad input.

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn bad_hooks_and_tokens_give_clear_errors() {
    let (_dir, model) = tiny_hf_model(false, safetensors::Dtype::F32);
    let batch = tiny_batch();
    let run = |o: ForwardOptions| model.forward(&batch, &o).map(|_| ());

    let e = err_text(run(
        ForwardOptions::new().capture("blocks.1.hook_resid_postt")
    ));
    assert!(
        e.contains("unknown hook 'blocks.1.hook_resid_postt'"),
        "{e}"
    );
    assert!(
        e.contains("blocks.{L}.hook_resid_post") && e.contains("0..=2"),
        "{e}"
    );
    let e = err_text(run(
        ForwardOptions::new().capture("blocks.3.hook_resid_post")
    ));
    assert!(
        e.contains("layer 3 is out of range") && e.contains("3 blocks"),
        "{e}"
    );
    let e = err_text(run(ForwardOptions::new().patch("resid_post", |_| Ok(()))));
    assert!(e.contains("unknown hook 'resid_post'"), "{e}");
    // A patch cannot change the activation's shape (it edits the buffer in place); its
    // errors stop the forward.
    let e = err_text(run(ForwardOptions::new()
        .patch("blocks.0.hook_attn_out", |_| {
            Err(Error::config("my patch gave up"))
        })));
    assert!(e.contains("my patch gave up"), "{e}");

    let e = err_text(model.forward(
        &[vec![1u32, 2, 97]],
        &ForwardOptions::new().logits(Logits::Last),
    ));
    assert!(
        e.contains("token id 97") && e.contains("vocabulary size 97"),
        "{e}"
    );
    let e = err_text(model.forward(&[vec![1u32, 2], vec![3]], &ForwardOptions::new()));
    assert!(e.contains("equal length"), "{e}");
    let long = vec![vec![1u32; 65]];
    let e = err_text(model.forward(&long, &ForwardOptions::new().logits(Logits::Last)));
    assert!(e.contains("context length 64"), "{e}");
    let mut out = model.forward(&batch, &ForwardOptions::new()).unwrap();
    let e = err_text(out.take_logits());
    assert!(e.contains("not asked for logits"), "{e}");
    let names = model.hook_names();
    assert_eq!(names.len(), 18);
    assert_eq!(
        names[..6],
        [
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_attn_out",
            "blocks.0.hook_resid_mid",
            "blocks.0.ln2.hook_normalized",
            "blocks.0.hook_mlp_out",
            "blocks.0.hook_resid_post"
        ]
    );
}

#[test]
fn bad_model_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = dir.path().join("nope.gguf");
    let e = err_text(HookedModel::load(&missing));
    assert!(e.contains("nope.gguf"), "{e}");
    // Not a GGUF.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    let e = err_text(HookedModel::from_gguf(&junk));
    assert!(
        e.contains("junk.gguf") && e.contains("not a readable GGUF"),
        "{e}"
    );
    // Truncated copy of a real model (when present).
    if let Some(p) = model_path() {
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = err_text(HookedModel::from_gguf(&cut));
        assert!(e.contains("cut.gguf"), "{e}");
        eprintln!("truncated GGUF: {e}");
    }
    // Unsupported architecture.
    let arch = gguf_file::Value::String("mamba".into());
    let t = QTensor::quantize(
        &Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let gem = dir.path().join("gemma.gguf");
    let mut f = std::fs::File::create(&gem).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let e = err_text(HookedModel::from_gguf(&gem));
    assert!(e.contains("unsupported architecture 'mamba'"), "{e}");
    for supported in ["llama", "qwen2", "gemma3"] {
        assert!(e.contains(supported), "{supported} missing from: {e}");
    }
    // HF directory with a wrong model_type and one with a missing tensor.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    write_tiny_hf(&hf, false, safetensors::Dtype::F32);
    let cfg = std::fs::read_to_string(hf.join("config.json")).unwrap();
    std::fs::write(hf.join("config.json"), cfg.replace("\"llama\"", "\"gpt2\"")).unwrap();
    let e = err_text(HookedModel::load(&hf));
    assert!(
        e.contains("config.json") && e.contains("model_type 'gpt2'"),
        "{e}"
    );
    std::fs::write(
        hf.join("config.json"),
        cfg.replace("\"num_hidden_layers\":3", "\"num_hidden_layers\":4"),
    )
    .unwrap();
    let e = err_text(HookedModel::load(&hf));
    assert!(
        e.contains("model.layers.3.self_attn.q_proj.weight is missing"),
        "{e}"
    );
}
