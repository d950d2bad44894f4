//! What splicing an SAE into the model costs, on held-out corpus text.
//!
//! Times, on the same batches and interleaved (so that machine noise hits both):
//! 1. a clean forward with all-position logits (what every CE evaluation needs);
//! 2. the same forward with the SAE spliced in at the hook (`Sae::forward` inside the
//!    patch, copies in and out included);
//!
//! and reports the median per-batch ratio spliced / clean (the *splice cost ratio*),
//! then the cost of a whole evaluation relative to one clean forward over the same
//! tokens: `evaluate_in_model` (four variants) and `InModelEvalSet::evaluate` (one
//! spliced forward per batch once the baseline is cached). Also prints the metrics.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p saelab-eval --example splice_cost -- \
//!     --sae runs/sweep/topk-k32 [--hook blocks.15.hook_resid_post] [--contexts 16]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use saelab_core::format::load_sae;
use saelab_eval::contexts::corpus_contexts;
use saelab_eval::report::sae_dir;
use saelab_eval::{evaluate_in_model, InModelEvalSet, InModelOptions};
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use saelab_lm::text::Part;
use saelab_lm::tokenizer::Tokenizer;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = PathBuf::from("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut corpus = PathBuf::from("data/corpus/sotu");
    let mut sae_path: Option<PathBuf> = None;
    let mut hook: Option<String> = None;
    let (mut n_ctx, mut ctx_len, mut batch) = (16usize, 128usize, 4usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = val()?.into(),
            "--corpus" => corpus = val()?.into(),
            "--sae" => sae_path = Some(val()?.into()),
            "--hook" => hook = Some(val()?),
            "--contexts" => n_ctx = val()?.parse()?,
            "--ctx-len" => ctx_len = val()?.parse()?,
            "--batch" => batch = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let sae = load_sae(&sae_dir(&sae_path.ok_or("--sae is required")?))?;
    let hook = hook
        .or(sae.cfg.metadata.hook_name.clone())
        .ok_or("no --hook and no hook in the SAE's metadata")?;
    let lm = HookedModel::load(&model)?;
    let tok = Tokenizer::from_path(&model)?;
    let contexts = corpus_contexts(&tok, &corpus, Part::HeldOut, ctx_len, n_ctx)?;
    let tokens = contexts.len() * ctx_len;
    println!(
        "{} contexts x {ctx_len} tokens, batches of {batch}, SAE {} d_sae={}, hook {hook}, rayon threads {}",
        contexts.len(),
        sae.cfg.arch.name(),
        sae.cfg.d_sae,
        rayon::current_num_threads()
    );

    // 1–2: interleaved clean and spliced forwards, per batch.
    let (mut clean_t, mut sae_t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mask_bos = tok.bos_id();
    for b in contexts.chunks(batch) {
        let t0 = Instant::now();
        let o = lm.forward(b, &ForwardOptions::new().logits(Logits::All))?;
        let c = t0.elapsed().as_secs_f64();
        drop(o);
        let mask = saelab_eval::splice::splice_mask(b, mask_bos, false);
        let rec = std::cell::RefCell::new(None);
        let opts = ForwardOptions::new()
            .patch(
                hook.clone(),
                saelab_eval::splice::reconstruction_patch(&sae, Some(&mask), &rec),
            )
            .logits(Logits::All);
        let t0 = Instant::now();
        let o = lm.forward(b, &opts)?;
        let s = t0.elapsed().as_secs_f64();
        drop(o);
        clean_t.push(c);
        sae_t.push(s);
        ratios.push(s / c);
    }
    let clean_total: f64 = clean_t.iter().sum();
    println!(
        "clean forward: {:.3} s total, {:.0} tokens/s; spliced: {:.3} s total",
        clean_total,
        tokens as f64 / clean_total,
        sae_t.iter().sum::<f64>()
    );
    println!(
        "splice cost ratio (spliced / clean forward, median over {} batches): {:.3}  (total {:.3})",
        ratios.len(),
        median(ratios),
        sae_t.iter().sum::<f64>() / clean_total
    );

    // 3: whole evaluations.
    let opts = InModelOptions {
        batch_size: batch,
        bos_id: tok.bos_id(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let m = evaluate_in_model(&lm, &sae, &hook, &contexts, &opts)?;
    let full = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let set = InModelEvalSet::new(&lm, &hook, contexts.clone(), &opts)?;
    let base = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let m2 = set.evaluate(&lm, &sae)?;
    let per_sae = t0.elapsed().as_secs_f64();
    println!(
        "evaluate_in_model: {full:.3} s = {:.2} clean forwards (in-run splice ratio {:.3})",
        full / clean_total,
        m.timing.splice_cost_ratio
    );
    println!(
        "InModelEvalSet: baseline {base:.3} s = {:.2} clean forwards, then per SAE {per_sae:.3} s = {:.2} clean forwards",
        base / clean_total,
        per_sae / clean_total
    );
    println!("{}", serde_json::to_string_pretty(&m)?);
    assert!((m.ce_sae - m2.ce_sae).abs() < 1e-9);
    Ok(())
}
