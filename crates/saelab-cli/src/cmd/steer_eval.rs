//! `saelab steer-eval`: the steering study of `saelab_jobs::steer_eval` (dose–response
//! against a random direction, selection by output score, unlearning by negative
//! clamping), written as `steer-eval.json` and `steer-eval.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use saelab_jobs::steer::ConceptSet;
use saelab_jobs::steer_eval::{steer_eval, DoseRequest, SteerEvalRequest};

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// Model: a GGUF file, or a Hugging Face LLaMA directory.
    #[arg(long)]
    model: PathBuf,
    /// SAE run directory with a features folder (or an SAE directory and --features).
    #[arg(long)]
    sae: PathBuf,
    /// Features folder (default: the run's).
    #[arg(long)]
    features: Option<PathBuf>,
    /// Corpus: held-out text for ΔCE, and the collections of the unlearning part.
    #[arg(long)]
    corpus: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Latents of the dose–response part (repeat; none skips the part).
    #[arg(long = "latent")]
    latents: Vec<usize>,
    /// Strengths of the dose–response, multiples of each latent's maximum.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,4,8")]
    alphas: Vec<f32>,
    /// The strength of the verdict (paired test against a random direction).
    #[arg(long, default_value_t = 4.0)]
    verdict_alpha: f32,
    /// A file of prompts, one per line (default: ten neutral prompts).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tokens per continuation.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.5)]
    temperature: f32,
    /// Seed of every generation.
    #[arg(long, default_value_t = 16)]
    seed: u64,
    /// The tokens the concept share counts: `both` (the latent's 20 logit-lens tokens and
    /// the tokens of its 20 top activating examples), `examples` or `lens`.
    #[arg(long, default_value = "both")]
    concept: ConceptSet,
    /// Held-out contexts (128 tokens) for ΔCE.
    #[arg(long, default_value_t = 16)]
    heldout_contexts: usize,
    /// Latents drawn for the selection part (0 skips it).
    #[arg(long, default_value_t = 100)]
    selection_latents: usize,
    /// Prompts of the selection part.
    #[arg(long, default_value_t = 5)]
    selection_prompts: usize,
    /// Fluency budget of the selection part: mean perplexity ≤ this × unsteered.
    #[arg(long, default_value_t = 2.0)]
    perplexity_budget: f64,
    /// Collection (corpus folder) to unlearn; `none` skips the part.
    #[arg(long, default_value = "moby")]
    unlearn: String,
    /// Latents clamped in the unlearning part.
    #[arg(long, default_value_t = 10)]
    unlearn_latents: usize,
    /// Negative clamp values, multiples of each latent's maximum.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    clamps: Vec<f32>,
    /// Training contexts of the target and of the rest for the selection of latents.
    #[arg(long, default_value_t = 64)]
    train_contexts: usize,
}

pub fn run(a: Args) -> Result<()> {
    let mut req = SteerEvalRequest::new(a.model, a.sae, a.corpus, a.out.clone());
    req.features = a.features;
    if let Some(p) = &a.prompts {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        req.prompts = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
    }
    req.max_new_tokens = a.max_new_tokens;
    req.temperature = a.temperature;
    req.seed = a.seed;
    req.heldout_contexts = a.heldout_contexts;
    req.concept = a.concept;
    if !a.latents.is_empty() {
        req.dose = Some(DoseRequest {
            latents: a.latents,
            alphas: a.alphas,
            verdict_alpha: a.verdict_alpha,
        });
    }
    match (&mut req.selection, a.selection_latents) {
        (_, 0) => req.selection = None,
        (Some(s), n) => {
            s.latents = n;
            s.prompts = a.selection_prompts;
            s.perplexity_budget = a.perplexity_budget;
        }
        (None, _) => {}
    }
    if a.unlearn == "none" {
        req.unlearn = None;
    } else if let Some(u) = &mut req.unlearn {
        u.target = a.unlearn;
        u.k = a.unlearn_latents;
        u.clamps = a.clamps;
        u.train_contexts = a.train_contexts;
    }
    let mut rep = Reporter::new();
    let result = steer_eval(&req, &STOP, &mut |e| rep.handle(e));
    drop(rep);
    let s = result?;
    print!("{}", saelab_jobs::steer_eval::markdown(&s));
    println!(
        "\nwrote {} and {}",
        a.out.join("steer-eval.json").display(),
        a.out.join("steer-eval.md").display()
    );
    Ok(())
}
