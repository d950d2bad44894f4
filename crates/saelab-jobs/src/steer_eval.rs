//! The steering study (`saelab steer-eval`): what steering with an SAE's latents does,
//! measured on generated and held-out text, in three parts.
//!
//! 1. **Dose–response** for chosen latents: each neutral prompt is continued without
//!    steering and with `Add(α·max_i)` at every position for each α (multiples of the
//!    latent's largest activation in the features pass), and with a random direction
//!    of the same norm `α·max_i·‖d_i‖` as the control. Each continuation is measured by
//!    the unsteered model ([`saelab_steer::measure::measure_text`]): the share of its
//!    tokens in the latent's concept set, the latent's mean value when re-encoded, the
//!    perplexity; and ΔCE on held-out text with the same intervention on. At one α
//!    (default 4) the verdict: on how many prompts the concept share rose, and the
//!    one-sided sign-flip p-value that the latent's gain beats the random direction's
//!    (paired by prompt).
//! 2. **Selection by output score** (Arad et al.): over randomly drawn live latents,
//!    the output and input scores, and each latent's best concept-share gain among the
//!    strengths whose mean perplexity stays within a budget (a multiple of the
//!    unsteered perplexity); the top quartile by output score against the bottom one.
//! 3. **Unlearning**: the latents most specific to one collection of the corpus (by
//!    firing-rate ratio on its training documents against the rest) clamped
//!    negatively where active (`−c·max_i`), for several `c`; ΔCE on the collection's
//!    held-out text against ΔCE on the rest, beside as many random latents that also
//!    fire on the collection.
//!
//! The result is one JSON file and one Markdown file (`steer-eval.json`,
//! `steer-eval.md`), written atomically.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use saelab_core::rng::Rng;
use saelab_core::Matrix;
use saelab_lm::contexts::{ContextOrder, ContextPlan};
use saelab_lm::generate::GenerateOptions;
use saelab_lm::model::ForwardOptions;
use saelab_lm::text::{Corpus, HeldOut, LoadOptions, PackConfig, Part};
use saelab_steer::measure::{
    input_score, logit_lens_tokens, mean_ce, measure_text, output_score, random_direction,
    sign_flip_p, TextMeasure,
};
use saelab_steer::unlearn::{most_specific, random_latents, FiringCounts, Specific};
use saelab_steer::{with_interventions, Edit, Intervention, Op, Positions, Prompts};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{Event, OnEvent, Phase};
use crate::steer::{ConceptSet, SteerSae, Steerer, CONCEPT_TOKENS};

/// Neutral prompts: openings that favour no topic.
pub const NEUTRAL_PROMPTS: [&str; 10] = [
    "I think that",
    "The best way to",
    "Yesterday I went to",
    "My favourite thing is",
    "In the morning,",
    "She told me that",
    "The problem with",
    "Here is a short story:",
    "What I remember most is",
    "Let me tell you about",
];

/// Arad et al.'s neutral prompt for the output score.
pub const OUTPUT_SCORE_PROMPT: &str = "From my experience,";

/// What the study runs on and how much of it.
#[derive(Clone, Debug, PartialEq)]
pub struct SteerEvalRequest {
    /// The model.
    pub model: PathBuf,
    /// The SAE (run directory with a features folder, or SAE directory).
    pub sae: PathBuf,
    /// Its features folder (default: the run's).
    pub features: Option<PathBuf>,
    /// The corpus (held-out text for ΔCE; collections for unlearning).
    pub corpus: PathBuf,
    /// Where `steer-eval.json` and `steer-eval.md` go.
    pub out: PathBuf,
    /// Prompts to continue (default: [`NEUTRAL_PROMPTS`]).
    pub prompts: Vec<String>,
    /// Tokens per continuation.
    pub max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Seed of every generation (steered and unsteered share it).
    pub seed: u64,
    /// Tokens per held-out context.
    pub ctx_len: usize,
    /// Held-out contexts for ΔCE.
    pub heldout_contexts: usize,
    /// The tokens the concept share counts (parts 1 and 2).
    pub concept: ConceptSet,
    /// Part 1: the latents, the multiples of their maximum, and the α of the verdict.
    pub dose: Option<DoseRequest>,
    /// Part 2.
    pub selection: Option<SelectionRequest>,
    /// Part 3.
    pub unlearn: Option<UnlearnRequest>,
}

/// Part 1's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct DoseRequest {
    /// The latents.
    pub latents: Vec<usize>,
    /// Strengths, as multiples of each latent's maximum (0 is the unsteered run).
    pub alphas: Vec<f32>,
    /// The strength of the verdict (one of `alphas`).
    pub verdict_alpha: f32,
}

/// Part 2's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionRequest {
    /// Latents drawn (among those firing on at least `min_density` of positions).
    pub latents: usize,
    /// Lowest density of a latent drawn.
    pub min_density: f64,
    /// Strengths tried, as multiples of the maximum.
    pub alphas: Vec<f32>,
    /// Prompts used (the first of the request's).
    pub prompts: usize,
    /// The fluency budget: mean perplexity at most this times the unsteered one.
    pub perplexity_budget: f64,
    /// Amplification of the output score (`a_i += amp·max_j a_j`).
    pub amp: f32,
    /// Seed of the draw.
    pub seed: u64,
}

/// Part 3's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct UnlearnRequest {
    /// The collection to unlearn: documents whose source path holds `/{target}/`.
    pub target: String,
    /// Latents clamped.
    pub k: usize,
    /// Clamp values, as multiples of each latent's maximum (`a_i := −c·max_i`).
    pub clamps: Vec<f32>,
    /// Training contexts of the target and of the rest counted for the selection.
    pub train_contexts: usize,
    /// Lowest firing rate on the target of a latent chosen (either set).
    pub min_rate: f64,
    /// Seed of the random latents.
    pub seed: u64,
}

impl SteerEvalRequest {
    /// The study's defaults for `model`, `sae`, `corpus` and `out`: the ten neutral
    /// prompts, 32 tokens at temperature 0.5 with seed 16 (Neuronpedia's), 16 held-out
    /// contexts of 128 tokens, the three parts at their defaults (part 1 without
    /// latents: the caller names them).
    pub fn new(model: PathBuf, sae: PathBuf, corpus: PathBuf, out: PathBuf) -> Self {
        SteerEvalRequest {
            model,
            sae,
            features: None,
            corpus,
            out,
            prompts: NEUTRAL_PROMPTS.iter().map(|s| s.to_string()).collect(),
            max_new_tokens: 32,
            temperature: 0.5,
            seed: 16,
            ctx_len: 128,
            heldout_contexts: 16,
            concept: ConceptSet::Both,
            dose: None,
            selection: Some(SelectionRequest {
                latents: 100,
                min_density: 1e-4,
                alphas: vec![1.0, 2.0, 4.0, 8.0],
                prompts: 5,
                perplexity_budget: 2.0,
                amp: 10.0,
                seed: 0,
            }),
            unlearn: Some(UnlearnRequest {
                target: "moby".into(),
                k: 10,
                clamps: vec![1.0, 2.0, 4.0],
                train_contexts: 64,
                min_rate: 0.005,
                seed: 0,
            }),
        }
    }
}

/// Mean measures of a set of continuations, and the per-prompt values the tests pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Mean concept share.
    pub concept_share: f64,
    /// Mean re-encoded activation.
    pub mean_activation: f64,
    /// Mean perplexity.
    pub perplexity: f64,
    /// Concept share per prompt.
    pub shares: Vec<f64>,
    /// Re-encoded activation per prompt.
    pub activations: Vec<f64>,
    /// Perplexity per prompt.
    pub perplexities: Vec<f64>,
}

impl Summary {
    fn of(ms: &[TextMeasure]) -> Summary {
        let mean = |f: &dyn Fn(&TextMeasure) -> f64| {
            ms.iter().map(f).sum::<f64>() / ms.len().max(1) as f64
        };
        Summary {
            concept_share: mean(&|m| m.concept_share),
            mean_activation: mean(&|m| m.mean_activation),
            perplexity: mean(&|m| m.perplexity),
            shares: ms.iter().map(|m| m.concept_share).collect(),
            activations: ms.iter().map(|m| m.mean_activation).collect(),
            perplexities: ms.iter().map(|m| m.perplexity).collect(),
        }
    }
}

/// One strength of part 1.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DoseRow {
    /// Multiple of the maximum.
    pub alpha: f32,
    /// The value added, `α·max_i`.
    pub strength: f32,
    /// Steered by the latent.
    pub steered: Summary,
    /// Steered by a random direction of the same norm.
    pub random: Summary,
    /// ΔCE on held-out text, latent steering on.
    pub delta_ce: f64,
    /// ΔCE on held-out text, random direction on.
    pub delta_ce_random: f64,
}

/// Part 1's verdict at one strength.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// The strength (multiple of the maximum).
    pub alpha: f32,
    /// Prompts whose concept share rose over the unsteered continuation.
    pub prompts_gaining: usize,
    /// Prompts whose re-encoded activation rose over the unsteered continuation.
    pub prompts_gaining_activation: usize,
    /// Prompts.
    pub prompts: usize,
    /// One-sided sign-flip p that the latent's concept-share gain beats the random
    /// direction's, paired by prompt.
    pub p_share_vs_random: f64,
    /// The same for the re-encoded activation.
    pub p_activation_vs_random: f64,
}

/// Part 1 for one latent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatentDose {
    /// The latent.
    pub latent: usize,
    /// Its largest activation in the features pass.
    pub max: f32,
    /// `‖d_i‖`.
    pub decoder_norm: f32,
    /// Its concept set, as token texts.
    pub concept: Vec<String>,
    /// Without steering.
    pub unsteered: Summary,
    /// One row per non-zero α.
    pub rows: Vec<DoseRow>,
    /// At the verdict's α.
    pub verdict: Option<Verdict>,
    /// The steered continuations at the verdict's α, one per prompt, to read.
    pub examples: Vec<String>,
}

/// Part 2 for one latent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SelectedLatent {
    /// The latent.
    pub latent: usize,
    /// Arad et al.'s output score.
    pub output_score: f64,
    /// Arad et al.'s input score (`None` without top examples).
    pub input_score: Option<f64>,
    /// Best concept-share gain within the perplexity budget (0 when no strength stays
    /// within it).
    pub gain: f64,
    /// The α of that gain (`None`: none within budget).
    pub alpha: Option<f32>,
}

/// Part 2's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Selection {
    /// Unsteered mean perplexity on the prompts used.
    pub unsteered_perplexity: f64,
    /// The budget: mean perplexity at most this.
    pub perplexity_limit: f64,
    /// Every latent drawn.
    pub latents: Vec<SelectedLatent>,
    /// Mean gain of the top quartile by output score.
    pub top_quartile_gain: f64,
    /// Mean gain of the bottom quartile.
    pub bottom_quartile_gain: f64,
    /// One-sided permutation p that the top quartile's mean gain is larger.
    pub p_top_vs_bottom: f64,
    /// Whether the effect holds on this model (top > bottom at p < 0.05).
    pub holds: bool,
}

/// One clamp value of part 3.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnlearnRow {
    /// `c` (multiple of each latent's maximum).
    pub clamp: f32,
    /// ΔCE on the target's held-out text, selected latents.
    pub target_delta_ce: f64,
    /// ΔCE on the rest's held-out text, selected latents.
    pub rest_delta_ce: f64,
    /// ΔCE on the target, random latents.
    pub random_target_delta_ce: f64,
    /// ΔCE on the rest, random latents.
    pub random_rest_delta_ce: f64,
}

/// Part 3's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unlearning {
    /// The collection.
    pub target: String,
    /// The latents chosen.
    pub selected: Vec<Specific>,
    /// The random latents.
    pub random: Vec<usize>,
    /// Clean mean CE on the target's held-out text.
    pub target_ce: f64,
    /// Clean mean CE on the rest's held-out text.
    pub rest_ce: f64,
    /// Held-out contexts of each.
    pub contexts: usize,
    /// One row per clamp value.
    pub rows: Vec<UnlearnRow>,
}

/// The study.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SteerEval {
    /// The SAE directory.
    pub sae: String,
    /// Its hook.
    pub hook: String,
    /// The model.
    pub model: String,
    /// The prompts.
    pub prompts: Vec<String>,
    /// Tokens per continuation.
    pub max_new_tokens: usize,
    /// Temperature.
    pub temperature: f32,
    /// Seed.
    pub seed: u64,
    /// Held-out contexts of ΔCE.
    pub heldout_contexts: usize,
    /// The tokens the concept share counted.
    pub concept: ConceptSet,
    /// Part 1.
    pub dose: Vec<LatentDose>,
    /// Part 2.
    pub selection: Option<Selection>,
    /// Part 3.
    pub unlearning: Option<Unlearning>,
}

/// Runs the study and writes `steer-eval.json` and `steer-eval.md` into `req.out`.
/// Setting `stop` ends it at the next generation with an interrupted error (nothing is
/// written; the study is short enough to run again). Errors: a missing or mismatched input, an SAE without a features folder (the
/// strengths are multiples of the maxima), a latent out of range, a corpus without
/// the target collection.
pub fn steer_eval(
    req: &SteerEvalRequest,
    stop: &AtomicBool,
    on: &mut OnEvent,
) -> Result<SteerEval> {
    let steerer = Steerer::load(&req.model, on)?;
    let ss = SteerSae::load(&req.sae, None, req.features.as_deref(), &steerer)?;
    if ss.features.is_none() {
        return Err(Error::invalid(format!(
            "{}: has no features folder (the study's strengths are multiples of each \
             latent's maximum); run `saelab features` first or pass --features",
            req.sae.display()
        )));
    }
    if req.prompts.is_empty() {
        return Err(Error::invalid("the study needs at least one prompt"));
    }
    let study = Study::new(&steerer, &ss, req, stop)?;
    let mut out = SteerEval {
        sae: ss.dir.display().to_string(),
        hook: ss.hook.clone(),
        model: req.model.display().to_string(),
        prompts: req.prompts.clone(),
        max_new_tokens: req.max_new_tokens,
        temperature: req.temperature,
        seed: req.seed,
        heldout_contexts: study.heldout.len(),
        concept: req.concept,
        dose: Vec::new(),
        selection: None,
        unlearning: None,
    };
    if let Some(d) = &req.dose {
        for &l in &d.latents {
            out.dose.push(study.dose(l, d, on)?);
        }
    }
    if let Some(s) = &req.selection {
        out.selection = Some(study.selection(s, on)?);
    }
    if let Some(u) = &req.unlearn {
        out.unlearning = Some(study.unlearning(u, on)?);
    }
    write_outputs(&req.out, &out)?;
    Ok(out)
}

/// What the parts share: the model, the SAE, the prompts and the held-out contexts.
struct Study<'a> {
    st: &'a Steerer,
    ss: &'a SteerSae,
    req: &'a SteerEvalRequest,
    prompts: Vec<Vec<u32>>,
    heldout: Vec<Vec<u32>>,
    clean_ce: f64,
    stop: &'a AtomicBool,
    /// The unsteered continuation of each prompt, generated once (every stream has its
    /// own seeded generator, so a prefix of the prompts continues the same way).
    plain: Vec<Vec<u32>>,
}

impl<'a> Study<'a> {
    fn new(
        st: &'a Steerer,
        ss: &'a SteerSae,
        req: &'a SteerEvalRequest,
        stop: &'a AtomicBool,
    ) -> Result<Self> {
        let prompts = req
            .prompts
            .iter()
            .map(|p| st.prompt_ids(p, false, req.max_new_tokens))
            .collect::<Result<Vec<_>>>()?;
        let corpus = Corpus::load(&req.corpus, &LoadOptions::default())?;
        let heldout = contexts_of(st, &corpus, &req.corpus, Part::HeldOut, None, req)?
            .into_iter()
            .take(req.heldout_contexts)
            .collect::<Vec<_>>();
        let clean_ce = mean_ce(&st.model, &heldout, &[], 8)?;
        let mut study = Study {
            st,
            ss,
            req,
            prompts,
            heldout,
            clean_ce,
            stop,
            plain: Vec::new(),
        };
        study.plain = study.generate(&study.prompts, &[], req.max_new_tokens)?;
        Ok(study)
    }

    /// Every continuation runs the full length (no stop token), as AxBench's do: the
    /// measures then compare texts of equal length, and a steering that makes the
    /// model stop early is not scored on an empty text.
    fn gen(&self, max_new: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: max_new,
            temperature: self.req.temperature,
            top_p: 1.0,
            seed: self.req.seed,
            stop_tokens: Some(Vec::new()),
        }
    }

    /// Continues `prompts` under `set`.
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        set: &[Intervention<'_>],
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(saelab_core::Error::Interrupted.into());
        }
        let pr = Prompts::new(prompts, self.st.model.bos_token_id());
        let opts = with_interventions(ForwardOptions::new(), set, &pr);
        let gens = self.st.model.generate(prompts, &self.gen(max_new), &opts)?;
        Ok(gens.into_iter().map(|g| g.tokens).collect())
    }

    /// Measures each continuation of `prompts` for `latent`.
    fn measure(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
        latent: usize,
        concept: &BTreeSet<u32>,
    ) -> Result<Vec<TextMeasure>> {
        prompts
            .iter()
            .zip(continuations)
            .map(|(p, c)| {
                Ok(measure_text(
                    &self.st.model,
                    &self.ss.sae,
                    &self.ss.hook,
                    latent,
                    concept,
                    p,
                    c,
                )?)
            })
            .collect()
    }

    /// Continues `prompts` under `set` and measures each continuation for `latent`.
    fn run(
        &self,
        prompts: &[Vec<u32>],
        set: &[Intervention<'_>],
        latent: usize,
        concept: &BTreeSet<u32>,
        max_new: usize,
    ) -> Result<(Vec<TextMeasure>, Vec<Vec<u32>>)> {
        let toks = self.generate(prompts, set, max_new)?;
        Ok((self.measure(prompts, &toks, latent, concept)?, toks))
    }

    fn add(&self, latent: usize, value: f32) -> Result<Intervention<'a>> {
        Ok(Intervention::latents(
            &self.ss.sae,
            self.ss.hook.clone(),
            &[Edit {
                latent,
                op: Op::Add(value),
            }],
            Positions::All,
        )?)
    }

    fn delta_ce(&self, set: &[Intervention<'_>]) -> Result<f64> {
        Ok(mean_ce(&self.st.model, &self.heldout, set, 8)? - self.clean_ce)
    }

    fn decoder_norm(&self, latent: usize) -> f32 {
        let d = self.ss.sae.cfg.d_out;
        let row = &self.ss.sae.params.get("W_dec").data[latent * d..(latent + 1) * d];
        row.iter().map(|v| v * v).sum::<f32>().sqrt()
    }

    fn dose(&self, latent: usize, d: &DoseRequest, on: &mut OnEvent) -> Result<LatentDose> {
        let max = self.ss.max_activation(latent)?.unwrap_or(0.0);
        if max <= 0.0 {
            return Err(Error::invalid(format!(
                "latent {latent} never fired in the features pass: nothing to steer with"
            )));
        }
        let concept = self
            .ss
            .concept_set(&self.st.model, latent, self.req.concept)?;
        let norm = self.decoder_norm(latent);
        let n_new = self.req.max_new_tokens;
        let alphas: Vec<f32> = d.alphas.iter().copied().filter(|&a| a != 0.0).collect();
        on(Event::Begin {
            phase: Phase::SteerEval,
            label: format!("dose-response of latent {latent}"),
            total: Some(alphas.len() as u64 + 1),
            done: 0,
        });
        let plain = self.measure(&self.prompts, &self.plain, latent, &concept)?;
        on(Event::Advance { done: 1 });
        let unsteered = Summary::of(&plain);
        let mut rows = Vec::new();
        let mut verdict = None;
        let mut examples = Vec::new();
        for (k, &alpha) in alphas.iter().enumerate() {
            let strength = alpha * max;
            let steer = [self.add(latent, strength)?];
            let dir = random_direction(
                self.ss.sae.cfg.d_out,
                strength.abs() * norm,
                self.req.seed ^ ((latent as u64) << 8) ^ k as u64,
            );
            let rand = [Intervention::vector(
                self.ss.hook.clone(),
                dir,
                Positions::All,
            )?];
            let (s_ms, s_toks) = self.run(&self.prompts, &steer, latent, &concept, n_new)?;
            let (r_ms, _) = self.run(&self.prompts, &rand, latent, &concept, n_new)?;
            let row = DoseRow {
                alpha,
                strength,
                steered: Summary::of(&s_ms),
                random: Summary::of(&r_ms),
                delta_ce: self.delta_ce(&steer)?,
                delta_ce_random: self.delta_ce(&rand)?,
            };
            if alpha == d.verdict_alpha {
                let pair = |a: &[f64], b: &[f64]| -> Vec<f64> {
                    a.iter().zip(b).map(|(x, y)| x - y).collect()
                };
                verdict = Some(Verdict {
                    alpha,
                    prompts_gaining: row
                        .steered
                        .shares
                        .iter()
                        .zip(&unsteered.shares)
                        .filter(|(s, u)| s > u)
                        .count(),
                    prompts_gaining_activation: row
                        .steered
                        .activations
                        .iter()
                        .zip(&unsteered.activations)
                        .filter(|(s, u)| s > u)
                        .count(),
                    prompts: self.prompts.len(),
                    p_share_vs_random: sign_flip_p(&pair(&row.steered.shares, &row.random.shares)),
                    p_activation_vs_random: sign_flip_p(&pair(
                        &row.steered.activations,
                        &row.random.activations,
                    )),
                });
                for t in &s_toks {
                    examples.push(self.st.tokenizer.decode(t)?);
                }
            }
            rows.push(row);
            on(Event::Advance { done: k as u64 + 2 });
        }
        on(Event::End);
        Ok(LatentDose {
            latent,
            max,
            decoder_norm: norm,
            concept: concept
                .iter()
                .map(|&t| self.st.tokenizer.token_str(t).unwrap_or_default())
                .collect(),
            unsteered,
            rows,
            verdict,
            examples,
        })
    }

    fn selection(&self, s: &SelectionRequest, on: &mut OnEvent) -> Result<Selection> {
        let f = self.ss.features.as_ref().expect("checked by steer_eval");
        let n = self.ss.sae.cfg.d_sae;
        let mut live = Vec::new();
        for i in 0..n {
            let r = f.latent(i)?;
            if r.density >= s.min_density && r.max > 0.0 {
                live.push(i);
            }
        }
        let mut rng = Rng::new(s.seed);
        let k = s.latents.min(live.len());
        for j in 0..k {
            let pick = j + rng.below((live.len() - j) as u64) as usize;
            live.swap(j, pick);
        }
        live.truncate(k);
        let prompts: Vec<Vec<u32>> = self
            .prompts
            .iter()
            .take(s.prompts.max(1))
            .cloned()
            .collect();
        let n_new = self.req.max_new_tokens;
        let plain_toks = &self.plain[..prompts.len()];
        let plain = self.measure(&prompts, plain_toks, 0, &BTreeSet::new())?;
        let unsteered_ppl = Summary::of(&plain).perplexity;
        let limit = unsteered_ppl * s.perplexity_budget;
        let score_prompt = self.st.prompt_ids(OUTPUT_SCORE_PROMPT, false, 1)?;
        on(Event::Begin {
            phase: Phase::SteerEval,
            label: format!("output scores and steering of {k} latents"),
            total: Some(k as u64),
            done: 0,
        });
        let mut rows = Vec::new();
        for (j, &latent) in live.iter().enumerate() {
            let lens = logit_lens_tokens(&self.st.model, &self.ss.sae, latent, CONCEPT_TOKENS)?;
            let out_score = output_score(
                &self.st.model,
                &self.ss.sae,
                &self.ss.hook,
                latent,
                &lens,
                &score_prompt,
                s.amp,
            )?;
            let examples = self.ss.example_tokens(latent)?;
            let in_score = input_score(&examples, &lens);
            let concept = self
                .ss
                .concept_set(&self.st.model, latent, self.req.concept)?;
            // The unsteered share for this latent's concept set, from the same texts.
            let base =
                Summary::of(&self.measure(&prompts, plain_toks, latent, &concept)?).concept_share;
            let max = self.ss.max_activation(latent)?.unwrap_or(0.0);
            let (mut gain, mut best) = (0.0f64, None);
            for &alpha in &s.alphas {
                let set = [self.add(latent, alpha * max)?];
                let (ms, _) = self.run(&prompts, &set, latent, &concept, n_new)?;
                let sm = Summary::of(&ms);
                if sm.perplexity <= limit && (best.is_none() || sm.concept_share - base > gain) {
                    gain = sm.concept_share - base;
                    best = Some(alpha);
                }
            }
            rows.push(SelectedLatent {
                latent,
                output_score: out_score,
                input_score: in_score,
                gain: if best.is_some() { gain } else { 0.0 },
                alpha: best,
            });
            on(Event::Advance { done: j as u64 + 1 });
        }
        on(Event::End);
        let mut by_score: Vec<&SelectedLatent> = rows.iter().collect();
        by_score.sort_by(|a, b| {
            b.output_score
                .total_cmp(&a.output_score)
                .then(a.latent.cmp(&b.latent))
        });
        let q = (by_score.len() / 4).max(1).min(by_score.len());
        let top: Vec<f64> = by_score[..q].iter().map(|r| r.gain).collect();
        let bottom: Vec<f64> = by_score[by_score.len() - q..]
            .iter()
            .map(|r| r.gain)
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let p = permutation_p(&top, &bottom, s.seed);
        Ok(Selection {
            unsteered_perplexity: unsteered_ppl,
            perplexity_limit: limit,
            top_quartile_gain: mean(&top),
            bottom_quartile_gain: mean(&bottom),
            p_top_vs_bottom: p,
            holds: mean(&top) > mean(&bottom) && p < 0.05,
            latents: rows,
        })
    }

    fn unlearning(&self, u: &UnlearnRequest, on: &mut OnEvent) -> Result<Unlearning> {
        let corpus = Corpus::load(&self.req.corpus, &LoadOptions::default())?;
        let target = Some((u.target.as_str(), true));
        let rest = Some((u.target.as_str(), false));
        let take = |part, which| -> Result<Vec<Vec<u32>>> {
            Ok(
                contexts_of(self.st, &corpus, &self.req.corpus, part, which, self.req)?
                    .into_iter()
                    .take(match part {
                        Part::Train => u.train_contexts,
                        _ => self.req.heldout_contexts,
                    })
                    .collect(),
            )
        };
        on(Event::Begin {
            phase: Phase::SteerEval,
            label: format!("unlearning {}", u.target),
            total: Some(2 + 4 * u.clamps.len() as u64),
            done: 0,
        });
        let n = self.ss.sae.cfg.d_sae;
        let count = |ctxs: &[Vec<u32>]| -> Result<FiringCounts> {
            let mut c = FiringCounts::new(n);
            for chunk in ctxs.chunks(8) {
                let out = self
                    .st
                    .model
                    .forward(chunk, &ForwardOptions::new().capture(self.ss.hook.clone()))?;
                let x = out.capture(&self.ss.hook)?;
                let (d, t) = (x.width(), x.seq_len());
                // Leave out each context's BOS position.
                let mut rows = Vec::with_capacity(chunk.len() * (t - 1) * d);
                for b in 0..x.batch() {
                    rows.extend_from_slice(&x.sequence(b)[d..]);
                }
                let m = Matrix::from_vec(chunk.len() * (t - 1), d, rows)?;
                c.add(&self.ss.sae.encode(&m)?.latents);
            }
            Ok(c)
        };
        let t_counts = count(&take(Part::Train, target)?)?;
        let r_counts = count(&take(Part::Train, rest)?)?;
        on(Event::Advance { done: 1 });
        let selected = most_specific(&t_counts, &r_counts, u.k, u.min_rate);
        if selected.is_empty() {
            return Err(Error::invalid(format!(
                "no latent fires on at least {} of the {} positions of '{}'",
                u.min_rate, t_counts.positions, u.target
            )));
        }
        let chosen: Vec<usize> = selected.iter().map(|s| s.latent).collect();
        let random = random_latents(&t_counts, chosen.len(), u.min_rate, &chosen, u.seed);
        let t_held = take(Part::HeldOut, target)?;
        let r_held = take(Part::HeldOut, rest)?;
        let target_ce = mean_ce(&self.st.model, &t_held, &[], 8)?;
        let rest_ce = mean_ce(&self.st.model, &r_held, &[], 8)?;
        on(Event::Advance { done: 2 });
        let mut rows = Vec::new();
        let mut done = 2;
        for &c in &u.clamps {
            let clamp = |latents: &[usize]| -> Result<Intervention<'a>> {
                let edits = latents
                    .iter()
                    .map(|&l| {
                        let max = self.ss.max_activation(l)?.unwrap_or(0.0);
                        Ok(Edit {
                            latent: l,
                            op: Op::NegClamp(c * max),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Intervention::latents(
                    &self.ss.sae,
                    self.ss.hook.clone(),
                    &edits,
                    Positions::All,
                )?)
            };
            let sel = [clamp(&chosen)?];
            let rnd = [clamp(&random)?];
            let mut ce = |ctx: &[Vec<u32>], set: &[Intervention<'_>], base: f64| -> Result<f64> {
                let v = mean_ce(&self.st.model, ctx, set, 8)? - base;
                done += 1;
                on(Event::Advance { done });
                Ok(v)
            };
            rows.push(UnlearnRow {
                clamp: c,
                target_delta_ce: ce(&t_held, &sel, target_ce)?,
                rest_delta_ce: ce(&r_held, &sel, rest_ce)?,
                random_target_delta_ce: ce(&t_held, &rnd, target_ce)?,
                random_rest_delta_ce: ce(&r_held, &rnd, rest_ce)?,
            });
        }
        on(Event::End);
        Ok(Unlearning {
            target: u.target.clone(),
            selected,
            random,
            target_ce,
            rest_ce,
            contexts: t_held.len().min(r_held.len()),
            rows,
        })
    }
}

/// The contexts of `part` of `corpus` (every 20th document held out, as the main job),
/// shuffled with seed 0: all documents, or (`which = (name, true)`) those whose source
/// lies in a folder `name`, or (`(name, false)`) all the others.
fn contexts_of(
    st: &Steerer,
    corpus: &Corpus,
    path: &Path,
    part: Part,
    which: Option<(&str, bool)>,
    req: &SteerEvalRequest,
) -> Result<Vec<Vec<u32>>> {
    let docs: Vec<_> = corpus
        .part(part, HeldOut::default())
        .into_iter()
        .filter(|d| match which {
            None => true,
            Some((name, inside)) => in_collection(&d.source, name) == inside,
        })
        .collect();
    if docs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no {} documents{}",
            path.display(),
            saelab_lm::cache::part_name(part),
            match which {
                Some((n, true)) => format!(" in a folder named '{n}'"),
                Some((n, false)) => format!(" outside the folder '{n}'"),
                None => String::new(),
            }
        )));
    }
    let plan = ContextPlan::new(
        &st.tokenizer,
        &docs,
        PackConfig::for_tokenizer(req.ctx_len, &st.tokenizer)?,
        ContextOrder::Shuffled { seed: 0 },
    )?;
    Ok((0..plan.len())
        .map(|g| plan.first_epoch(g).tokens.to_vec())
        .collect())
}

/// Whether a document's `source` path has a folder named `name`.
fn in_collection(source: &str, name: &str) -> bool {
    Path::new(source)
        .parent()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == name))
}

/// One-sided p that `mean(a) > mean(b)` by a permutation test of the pooled values
/// (100 000 seeded relabellings, plus the observed one).
fn permutation_p(a: &[f64], b: &[f64], seed: u64) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let observed = mean(a) - mean(b);
    let mut pool: Vec<f64> = a.iter().chain(b).copied().collect();
    let mut rng = Rng::new(seed ^ 0x7065_726d);
    let draws = 100_000;
    let mut at_least = 1u64;
    for _ in 0..draws {
        for j in 0..a.len() {
            let pick = j + rng.below((pool.len() - j) as u64) as usize;
            pool.swap(j, pick);
        }
        if mean(&pool[..a.len()]) - mean(&pool[a.len()..]) >= observed - 1e-12 {
            at_least += 1;
        }
    }
    at_least as f64 / (draws + 1) as f64
}

fn write_outputs(dir: &Path, s: &SteerEval) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| saelab_core::Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(s).expect("the study serialises");
    saelab_core::io::write_file_atomic(&dir.join("steer-eval.json"), json.as_bytes())?;
    saelab_core::io::write_file_atomic(&dir.join("steer-eval.md"), markdown(s).as_bytes())?;
    Ok(())
}

/// The study as Markdown tables.
pub fn markdown(s: &SteerEval) -> String {
    use std::fmt::Write;
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Steering study\n\nSAE `{}` at `{}`; model `{}`; {} prompts, {} new tokens each, \
         temperature {}, seed {}; ΔCE over {} held-out contexts; concept sets: {}.\n",
        s.sae,
        s.hook,
        s.model,
        s.prompts.len(),
        s.max_new_tokens,
        s.temperature,
        s.seed,
        s.heldout_contexts,
        match s.concept {
            ConceptSet::Both => "logit-lens and top-example tokens",
            ConceptSet::Examples => "top-example tokens",
            ConceptSet::Lens => "logit-lens tokens",
        }
    );
    for d in &s.dose {
        let _ = writeln!(
            m,
            "## Latent {} (max {:.3}, ‖d‖ {:.3})\n\nConcept set ({} tokens): {}\n",
            d.latent,
            d.max,
            d.decoder_norm,
            d.concept.len(),
            d.concept
                .iter()
                .take(40)
                .map(|t| format!("`{}`", t.replace('`', "'")))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            m,
            "| α (× max) | concept share | random dir. share | re-encoded act. | random dir. act. | perplexity | random dir. ppl | ΔCE | random dir. ΔCE |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let u = &d.unsteered;
        let _ = writeln!(
            m,
            "| 0 | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | 0 | 0 |",
            u.concept_share,
            u.concept_share,
            u.mean_activation,
            u.mean_activation,
            u.perplexity,
            u.perplexity
        );
        for r in &d.rows {
            let _ = writeln!(
                m,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.4} | {:.4} |",
                r.alpha,
                r.steered.concept_share,
                r.random.concept_share,
                r.steered.mean_activation,
                r.random.mean_activation,
                r.steered.perplexity,
                r.random.perplexity,
                r.delta_ce,
                r.delta_ce_random
            );
        }
        if let Some(v) = &d.verdict {
            let _ = writeln!(
                m,
                "\nAt α = {}: concept share up on {} of {} prompts, re-encoded activation \
                 up on {} of {}; latent vs random direction (paired sign-flip, one-sided): \
                 p = {:.4} (share), p = {:.4} (re-encoded activation).",
                v.alpha,
                v.prompts_gaining,
                v.prompts,
                v.prompts_gaining_activation,
                v.prompts,
                v.p_share_vs_random,
                v.p_activation_vs_random
            );
        }
        for (p, e) in s.prompts.iter().zip(&d.examples).take(3) {
            let _ = writeln!(m, "\nSteered, {p:?} → {e:?}");
        }
        m.push('\n');
    }
    if let Some(sel) = &s.selection {
        let _ = writeln!(
            m,
            "## Selection by output score (Arad et al.)\n\n{} latents; fluency budget: mean \
             perplexity ≤ {:.2} (unsteered {:.2}).\n\n| quartile by output score | mean \
             concept-share gain within budget |\n|---|---:|\n| top | {:.4} |\n| bottom | \
             {:.4} |\n\nOne-sided permutation p (top > bottom) = {:.4}: the effect {}.\n",
            sel.latents.len(),
            sel.perplexity_limit,
            sel.unsteered_perplexity,
            sel.top_quartile_gain,
            sel.bottom_quartile_gain,
            sel.p_top_vs_bottom,
            if sel.holds {
                "holds"
            } else {
                "does not hold at p < 0.05"
            }
        );
    }
    if let Some(u) = &s.unlearning {
        let _ = writeln!(
            m,
            "## Unlearning '{}' by negative clamping\n\n{} latents most specific to '{}' \
             (firing-rate ratio on training documents): {}; random latents firing on it: \
             {}. Clean CE: {:.4} ('{}' held out), {:.4} (the rest), {} contexts each.\n\n\
             | clamp (× max) | ΔCE '{}' | ΔCE rest | random: ΔCE '{}' | random: ΔCE rest |\n\
             |---:|---:|---:|---:|---:|",
            u.target,
            u.selected.len(),
            u.target,
            u.selected
                .iter()
                .map(|s| format!("{} (×{:.0})", s.latent, s.ratio))
                .collect::<Vec<_>>()
                .join(", "),
            u.random
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            u.target_ce,
            u.target,
            u.rest_ce,
            u.contexts,
            u.target,
            u.target
        );
        for r in &u.rows {
            let _ = writeln!(
                m,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                r.clamp,
                r.target_delta_ce,
                r.rest_delta_ce,
                r.random_target_delta_ce,
                r.random_rest_delta_ce
            );
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_are_folders_of_the_source_path() {
        assert!(in_collection("data/corpus/moby/chapter_1.txt", "moby"));
        assert!(!in_collection("data/corpus/sotu/1990.txt", "moby"));
        assert!(!in_collection("data/corpus/mobydick.txt", "moby"));
    }

    #[test]
    fn the_permutation_test_separates_shifted_groups() {
        let a = [1.0, 1.2, 0.9, 1.1, 1.05];
        let b = [0.0, 0.1, -0.1, 0.05, 0.0];
        assert!(permutation_p(&a, &b, 1) < 0.01);
        assert!(permutation_p(&b, &a, 1) > 0.99);
    }
}
