//! `saelab autointerp`: explain and score latents of a features folder, writing
//! delphi's `explanations/` and `scores/{scorer}/` files, the same for a shuffled
//! control under `shuffled/`, and `summary.json` / `summary.md`.
//!
//! Two phases, each resumable per latent (a latent whose files exist is skipped):
//! 1. *explain*: sample each chosen latent's examples (`saelab_interp::sample`; a
//!    latent with too few activating windows is skipped and counted) and explain it
//!    (token set, or an LLM, in batches of requests);
//! 2. *score*: every scorer scores each latent's explanation and, as the control, the
//!    explanation of another latent (a seeded derangement of the explained latents),
//!    on the latent's own test examples.
//!
//! The summary gives each scorer's mean over latents for the real and the shuffled
//! explanations, the constant-answer baseline (0.5 for balanced accuracy and AUROC, 1/5
//! for the intruder, 0 for the simulation correlation),
//! the one-sided paired sign-flip p-value of real over shuffled, the failures (LLM
//! replies that failed or could not be parsed) and the throughput. Each explained
//! latent's text and scores are also merged into the features folder's
//! `explanations.json` (`saelab_features::explanations`), which the dashboard and the
//! Neuronpedia export read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use saelab_core::rng::Rng;
use saelab_embed::SentenceEncoder;
use saelab_features::explanations::{merge_explanations, ExplanationRecord, ExplanationScore};
use saelab_features::Features;
use saelab_interp::explain::{self, ExplainerConfig};
use saelab_interp::metrics::{mean, sign_flip_p};
use saelab_interp::output::Output;
use saelab_interp::render::display_vocab;
use saelab_interp::sample::{sample, Examples, SampleConfig, TokenMatrix};
use saelab_interp::score::classify::{self, ClassifyConfig, Task};
use saelab_interp::score::embedding::EmbeddingScorer;
use saelab_interp::score::intruder::{self, IntruderConfig, IntruderScore};
use saelab_interp::score::simulation::{self, SimulationConfig, SimulationScore};
use saelab_interp::score::surprisal::SurprisalScorer;
use saelab_interp::score::{ItemScore, ScoreSummary};
use saelab_llm::ChatClient;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, OnEvent, Phase};
use crate::inputs::load_model;

/// Which latents to explain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LatentChoice {
    /// These.
    List(Vec<usize>),
    /// `n` at random (seeded) among the latents with enough examples: latents are
    /// drawn in a seeded order and those with too few examples skipped (and counted)
    /// until `n` are explained or none is left.
    Random {
        /// How many.
        n: usize,
        /// The seed of the draw.
        seed: u64,
    },
}

/// How latents are explained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Explainer {
    /// The `tokens` tokens with the most activation mass (no LLM).
    TokenSet {
        /// Tokens listed.
        tokens: usize,
    },
    /// An LLM, prompted as delphi's default explainer.
    Llm(ExplainerConfig),
}

/// A scorer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scorer {
    /// LLM-judged detection.
    Detection,
    /// LLM-judged fuzzing.
    Fuzz,
    /// LLM-judged: which excerpt is the non-activating intruder.
    Intruder,
    /// A base model's loss gain from the explanation.
    Surprisal,
    /// Sentence-embedding similarity.
    Embedding,
    /// The activations the explanation predicts at every token, from the LLM's
    /// log-probabilities (a client that can score a given reply: a local model).
    Simulation,
}

impl Scorer {
    /// Its name in paths and tables.
    pub fn name(self) -> &'static str {
        match self {
            Scorer::Detection => "detection",
            Scorer::Fuzz => "fuzz",
            Scorer::Intruder => "intruder",
            Scorer::Surprisal => "surprisal",
            Scorer::Embedding => "embedding",
            Scorer::Simulation => "simulation",
        }
    }

    /// Whether it asks an LLM.
    pub fn needs_llm(self) -> bool {
        matches!(
            self,
            Scorer::Detection | Scorer::Fuzz | Scorer::Intruder | Scorer::Simulation
        )
    }

    /// Whether its items are yes/no predictions (else a ranking score).
    fn classifying(self) -> bool {
        matches!(self, Scorer::Detection | Scorer::Fuzz)
    }

    /// Its per-latent metric.
    fn metric(self) -> &'static str {
        match self {
            Scorer::Detection | Scorer::Fuzz => "balanced_accuracy",
            Scorer::Intruder => "accuracy",
            Scorer::Surprisal | Scorer::Embedding => "auroc",
            Scorer::Simulation => "correlation",
        }
    }

    /// Parses `detection`, `fuzz` (or `fuzzing`), `intruder`, `surprisal`, `embedding`,
    /// `simulation`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "detection" => Scorer::Detection,
            "fuzz" | "fuzzing" => Scorer::Fuzz,
            "intruder" => Scorer::Intruder,
            "surprisal" => Scorer::Surprisal,
            "embedding" => Scorer::Embedding,
            "simulation" => Scorer::Simulation,
            _ => return None,
        })
    }
}

/// What `saelab autointerp` does.
#[derive(Clone, Debug)]
pub struct AutointerpRequest {
    /// The features folder.
    pub features: PathBuf,
    /// The result folder.
    pub out: PathBuf,
    /// Which latents.
    pub latents: LatentChoice,
    /// How they are explained.
    pub explainer: Explainer,
    /// How they are scored.
    pub scorers: Vec<Scorer>,
    /// How examples are sampled.
    pub sample: SampleConfig,
    /// How the LLM judge is prompted (detection, fuzz).
    pub classify: ClassifyConfig,
    /// How the intruder prompts are built.
    pub intruder: IntruderConfig,
    /// How the simulation prompts are built.
    pub simulation: SimulationConfig,
    /// The surprisal scorer's base model (default: the features folder's model).
    pub base_model: Option<PathBuf>,
    /// The embedding scorer's sentence encoder folder.
    pub embedder: Option<PathBuf>,
    /// LLM requests sent together (a batched generation, or concurrent HTTP requests).
    pub llm_batch: usize,
}

impl AutointerpRequest {
    /// A token-set run of `scorers` on `latents`, with delphi's sampling.
    pub fn new(
        features: PathBuf,
        out: PathBuf,
        latents: LatentChoice,
        scorers: Vec<Scorer>,
    ) -> Self {
        AutointerpRequest {
            features,
            out,
            latents,
            explainer: Explainer::TokenSet { tokens: 5 },
            scorers,
            sample: SampleConfig::default(),
            classify: ClassifyConfig::default(),
            intruder: IntruderConfig::default(),
            simulation: SimulationConfig::default(),
            base_model: None,
            embedder: None,
            llm_batch: 8,
        }
    }
}

/// One scorer's result over the latents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScorerSummary {
    /// The scorer.
    pub scorer: String,
    /// The per-latent metric: `balanced_accuracy` or `auroc`.
    pub metric: String,
    /// Latents with a value for both the real and the shuffled explanation.
    pub latents: usize,
    /// Mean of the metric over them, real explanations.
    pub real_mean: f64,
    /// The same, shuffled explanations.
    pub shuffled_mean: f64,
    /// The metric of a constant answer or a random ranking (0.5), or of a random
    /// guess (the intruder scorer: 1 / excerpts per prompt).
    pub constant_baseline: f64,
    /// Latents where the real explanation scored higher, lower.
    pub real_wins: usize,
    /// Latents where the shuffled one scored higher.
    pub shuffled_wins: usize,
    /// One-sided paired sign-flip p-value of real over shuffled.
    pub p_value: f64,
    /// Items (for the intruder scorer: prompts) without a usable answer, real and
    /// shuffled together.
    pub failed_items: usize,
    /// Per latent: (latent, real, shuffled).
    pub per_latent: Vec<(usize, f64, f64)>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AutointerpSummary {
    /// The features folder.
    pub features: String,
    /// The explainer, in words.
    pub explainer: String,
    /// The LLM, when one was used.
    pub llm: Option<String>,
    /// Latents asked for.
    pub chosen: usize,
    /// Latents explained (and scored).
    pub explained: usize,
    /// Latents skipped, with why.
    pub skipped: Vec<(usize, String)>,
    /// Latents whose LLM explanation failed or could not be parsed.
    pub explanation_failures: usize,
    /// LLM explanations of this session read from a one-line reply without the
    /// `[EXPLANATION]:` tag.
    #[serde(default)]
    pub untagged_explanations: usize,
    /// Non-activating test examples over the explained latents, and how many of them
    /// came from windows of similar latents (`--neighbours`).
    #[serde(default)]
    pub non_activating: (usize, usize),
    /// Per scorer.
    pub scorers: Vec<ScorerSummary>,
    /// Wall seconds of this session's explain and score phases.
    pub seconds: f64,
    /// Latents explained and scored per hour in this session (latents done in an
    /// earlier, interrupted session are not counted).
    pub latents_per_hour: Option<f64>,
}

/// Runs the request. `llm` is needed by the LLM explainer and the LLM-judged scorers;
/// its absence, a missing sentence encoder or base model, and bad settings are errors
/// before any work starts. Replies that fail are counted, never fatal.
pub fn autointerp(
    req: &AutointerpRequest,
    llm: Option<&dyn ChatClient>,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<AutointerpSummary> {
    req.sample.check().map_err(Error::invalid)?;
    let needs_llm =
        matches!(req.explainer, Explainer::Llm(_)) || req.scorers.iter().any(|s| s.needs_llm());
    if needs_llm && llm.is_none() {
        return Err(Error::invalid(
            "the LLM explainer and the detection and fuzz scorers need an LLM: give \
             --explainer-model or --llm-base-url",
        ));
    }
    if let Some(c) = llm.filter(|_| req.scorers.contains(&Scorer::Simulation)) {
        if !c.can_score_replies() {
            return Err(Error::invalid(format!(
                "the simulation scorer reads the LLM's log-probabilities at given places of \
                 a given reply, which {} cannot give (an OpenAI-compatible chat endpoint \
                 scores generated tokens only): use a local model (--explainer-model)",
                c.model_id()
            )));
        }
    }
    let features = Features::open(&req.features)?;
    let settings = &features.manifest().settings;
    let encoder = if req.scorers.contains(&Scorer::Embedding) {
        let dir = req.embedder.as_ref().ok_or_else(|| {
            Error::invalid("the embedding scorer needs a sentence encoder: give --embedder")
        })?;
        Some(SentenceEncoder::load(dir).map_err(|e| Error::invalid(e.to_string()))?)
    } else {
        None
    };
    let base = if req.scorers.contains(&Scorer::Surprisal) {
        let path = req
            .base_model
            .clone()
            .unwrap_or_else(|| PathBuf::from(&settings.model.path));
        let model = load_model(&path, on)?;
        let tok = saelab_lm::contexts::tokenizer_for_model(&path)?;
        Some((model, tok))
    } else {
        None
    };
    let tokens = features.tokens()?;
    let vocab = display_vocab(features.vocab()?, settings.model.bos_token_id);
    let m = TokenMatrix {
        tokens: &tokens,
        ctx_len: settings.ctx_len,
    };
    let out = Output::new(&req.out, &settings.hook);
    let control = Output::new(req.out.join("shuffled"), &settings.hook);
    let (chosen, wanted) = choose(&features, &req.latents, req.sample.min_examples as u64)?;
    let start = Instant::now();
    let mut summary = AutointerpSummary {
        features: req.features.display().to_string(),
        explainer: match &req.explainer {
            Explainer::TokenSet { tokens } => format!("token set ({tokens} tokens)"),
            Explainer::Llm(_) => "LLM".into(),
        },
        llm: llm.map(|c| c.model_id()),
        chosen: wanted,
        ..Default::default()
    };

    // Phase 1: sample and explain.
    on(Event::Begin {
        phase: Phase::Explain,
        label: format!("explaining {wanted} latents"),
        total: Some(wanted as u64),
        done: 0,
    });
    let mut explained: Vec<(Examples, String)> = Vec::new();
    let mut fresh = 0usize;
    let mut pending: Vec<Examples> = Vec::new();
    for &latent in &chosen {
        if explained.len() + pending.len() >= wanted {
            break;
        }
        check_stop(stop)?;
        let entries = features.latent_entries(latent)?;
        let near = near_entries(&features, latent, req.sample.neighbours)?;
        match sample(latent, &entries, &near, m, &req.sample) {
            Err(skip) => summary.skipped.push((latent, skip.to_string())),
            Ok(ex) => match out.read_explanation(latent)? {
                Some(text) => explained.push((ex, text)),
                None => match &req.explainer {
                    Explainer::TokenSet { tokens } => {
                        let text = explain::token_set(&ex, &vocab, *tokens);
                        out.write_explanation(latent, &text)?;
                        fresh += 1;
                        explained.push((ex, text));
                    }
                    Explainer::Llm(cfg) => {
                        pending.push(ex);
                        if pending.len() >= req.llm_batch.max(1) {
                            let done = explain_batch(
                                &mut pending,
                                llm.expect("checked"),
                                &vocab,
                                cfg,
                                &out,
                            )?;
                            summary.explanation_failures += done.failed;
                            summary.untagged_explanations += done.untagged;
                            fresh += done.done.len();
                            explained.extend(done.done);
                        }
                    }
                },
            },
        }
        on(Event::Advance {
            done: (explained.len() + pending.len()) as u64,
        });
    }
    if let Explainer::Llm(cfg) = &req.explainer {
        let done = explain_batch(&mut pending, llm.expect("checked"), &vocab, cfg, &out)?;
        summary.explanation_failures += done.failed;
        summary.untagged_explanations += done.untagged;
        fresh += done.done.len();
        explained.extend(done.done);
    }
    on(Event::End);
    explained.sort_by_key(|(ex, _)| ex.latent);
    summary.explained = explained.len();
    summary.non_activating = explained.iter().fold((0, 0), |(a, b), (ex, _)| {
        (a + ex.non_activating.len(), b + ex.similar_non_activating)
    });

    // The control: latent k is scored with the explanation of the latent `shift`
    // places after it in a seeded shuffle of the explained latents (no fixed point).
    let n = explained.len();
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(req.sample.seed ^ 0x7368_7566).shuffle(&mut order);
    let mut donor = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        donor[i] = order[(pos + 1) % n.max(1)];
    }

    // Phase 2: score.
    on(Event::Begin {
        phase: Phase::Score,
        label: format!("scoring {n} latents ({})", names(&req.scorers)),
        total: Some(n as u64),
        done: 0,
    });
    let mut results: Vec<Vec<Row>> = vec![Vec::new(); req.scorers.len()];
    for (i, (ex, text)) in explained.iter().enumerate() {
        check_stop(stop)?;
        let shuffled = if n > 1 { &explained[donor[i]].1 } else { text };
        for (s, &scorer) in req.scorers.iter().enumerate() {
            let name = scorer.name();
            let kind = match scorer {
                Scorer::Detection => ItemKind::Classify(Task::Detection),
                Scorer::Fuzz => ItemKind::Classify(Task::Fuzzing),
                Scorer::Surprisal => ItemKind::Surprisal,
                Scorer::Embedding => ItemKind::Embedding,
                Scorer::Intruder => {
                    let (a, b) = stored_or(&out, &control, name, ex.latent, shuffled, || {
                        let cfg = &req.intruder;
                        let pa = intruder::prompts(text, ex, &vocab, cfg);
                        let pb = intruder::prompts(shuffled, ex, &vocab, cfg);
                        let reqs: Vec<_> =
                            pa.iter().chain(&pb).map(|p| p.request.clone()).collect();
                        let replies = llm.expect("checked").complete_many(&reqs);
                        let a: IntruderScore =
                            intruder::score(&pa, &replies[..pa.len()], cfg.shown);
                        (a, intruder::score(&pb, &replies[pa.len()..], cfg.shown))
                    })?;
                    results[s].push(Row {
                        latent: ex.latent,
                        real: a.accuracy,
                        shuffled: b.accuracy,
                        failed: a.failed + b.failed,
                        baseline: a.chance,
                    });
                    continue;
                }
                Scorer::Simulation => {
                    let (a, b) = stored_or(&out, &control, name, ex.latent, shuffled, || {
                        let cfg = &req.simulation;
                        let ra = simulation::requests(text, ex, &vocab, cfg);
                        let rb = simulation::requests(shuffled, ex, &vocab, cfg);
                        let na = ra.len();
                        let reqs: Vec<_> = ra.into_iter().chain(rb).collect();
                        let replies = llm.expect("checked").score_replies(&reqs);
                        let a: SimulationScore = simulation::score(ex, &vocab, &replies[..na]);
                        (a, simulation::score(ex, &vocab, &replies[na..]))
                    })?;
                    results[s].push(Row {
                        latent: ex.latent,
                        real: a.correlation,
                        shuffled: b.correlation,
                        failed: a.failed + b.failed,
                        baseline: 0.0,
                    });
                    continue;
                }
            };
            let done = (
                out.read_scores(name, ex.latent)?,
                control.read_scores(name, ex.latent)?,
            );
            let (real, ctrl) = match done {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    let (a, b) = match kind {
                        ItemKind::Classify(task) => {
                            let pa = classify::prompts(task, text, ex, &vocab, &req.classify);
                            let pb = classify::prompts(task, shuffled, ex, &vocab, &req.classify);
                            let na = pa.requests.len();
                            let reqs: Vec<_> =
                                pa.requests.iter().chain(&pb.requests).cloned().collect();
                            let replies = llm.expect("checked").complete_many(&reqs);
                            let (a, _) = classify::apply(pa, &replies[..na]);
                            let (b, _) = classify::apply(pb, &replies[na..]);
                            (a, b)
                        }
                        ItemKind::Surprisal => {
                            let (model, tok) = base.as_ref().expect("loaded");
                            let sc = SurprisalScorer::new(model, tok);
                            let prep = sc.prepare(ex, &vocab)?;
                            (sc.score(&prep, text)?, sc.score(&prep, shuffled)?)
                        }
                        ItemKind::Embedding => {
                            let sc = EmbeddingScorer::new(encoder.as_ref().expect("loaded"));
                            let emb = |r: saelab_embed::Result<Vec<ItemScore>>| {
                                r.map_err(|e| Error::invalid(e.to_string()))
                            };
                            let prep = sc
                                .prepare(ex, &vocab)
                                .map_err(|e| Error::invalid(e.to_string()))?;
                            (emb(sc.score(&prep, text))?, emb(sc.score(&prep, shuffled))?)
                        }
                    };
                    out.write_scores(name, ex.latent, &a)?;
                    control.write_scores(name, ex.latent, &b)?;
                    control.write_explanation(ex.latent, shuffled)?;
                    (a, b)
                }
            };
            let c = scorer.classifying();
            let (a, b) = (ScoreSummary::of(&real, c), ScoreSummary::of(&ctrl, c));
            let metric = |s: &ScoreSummary| if c { s.balanced_accuracy } else { s.auroc };
            results[s].push(Row {
                latent: ex.latent,
                real: metric(&a),
                shuffled: metric(&b),
                failed: a.failed + b.failed,
                baseline: 0.5,
            });
        }
        on(Event::Advance { done: i as u64 + 1 });
    }
    on(Event::End);

    for (s, &scorer) in req.scorers.iter().enumerate() {
        summary
            .scorers
            .push(summarise(scorer, &results[s], req.sample.seed));
    }
    summary.seconds = start.elapsed().as_secs_f64();
    summary.latents_per_hour = (fresh > 0).then(|| fresh as f64 * 3600.0 / summary.seconds);
    let explainer = match &req.explainer {
        Explainer::TokenSet { .. } => "token-set".to_string(),
        Explainer::Llm(_) => format!("llm:{}", llm.map(|c| c.model_id()).unwrap_or_default()),
    };
    merge_explanations(
        &req.features,
        store_records(&explainer, &req.out, &explained, &req.scorers, &results),
    )?;
    write_summary(&req.out, &summary)?;
    Ok(summary)
}

/// The features store's records of this run: each explained latent with its text and
/// one score per scorer.
fn store_records(
    explainer: &str,
    out: &Path,
    explained: &[(Examples, String)],
    scorers: &[Scorer],
    results: &[Vec<Row>],
) -> Vec<ExplanationRecord> {
    explained
        .iter()
        .map(|(ex, text)| ExplanationRecord {
            latent: ex.latent as u32,
            explainer: explainer.to_string(),
            explanation: text.clone(),
            source: out.display().to_string(),
            scores: scorers
                .iter()
                .zip(results)
                .filter_map(|(scorer, rows)| {
                    let r = rows.iter().find(|r| r.latent == ex.latent)?;
                    Some(ExplanationScore {
                        scorer: scorer.name().into(),
                        metric: scorer.metric().into(),
                        value: r.real,
                        shuffled: r.shuffled,
                        baseline: r.baseline,
                        failed: r.failed,
                    })
                })
                .collect(),
        })
        .collect()
}

/// A scorer's result files for one latent, real and shuffled: read when both exist
/// (a resumed run), else computed by `score` and written, with the shuffled
/// explanation beside the control's.
fn stored_or<T: Serialize + serde::de::DeserializeOwned>(
    out: &Output,
    control: &Output,
    name: &str,
    latent: usize,
    shuffled: &str,
    score: impl FnOnce() -> (T, T),
) -> Result<(T, T)> {
    if let (Some(a), Some(b)) = (
        out.read_json::<T>(name, latent)?,
        control.read_json::<T>(name, latent)?,
    ) {
        return Ok((a, b));
    }
    let (a, b) = score();
    out.write_json(name, latent, &a)?;
    control.write_json(name, latent, &b)?;
    control.write_explanation(latent, shuffled)?;
    Ok((a, b))
}

/// The active positions of latent `latent`'s `n` nearest latents by decoder cosine
/// (from its features record), together: where its hard negatives come from.
fn near_entries(features: &Features, latent: usize, n: usize) -> Result<Vec<(u32, u32, f32)>> {
    let mut near = Vec::new();
    if n == 0 {
        return Ok(near);
    }
    for nb in features.latent(latent)?.decoder_neighbours.iter().take(n) {
        near.extend(features.latent_entries(nb.latent as usize)?);
    }
    Ok(near)
}

fn names(scorers: &[Scorer]) -> String {
    scorers
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        return Err(saelab_core::Error::Interrupted.into());
    }
    Ok(())
}

/// The candidates of `choice`, in the order they are tried, and how many to explain:
/// a list as given (sorted, checked against the folder), all of it; or every latent
/// active at least `min_count` times in a seeded order, `n` of them.
fn choose(
    features: &Features,
    choice: &LatentChoice,
    min_count: u64,
) -> Result<(Vec<usize>, usize)> {
    let n = features.n_latents();
    match choice {
        LatentChoice::List(v) => {
            if let Some(&bad) = v.iter().find(|&&i| i >= n) {
                return Err(Error::invalid(format!(
                    "latent {bad} does not exist (the SAE has {n} latents)"
                )));
            }
            let mut v = v.clone();
            v.sort_unstable();
            v.dedup();
            let k = v.len();
            Ok((v, k))
        }
        LatentChoice::Random { n: want, seed } => {
            let mut live = Vec::new();
            for i in 0..n {
                if features.latent(i)?.count >= min_count {
                    live.push(i);
                }
            }
            Rng::new(*seed).shuffle(&mut live);
            Ok((live, *want))
        }
    }
}

/// What one batch of LLM explanations gave.
struct Batch {
    /// The latents explained, with their text (written).
    done: Vec<(Examples, String)>,
    /// Replies that failed or did not parse.
    failed: usize,
    /// Explanations read from an untagged one-line reply.
    untagged: usize,
}

/// Explains the latents of `pending` with one batch of LLM requests.
fn explain_batch(
    pending: &mut Vec<Examples>,
    llm: &dyn ChatClient,
    vocab: &[String],
    cfg: &ExplainerConfig,
    out: &Output,
) -> Result<Batch> {
    let reqs: Vec<_> = pending
        .iter()
        .map(|ex| explain::llm_request(ex, vocab, cfg))
        .collect();
    let replies = llm.complete_many(&reqs);
    let mut done = Vec::new();
    let (mut failed, mut untagged) = (0, 0);
    for (ex, reply) in pending.drain(..).zip(replies) {
        match reply
            .ok()
            .and_then(|r| explain::parse_explanation(&r.content))
        {
            Some(parsed) => {
                untagged += usize::from(!parsed.tagged);
                out.write_explanation(ex.latent, &parsed.text)?;
                done.push((ex, parsed.text));
            }
            None => {
                tracing::warn!(
                    latent = ex.latent,
                    "the explanation failed or could not be parsed"
                );
                failed += 1;
            }
        }
    }
    Ok(Batch {
        done,
        failed,
        untagged,
    })
}

/// The scorers whose results are per-item lists ([`ItemScore`]).
#[derive(Clone, Copy)]
enum ItemKind {
    Classify(Task),
    Surprisal,
    Embedding,
}

/// One latent's metric for one scorer.
#[derive(Clone, Debug)]
struct Row {
    latent: usize,
    real: Option<f64>,
    shuffled: Option<f64>,
    failed: usize,
    baseline: f64,
}

fn summarise(scorer: Scorer, rows: &[Row], seed: u64) -> ScorerSummary {
    let per: Vec<(usize, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.latent, r.real?, r.shuffled?)))
        .collect();
    let real: Vec<f64> = per.iter().map(|r| r.1).collect();
    let shuf: Vec<f64> = per.iter().map(|r| r.2).collect();
    let diffs: Vec<f64> = per.iter().map(|r| r.1 - r.2).collect();
    ScorerSummary {
        scorer: scorer.name().into(),
        metric: scorer.metric().into(),
        latents: per.len(),
        real_mean: mean(&real),
        shuffled_mean: mean(&shuf),
        constant_baseline: rows.first().map_or(0.5, |r| r.baseline),
        real_wins: diffs.iter().filter(|&&d| d > 0.0).count(),
        shuffled_wins: diffs.iter().filter(|&&d| d < 0.0).count(),
        p_value: sign_flip_p(&diffs, 100_000, seed),
        failed_items: rows.iter().map(|r| r.failed).sum(),
        per_latent: per,
    }
}

/// The summary as Markdown.
pub fn markdown(s: &AutointerpSummary) -> String {
    let mut md = format!(
        "# Auto-interpretation of {}\n\nExplainer: {}{}. {} latents asked for, {} explained, {} skipped (too few examples), {} explanations failed, {} read from an untagged one-line reply.\n\n",
        s.features,
        s.explainer,
        s.llm.as_ref().map(|l| format!(" ({l})")).unwrap_or_default(),
        s.chosen,
        s.explained,
        s.skipped.len(),
        s.explanation_failures,
        s.untagged_explanations
    );
    if s.non_activating.1 > 0 {
        md.push_str(&format!(
            "Non-activating examples: {}, of which {} from windows where a similar latent fires.\n\n",
            s.non_activating.0, s.non_activating.1
        ));
    }
    md.push_str("| scorer | metric | latents | real | shuffled | constant | real wins | shuffled wins | p (real > shuffled) | failed items |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &s.scorers {
        let (real, shuffled, p) = if r.latents == 0 {
            ("–".to_string(), "–".to_string(), "–".to_string())
        } else {
            (
                format!("{:.4}", r.real_mean),
                format!("{:.4}", r.shuffled_mean),
                format!("{:.2e}", r.p_value),
            )
        };
        md.push_str(&format!(
            "| {} | {} | {} | {real} | {shuffled} | {:.2} | {} | {} | {p} | {} |\n",
            r.scorer,
            r.metric,
            r.latents,
            r.constant_baseline,
            r.real_wins,
            r.shuffled_wins,
            r.failed_items
        ));
    }
    if let Some(rate) = s.latents_per_hour {
        md.push_str(&format!(
            "\n{:.1} s this session; {rate:.0} latents explained and scored per hour.\n",
            s.seconds
        ));
    }
    md
}

fn write_summary(dir: &Path, s: &AutointerpSummary) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| saelab_core::Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(s).expect("the summary serialises");
    saelab_core::io::write_file_atomic(&dir.join("summary.json"), json.as_bytes())?;
    saelab_core::io::write_file_atomic(&dir.join("summary.md"), markdown(s).as_bytes())?;
    Ok(())
}
