//! `saelab autointerp`: explain latents of a features folder and score the
//! explanations against a shuffled control (`saelab_jobs::autointerp`), in delphi's
//! `explanations/` and `scores/` layout plus `summary.json` and `summary.md`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saelab_jobs::autointerp::{autointerp, markdown, AutointerpRequest, Explainer, LatentChoice, Scorer};
use saelab_interp::explain::ExplainerConfig;

use crate::progress::Reporter;
use crate::STOP;

#[derive(clap::Args)]
pub struct Args {
    /// Features folder (`saelab features`).
    #[arg(long)]
    features: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Latents to explain (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "random")]
    latents: Vec<usize>,
    /// Explain this many latents at random among those active at least --min-examples
    /// times.
    #[arg(long)]
    random: Option<usize>,
    /// Seed of the latent draw, the example sampling and the shuffled control.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `token-set` (no LLM: the tokens with the most activation mass) or `llm`.
    #[arg(long, default_value = "token-set")]
    explainer: String,
    /// Tokens a token-set explanation lists.
    #[arg(long, default_value_t = 5)]
    explanation_tokens: usize,
    /// Scorers: embedding, surprisal, detection, fuzz (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "embedding,surprisal")]
    scorers: Vec<String>,
    /// Base model of the surprisal scorer [default: the features folder's model].
    #[arg(long)]
    base_model: Option<PathBuf>,
    /// Sentence encoder folder of the embedding scorer.
    #[arg(long, default_value = "data/models/all-MiniLM-L6-v2")]
    embedder: PathBuf,
    /// Fewest activating 32-token windows a latent needs.
    #[arg(long, default_value_t = 90)]
    min_examples: usize,
}

pub fn run(a: Args) -> Result<()> {
    let latents = match (a.random, a.latents.is_empty()) {
        (Some(n), _) => LatentChoice::Random { n, seed: a.seed },
        (None, false) => LatentChoice::List(a.latents),
        (None, true) => bail!("give --latents or --random N"),
    };
    let scorers = a
        .scorers
        .iter()
        .map(|s| {
            Scorer::parse(s).ok_or_else(|| {
                anyhow::anyhow!("unknown scorer {s:?} (expected embedding, surprisal, detection or fuzz)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut req = AutointerpRequest::new(a.features, a.out.clone(), latents, scorers);
    req.explainer = match a.explainer.as_str() {
        "token-set" => Explainer::TokenSet {
            tokens: a.explanation_tokens,
        },
        "llm" => Explainer::Llm(ExplainerConfig::default()),
        other => bail!("unknown explainer {other:?} (expected token-set or llm)"),
    };
    req.base_model = a.base_model;
    req.embedder = Some(a.embedder);
    req.sample.min_examples = a.min_examples;
    req.sample.seed = a.seed;
    req.classify.seed = a.seed;
    let mut rep = Reporter::new();
    let result = autointerp(&req, None, &STOP, &mut |e| rep.handle(e));
    drop(rep);
    let s = result?;
    print!("{}", markdown(&s));
    println!("\nwrote {}", a.out.display());
    Ok(())
}
