//! Examples of one latent, sampled as delphi samples them, with its known defects
//! fixed: train and test are disjoint, and a latent with too few examples is reported
//! as skipped rather than explained from a handful.
//!
//! The token matrix of a features folder (`[contexts, ctx_len]`) is cut into
//! non-overlapping windows of `window` tokens within each context (delphi's
//! `example_ctx_len`, 32; a last partial window is dropped). A window where the latent
//! is active anywhere is an *activating example*; the others are *non-activating*.
//! Activating examples are sorted by their maximum activation (ties by position) and
//! split into `quantiles` slices of equal count (slice 0 the strongest); the train set
//! takes `train_per_quantile` examples at random from every slice, the test set
//! `test_per_quantile` of those left. Non-activating test examples are `non_activating`
//! windows at random among those where the latent is 0 throughout. Every draw comes
//! from one generator seeded by `(seed, latent)`, so a latent's examples do not depend
//! on which other latents are run.

use saelab_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// How examples are sampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleConfig {
    /// Tokens per window.
    pub window: usize,
    /// Equal-count slices of the activating windows.
    pub quantiles: usize,
    /// Train examples drawn from each slice.
    pub train_per_quantile: usize,
    /// Test examples drawn from each slice, disjoint from the train ones.
    pub test_per_quantile: usize,
    /// Non-activating test examples.
    pub non_activating: usize,
    /// Similar latents (nearest decoder directions) whose windows the non-activating
    /// examples are drawn from first (0: random windows only, delphi's default).
    #[serde(default)]
    pub neighbours: usize,
    /// Fewest activating windows a latent needs; below it the latent is skipped. At
    /// least `quantiles · (train_per_quantile + test_per_quantile)`.
    pub min_examples: usize,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for SampleConfig {
    /// delphi's defaults (32-token windows, 10 quantiles, 40 train, 50 test, 50
    /// non-activating), with the smallest `min_examples` that keeps train and test
    /// disjoint: 90 (delphi: 200, over 10 M tokens).
    fn default() -> Self {
        SampleConfig {
            window: 32,
            quantiles: 10,
            train_per_quantile: 4,
            test_per_quantile: 5,
            non_activating: 50,
            neighbours: 0,
            min_examples: 90,
            seed: 0,
        }
    }
}

impl SampleConfig {
    /// Errors (one line) for settings that cannot sample.
    pub fn check(&self) -> Result<(), String> {
        let need = self.quantiles * (self.train_per_quantile + self.test_per_quantile);
        if self.window == 0 || self.quantiles == 0 {
            return Err("the window and the number of quantiles must be at least 1".into());
        }
        if self.min_examples < need {
            return Err(format!(
                "min_examples {} is below quantiles × (train + test per quantile) = {need}",
                self.min_examples
            ));
        }
        Ok(())
    }
}

/// One window of one context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The context (row of the token matrix).
    pub context: u32,
    /// Position of the window's first token in the context.
    pub start: u32,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// The latent's value at each of its tokens.
    pub acts: Vec<f32>,
    /// The quantile slice it came from (0: the strongest), or −1 for a non-activating
    /// example (delphi's `distance` field).
    pub quantile: i32,
}

impl Example {
    /// Its largest activation.
    pub fn max(&self) -> f32 {
        self.acts.iter().copied().fold(0.0, f32::max)
    }

    /// Whether the latent fires anywhere in it.
    pub fn activating(&self) -> bool {
        self.acts.iter().any(|&a| a != 0.0)
    }
}

/// The examples of one latent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Examples {
    /// The latent.
    pub latent: usize,
    /// Its largest activation over every window (what marks are a fraction of).
    pub max: f32,
    /// Activating windows in the folder.
    pub activating_windows: usize,
    /// Train examples (activating), strongest slice first.
    pub train: Vec<Example>,
    /// Activating test examples, strongest slice first, none of them in `train`.
    pub test: Vec<Example>,
    /// Non-activating test examples.
    pub non_activating: Vec<Example>,
    /// How many of them came from windows where a similar latent fires.
    #[serde(default)]
    pub similar_non_activating: usize,
}

/// Why a latent has no examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Fewer activating windows than `min_examples`.
    TooFewExamples {
        /// Activating windows found.
        found: usize,
        /// The minimum.
        needed: usize,
    },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::TooFewExamples { found, needed } => write!(
                f,
                "{found} activating windows, fewer than the {needed} needed"
            ),
        }
    }
}

/// The token matrix of a features folder.
#[derive(Clone, Copy, Debug)]
pub struct TokenMatrix<'a> {
    /// `[contexts, ctx_len]`, row-major.
    pub tokens: &'a [u32],
    /// Tokens per context.
    pub ctx_len: usize,
}

impl TokenMatrix<'_> {
    /// Number of contexts.
    pub fn contexts(&self) -> usize {
        self.tokens.len() / self.ctx_len.max(1)
    }
}

/// Samples latent `latent`'s examples from its active positions `entries`
/// (`(context, position, value)`, as `Features::latent_entries` gives them) over the
/// token matrix `m`. `near` holds the active positions of similar latents (delphi's
/// "neighbours" source: the nearest decoder directions): the non-activating examples
/// are drawn first from the windows where those fire and this latent does not — hard
/// negatives, text like the latent's but without it — and made up with random quiet
/// windows. With `near` empty, all are random.
pub fn sample(
    latent: usize,
    entries: &[(u32, u32, f32)],
    near: &[(u32, u32, f32)],
    m: TokenMatrix<'_>,
    cfg: &SampleConfig,
) -> Result<Examples, Skip> {
    let w = cfg.window;
    let per_ctx = m.ctx_len / w;
    let n_windows = m.contexts() * per_ctx;
    // Dense activations of the windows that hold an entry, keyed by window index.
    let mut active: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for &(c, p, v) in entries {
        let (c, p) = (c as usize, p as usize);
        if p / w >= per_ctx || v == 0.0 {
            continue; // in the dropped partial window
        }
        active
            .entry(c * per_ctx + p / w)
            .or_insert_with(|| vec![0.0; w])[p % w] = v;
    }
    let needed = cfg.min_examples;
    if active.len() < needed {
        return Err(Skip::TooFewExamples {
            found: active.len(),
            needed,
        });
    }
    let example = |win: usize, acts: Vec<f32>, quantile: i32| {
        let (c, s) = (win / per_ctx, (win % per_ctx) * w);
        Example {
            context: c as u32,
            start: s as u32,
            tokens: m.tokens[c * m.ctx_len + s..c * m.ctx_len + s + w].to_vec(),
            acts,
            quantile,
        }
    };
    let mut by_max: Vec<(usize, f32)> = active
        .iter()
        .map(|(&win, a)| (win, a.iter().copied().fold(0.0, f32::max)))
        .collect();
    by_max.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = by_max[0].1;
    let mut rng = Rng::new(cfg.seed).fork(latent as u64);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let q = cfg.quantiles;
    for slice in 0..q {
        // Equal-count slices: slice s holds ranks [s·n/q, (s+1)·n/q).
        let (a, b) = (slice * by_max.len() / q, (slice + 1) * by_max.len() / q);
        let mut ranks: Vec<usize> = (a..b).collect();
        rng.shuffle(&mut ranks);
        let take = cfg.train_per_quantile + cfg.test_per_quantile;
        for (k, &r) in ranks.iter().take(take).enumerate() {
            let win = by_max[r].0;
            let e = example(win, active[&win].clone(), slice as i32);
            if k < cfg.train_per_quantile {
                train.push(e);
            } else {
                test.push(e);
            }
        }
    }
    // Non-activating: first, with `near`, windows where a similar latent fires and
    // this one does not, drawn without replacement; then distinct random windows with
    // no entry (rejection sampling; the latent is sparse, so almost every draw is
    // accepted).
    let quiet = n_windows - active.len();
    let want = cfg.non_activating.min(quiet);
    let mut chosen = std::collections::BTreeSet::new();
    let mut similar: Vec<usize> = near
        .iter()
        .filter(|&&(c, p, v)| v != 0.0 && (p as usize) / w < per_ctx && (c as usize) < m.contexts())
        .map(|&(c, p, _)| c as usize * per_ctx + p as usize / w)
        .filter(|win| !active.contains_key(win))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    rng.shuffle(&mut similar);
    chosen.extend(similar.into_iter().take(want));
    let similar_count = chosen.len();
    while chosen.len() < want {
        let win = rng.below(n_windows as u64) as usize;
        if !active.contains_key(&win) {
            chosen.insert(win);
        }
    }
    let mut non_activating: Vec<Example> = chosen
        .into_iter()
        .map(|win| example(win, vec![0.0; w], -1))
        .collect();
    rng.shuffle(&mut non_activating);
    Ok(Examples {
        latent,
        max,
        activating_windows: active.len(),
        train,
        test,
        non_activating,
        similar_non_activating: similar_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 contexts of 64 tokens (80 windows of 32): the latent fires at one position of
    /// each of the first 60 windows with value = window index + 1.
    fn fixture() -> (Vec<u32>, Vec<(u32, u32, f32)>) {
        let tokens: Vec<u32> = (0..40 * 64).collect();
        let entries = (0..60u32)
            .map(|win| (win / 2, (win % 2) * 32 + 7, win as f32 + 1.0))
            .collect();
        (tokens, entries)
    }

    fn small() -> SampleConfig {
        SampleConfig {
            quantiles: 5,
            train_per_quantile: 2,
            test_per_quantile: 3,
            non_activating: 10,
            min_examples: 25,
            ..Default::default()
        }
    }

    #[test]
    fn train_and_test_are_disjoint_and_come_from_their_quantiles() {
        let (tokens, entries) = fixture();
        let m = TokenMatrix {
            tokens: &tokens,
            ctx_len: 64,
        };
        let ex = sample(3, &entries, &[], m, &small()).unwrap();
        assert_eq!((ex.train.len(), ex.test.len()), (10, 15));
        assert_eq!(ex.non_activating.len(), 10);
        assert_eq!((ex.max, ex.activating_windows), (60.0, 60));
        let key = |e: &Example| (e.context, e.start);
        let train: std::collections::BTreeSet<_> = ex.train.iter().map(key).collect();
        assert!(ex.test.iter().all(|e| !train.contains(&key(e))));
        // Slice s of 60 windows sorted by max holds values 60 − 12s down to 49 − 12s.
        for e in ex.train.iter().chain(&ex.test) {
            let s = e.quantile;
            assert!((0..5).contains(&s));
            let top = 60.0 - 12.0 * s as f32;
            assert!(
                e.max() <= top && e.max() > top - 12.0,
                "{} in slice {s}",
                e.max()
            );
            assert_eq!(e.tokens[0], e.context * 64 + e.start);
            assert_eq!(e.acts[7], e.max());
        }
        for e in &ex.non_activating {
            assert!(!e.activating() && e.quantile == -1);
            assert!(e.context * 2 + e.start / 32 >= 60);
        }
        // The same seed and latent: the same examples; another latent: others.
        assert_eq!(sample(3, &entries, &[], m, &small()).unwrap(), ex);
        assert_ne!(
            sample(4, &entries, &[], m, &small()).unwrap().train,
            ex.train
        );
    }

    #[test]
    fn similar_latents_give_the_non_activating_examples_first() {
        let (tokens, entries) = fixture();
        let m = TokenMatrix {
            tokens: &tokens,
            ctx_len: 64,
        };
        // A neighbour fires in windows 50..75: 50..59 are the latent's own, 60..74 the
        // 15 quiet ones hard negatives come from. Its zeros (windows 76..79) count
        // for nothing.
        let window = |win: u32, v: f32| (win / 2, (win % 2) * 32 + 3, v);
        let mut near: Vec<_> = (50..75).map(|win| window(win, 1.0)).collect();
        near.extend((76..80).map(|win| window(win, 0.0)));
        let ex = sample(3, &entries, &near, m, &small()).unwrap();
        assert_eq!(
            (ex.non_activating.len(), ex.similar_non_activating),
            (10, 10)
        );
        for e in &ex.non_activating {
            let win = e.context * 2 + e.start / 32;
            assert!((60..75).contains(&win) && !e.activating(), "window {win}");
        }
        // Only the latent's own windows, or zeros: all random.
        for part in [&near[..10], &near[25..]] {
            let ex = sample(3, &entries, part, m, &small()).unwrap();
            assert_eq!(
                (ex.non_activating.len(), ex.similar_non_activating),
                (10, 0)
            );
        }
        // Four quiet neighbour windows: four hard negatives, six random ones.
        let ex = sample(3, &entries, &near[10..14], m, &small()).unwrap();
        assert_eq!(
            (ex.non_activating.len(), ex.similar_non_activating),
            (10, 4)
        );
        let hard = ex
            .non_activating
            .iter()
            .filter(|e| (60..64).contains(&(e.context * 2 + e.start / 32)))
            .count();
        assert_eq!(hard, 4);
        // Train and test do not depend on the negatives' source.
        let random = sample(3, &entries, &[], m, &small()).unwrap();
        assert_eq!((ex.train, ex.test), (random.train, random.test));
    }

    #[test]
    fn too_few_examples_skip_the_latent() {
        let (tokens, entries) = fixture();
        let m = TokenMatrix {
            tokens: &tokens,
            ctx_len: 64,
        };
        let cfg = SampleConfig {
            min_examples: 61,
            ..small()
        };
        assert_eq!(
            sample(0, &entries, &[], m, &cfg),
            Err(Skip::TooFewExamples {
                found: 60,
                needed: 61
            })
        );
        assert!(SampleConfig {
            min_examples: 20,
            ..small()
        }
        .check()
        .is_err());
        assert!(small().check().is_ok());
    }
}
