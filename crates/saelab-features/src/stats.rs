//! Stage B's arithmetic: the statistics of one latent from its active positions.
//!
//! Everything here is a pure function of the latent's entries (its non-zero values at
//! non-BOS positions, in `(seq, pos)` order), the number of non-BOS positions of the
//! pass and a seed, so the streaming pass, the tests' brute force and a rerun after a
//! stop agree exactly. The definitions (and their differences from SAEDashboard and
//! delphi) are spelled out in `docs/features.md`.

use saelab_core::rng::Rng;

use crate::record::{Histogram, IntervalGroup, QuantileGroup, Sample};

/// One active position of a latent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    /// Context (row of the token matrix).
    pub seq: u32,
    /// Position in the context.
    pub pos: u32,
    /// The latent's value (never 0).
    pub value: f32,
}

/// The sizes of the tables (the defaults are SAEDashboard's Neuronpedia settings and
/// delphi's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsConfig {
    /// Top contexts kept.
    pub top: usize,
    /// Bins of the activation histogram.
    pub hist_bins: usize,
    /// Equal-width intervals of `[0, max]`.
    pub intervals: usize,
    /// Samples drawn per interval.
    pub interval_samples: usize,
    /// Equal-count rank slices.
    pub quantiles: usize,
    /// Samples drawn per slice.
    pub quantile_samples: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            top: 20,
            hist_bins: 50,
            intervals: 5,
            interval_samples: 5,
            quantiles: 10,
            quantile_samples: 5,
        }
    }
}

/// The activation statistics of one latent (the part of its record that comes from the
/// latent cache).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivationStats {
    /// Active positions.
    pub count: u64,
    /// `count / positions`.
    pub density: f64,
    /// Largest value (0 when dead).
    pub max: f32,
    /// Smallest non-zero value (0 when dead).
    pub min: f32,
    /// Mean of the non-zero values (0 when dead).
    pub mean: f64,
    /// Histogram of the non-zero values.
    pub histogram: Histogram,
    /// Top contexts.
    pub top: Vec<Sample>,
    /// Interval groups, lowest first.
    pub intervals: Vec<IntervalGroup>,
    /// Rank slices, highest first.
    pub quantiles: Vec<QuantileGroup>,
}

/// The bin of `v` in `bins` equal-width bins over `[lo, hi]` (`lo < hi`):
/// `floor((v − lo) / (hi − lo) · bins)` in f64, the top edge in the last bin (as
/// `torch.histc`).
#[inline]
pub fn bin_of(v: f64, lo: f64, hi: f64, bins: usize) -> usize {
    let b = ((v - lo) / (hi - lo) * bins as f64).floor();
    if b <= 0.0 {
        0
    } else {
        (b as usize).min(bins - 1)
    }
}

/// The range `torch.histc` bins `[min, max]` over: the same, widened by 1 on both
/// sides when `min == max`.
pub fn histogram_range(min: f64, max: f64) -> (f64, f64) {
    if min == max {
        (min - 1.0, max + 1.0)
    } else {
        (min, max)
    }
}

/// A histogram of `values` in `bins` bins over their own `[min, max]`
/// ([`histogram_range`], [`bin_of`]); empty when there are no values.
pub fn histogram(values: &[f32], bins: usize) -> Histogram {
    if values.is_empty() || bins == 0 {
        return Histogram::default();
    }
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in values {
        min = min.min(v);
        max = max.max(v);
    }
    let (lo, hi) = histogram_range(min as f64, max as f64);
    let mut heights = vec![0u64; bins];
    for &v in values {
        heights[bin_of(v as f64, lo, hi, bins)] += 1;
    }
    Histogram {
        lo,
        hi,
        midpoints: midpoints(lo, hi, bins),
        heights,
    }
}

/// Midpoints of `bins` equal-width bins over `[lo, hi]`.
pub fn midpoints(lo: f64, hi: f64, bins: usize) -> Vec<f32> {
    let w = (hi - lo) / bins as f64;
    (0..bins)
        .map(|b| (lo + (b as f64 + 0.5) * w) as f32)
        .collect()
}

/// The edges of `n` equal-width intervals of `[0, max]`: `max · k / n` in f64 for
/// `k = 0..=n`, the last exactly `max` (SAEDashboard's `linspace(0, max, n + 1)`).
pub fn interval_edges(max: f32, n: usize) -> Vec<f64> {
    let m = max as f64;
    (0..=n)
        .map(|k| if k == n { m } else { m * k as f64 / n as f64 })
        .collect()
}

/// Ranks (0 = largest) of the equal-count slice `q` of `n` items in `quantiles`
/// slices: `[q·n/Q, (q+1)·n/Q)` in integer division.
pub fn quantile_ranks(q: usize, n: usize, quantiles: usize) -> (usize, usize) {
    (q * n / quantiles, (q + 1) * n / quantiles)
}

/// The generator of latent `latent`'s draws: stream `stream` of `seed`'s fork for the
/// latent (intervals use streams `0..`, quantiles `1000 + q`).
pub fn sample_rng(seed: u64, latent: u32, stream: u64) -> Rng {
    Rng::new(seed).fork(latent as u64).fork(stream)
}

/// Stream of the draws of quantile `q` (interval `k` uses stream `k`).
pub const QUANTILE_STREAM: u64 = 1000;

/// Up to `k` items of `items`, each subset equally likely (reservoir sampling,
/// algorithm R, in the order given), returned in arrival order.
pub fn reservoir<T: Copy>(items: impl Iterator<Item = T>, k: usize, rng: &mut Rng) -> Vec<T> {
    let mut kept: Vec<(u64, T)> = Vec::with_capacity(k);
    for (t, item) in items.enumerate() {
        let t = t as u64;
        if kept.len() < k {
            kept.push((t, item));
        } else {
            let j = rng.below(t + 1) as usize;
            if j < k {
                kept[j] = (t, item);
            }
        }
    }
    kept.sort_by_key(|&(t, _)| t);
    kept.into_iter().map(|(_, x)| x).collect()
}

/// The rank order of `entries` (given in `(seq, pos)` order): value descending, ties
/// by lower `(seq, pos)` first. Returns indices into `entries`.
pub fn rank_order(entries: &[Entry]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..entries.len() as u32).collect();
    // A stable sort keeps (seq, pos) order among equal values.
    order.sort_by(|&a, &b| {
        entries[b as usize]
            .value
            .total_cmp(&entries[a as usize].value)
    });
    order
}

/// The sample at `entries[i]`, with the latent's values over its whole context.
pub fn sample(entries: &[Entry], i: usize) -> Sample {
    let e = entries[i];
    let a = entries.partition_point(|x| x.seq < e.seq);
    let b = entries.partition_point(|x| x.seq <= e.seq);
    Sample {
        seq: e.seq,
        pos: e.pos,
        value: e.value,
        acts: entries[a..b].iter().map(|x| (x.pos, x.value)).collect(),
    }
}

/// The statistics of latent `latent` from its `entries` (non-zero values at non-BOS
/// positions, sorted by `(seq, pos)`, one per position), over `positions` non-BOS
/// positions, with the draws seeded by `seed`.
pub fn latent_stats(
    latent: u32,
    entries: &[Entry],
    positions: u64,
    seed: u64,
    cfg: &StatsConfig,
) -> ActivationStats {
    debug_assert!(entries
        .windows(2)
        .all(|w| (w[0].seq, w[0].pos) < (w[1].seq, w[1].pos)));
    let count = entries.len() as u64;
    if count == 0 {
        return ActivationStats::default();
    }
    let values: Vec<f32> = entries.iter().map(|e| e.value).collect();
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let sum: f64 = values.iter().map(|&v| v as f64).sum();
    let order = rank_order(entries);
    let top = order
        .iter()
        .take(cfg.top)
        .map(|&i| sample(entries, i as usize))
        .collect();

    let edges = interval_edges(max, cfg.intervals);
    let inactive = positions - count;
    let intervals = (0..cfg.intervals)
        .map(|k| {
            let (lo, hi) = (edges[k], edges[k + 1]);
            let inside = |e: &Entry| lo <= e.value as f64 && e.value as f64 <= hi;
            let active_in = entries.iter().filter(|e| inside(e)).count() as u64;
            let zeros_in = if lo <= 0.0 && 0.0 <= hi { inactive } else { 0 };
            let positions_in = active_in + zeros_in;
            let mut rng = sample_rng(seed, latent, k as u64);
            let picked = reservoir(
                (0..entries.len()).filter(|&i| inside(&entries[i])),
                cfg.interval_samples,
                &mut rng,
            );
            let mut samples: Vec<Sample> = picked.iter().map(|&i| sample(entries, i)).collect();
            samples.sort_by(|a, b| {
                b.value
                    .total_cmp(&a.value)
                    .then((a.seq, a.pos).cmp(&(b.seq, b.pos)))
            });
            IntervalGroup {
                lo,
                hi,
                positions_in,
                contains: positions_in as f64 / positions as f64,
                samples,
            }
        })
        .collect();

    let n = order.len();
    let quantiles = (0..cfg.quantiles)
        .map(|q| {
            let (a, b) = quantile_ranks(q, n, cfg.quantiles);
            let mut rng = sample_rng(seed, latent, QUANTILE_STREAM + q as u64);
            let mut ranks = reservoir(a..b, cfg.quantile_samples, &mut rng);
            ranks.sort_unstable();
            QuantileGroup {
                rank_lo: a as u64,
                rank_hi: b as u64,
                samples: ranks
                    .iter()
                    .map(|&r| sample(entries, order[r] as usize))
                    .collect(),
            }
        })
        .collect();

    ActivationStats {
        count,
        density: count as f64 / positions as f64,
        max,
        min,
        mean: sum / count as f64,
        histogram: histogram(&values, cfg.hist_bins),
        top,
        intervals,
        quantiles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u32, pos: u32, value: f32) -> Entry {
        Entry { seq, pos, value }
    }

    #[test]
    fn histogram_bins_like_histc() {
        let h = histogram(&[1.0, 2.0, 3.0, 5.0], 4);
        assert_eq!((h.lo, h.hi), (1.0, 5.0));
        assert_eq!(h.heights, vec![1, 1, 1, 1]);
        assert_eq!(h.midpoints, vec![1.5, 2.5, 3.5, 4.5]);
        // One value: the range widened by 1 each side, the value in the middle bin.
        let h = histogram(&[2.0, 2.0], 50);
        assert_eq!((h.lo, h.hi), (1.0, 3.0));
        assert_eq!(h.heights[25], 2);
        assert_eq!(h.heights.iter().sum::<u64>(), 2);
        assert_eq!(histogram(&[], 50), Histogram::default());
    }

    #[test]
    fn top_breaks_ties_by_position_and_windows_hold_the_context() {
        let entries = [
            e(0, 3, 1.0),
            e(0, 5, 2.0),
            e(1, 1, 2.0),
            e(2, 7, 0.5),
            e(2, 9, 2.0),
        ];
        let cfg = StatsConfig {
            top: 3,
            ..StatsConfig::default()
        };
        let s = latent_stats(4, &entries, 100, 0, &cfg);
        let top: Vec<(u32, u32)> = s.top.iter().map(|x| (x.seq, x.pos)).collect();
        assert_eq!(top, vec![(0, 5), (1, 1), (2, 9)]);
        assert_eq!(s.top[0].acts, vec![(3, 1.0), (5, 2.0)]);
        assert_eq!(s.top[2].acts, vec![(7, 0.5), (9, 2.0)]);
        assert_eq!((s.count, s.max, s.min), (5, 2.0, 0.5));
        assert_eq!(s.density, 0.05);
        assert!((s.mean - 7.5 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn intervals_count_zeros_in_the_lowest_and_share_endpoints() {
        // max 5: edges 0, 1, 2, 3, 4, 5.
        let entries = [e(0, 1, 1.0), e(0, 2, 5.0), e(1, 1, 2.5), e(1, 2, 0.25)];
        let s = latent_stats(0, &entries, 10, 7, &StatsConfig::default());
        let ins: Vec<u64> = s.intervals.iter().map(|g| g.positions_in).collect();
        // [0,1] holds the 6 inactive positions, 0.25 and 1.0; [1,2] holds 1.0 too.
        assert_eq!(ins, vec![8, 1, 1, 0, 1]);
        assert_eq!(s.intervals[0].contains, 0.8);
        for g in &s.intervals {
            for x in &g.samples {
                assert!(g.lo <= x.value as f64 && x.value as f64 <= g.hi);
            }
        }
        assert_eq!(s.intervals[0].samples.len(), 2);
        assert_eq!(s.intervals[4].samples[0].value, 5.0);
    }

    #[test]
    fn quantiles_split_ranks_evenly_and_draws_are_seeded() {
        let entries: Vec<Entry> = (0..95).map(|i| e(i / 10, i % 10, 1.0 + i as f32)).collect();
        let cfg = StatsConfig::default();
        let a = latent_stats(3, &entries, 1000, 11, &cfg);
        let b = latent_stats(3, &entries, 1000, 11, &cfg);
        let c = latent_stats(3, &entries, 1000, 12, &cfg);
        assert_eq!(a, b);
        assert_ne!(a.quantiles, c.quantiles);
        let sizes: Vec<u64> = a.quantiles.iter().map(|q| q.rank_hi - q.rank_lo).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 95);
        assert!(sizes.iter().all(|&s| s == 9 || s == 10));
        let order = rank_order(&entries);
        for q in &a.quantiles {
            assert_eq!(q.samples.len(), 5);
            for s in &q.samples {
                let r = order
                    .iter()
                    .position(|&i| {
                        (entries[i as usize].seq, entries[i as usize].pos) == (s.seq, s.pos)
                    })
                    .unwrap() as u64;
                assert!(q.rank_lo <= r && r < q.rank_hi);
            }
        }
    }

    #[test]
    fn reservoir_is_uniform_enough_and_bounded() {
        let mut counts = [0u32; 10];
        let mut rng = Rng::new(1);
        for _ in 0..2000 {
            for x in reservoir(0..10usize, 3, &mut rng) {
                counts[x] += 1;
            }
        }
        // Each item is kept with probability 3/10: 600 expected of 2000.
        assert!(
            counts.iter().all(|&c| (500..700).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(reservoir(0..2usize, 5, &mut rng), vec![0, 1]);
    }

    #[test]
    fn a_dead_latent_has_empty_tables() {
        let s = latent_stats(0, &[], 10, 0, &StatsConfig::default());
        assert_eq!(s, ActivationStats::default());
    }
}
