//! The arithmetic of every score: the confusion of binary predictions and what is
//! derived from it (balanced accuracy, precision, recall, F1), AUROC of a score that
//! ranks positives above negatives, the constant-answer baseline, and a paired
//! sign-flip test for "explanations beat their shuffled control".
//!
//! Conventions follow delphi's `log/result_analysis.py`: "accuracy" is the *balanced*
//! accuracy ½(TP/P + TN/N); a ratio whose denominator is 0 is 0 (precision with no
//! positive prediction, F1 with precision + recall = 0); AUROC counts a tie between a
//! positive and a negative as one half, and is undefined (None) without both classes.

use saelab_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// Counts of a binary classification against the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Predicted positive, truly positive.
    pub tp: u64,
    /// Predicted positive, truly negative.
    pub fp: u64,
    /// Predicted negative, truly negative.
    pub tn: u64,
    /// Predicted negative, truly positive.
    pub fn_: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Confusion {
    /// The confusion of `(truth, prediction)` pairs.
    pub fn of(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut c = Confusion::default();
        for (truth, pred) in pairs {
            match (truth, pred) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    /// Truly positive items.
    pub fn positives(&self) -> u64 {
        self.tp + self.fn_
    }

    /// Truly negative items.
    pub fn negatives(&self) -> u64 {
        self.tn + self.fp
    }

    /// ½(TP/P + TN/N), the mean of the two classes' recalls.
    pub fn balanced_accuracy(&self) -> f64 {
        0.5 * (ratio(self.tp, self.positives()) + ratio(self.tn, self.negatives()))
    }

    /// TP / (TP + FP).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / P.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.positives())
    }

    /// The harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

/// The probability that a random positive scores above a random negative (ties count
/// one half): the area under the ROC curve. `None` without both classes. NaN scores
/// are not allowed (the caller drops failed items first).
pub fn auroc(scores: &[f64], truth: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), truth.len());
    debug_assert!(scores.iter().all(|s| !s.is_nan()));
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks (1-based) over runs of equal scores; AUROC = (R⁺ − n⁺(n⁺+1)/2)/(n⁺n⁻).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * order[i..=j].iter().filter(|&&k| truth[k]).count() as f64;
        i = j + 1;
    }
    let pos = truth.iter().filter(|&&t| t).count() as f64;
    let neg = truth.len() as f64 - pos;
    (pos > 0.0 && neg > 0.0).then(|| (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// The balanced accuracy of the best constant answer: always 0.5 (answering every
/// item "yes", or every item "no", recalls one class fully and the other not at all).
/// Plain accuracy's baseline is the majority share, [`majority_accuracy`].
pub const CONSTANT_BALANCED_ACCURACY: f64 = 0.5;

/// The plain accuracy of always answering the majority class.
pub fn majority_accuracy(truth: &[bool]) -> f64 {
    let pos = truth.iter().filter(|&&t| t).count();
    ratio(pos.max(truth.len() - pos) as u64, truth.len() as u64)
}

/// One-sided p-value that the paired differences `d` (e.g. real − shuffled score per
/// latent) have a mean above 0, by random sign flips (`draws` of them, seeded), with
/// the observed assignment counted: p = (1 + #{flips with mean ≥ observed})/(1 +
/// draws). 1.0 for no pairs.
pub fn sign_flip_p(d: &[f64], draws: u64, seed: u64) -> f64 {
    if d.is_empty() {
        return 1.0;
    }
    let observed: f64 = d.iter().sum();
    let mut rng = Rng::new(seed ^ 0x7369_676e);
    let mut at_least = 1u64;
    for _ in 0..draws {
        let mut s = 0.0;
        for &x in d {
            s += if rng.next_u64() & 1 == 0 { x } else { -x };
        }
        if s >= observed - 1e-12 * observed.abs().max(1.0) {
            at_least += 1;
        }
    }
    at_least as f64 / (draws + 1) as f64
}

/// Pearson's correlation of `x` and `y` (equal lengths); `None` for fewer than two
/// pairs or when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len());
    if x.len() < 2 {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Mean of `v` (0 for none).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_equals_the_hand_computed_value() {
        // x = 1 2 3 4, y = 2 1 4 3: means 2.5; Σdxdy = 2.25−0.75−0.75+2.25 = 3,
        // Σdx² = Σdy² = 5: r = 0.6.
        let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]).unwrap();
        assert!((r - 0.6).abs() < 1e-12, "{r}");
        assert_eq!(pearson(&[1.0, 2.0], &[3.0, 3.0]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }

    #[test]
    fn confusion_metrics_equal_hand_computed_values() {
        // truth:  T T T T F F F F F F
        // pred:   T T T F T F F F F T
        let truth = [
            true, true, true, true, false, false, false, false, false, false,
        ];
        let pred = [
            true, true, true, false, true, false, false, false, false, true,
        ];
        let c = Confusion::of(truth.iter().copied().zip(pred.iter().copied()));
        assert_eq!(
            c,
            Confusion {
                tp: 3,
                fp: 2,
                tn: 4,
                fn_: 1
            }
        );
        // ½(3/4 + 4/6) = 17/24.
        assert!((c.balanced_accuracy() - 17.0 / 24.0).abs() < 1e-12);
        assert!((c.precision() - 3.0 / 5.0).abs() < 1e-12);
        assert!((c.recall() - 0.75).abs() < 1e-12);
        // 2·(3/5)(3/4)/(3/5 + 3/4) = 2/3.
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12);
        // No positive prediction: precision and F1 are 0, balanced accuracy ½.
        let none = Confusion::of(truth.iter().map(|&t| (t, false)));
        assert_eq!((none.precision(), none.f1()), (0.0, 0.0));
        assert_eq!(none.balanced_accuracy(), CONSTANT_BALANCED_ACCURACY);
        let all = Confusion::of(truth.iter().map(|&t| (t, true)));
        assert_eq!(all.balanced_accuracy(), CONSTANT_BALANCED_ACCURACY);
        assert!((majority_accuracy(&truth) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn auroc_equals_the_pair_count_with_ties_as_halves() {
        // Positives 0.9, 0.5, 0.5; negatives 0.5, 0.2. Pairs: (0.9 > 0.5, 0.9 > 0.2),
        // (0.5 = 0.5 half, 0.5 > 0.2) twice: (2 + 1.5 + 1.5)/6 = 5/6.
        let s = [0.9, 0.5, 0.5, 0.5, 0.2];
        let t = [true, true, true, false, false];
        assert!((auroc(&s, &t).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // Perfect, reversed, constant, one class only.
        assert_eq!(auroc(&[2.0, 1.0], &[true, false]), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0], &[true, false]), Some(0.0));
        assert_eq!(auroc(&[1.0, 1.0, 1.0], &[true, false, false]), Some(0.5));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn sign_flip_p_is_small_for_a_consistent_gain_and_large_for_noise() {
        let gain: Vec<f64> = (0..30).map(|i| 0.1 + 0.01 * (i % 5) as f64).collect();
        let p = sign_flip_p(&gain, 20_000, 1);
        // Every flip but the identity has a smaller sum: p = (1 + 1)/(1 + draws) at most
        // a few draws more.
        assert!(p < 1e-3, "{p}");
        let noise: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        assert!(sign_flip_p(&noise, 20_000, 1) > 0.3);
        assert_eq!(sign_flip_p(&[], 10, 1), 1.0);
    }
}
