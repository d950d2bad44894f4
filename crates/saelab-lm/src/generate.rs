//! Text generation with a KV cache: greedy or sampled (temperature, top-p, seed), stop
//! tokens, one prompt or a batch of prompts of different lengths, with the same patches
//! as a forward applied at every step (the seam for interventions).
//!
//! [`HookedModel::generate`] runs each prompt once through the model
//! ([`HookedModel::forward_cached`], prompts of equal length together; without
//! patches, a prefix of at least 16 tokens that every prompt of the batch shares runs
//! once, its keys and values copied to every stream — a judge's instructions asked
//! about many excerpts, computed once), then one new
//! token per step for every stream still going, all streams in one batch whatever
//! their lengths. Stream `i` is prompt `i` throughout, so a patch sees, for each row,
//! the prompt it belongs to ([`crate::model::Activation::stream`]) and its absolute
//! position ([`crate::model::Activation::position`]): positions `< prompt_len` are the
//! prompt's, the rest generated.
//!
//! Sampling ([`Sampler`]): temperature 0 is greedy (the lowest id among the largest
//! logits, no random draw); otherwise the probabilities are `softmax(logits / T)` (in
//! f64), top-p keeps the smallest set of most probable tokens whose mass is `≥ p`
//! (ties by id), and one uniform draw of the stream's own generator picks a token
//! from the kept set by its cumulative mass. Every stream starts its own
//! [`saelab_core::rng::Rng`] from the seed, and rows of a batch are computed
//! independently, so a prompt gets the same tokens alone or in any batch.
//!
//! Scores ([`HookedModel::generate_scored`]): the same generation, with, at each
//! generated position, the log-softmax of the model's raw logits (temperature 1,
//! whatever the sampling temperature: what the model believes, as OpenAI's `logprobs`)
//! at the chosen token and at the `n` most likely tokens. Generation needs only the
//! chosen token, so [`HookedModel::generate`] skips this work.

use saelab_core::rng::Rng;
use saelab_core::{Error, Result};

use crate::model::{ForwardOptions, HookedModel, Logits};

/// How to generate: length, sampling and stop tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate per prompt at most (the stop token included).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of most probable tokens whose mass is
    /// `≥ top_p`, in `(0, 1]` (1 keeps every token).
    pub top_p: f32,
    /// Seed of every stream's generator (same seed, same tokens, whatever the batch).
    pub seed: u64,
    /// Tokens that end a stream (not included in [`Generation::tokens`]); `None`: the
    /// model's EOS token, when it names one.
    pub stop_tokens: Option<Vec<u32>>,
}

impl Default for GenerateOptions {
    /// 64 greedy tokens, stopping at EOS.
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: None,
        }
    }
}

/// Why a stream stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It produced this stop token.
    Stop(u32),
    /// It reached `max_new_tokens`.
    Length,
}

/// The continuation of one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens, without the stop token.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: Finish,
}

/// The model's log-probabilities at one generated position (see
/// [`HookedModel::generate_scored`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScores {
    /// The generated token.
    pub token: u32,
    /// Its log-probability, `log_softmax(logits)[token]` (natural log, temperature 1).
    pub logprob: f32,
    /// The `n` most likely tokens and their log-probabilities, most likely first (ties
    /// by id); the generated token is among them when it is one of the `n`.
    pub top: Vec<(u32, f32)>,
}

impl TokenScores {
    /// The scores of `token` in one row of logits (the vocabulary wide): the
    /// log-softmax, computed in f64, at `token` and at the `n` largest logits.
    pub fn from_logits(logits: &[f32], token: u32, n: usize) -> TokenScores {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let logprob = |id: u32| (logits[id as usize] as f64 - lse) as f32;
        let n = n.min(logits.len());
        let order = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        if n > 0 && n < ids.len() {
            ids.select_nth_unstable_by(n - 1, order);
        }
        ids.truncate(n);
        ids.sort_unstable_by(order);
        TokenScores {
            token,
            logprob: logprob(token),
            top: ids.into_iter().map(|id| (id, logprob(id))).collect(),
        }
    }
}

/// Picks the next token from a row of logits: greedy at temperature 0, else a draw
/// from the temperature-scaled, top-p-truncated softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
}

impl Sampler {
    /// A sampler; errors unless `temperature` is finite and `≥ 0` and `top_p` is in
    /// `(0, 1]`.
    pub fn new(temperature: f32, top_p: f32) -> Result<Self> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::config(format!(
                "temperature {temperature} must be a finite number ≥ 0 (0 is greedy)"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::config(format!("top_p {top_p} must be in (0, 1]")));
        }
        Ok(Sampler { temperature, top_p })
    }

    /// Whether this sampler decodes greedily (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The tokens a draw can pick and their probabilities (summing to 1), in the order
    /// the draw walks them: `[(argmax, 1)]` when greedy; every token in id order when
    /// `top_p = 1`; else the top-p set, most probable first (ties by id).
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.is_greedy() {
            return vec![(argmax(logits), 1.0)];
        }
        let t = self.temperature as f64;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if self.top_p < 1.0 {
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let want = self.top_p as f64 * total;
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p.1;
                    mass >= want
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let kept: f64 = probs.iter().map(|p| p.1).sum();
        for p in &mut probs {
            p.1 /= kept;
        }
        probs
    }

    /// The next token for `logits` (one row, the vocabulary wide), drawing from `rng`
    /// unless greedy.
    pub fn sample(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        let u = rng.uniform();
        let mut acc = 0.0;
        for &(id, p) in &dist {
            acc += p;
            if u < acc {
                return id;
            }
        }
        dist.last().map_or(0, |d| d.0)
    }
}

/// The lowest index among the largest values of `row`.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Shortest shared prefix worth running once: below it, the copies of the cache cost
/// about what they save.
const MIN_SHARED_PREFIX: usize = 16;

/// Length of the prefix that a batch of prompts shares and runs once: that of
/// [`common_prefix_len`] for two or more prompts, when it is at least
/// [`MIN_SHARED_PREFIX`]; else 0.
fn shared_prefix<S: AsRef<[u32]>>(prompts: &[S]) -> usize {
    let n = common_prefix_len(prompts);
    if prompts.len() >= 2 && n >= MIN_SHARED_PREFIX {
        n
    } else {
        0
    }
}

/// Length of the prefix all of `seqs` share, leaving each at least one token of its
/// own (the position whose logits predict what follows it); 0 for no sequences.
pub fn common_prefix_len<S: AsRef<[u32]>>(seqs: &[S]) -> usize {
    let Some((first, rest)) = seqs.split_first() else {
        return 0;
    };
    let first = first.as_ref();
    let mut n = seqs
        .iter()
        .map(|s| s.as_ref().len().saturating_sub(1))
        .min()
        .unwrap_or(0);
    for s in rest {
        let s = s.as_ref();
        n = n.min(first.iter().zip(s).take_while(|(a, b)| a == b).count());
    }
    n
}

/// One stream of a generation as it runs.
struct Stream {
    rng: Rng,
    tokens: Vec<u32>,
    finish: Option<Finish>,
    /// One per entry of `tokens`, when the generation is scored.
    scores: Vec<TokenScores>,
}

impl HookedModel {
    /// Continue each of `prompts` (token ids, BOS or chat markers included as the model
    /// expects them; lengths may differ) with up to `gen.max_new_tokens` tokens,
    /// greedily or sampled, stopping a stream at its first stop token. One prompt is a
    /// batch of one: `model.generate(&[prompt], …)`.
    ///
    /// `opts` holds the patches to apply at every forward of the generation (the
    /// prompt's and each new token's); the activations they see are the new positions
    /// of the streams running in that forward, each row with its stream (= prompt
    /// index) and absolute position. Returns one [`Generation`] per prompt, in order.
    ///
    /// Errors (one line each): no prompts, an empty prompt, a token id `≥ vocab_size`,
    /// a prompt whose length plus `max_new_tokens` exceeds the context length, a
    /// temperature or `top_p` out of range, `opts` asking for captures, logits or the
    /// loss (generation returns tokens), an unknown hook or a patch's error.
    pub fn generate<S: AsRef<[u32]>>(
        &self,
        prompts: &[S],
        gen: &GenerateOptions,
        opts: &ForwardOptions<'_>,
    ) -> Result<Vec<Generation>> {
        let out = self.run_generation(prompts, gen, opts, None)?;
        Ok(out.into_iter().map(|(g, _)| g).collect())
    }

    /// [`HookedModel::generate`], and for each prompt the model's scores of every
    /// generated token ([`TokenScores`], one per entry of [`Generation::tokens`], in
    /// order; the stop token, not being part of the text, is not scored) with the
    /// `top_n` most likely alternatives at each position. The tokens are exactly
    /// `generate`'s. Same errors.
    pub fn generate_scored<S: AsRef<[u32]>>(
        &self,
        prompts: &[S],
        gen: &GenerateOptions,
        opts: &ForwardOptions<'_>,
        top_n: usize,
    ) -> Result<Vec<(Generation, Vec<TokenScores>)>> {
        self.run_generation(prompts, gen, opts, Some(top_n))
    }

    /// The generation of [`HookedModel::generate`], scored when `top_n` is given.
    fn run_generation<S: AsRef<[u32]>>(
        &self,
        prompts: &[S],
        gen: &GenerateOptions,
        opts: &ForwardOptions<'_>,
        top_n: Option<usize>,
    ) -> Result<Vec<(Generation, Vec<TokenScores>)>> {
        let sampler = Sampler::new(gen.temperature, gen.top_p)?;
        if !opts.captures.is_empty() || opts.needs_head() {
            return Err(Error::config(
                "generation applies patches only: its forward options cannot ask for \
                 captures, logits or the loss (run `forward` on the generated tokens)",
            ));
        }
        if prompts.is_empty() {
            return Err(Error::Shape("no prompts to generate from".into()));
        }
        let info = self.info();
        for (i, p) in prompts.iter().enumerate() {
            let p = p.as_ref();
            if p.is_empty() {
                return Err(Error::Shape(format!("prompt {i} is empty")));
            }
            if let Some(t) = p.iter().position(|&t| t as usize >= info.vocab_size) {
                return Err(Error::Shape(format!(
                    "token id {} at prompt {i}, position {t} is not below the vocabulary \
                     size {}",
                    p[t], info.vocab_size
                )));
            }
            if p.len() + gen.max_new_tokens > info.context_length {
                return Err(Error::Shape(format!(
                    "prompt {i}: {} tokens + {} new exceed the model's context length {}",
                    p.len(),
                    gen.max_new_tokens,
                    info.context_length
                )));
            }
        }
        let stop: Vec<u32> = match &gen.stop_tokens {
            Some(s) => s.clone(),
            None => info.eos_token_id.into_iter().collect(),
        };
        let mut streams: Vec<Stream> = prompts
            .iter()
            .map(|_| Stream {
                rng: Rng::new(gen.seed),
                tokens: Vec::new(),
                finish: (gen.max_new_tokens == 0).then_some(Finish::Length),
                scores: Vec::new(),
            })
            .collect();
        // Every forward asks for the last position's logits and applies the caller's
        // patches, borrowed.
        let mut step = ForwardOptions::new().logits(Logits::Last);
        for (hook, f) in &opts.patches {
            step = step.patch(hook.clone(), move |a| f(a));
        }
        // A prefix every prompt shares runs once, into one stream that every stream then
        // copies; each prompt's own tokens follow. Patches may tell streams apart, so
        // with patches every prompt runs whole.
        let shared = if opts.patches.is_empty() && gen.max_new_tokens > 0 {
            shared_prefix(prompts)
        } else {
            0
        };
        let mut cache = if shared > 0 {
            let mut one = self.kv_cache(1);
            let head = &prompts[0].as_ref()[..shared];
            self.forward_cached(&[head], &mut one, &[0], &ForwardOptions::new())?;
            one.replicate(0, prompts.len())
        } else {
            self.kv_cache(prompts.len())
        };
        let mut by_len = std::collections::BTreeMap::<usize, Vec<usize>>::new();
        for (i, p) in prompts.iter().enumerate() {
            if streams[i].finish.is_none() {
                by_len.entry(p.as_ref().len()).or_default().push(i);
            }
        }
        for ids in by_len.values() {
            let batch: Vec<&[u32]> = ids
                .iter()
                .map(|&i| &prompts[i].as_ref()[shared..])
                .collect();
            self.step(
                &batch,
                &mut cache,
                ids,
                &step,
                &sampler,
                (&stop, top_n),
                gen,
                &mut streams,
            )?;
        }
        loop {
            let ids: Vec<usize> = (0..streams.len())
                .filter(|&i| streams[i].finish.is_none())
                .collect();
            if ids.is_empty() {
                break;
            }
            let batch: Vec<[u32; 1]> = ids
                .iter()
                .map(|&i| {
                    [*streams[i]
                        .tokens
                        .last()
                        .expect("a running stream has a token")]
                })
                .collect();
            self.step(
                &batch,
                &mut cache,
                &ids,
                &step,
                &sampler,
                (&stop, top_n),
                gen,
                &mut streams,
            )?;
        }
        Ok(streams
            .into_iter()
            .map(|s| {
                let g = Generation {
                    tokens: s.tokens,
                    finish: s.finish.unwrap_or(Finish::Length),
                };
                (g, s.scores)
            })
            .collect())
    }

    /// One forward of a generation: `tokens[j]` continues stream `ids[j]`; samples each
    /// stream's next token from the last position's logits, scores it when `top_n` is
    /// given, and marks the streams that stop.
    #[allow(clippy::too_many_arguments)]
    fn step<T: AsRef<[u32]>>(
        &self,
        tokens: &[T],
        cache: &mut crate::model::KvCache,
        ids: &[usize],
        opts: &ForwardOptions<'_>,
        sampler: &Sampler,
        (stop, top_n): (&[u32], Option<usize>),
        gen: &GenerateOptions,
        streams: &mut [Stream],
    ) -> Result<()> {
        let logits = self
            .forward_cached(tokens, cache, ids, opts)?
            .take_logits()?;
        for (j, &i) in ids.iter().enumerate() {
            let s = &mut streams[i];
            let next = sampler.sample(logits.row(j), &mut s.rng);
            if stop.contains(&next) {
                s.finish = Some(Finish::Stop(next));
            } else {
                if let Some(n) = top_n {
                    s.scores
                        .push(TokenScores::from_logits(logits.row(j), next, n));
                }
                s.tokens.push(next);
                if s.tokens.len() >= gen.max_new_tokens {
                    s.finish = Some(Finish::Length);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_logit_without_drawing() {
        let s = Sampler::new(0.0, 1.0).unwrap();
        let mut rng = Rng::new(3);
        let before = rng.clone();
        assert_eq!(s.sample(&[0.5, 2.0, -1.0, 2.0], &mut rng), 1);
        assert_eq!(rng, before, "greedy decoding must not draw");
        assert_eq!(s.distribution(&[0.5, 2.0, -1.0, 2.0]), vec![(1, 1.0)]);
    }

    #[test]
    fn scores_are_the_log_softmax_at_the_token_and_the_top_n() {
        // softmax of ln(p) is p: p = [0.1, 0.4, 0.2, 0.3] (times any constant).
        let logits: Vec<f32> = [0.1f32, 0.4, 0.2, 0.3]
            .iter()
            .map(|p| p.ln() + 7.0)
            .collect();
        let s = TokenScores::from_logits(&logits, 2, 3);
        assert_eq!(s.token, 2);
        assert!((s.logprob - 0.2f32.ln()).abs() < 1e-5);
        let ids: Vec<u32> = s.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        for (id, lp) in &s.top {
            assert!((lp - [0.1f32, 0.4, 0.2, 0.3][*id as usize].ln()).abs() < 1e-5);
        }
        // Ties by id; n beyond the vocabulary keeps every token; n = 0 none.
        let tied = TokenScores::from_logits(&[1.0, 2.0, 2.0, 0.0], 0, 9);
        assert_eq!(
            tied.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 2, 0, 3]
        );
        assert!(TokenScores::from_logits(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn top_p_keeps_the_smallest_set_with_enough_mass() {
        // softmax at T = 1 of ln(p): p = [0.1, 0.4, 0.2, 0.3].
        let logits: Vec<f32> = [0.1f32, 0.4, 0.2, 0.3].iter().map(|p| p.ln()).collect();
        let ids = |top_p: f32| -> Vec<u32> {
            let d = Sampler::new(1.0, top_p).unwrap().distribution(&logits);
            let total: f64 = d.iter().map(|p| p.1).sum();
            assert!((total - 1.0).abs() < 1e-12);
            d.into_iter().map(|p| p.0).collect()
        };
        assert_eq!(ids(0.39), [1]);
        assert_eq!(ids(0.41), [1, 3]);
        assert_eq!(ids(0.69), [1, 3]);
        assert_eq!(ids(0.71), [1, 3, 2]);
        assert_eq!(ids(1.0), [0, 1, 2, 3]);
        let d = Sampler::new(1.0, 0.8).unwrap().distribution(&logits);
        assert!((d[0].1 - 0.4 / 0.9).abs() < 1e-6 && (d[2].1 - 0.2 / 0.9).abs() < 1e-6);
        // A draw never leaves the kept set.
        let s = Sampler::new(1.0, 0.7).unwrap();
        let mut rng = Rng::new(1);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits, &mut rng) as usize] += 1;
        }
        assert_eq!((seen[0], seen[2]), (0, 0));
        // 0.4 / 0.7 of the draws are token 1.
        assert!(
            (seen[1] as f64 / 2000.0 - 4.0 / 7.0).abs() < 0.04,
            "{seen:?}"
        );
    }

    #[test]
    fn temperature_scales_and_tends_to_greedy() {
        let logits = [1.0f32, 3.0, 2.5, -4.0];
        for t in [1e-3f32, 1e-6] {
            let s = Sampler::new(t, 1.0).unwrap();
            let mut rng = Rng::new(9);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &mut rng), 1);
            }
        }
        // At T = 2 the odds of tokens 1 and 2 are exp(0.5 / 2).
        let d = Sampler::new(2.0, 1.0).unwrap().distribution(&logits);
        assert!((d[1].1 / d[2].1 - (0.25f64).exp()).abs() < 1e-9);
        // Higher temperature flattens the distribution.
        let hot = Sampler::new(10.0, 1.0).unwrap().distribution(&logits);
        assert!(hot[1].1 < d[1].1 && hot[3].1 > d[3].1);
    }

    #[test]
    fn seeded_draws_repeat_and_bad_settings_are_refused() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 / 3.0).collect();
        let s = Sampler::new(0.8, 0.9).unwrap();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..40)
                .map(|_| s.sample(&logits, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        for (t, p) in [
            (-1.0, 1.0),
            (f32::NAN, 1.0),
            (1.0, 0.0),
            (1.0, 1.5),
            (1.0, f32::NAN),
        ] {
            let e = Sampler::new(t, p).unwrap_err().to_string();
            assert!(!e.contains('\n') && (e.contains("temperature") || e.contains("top_p")));
        }
    }
}
