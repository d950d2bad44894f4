//! `saelab autointerp`: explain latents of a features folder and score the
//! explanations against a shuffled control (`saelab_jobs::autointerp`), in delphi's
//! `explanations/` and `scores/` layout plus `summary.json` and `summary.md`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saelab_interp::explain::ExplainerConfig;
use saelab_jobs::autointerp::{
    autointerp, markdown, AutointerpRequest, Explainer, LatentChoice, Scorer,
};
use saelab_llm::config::{client_from, ClientConfig};
use saelab_llm::ChatClient;

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
    /// Worked examples the LLM explainer sees before the latent's excerpts (0–2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    explainer_shots: u8,
    /// Tokens a token-set explanation lists.
    #[arg(long, default_value_t = 5)]
    explanation_tokens: usize,
    /// Scorers: embedding, surprisal, detection, fuzz, intruder, simulation
    /// (comma-separated).
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
    /// Activating test examples drawn from each of the 10 quantiles (delphi: 5).
    #[arg(long, default_value_t = 5)]
    test_per_quantile: usize,
    /// Non-activating test examples (delphi: 50).
    #[arg(long, default_value_t = 50)]
    non_activating: usize,
    /// Draw the non-activating test examples first from windows where this many of the
    /// latent's nearest latents (by decoder cosine, from the features folder) fire and
    /// it does not: hard negatives. 0: random windows only.
    #[arg(long, default_value_t = 0)]
    neighbours: usize,
    /// Excerpts per prompt of the detection and fuzz scorers.
    #[arg(long, default_value_t = 5)]
    per_prompt: usize,
    /// Ask the judge for the top log-probabilities of its answers (AUROC).
    #[arg(long)]
    logprobs: bool,
    /// LLM requests sent together (one batched generation of a local model, or
    /// concurrent requests to an endpoint).
    #[arg(long, default_value_t = 8)]
    llm_batch: usize,
    #[command(flatten)]
    llm: LlmArgs,
}

/// The LLM that explains and judges: a local model, or an OpenAI-compatible endpoint.
#[derive(clap::Args)]
pub struct LlmArgs {
    /// A local instruct model (GGUF with a ChatML template), e.g.
    /// data/models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf.
    #[arg(long, conflicts_with = "llm_base_url")]
    explainer_model: Option<PathBuf>,
    /// An OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1.
    #[arg(long)]
    llm_base_url: Option<String>,
    /// The endpoint's model name.
    #[arg(long, requires = "llm_base_url")]
    llm_model: Option<String>,
    /// The environment variable holding the endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    llm_key_env: String,
    /// Call the endpoint without a key when the variable is unset.
    #[arg(long)]
    llm_key_optional: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    llm_concurrency: usize,
    /// Seconds per attempt.
    #[arg(long, default_value_t = 120)]
    llm_timeout: u64,
    /// Retries of a failed request (connection errors, timeouts, 429, 5xx).
    #[arg(long, default_value_t = 3)]
    llm_retries: u32,
    /// Cache of replies (a rerun asks nothing) [default: OUT/llm-cache].
    #[arg(long)]
    llm_cache: Option<PathBuf>,
}

impl LlmArgs {
    /// The client, or `None` when no model was given.
    fn client(&self, out: &std::path::Path) -> Result<Option<Box<dyn ChatClient>>> {
        if self.explainer_model.is_none() && self.llm_base_url.is_none() {
            return Ok(None);
        }
        let cfg = ClientConfig {
            base_url: self.llm_base_url.clone(),
            model: self.llm_model.clone(),
            key_env: self.llm_key_env.clone(),
            key_optional: self.llm_key_optional,
            concurrency: self.llm_concurrency,
            timeout: std::time::Duration::from_secs(self.llm_timeout),
            retries: self.llm_retries,
            explainer_model: self.explainer_model.clone(),
            cache_dir: Some(
                self.llm_cache
                    .clone()
                    .unwrap_or_else(|| out.join("llm-cache")),
            ),
            ..ClientConfig::default()
        };
        Ok(Some(client_from(&cfg)?))
    }
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
                anyhow::anyhow!(
                    "unknown scorer {s:?} (expected embedding, surprisal, detection, fuzz, intruder or simulation)"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut req = AutointerpRequest::new(a.features, a.out.clone(), latents, scorers);
    req.explainer = match a.explainer.as_str() {
        "token-set" => Explainer::TokenSet {
            tokens: a.explanation_tokens,
        },
        "llm" => Explainer::Llm(ExplainerConfig {
            shots: a.explainer_shots as usize,
            ..ExplainerConfig::default()
        }),
        other => bail!("unknown explainer {other:?} (expected token-set or llm)"),
    };
    req.base_model = a.base_model;
    req.embedder = Some(a.embedder);
    req.sample.min_examples = a.min_examples;
    req.sample.neighbours = a.neighbours;
    req.sample.test_per_quantile = a.test_per_quantile;
    req.sample.non_activating = a.non_activating;
    req.sample.seed = a.seed;
    req.classify.seed = a.seed;
    req.classify.per_prompt = a.per_prompt;
    req.classify.top_logprobs = a.logprobs.then_some(5);
    req.llm_batch = a.llm_batch;
    let client = a.llm.client(&a.out)?;
    let mut rep = Reporter::new();
    let result = autointerp(&req, client.as_deref(), &STOP, &mut |e| rep.handle(e));
    drop(rep);
    let s = result?;
    print!("{}", markdown(&s));
    println!("\nwrote {}", a.out.display());
    Ok(())
}
