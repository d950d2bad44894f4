//! Choosing the latents to clamp for an unlearning test: those most specific to one
//! part of a corpus (the *target*, e.g. Moby-Dick) against the rest, by the ratio of
//! their firing rates on training documents; and, as the control, as many random
//! latents among those that fire at all.

use saelab_core::rng::Rng;
use saelab_core::Latents;
use serde::Serialize;

/// How often each latent fires over a set of positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiringCounts {
    /// Positions counted.
    pub positions: u64,
    /// Positions where each latent is active (non-zero).
    pub active: Vec<u64>,
}

impl FiringCounts {
    /// No positions yet, for an SAE of `n` latents.
    pub fn new(n: usize) -> Self {
        FiringCounts {
            positions: 0,
            active: vec![0; n],
        }
    }

    /// Counts the rows of `latents` (one per position).
    pub fn add(&mut self, latents: &Latents) {
        self.positions += latents.rows() as u64;
        for r in 0..latents.rows() {
            let (idx, val) = latents.row(r);
            for (&i, &v) in idx.iter().zip(val) {
                if v != 0.0 {
                    self.active[i as usize] += 1;
                }
            }
        }
    }

    /// The firing rate of latent `i`.
    pub fn rate(&self, i: usize) -> f64 {
        self.active[i] as f64 / self.positions.max(1) as f64
    }
}

/// A latent chosen as specific to the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Specific {
    /// The latent.
    pub latent: usize,
    /// Its firing rate on the target's positions.
    pub target_rate: f64,
    /// Its firing rate on the other positions.
    pub rest_rate: f64,
    /// `target_rate / max(rest_rate, 1 / rest positions)`: a latent never seen on the
    /// rest counts as firing once there.
    pub ratio: f64,
}

/// The `k` latents with the largest firing-rate ratio target / rest among those firing
/// on at least `min_target_rate` of the target's positions (so that clamping them does
/// something), largest ratio first (ties: higher target rate, then lower index).
pub fn most_specific(
    target: &FiringCounts,
    rest: &FiringCounts,
    k: usize,
    min_target_rate: f64,
) -> Vec<Specific> {
    let floor = 1.0 / rest.positions.max(1) as f64;
    let mut all: Vec<Specific> = (0..target.active.len())
        .filter(|&i| target.rate(i) >= min_target_rate && target.active[i] > 0)
        .map(|i| {
            let (t, r) = (target.rate(i), rest.rate(i));
            Specific {
                latent: i,
                target_rate: t,
                rest_rate: r,
                ratio: t / r.max(floor),
            }
        })
        .collect();
    all.sort_by(|a, b| {
        b.ratio
            .total_cmp(&a.ratio)
            .then(b.target_rate.total_cmp(&a.target_rate))
            .then(a.latent.cmp(&b.latent))
    });
    all.truncate(k);
    all
}

/// `k` distinct latents drawn uniformly (seeded) from those firing at least
/// `min_target_rate` on the target, none of `exclude`: the control beside
/// [`most_specific`], matched in that its latents also fire on the target.
pub fn random_latents(
    target: &FiringCounts,
    k: usize,
    min_target_rate: f64,
    exclude: &[usize],
    seed: u64,
) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..target.active.len())
        .filter(|&i| {
            target.active[i] > 0 && target.rate(i) >= min_target_rate && !exclude.contains(&i)
        })
        .collect();
    let mut rng = Rng::new(seed);
    let k = k.min(pool.len());
    for j in 0..k {
        let pick = j + rng.below((pool.len() - j) as u64) as usize;
        pool.swap(j, pick);
    }
    pool.truncate(k);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize, rows: &[&[u32]]) -> FiringCounts {
        let mut l = Latents::new(n);
        for r in rows {
            l.push_row(r.iter().map(|&i| (i, 1.0)));
        }
        let mut c = FiringCounts::new(n);
        c.add(&l);
        c
    }

    #[test]
    fn the_most_specific_latents_fire_on_the_target_and_not_elsewhere() {
        let target = counts(5, &[&[0, 1], &[0, 2], &[0, 1, 3], &[1]]);
        let rest = counts(5, &[&[1], &[1, 2], &[2], &[3], &[2], &[2]]);
        let s = most_specific(&target, &rest, 2, 0.25);
        // Ratios: latent 0 never fires on the rest, 0.75 / (1/6) = 4.5; latent 1
        // 0.75 / (2/6) = 2.25; latent 3 0.25 / (1/6) = 1.5; latent 2 0.25 / (4/6).
        assert_eq!(s.iter().map(|x| x.latent).collect::<Vec<_>>(), vec![0, 1]);
        assert!((s[0].ratio - 4.5).abs() < 1e-12);
        assert!(most_specific(&target, &rest, 9, 0.9).is_empty());
        let r = random_latents(&target, 2, 0.0, &[0], 3);
        assert_eq!(r.len(), 2);
        assert!(!r.contains(&0) && !r.contains(&4), "{r:?}");
        assert_eq!(r, random_latents(&target, 2, 0.0, &[0], 3));
    }
}
