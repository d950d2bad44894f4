//! What an intervention did, measured on text rather than read off the hook.
//!
//! - [`logit_lens_tokens`]: a latent's promoted tokens `T_i`, the top tokens of
//!   `softmax(W_U · final_norm(d_i))` (Arad et al.);
//! - [`measure_text`]: one prompt and its continuation re-run through the *unsteered*
//!   model: the share of continuation tokens in a concept set, the latent's mean value
//!   over the continuation when re-encoded by the SAE, and the continuation's
//!   perplexity (fluency);
//! - [`mean_ce`]: mean next-token cross-entropy over contexts, with interventions on
//!   or off (ΔCE = on − off, the fluency cost on held-out text);
//! - [`output_score`] and [`input_score`]: Arad et al.'s scores;
//! - [`random_direction`] and [`sign_flip_p`]: the random-direction control and an
//!   exact paired test.

use std::collections::BTreeSet;

use saelab_core::rng::Rng;
use saelab_core::{Error, Matrix, Result, Sae};
use saelab_lm::model::{ForwardOptions, HookedModel, Logits};

use crate::intervention::{with_interventions, Edit, Intervention, Op, Positions, Prompts};

/// The `k` tokens latent `latent`'s decoder row promotes most through the logit lens
/// (`W_U · final_norm(d_i)`), most promoted first (ties: lower id).
pub fn logit_lens_tokens(
    model: &HookedModel,
    sae: &Sae,
    latent: usize,
    k: usize,
) -> Result<Vec<u32>> {
    let d = sae.cfg.d_out;
    if latent >= sae.cfg.d_sae {
        return Err(Error::config(format!(
            "latent {latent} is out of range: the SAE has {} latents",
            sae.cfg.d_sae
        )));
    }
    let row = &sae.params.get("W_dec").data[latent * d..(latent + 1) * d];
    let logits = model.logit_lens(row, 1)?;
    Ok(top_ids(&logits, k))
}

/// The indices of the `k` largest values, largest first (ties: lower index).
fn top_ids(values: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..values.len() as u32).collect();
    ids.sort_unstable_by(|&a, &b| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(a.cmp(&b))
    });
    ids.truncate(k);
    ids
}

/// What one continuation says about a latent, from the unsteered model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextMeasure {
    /// Continuation tokens measured.
    pub tokens: usize,
    /// Share of continuation tokens in the concept set.
    pub concept_share: f64,
    /// Mean of the latent over the continuation's positions (0 where inactive), the
    /// prompt and continuation re-encoded by the unsteered model and the SAE.
    pub mean_activation: f64,
    /// `exp` of the unsteered model's mean cross-entropy of the continuation tokens,
    /// given the prompt and the tokens before them.
    pub perplexity: f64,
}

/// Measures `continuation` after `prompt` for `latent` of `sae` at `hook`, with the
/// unsteered model (no intervention). An empty continuation measures 0 tokens (all
/// values 0, perplexity 1).
pub fn measure_text(
    model: &HookedModel,
    sae: &Sae,
    hook: &str,
    latent: usize,
    concept: &BTreeSet<u32>,
    prompt: &[u32],
    continuation: &[u32],
) -> Result<TextMeasure> {
    let n = continuation.len();
    if n == 0 {
        return Ok(TextMeasure {
            tokens: 0,
            concept_share: 0.0,
            mean_activation: 0.0,
            perplexity: 1.0,
        });
    }
    if prompt.is_empty() {
        return Err(Error::Shape("the prompt is empty".into()));
    }
    let seq: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let out = model.forward(
        &[seq.as_slice()],
        &ForwardOptions::new().capture(hook).loss(true),
    )?;
    let x = out.capture(hook)?;
    let d = x.width();
    let p = prompt.len();
    let rows = Matrix {
        rows: n,
        cols: d,
        data: x.as_slice()[p * d..].to_vec(),
    };
    let enc = sae.encode(&rows)?;
    let mut act = 0.0f64;
    for r in 0..n {
        let (idx, val) = enc.latents.row(r);
        if let Some(k) = idx.iter().position(|&l| l as usize == latent) {
            act += val[k] as f64;
        }
    }
    let loss = out
        .loss
        .as_ref()
        .ok_or_else(|| Error::config("the forward returned no loss"))?;
    // loss[t] scores token t + 1: the continuation is tokens p..p+n.
    let ce: f64 = loss.data[p - 1..p - 1 + n].iter().map(|&v| v as f64).sum();
    let hits = continuation.iter().filter(|t| concept.contains(t)).count();
    Ok(TextMeasure {
        tokens: n,
        concept_share: hits as f64 / n as f64,
        mean_activation: act / n as f64,
        perplexity: (ce / n as f64).exp(),
    })
}

/// Mean next-token cross-entropy (nats) over every position of `contexts` (all of one
/// length, BOS first), with the interventions of `set` applied to every position
/// their [`Positions`] cover, the whole context counting as the prompt. ΔCE of an
/// intervention is this with the set minus this with an empty set.
pub fn mean_ce<S: AsRef<[u32]>>(
    model: &HookedModel,
    contexts: &[S],
    set: &[Intervention<'_>],
    batch: usize,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in contexts.chunks(batch.max(1)) {
        let prompts = Prompts::new(chunk, model.bos_token_id());
        let opts = with_interventions(ForwardOptions::new().loss(true), set, &prompts);
        let out = model.forward(chunk, &opts)?;
        let loss = out
            .loss
            .ok_or_else(|| Error::config("the forward returned no loss"))?;
        sum += loss.data.iter().map(|&v| v as f64).sum::<f64>();
        count += loss.data.len();
    }
    if count == 0 {
        return Err(Error::Shape("no positions to score".into()));
    }
    Ok(sum / count as f64)
}

/// Arad et al.'s output score of `latent`: amplify it at the last position of
/// `prompt` by `amp` times the largest latent value there (`a_i += amp·max_j a_j`,
/// the error kept), take the next-token distribution `p`, and return
/// `(1 − r/|V|) · max_{t∈T} p(t)` with `T = tokens` (the latent's logit-lens tokens)
/// and `r` the best (0-based) rank of a token of `T` in `p`. High when the latent, made
/// strong, makes the model say its own tokens.
pub fn output_score(
    model: &HookedModel,
    sae: &Sae,
    hook: &str,
    latent: usize,
    tokens: &[u32],
    prompt: &[u32],
    amp: f32,
) -> Result<f64> {
    if tokens.is_empty() {
        return Err(Error::config("the output score needs the latent's tokens"));
    }
    let out = model.forward(&[prompt], &ForwardOptions::new().capture(hook))?;
    let x = out.capture(hook)?;
    let d = x.width();
    let last = Matrix {
        rows: 1,
        cols: d,
        data: x.at(0, prompt.len() - 1).to_vec(),
    };
    let enc = sae.encode(&last)?;
    let top = enc.latents.row(0).1.iter().fold(0f32, |m, &v| m.max(v));
    let iv = Intervention::latents(
        sae,
        hook,
        &[Edit {
            latent,
            op: Op::Add(amp * top),
        }],
        Positions::Last,
    )?;
    let prompts = Prompts::new(&[prompt], model.bos_token_id());
    let set = [iv];
    let opts = with_interventions(ForwardOptions::new().logits(Logits::Last), &set, &prompts);
    let mut out = model.forward(&[prompt], &opts)?;
    let logits = out.take_logits()?.into_vec();
    let probs = softmax(&logits);
    let mut best_rank = usize::MAX;
    let mut best_p = 0f64;
    for &t in tokens {
        let pt = probs[t as usize];
        let rank = probs.iter().filter(|&&q| q > pt).count();
        best_rank = best_rank.min(rank);
        best_p = best_p.max(pt);
    }
    Ok((1.0 - best_rank as f64 / probs.len() as f64) * best_p)
}

/// Arad et al.'s input score: the share of a latent's top activating examples whose
/// most activating token (`example_tokens`, one per example) is among its logit-lens
/// `tokens`. `None` without examples.
pub fn input_score(example_tokens: &[u32], tokens: &[u32]) -> Option<f64> {
    if example_tokens.is_empty() {
        return None;
    }
    let set: BTreeSet<u32> = tokens.iter().copied().collect();
    let hits = example_tokens.iter().filter(|t| set.contains(t)).count();
    Some(hits as f64 / example_tokens.len() as f64)
}

/// `softmax` of a row of logits, in f64.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.into_iter().map(|v| v / total).collect()
}

/// A direction of Euclidean norm `norm` in `d` dimensions, uniform on the sphere
/// (normalised Gaussian draws of `Rng::new(seed)`).
pub fn random_direction(d: usize, norm: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let len = v
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    v.iter().map(|x| (x / len * norm as f64) as f32).collect()
}

/// The one-sided p-value that the mean of the paired differences `diffs` is > 0, by
/// the exact sign-flip (permutation) test: the share of the `2ⁿ` sign patterns whose
/// mean is at least the observed one. Exact for `n ≤ 20`; beyond, 2²⁰ random patterns
/// of a fixed seed (plus the observed one). Distribution-free: no normality assumed.
pub fn sign_flip_p(diffs: &[f64]) -> f64 {
    let n = diffs.len();
    if n == 0 {
        return 1.0;
    }
    let observed: f64 = diffs.iter().sum();
    let tol = 1e-12 * diffs.iter().map(|d| d.abs()).sum::<f64>().max(1.0);
    let sum_for = |mask: u64| -> f64 {
        diffs
            .iter()
            .enumerate()
            .map(|(i, &d)| if mask >> (i % 64) & 1 == 1 { -d } else { d })
            .sum()
    };
    if n <= 20 {
        let total = 1u64 << n;
        let at_least = (0..total).filter(|&m| sum_for(m) >= observed - tol).count();
        at_least as f64 / total as f64
    } else {
        let mut rng = Rng::new(0x5167_4f11);
        let draws = 1u64 << 20;
        let mut at_least = 1u64;
        for _ in 0..draws {
            let s: f64 = diffs
                .iter()
                .map(|&d| if rng.next_u64() & 1 == 1 { -d } else { d })
                .sum();
            if s >= observed - tol {
                at_least += 1;
            }
        }
        at_least as f64 / (draws + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_flip_test_is_exact_on_small_samples() {
        // All 10 differences positive: only the observed pattern reaches its mean.
        assert!((sign_flip_p(&[1.0; 10]) - 1.0 / 1024.0).abs() < 1e-15);
        // Symmetric differences: half the patterns at least as large.
        let p = sign_flip_p(&[1.0, -1.0]);
        assert!((p - 0.75).abs() < 1e-12, "{p}");
        assert_eq!(sign_flip_p(&[]), 1.0);
        assert!(sign_flip_p(&[-1.0; 6]) > 0.99);
        // The sampled branch agrees with the exact one's order of magnitude.
        let big: Vec<f64> = (0..24)
            .map(|i| if i % 6 == 0 { -0.5 } else { 1.0 })
            .collect();
        assert!(sign_flip_p(&big) < 1e-3);
    }

    #[test]
    fn random_directions_have_the_norm_and_differ_by_seed() {
        let a = random_direction(576, 12.5, 1);
        let n: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 12.5).abs() < 1e-3);
        assert_ne!(a, random_direction(576, 12.5, 2));
        assert_eq!(a, random_direction(576, 12.5, 1));
    }

    #[test]
    fn input_score_counts_examples_on_the_tokens() {
        assert_eq!(input_score(&[3, 4, 3, 9], &[3, 5]), Some(0.5));
        assert_eq!(input_score(&[], &[3]), None);
        assert_eq!(top_ids(&[0.5, 2.0, 2.0, -1.0], 3), vec![1, 2, 0]);
    }
}
