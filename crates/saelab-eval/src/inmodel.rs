//! CE loss score, ΔCE and KL with an SAE spliced into the model.
//!
//! For a set of equal-length contexts the model runs, batch by batch, with the hook's
//! activation
//!
//! | variant | hook output at spliced positions | gives |
//! |---|---|---|
//! | clean | unchanged | `ce_clean`, `p_clean` |
//! | SAE | `Sae::forward(x)` (reconstruction + skip, input normalisation undone) | `ce_sae`, `kl_sae`, reconstruction metrics |
//! | zero | `0` | `ce_zero` |
//! | mean | `μ`, the mean clean activation over the spliced positions of the set | `ce_mean` |
//!
//! and reports, as `docs/metrics.md` defines them,
//! `ce_loss_score = (ce_zero − ce_sae) / (ce_zero − ce_clean)`, `delta_ce = ce_sae −
//! ce_clean` and `kl_sae` = mean over scored positions of `KL(p_clean ‖ p_sae)` (nats),
//! plus every [`ReconMetrics`] field over the spliced activations.
//!
//! # Which positions count (exactly)
//!
//! - **Spliced positions**: every position whose token is not BOS (see
//!   [`InModelOptions::bos_id`]). BOS positions keep the model's own activation in
//!   every variant (SAELens does the same for its ignored tokens), unless
//!   [`InModelOptions::splice_bos`] is set. The reconstruction metrics and the mean `μ`
//!   are computed over the spliced positions.
//! - **Scored positions** (CE and KL): positions `t < T − 1` whose token is not BOS. The
//!   last position of a context has no next token to score, and a BOS position's
//!   prediction is excluded like every other BOS metric. A position *followed* by a BOS
//!   (the end of a packed document) is scored. CE at position `t` is
//!   `−log p(token_{t+1} | tokens_{≤t})`; KL uses the full next-token distributions at
//!   the same positions. All four CEs and the KL average over the same positions.
//!
//! # Mean ablation
//!
//! [`evaluate_in_model`] computes `μ` from the clean forwards of its first pass (the
//! hook is captured there anyway), then runs the mean-ablated forwards in a second
//! pass; [`InModelOptions::mean`] supplies `μ` instead (e.g. the mean of an activation
//! cache).
//!
//! # Cost
//!
//! `saelab_lm`'s forward cannot yet start from a hook, so every variant runs the whole
//! model: an evaluation costs four forwards per batch (clean, SAE, zero, mean).
//! [`InModelEvalSet`] caches what does not depend on the SAE (the clean
//! next-token log-probabilities, `ce_clean`, `ce_zero`, `ce_mean`), so that evaluating
//! each further SAE on the set costs one spliced forward. The splice itself — the SAE
//! forward and the gather and scatter of the spliced rows, in place on the forward's
//! buffer — is timed: [`Timing`].

use std::cell::RefCell;
use std::ops::Range;
use std::time::Instant;

use rayon::prelude::*;
use saelab_core::metrics::{MetricsAccumulator, ReconMetrics};
use saelab_core::{Error, Result, Sae};
use saelab_lm::model::kernels::exp_f32;
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};
use serde::{Deserialize, Serialize};

use crate::splice::{constant_patch, reconstruction_patch, splice_mask, SpliceRecord};

/// Options of an in-model evaluation.
#[derive(Clone, Debug)]
pub struct InModelOptions {
    /// Contexts per forward (default 4). All-position logits of a batch take
    /// `batch_size · T · V · 4` bytes, held for two variants at a time.
    pub batch_size: usize,
    /// The token treated as BOS (excluded everywhere, see the module docs). `None`
    /// (the default) uses the model's BOS id; if the model names none, no position is
    /// excluded.
    pub bos_id: Option<u32>,
    /// Splice the SAE (and the ablations) at BOS positions too (default false). BOS
    /// positions stay excluded from every metric either way.
    pub splice_bos: bool,
    /// The vector used for mean ablation, `[d_model]`. `None` (the default): the mean
    /// of the clean activation over the spliced positions of the evaluated contexts.
    pub mean: Option<Vec<f32>>,
    /// [`InModelEvalSet`] keeps the clean next-token log-probabilities of its scored
    /// positions when they fit in this many bytes (default 1 GiB); otherwise each
    /// evaluation reruns the clean forward.
    pub max_cached_bytes: usize,
}

impl Default for InModelOptions {
    fn default() -> Self {
        InModelOptions {
            batch_size: 4,
            bos_id: None,
            splice_bos: false,
            mean: None,
            max_cached_bytes: 1 << 30,
        }
    }
}

/// Wall-clock seconds spent in the model's forwards, by variant, and the cost ratios.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Clean forwards (hook captured, all-position logits).
    pub clean_s: f64,
    /// SAE-spliced forwards (the SAE forward inside the patch included, all-position
    /// logits).
    pub sae_s: f64,
    /// Zero-ablated forwards (all-position logits).
    pub zero_s: f64,
    /// Mean-ablated forwards (all-position logits).
    pub mean_s: f64,
    /// Scoring: log-softmax, CE, KL and the reconstruction metrics.
    pub scoring_s: f64,
    /// `sae_s / clean_s`: what splicing the SAE costs relative to a clean forward over
    /// the same tokens (1.0 = free). Only meaningful when this evaluation ran both.
    pub splice_cost_ratio: f64,
}

/// The result of an in-model evaluation (see the module docs for the definitions).
/// Serialises flat: the [`ReconMetrics`] fields sit beside the CE fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InModelMetrics {
    /// Hook point the SAE was spliced at.
    pub hook: String,
    /// Contexts evaluated.
    pub contexts: usize,
    /// Tokens per context.
    pub ctx_len: usize,
    /// Positions scored for CE and KL.
    pub scored_tokens: u64,
    /// Mean next-token CE (nats), clean.
    pub ce_clean: f64,
    /// Mean next-token CE with the SAE output spliced in.
    pub ce_sae: f64,
    /// Mean next-token CE with the hook zeroed.
    pub ce_zero: f64,
    /// Mean next-token CE with the hook set to its mean.
    pub ce_mean: f64,
    /// `(ce_zero − ce_sae) / (ce_zero − ce_clean)`.
    pub ce_loss_score: f64,
    /// `ce_sae − ce_clean`.
    pub delta_ce: f64,
    /// Mean `KL(p_clean ‖ p_sae)` (nats) over the scored positions.
    pub kl_sae: f64,
    /// Reconstruction and sparsity metrics over the spliced positions (`tokens` counts
    /// them).
    #[serde(flatten)]
    pub recon: ReconMetrics,
    /// Where the forwards' time went.
    pub timing: Timing,
}

/// Progress of an evaluation, passed to the callback of the `_with` functions.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Which pass: `"clean+sae+zero"`, `"mean"`, `"baseline"`, `"sae"`.
    pub pass: &'static str,
    /// Contexts done in this pass.
    pub done: usize,
    /// Contexts in this pass.
    pub total: usize,
}

/// One batch of contexts and its positions.
struct BatchPlan {
    contexts: Range<usize>,
    /// Positions replaced by the splice, `[B·T]`.
    mask: Vec<bool>,
    /// Flat rows `b·T + t` scored for CE / KL.
    scored: Vec<usize>,
    /// The token after each scored row.
    targets: Vec<u32>,
}

/// Validated contexts cut into batches.
struct Plan<'c> {
    hook: String,
    contexts: Vec<&'c [u32]>,
    ctx_len: usize,
    d: usize,
    vocab: usize,
    batches: Vec<BatchPlan>,
    scored_tokens: u64,
}

impl<'c> Plan<'c> {
    fn new<S: AsRef<[u32]>>(
        model: &HookedModel,
        hook: &str,
        contexts: &'c [S],
        opts: &InModelOptions,
    ) -> Result<Self> {
        let hp = model.hook(hook)?;
        let contexts: Vec<&[u32]> = contexts.iter().map(|c| c.as_ref()).collect();
        let Some(first) = contexts.first() else {
            return Err(Error::config("no contexts to evaluate on"));
        };
        let ctx_len = first.len();
        if ctx_len < 2 {
            return Err(Error::config(format!(
                "contexts must hold at least 2 tokens to score a next token, got {ctx_len}"
            )));
        }
        if let Some(i) = contexts.iter().position(|c| c.len() != ctx_len) {
            return Err(Error::Shape(format!(
                "contexts must have equal length: context 0 has {ctx_len} tokens, context {i} has {}",
                contexts[i].len()
            )));
        }
        if opts.batch_size == 0 {
            return Err(Error::config("evaluation batch size must be at least 1"));
        }
        if let Some(m) = &opts.mean {
            if m.len() != model.d_model() {
                return Err(Error::Shape(format!(
                    "mean-ablation vector has {} values, the model's d_model is {}",
                    m.len(),
                    model.d_model()
                )));
            }
        }
        let bos = opts.bos_id.or(model.bos_token_id());
        let mut batches = Vec::new();
        let mut scored_tokens = 0u64;
        let mut start = 0;
        while start < contexts.len() {
            let end = (start + opts.batch_size).min(contexts.len());
            let toks = &contexts[start..end];
            let mask = splice_mask(toks, bos, opts.splice_bos);
            let (mut scored, mut targets) = (Vec::new(), Vec::new());
            for (b, c) in toks.iter().enumerate() {
                for t in 0..ctx_len - 1 {
                    if Some(c[t]) != bos {
                        scored.push(b * ctx_len + t);
                        targets.push(c[t + 1]);
                    }
                }
            }
            scored_tokens += scored.len() as u64;
            batches.push(BatchPlan {
                contexts: start..end,
                mask,
                scored,
                targets,
            });
            start = end;
        }
        if scored_tokens == 0 {
            return Err(Error::config(
                "no position to score: every position is BOS or the last of its context",
            ));
        }
        Ok(Plan {
            hook: hp.name(),
            contexts,
            ctx_len,
            d: model.d_model(),
            vocab: model.vocab_size(),
            batches,
            scored_tokens,
        })
    }

    fn tokens(&self, b: &BatchPlan) -> &[&'c [u32]] {
        &self.contexts[b.contexts.clone()]
    }

    /// The clean forward of a batch: next-token log-probabilities of the scored rows
    /// (`[S, V]`), the summed CE, and (if asked) the hook activation `[B·T, d]`.
    fn clean(
        &self,
        model: &HookedModel,
        b: &BatchPlan,
        want_acts: bool,
        t: &mut Timing,
    ) -> Result<(Vec<f32>, f64, Option<Vec<f32>>)> {
        let mut opts = ForwardOptions::new().logits(Logits::All);
        if want_acts {
            opts = opts.capture(self.hook.clone());
        }
        let t0 = Instant::now();
        let mut out = model.forward(self.tokens(b), &opts)?;
        t.clean_s += t0.elapsed().as_secs_f64();
        let acts = if want_acts {
            Some(out.take_capture(&self.hook)?.into_vec())
        } else {
            None
        };
        let t0 = Instant::now();
        let all = out.take_logits()?.into_vec();
        let (lp, ce) = self.log_probs_and_ce(&all, b);
        t.scoring_s += t0.elapsed().as_secs_f64();
        Ok((lp, ce, acts))
    }

    /// Log-softmax of the scored rows of all-position logits `[B, T, V]` (`[S, V]`) and
    /// their summed next-token CE (as [`Plan::cross_entropy`]), from one log-sum-exp
    /// per row.
    fn log_probs_and_ce(&self, all: &[f32], b: &BatchPlan) -> (Vec<f32>, f64) {
        let v = self.vocab;
        let mut lp = vec![0f32; b.scored.len() * v];
        let ce = lp
            .par_chunks_mut(v)
            .zip(b.scored.par_iter())
            .zip(b.targets.par_iter())
            .map(|((out, &r), &tg)| {
                let row = &all[r * v..(r + 1) * v];
                let lse = log_sum_exp(row);
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = x - lse;
                }
                ce_row(lse, row, tg)
            })
            .sum();
        (lp, ce)
    }

    /// Summed next-token CE `logsumexp(row) − row[target]` over the scored rows of
    /// all-position logits (the same formula for every variant).
    fn cross_entropy(&self, all: &[f32], b: &BatchPlan) -> f64 {
        let v = self.vocab;
        b.scored
            .par_iter()
            .zip(b.targets.par_iter())
            .map(|(&r, &tg)| {
                let row = &all[r * v..(r + 1) * v];
                ce_row(log_sum_exp(row), row, tg)
            })
            .sum()
    }

    /// A forward with the hook set to `value` at the spliced positions: summed CE.
    fn ablated(
        &self,
        model: &HookedModel,
        b: &BatchPlan,
        value: &[f32],
        seconds: &mut f64,
        t: &mut Timing,
    ) -> Result<f64> {
        let opts = ForwardOptions::new()
            .patch(self.hook.clone(), constant_patch(value, Some(&b.mask)))
            .logits(Logits::All);
        let t0 = Instant::now();
        let mut out = model.forward(self.tokens(b), &opts)?;
        *seconds += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let all = out.take_logits()?.into_vec();
        let ce = self.cross_entropy(&all, b);
        t.scoring_s += t0.elapsed().as_secs_f64();
        Ok(ce)
    }

    /// The SAE-spliced forward of a batch, scored against the clean log-probabilities
    /// `clean_lp` (`[S, V]`): adds CE, KL and the reconstruction metrics to `acc`.
    fn spliced(
        &self,
        model: &HookedModel,
        sae: &Sae,
        b: &BatchPlan,
        clean_lp: &[f32],
        acc: &mut SaeSums,
        t: &mut Timing,
    ) -> Result<()> {
        let record: RefCell<Option<SpliceRecord>> = RefCell::new(None);
        let opts = ForwardOptions::new()
            .patch(
                self.hook.clone(),
                reconstruction_patch(sae, Some(&b.mask), &record),
            )
            .logits(Logits::All);
        let t0 = Instant::now();
        let mut out = model.forward(self.tokens(b), &opts)?;
        t.sae_s += t0.elapsed().as_secs_f64();
        drop(opts);
        let t0 = Instant::now();
        let all = out.take_logits()?.into_vec();
        let v = self.vocab;
        // Per scored row: CE = lse(q) − q[target]; KL = Σ p·(log p − q + lse(q)).
        let (ce, kl) = b
            .scored
            .par_iter()
            .zip(b.targets.par_iter())
            .zip(clean_lp.par_chunks(v))
            .map(|((&r, &tg), lp)| {
                let q = &all[r * v..(r + 1) * v];
                let lse = log_sum_exp(q);
                let kl: f64 = lp
                    .iter()
                    .zip(q)
                    .map(|(&a, &b)| exp_f32(a) as f64 * (a as f64 - (b - lse) as f64))
                    .sum();
                (ce_row(lse, q, tg), kl)
            })
            .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
        acc.ce += ce;
        acc.kl += kl;
        let rec = record
            .into_inner()
            .ok_or_else(|| Error::config(format!("the splice at {} never ran", self.hook)))?;
        if rec.x.rows > 0 {
            acc.recon.add(&rec.x, &rec.out, &rec.latents);
        }
        t.scoring_s += t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Running sums of the SAE variant.
struct SaeSums {
    ce: f64,
    kl: f64,
    recon: MetricsAccumulator,
}

impl SaeSums {
    fn new(sae: &Sae) -> Self {
        SaeSums {
            ce: 0.0,
            kl: 0.0,
            recon: MetricsAccumulator::new(sae.cfg.d_out, sae.cfg.d_sae),
        }
    }
}

/// `logsumexp(row)`: the max subtracted first, the exponentials summed in f64.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| exp_f32(v - max) as f64).sum();
    max + sum.ln() as f32
}

/// `lse − row[target]` in f64.
fn ce_row(lse: f32, row: &[f32], target: u32) -> f64 {
    lse as f64 - row[target as usize] as f64
}

fn check_sae(model: &HookedModel, sae: &Sae) -> Result<()> {
    let d = model.d_model();
    if sae.cfg.d_in != d || sae.cfg.d_out != d {
        return Err(Error::Shape(format!(
            "the SAE maps d_in = {} to d_out = {}, the model's hooks have width {d}",
            sae.cfg.d_in, sae.cfg.d_out
        )));
    }
    Ok(())
}

/// What does not depend on the SAE: CE sums and the ablation vector.
#[derive(Clone, Debug)]
struct Baseline {
    ce_clean: f64,
    ce_zero: f64,
    ce_mean: f64,
    timing: Timing,
}

fn finish(plan: &Plan, base: &Baseline, sums: &SaeSums, mut timing: Timing) -> InModelMetrics {
    let n = plan.scored_tokens as f64;
    let (ce_clean, ce_sae, ce_zero, ce_mean) = (
        base.ce_clean / n,
        sums.ce / n,
        base.ce_zero / n,
        base.ce_mean / n,
    );
    timing.splice_cost_ratio = if timing.clean_s > 0.0 {
        timing.sae_s / timing.clean_s
    } else {
        f64::NAN
    };
    InModelMetrics {
        hook: plan.hook.clone(),
        contexts: plan.contexts.len(),
        ctx_len: plan.ctx_len,
        scored_tokens: plan.scored_tokens,
        ce_clean,
        ce_sae,
        ce_zero,
        ce_mean,
        ce_loss_score: (ce_zero - ce_sae) / (ce_zero - ce_clean),
        delta_ce: ce_sae - ce_clean,
        kl_sae: sums.kl / n,
        recon: sums.recon.finish(),
        timing,
    }
}

/// Evaluates `sae` spliced into `model` at `hook` on `contexts` (equal-length token
/// sequences, e.g. held-out [`saelab_lm::text::Context`] tokens): clean, SAE, zero and
/// mean variants, as the module docs define. Needs `sae.cfg.d_in == d_out == d_model`.
pub fn evaluate_in_model<S: AsRef<[u32]>>(
    model: &HookedModel,
    sae: &Sae,
    hook: &str,
    contexts: &[S],
    opts: &InModelOptions,
) -> Result<InModelMetrics> {
    evaluate_in_model_with(model, sae, hook, contexts, opts, |_| Ok(()))
}

/// [`evaluate_in_model`] calling `on_progress` after every batch; an error it returns
/// (e.g. [`Error::Interrupted`]) stops the evaluation.
pub fn evaluate_in_model_with<S: AsRef<[u32]>>(
    model: &HookedModel,
    sae: &Sae,
    hook: &str,
    contexts: &[S],
    opts: &InModelOptions,
    mut on_progress: impl FnMut(Progress) -> Result<()>,
) -> Result<InModelMetrics> {
    check_sae(model, sae)?;
    let plan = Plan::new(model, hook, contexts, opts)?;
    let mut t = Timing::default();
    let mut sums = SaeSums::new(sae);
    let (base, _mean) = baseline_passes(
        model,
        &plan,
        opts,
        &mut t,
        |b, lp, t| plan.spliced(model, sae, b, &lp, &mut sums, t),
        ("clean+sae+zero", Some("mean")),
        &mut on_progress,
    )?;
    Ok(finish(&plan, &base, &sums, t))
}

/// The passes that do not depend on the SAE, shared by [`evaluate_in_model_with`] and
/// [`InModelEvalSet::new_with`]: per batch the clean forward (its next-token
/// log-probabilities handed to `with_clean`) and the zero-ablated forward, then (once
/// the mean activation is known) the mean-ablated forwards. Progress is reported under
/// `labels.0` for the first pass and `labels.1`, if given, for the mean pass. Returns
/// the baseline CEs and the mean-ablation vector; forward times go to `t`.
fn baseline_passes(
    model: &HookedModel,
    plan: &Plan<'_>,
    opts: &InModelOptions,
    t: &mut Timing,
    mut with_clean: impl FnMut(&BatchPlan, Vec<f32>, &mut Timing) -> Result<()>,
    labels: (&'static str, Option<&'static str>),
    on_progress: &mut impl FnMut(Progress) -> Result<()>,
) -> Result<(Baseline, Vec<f32>)> {
    let mut base = Baseline {
        ce_clean: 0.0,
        ce_zero: 0.0,
        ce_mean: 0.0,
        timing: Timing::default(),
    };
    let zeros = vec![0f32; plan.d];
    let mut mean_acc = MeanAcc::new(plan.d);
    let total = plan.contexts.len();
    for b in &plan.batches {
        let (lp, ce, acts) = plan.clean(model, b, opts.mean.is_none(), t)?;
        base.ce_clean += ce;
        if let Some(a) = &acts {
            mean_acc.add(a, &b.mask);
        }
        with_clean(b, lp, t)?;
        let mut s = 0.0;
        base.ce_zero += plan.ablated(model, b, &zeros, &mut s, t)?;
        t.zero_s += s;
        on_progress(Progress {
            pass: labels.0,
            done: b.contexts.end,
            total,
        })?;
    }
    let mean = match &opts.mean {
        Some(m) => m.clone(),
        None => mean_acc.finish()?,
    };
    for b in &plan.batches {
        let mut s = 0.0;
        base.ce_mean += plan.ablated(model, b, &mean, &mut s, t)?;
        t.mean_s += s;
        if let Some(pass) = labels.1 {
            on_progress(Progress {
                pass,
                done: b.contexts.end,
                total,
            })?;
        }
    }
    Ok((base, mean))
}

/// Per-dimension mean of the activation rows selected by a mask, in f64.
struct MeanAcc {
    sum: Vec<f64>,
    n: u64,
}

impl MeanAcc {
    fn new(d: usize) -> Self {
        MeanAcc {
            sum: vec![0.0; d],
            n: 0,
        }
    }

    fn add(&mut self, acts: &[f32], mask: &[bool]) {
        let d = self.sum.len();
        for (row, &m) in acts.chunks(d).zip(mask) {
            if m {
                self.sum
                    .iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += v as f64);
                self.n += 1;
            }
        }
    }

    fn finish(&self) -> Result<Vec<f32>> {
        if self.n == 0 {
            return Err(Error::config(
                "no spliced position to take the mean activation over (every token is BOS)",
            ));
        }
        Ok(self
            .sum
            .iter()
            .map(|&s| (s / self.n as f64) as f32)
            .collect())
    }
}

/// A fixed evaluation set with everything that does not depend on the SAE computed
/// once: `ce_clean`, `ce_zero`, `ce_mean`, the mean-ablation vector and (memory
/// permitting, see [`InModelOptions::max_cached_bytes`]) the clean next-token
/// log-probabilities. Each [`InModelEvalSet::evaluate`] then costs one SAE-spliced
/// forward per batch. Meant for evaluation during training and for sweeps, where many
/// SAEs (or many checkpoints of one) meet the same held-out contexts.
pub struct InModelEvalSet {
    hook: String,
    contexts: Vec<Vec<u32>>,
    opts: InModelOptions,
    base: Baseline,
    mean: Vec<f32>,
    clean_lp: Option<Vec<Vec<f32>>>,
}

impl std::fmt::Debug for InModelEvalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InModelEvalSet")
            .field("hook", &self.hook)
            .field("contexts", &self.contexts.len())
            .field("cached_clean", &self.clean_lp.is_some())
            .finish_non_exhaustive()
    }
}

impl InModelEvalSet {
    /// Runs the clean, zero- and mean-ablated forwards of `contexts` at `hook` once.
    pub fn new(
        model: &HookedModel,
        hook: &str,
        contexts: Vec<Vec<u32>>,
        opts: &InModelOptions,
    ) -> Result<Self> {
        Self::new_with(model, hook, contexts, opts, |_| Ok(()))
    }

    /// [`InModelEvalSet::new`] with a progress callback.
    pub fn new_with(
        model: &HookedModel,
        hook: &str,
        contexts: Vec<Vec<u32>>,
        opts: &InModelOptions,
        mut on_progress: impl FnMut(Progress) -> Result<()>,
    ) -> Result<Self> {
        let plan = Plan::new(model, hook, &contexts, opts)?;
        let cache_bytes = plan.scored_tokens as usize * plan.vocab * 4;
        let cache = cache_bytes <= opts.max_cached_bytes;
        let mut t = Timing::default();
        let mut lps = Vec::new();
        let (mut base, mean) = baseline_passes(
            model,
            &plan,
            opts,
            &mut t,
            |_, lp, _| {
                if cache {
                    lps.push(lp);
                }
                Ok(())
            },
            ("baseline", None),
            &mut on_progress,
        )?;
        base.timing = t;
        let hook = plan.hook.clone();
        drop(plan);
        Ok(InModelEvalSet {
            hook,
            contexts,
            opts: opts.clone(),
            base,
            mean,
            clean_lp: cache.then_some(lps),
        })
    }

    /// The hook point (canonical name).
    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// The contexts.
    pub fn contexts(&self) -> &[Vec<u32>] {
        &self.contexts
    }

    /// The mean-ablation vector `[d_model]`.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Whether the clean log-probabilities are cached (one forward per evaluation).
    pub fn caches_clean(&self) -> bool {
        self.clean_lp.is_some()
    }

    /// Time the baseline's forwards took (clean, zero, mean).
    pub fn baseline_timing(&self) -> &Timing {
        &self.base.timing
    }

    /// Evaluates `sae` on the set: the same numbers [`evaluate_in_model`] gives on these
    /// contexts (with the same options). The returned timing holds this call's SAE
    /// forwards and the baseline's clean forwards (for the splice cost ratio).
    pub fn evaluate(&self, model: &HookedModel, sae: &Sae) -> Result<InModelMetrics> {
        self.evaluate_with(model, sae, |_| Ok(()))
    }

    /// [`InModelEvalSet::evaluate`] with a progress callback.
    pub fn evaluate_with(
        &self,
        model: &HookedModel,
        sae: &Sae,
        mut on_progress: impl FnMut(Progress) -> Result<()>,
    ) -> Result<InModelMetrics> {
        check_sae(model, sae)?;
        let plan = Plan::new(model, &self.hook, &self.contexts, &self.opts)?;
        if plan.d != self.mean.len() {
            return Err(Error::Shape(format!(
                "this evaluation set was built for d_model = {}, the model has {}",
                self.mean.len(),
                plan.d
            )));
        }
        let mut t = Timing::default();
        let mut sums = SaeSums::new(sae);
        let total = plan.contexts.len();
        for (i, b) in plan.batches.iter().enumerate() {
            match &self.clean_lp {
                Some(lps) => plan.spliced(model, sae, b, &lps[i], &mut sums, &mut t)?,
                None => {
                    let (lp, _, _) = plan.clean(model, b, false, &mut t)?;
                    plan.spliced(model, sae, b, &lp, &mut sums, &mut t)?;
                }
            }
            on_progress(Progress {
                pass: "sae",
                done: b.contexts.end,
                total,
            })?;
        }
        if self.clean_lp.is_some() {
            t.clean_s = self.base.timing.clean_s;
        }
        t.zero_s = self.base.timing.zero_s;
        t.mean_s = self.base.timing.mean_s;
        Ok(finish(&plan, &self.base, &sums, t))
    }
}
