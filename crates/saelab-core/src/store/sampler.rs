//! The train/validation split and the shuffled batch sampler.
//!
//! Validation rows are the *last* rows of the dataset, a contiguous block, rather than
//! a random subset: activation files hold tokens in document order, and adjacent
//! tokens of one document are strongly correlated (same context, similar residual
//! stream). A random hold-out would leave near-duplicates of validation tokens in the
//! training set and flatter the validation metrics; a contiguous tail shares at most
//! one document boundary with training. It is also deterministic and needs no state.
//!
//! [`BatchSampler`] yields batches of row indices from the training range. It walks a
//! random permutation of that range; when one permutation is used up it draws the next
//! (a new epoch) and the batch continues there, so every batch has exactly
//! `batch_size` rows and every training row is used exactly once per epoch. Its whole
//! state ([`SamplerState`]: generator, epoch, position) is serialisable; a sampler
//! rebuilt from a saved state yields exactly the batches the original would have.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Row ranges of the training and validation parts of a dataset. `val` is empty when
/// no validation split is held out; otherwise `train.end == val.start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training rows, `0..rows - n_val`.
    pub train: Range<usize>,
    /// Validation rows, the last `n_val` rows (possibly empty).
    pub val: Range<usize>,
}

impl Split {
    /// Splits `rows` rows, holding out the last `round(rows · val_fraction)` rows
    /// (at least one when `val_fraction > 0`) for validation. `val_fraction` must lie
    /// in `[0, 1)` and at least one training row must remain.
    pub fn new(rows: usize, val_fraction: f64) -> Result<Split> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::config(format!(
                "validation fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let mut n_val = (rows as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 {
            n_val = n_val.max(1);
        }
        if n_val >= rows {
            return Err(Error::config(format!(
                "a validation fraction of {val_fraction} leaves no training rows out of {rows}"
            )));
        }
        Ok(Split {
            train: 0..rows - n_val,
            val: rows - n_val..rows,
        })
    }

    /// All `rows` rows for training, none held out.
    pub fn none(rows: usize) -> Split {
        Split {
            train: 0..rows,
            val: rows..rows,
        }
    }
}

/// The complete state of a [`BatchSampler`], saved in checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The generator as it was at the start of the current epoch: the epoch's
    /// permutation is rebuilt from it on restore.
    pub rng: Rng,
    /// Current epoch, from 0.
    pub epoch: u64,
    /// Number of rows of the current epoch's permutation already handed out.
    pub position: u64,
    /// Number of training rows the sampler was built for (checked on restore).
    pub rows: u64,
}

/// Shuffled batches of row indices over a training range, epoch after epoch.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    start: usize,
    batch_size: usize,
    /// Offsets into the range, in this epoch's order.
    perm: Vec<u32>,
    /// The generator after shuffling `perm`: becomes `state.rng` at the next epoch.
    next_rng: Rng,
    state: SamplerState,
}

impl BatchSampler {
    /// A sampler over `train` yielding batches of `batch_size` indices, shuffled with
    /// a generator seeded from `seed`. Fails if the range is empty, larger than 2³²
    /// rows, or `batch_size` is 0.
    pub fn new(train: Range<usize>, batch_size: usize, seed: u64) -> Result<Self> {
        let state = SamplerState {
            rng: Rng::new(seed),
            epoch: 0,
            position: 0,
            rows: train.len() as u64,
        };
        Self::from_state(train, batch_size, state)
    }

    /// Rebuilds a sampler from a saved [`SamplerState`]; it then yields exactly the
    /// batches the saved one would have. Fails if `train` does not have the number of
    /// rows the state was built for.
    pub fn from_state(train: Range<usize>, batch_size: usize, state: SamplerState) -> Result<Self> {
        let n = train.len();
        if n == 0 {
            return Err(Error::config("no training rows to sample from"));
        }
        if n as u64 > 1u64 << 32 {
            return Err(Error::config(format!(
                "{n} training rows exceed the sampler's limit of 2^32"
            )));
        }
        if batch_size == 0 {
            return Err(Error::config("batch size must be at least 1"));
        }
        if state.rows != n as u64 {
            return Err(Error::config(format!(
                "the saved sampler state is for {} training rows, but the data has {n}; resume with the same activation files and validation fraction",
                state.rows
            )));
        }
        if state.position > n as u64 {
            return Err(Error::config(format!(
                "corrupt sampler state: position {} beyond {n} rows",
                state.position
            )));
        }
        let mut s = BatchSampler {
            start: train.start,
            batch_size,
            perm: Vec::new(),
            next_rng: state.rng.clone(),
            state,
        };
        s.build_perm();
        Ok(s)
    }

    /// Fills `perm` with this epoch's permutation, drawn from `state.rng`.
    fn build_perm(&mut self) {
        let n = self.state.rows as usize;
        self.perm.clear();
        // n ≤ 2^32, so every offset fits in u32.
        self.perm.extend((0..n).map(|i| i as u32));
        let mut r = self.state.rng.clone();
        r.shuffle(&mut self.perm);
        self.next_rng = r;
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The current epoch (0 for the first pass over the training rows).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Replaces the contents of `out` with the next `batch_size` row indices (absolute
    /// dataset rows, within the training range). A batch that reaches the end of an
    /// epoch continues with the start of the next, reshuffled, epoch.
    pub fn next_batch_into(&mut self, out: &mut Vec<usize>) {
        out.clear();
        while out.len() < self.batch_size {
            if self.state.position as usize == self.perm.len() {
                self.state.rng = self.next_rng.clone();
                self.state.epoch += 1;
                self.state.position = 0;
                self.build_perm();
            }
            let pos = self.state.position as usize;
            let take = (self.batch_size - out.len()).min(self.perm.len() - pos);
            out.extend(
                self.perm[pos..pos + take]
                    .iter()
                    .map(|&i| self.start + i as usize),
            );
            self.state.position += take as u64;
        }
    }

    /// The next batch of `batch_size` row indices (see [`Self::next_batch_into`]).
    pub fn next_batch(&mut self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.batch_size);
        self.next_batch_into(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_contiguous_tail_and_disjoint() {
        let s = Split::new(1000, 0.1).unwrap();
        assert_eq!((s.train.clone(), s.val.clone()), (0..900, 900..1000));
        assert_eq!(Split::new(10, 0.01).unwrap().val, 9..10);
        assert_eq!(Split::new(10, 0.0).unwrap(), Split::none(10));
        assert!(Split::new(1, 0.5).is_err());
        assert!(Split::new(10, 1.0).is_err());
        assert!(Split::new(10, -0.1).is_err());
        // Sampled training rows never touch validation rows, over several epochs.
        let s = Split::new(103, 0.2).unwrap();
        let mut b = BatchSampler::new(s.train.clone(), 16, 5).unwrap();
        for _ in 0..50 {
            for r in b.next_batch() {
                assert!(s.train.contains(&r) && !s.val.contains(&r), "row {r}");
            }
        }
    }

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let n = 50usize;
        let mut b = BatchSampler::new(100..100 + n, 7, 1).unwrap();
        let stream: Vec<usize> = (0..(3 * n).div_ceil(7))
            .flat_map(|_| b.next_batch())
            .collect();
        let epochs: Vec<Vec<usize>> = stream.chunks(n).take(3).map(|c| c.to_vec()).collect();
        for e in &epochs {
            let mut s = e.clone();
            s.sort_unstable();
            assert_eq!(s, (100..100 + n).collect::<Vec<_>>());
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[1], epochs[2]);
        assert_ne!(epochs[0], (100..100 + n).collect::<Vec<_>>());
        // 22 batches of 7 = 154 rows: 4 rows into the fourth epoch.
        assert_eq!((b.epoch(), b.state().position), (3, 4));
    }

    #[test]
    fn same_seed_same_batches_and_resume_is_exact() {
        let mut a = BatchSampler::new(0..37, 8, 42).unwrap();
        let mut b = BatchSampler::new(0..37, 8, 42).unwrap();
        let mut c = BatchSampler::new(0..37, 8, 43).unwrap();
        let (xa, xb, xc) = (a.next_batch(), b.next_batch(), c.next_batch());
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        // Mid-epoch (position 8 of 37), then after crossing into epoch 1.
        for steps in [0usize, 4] {
            for _ in 0..steps {
                a.next_batch();
            }
            let saved = serde_json::to_string(a.state()).unwrap();
            let mut r =
                BatchSampler::from_state(0..37, 8, serde_json::from_str(&saved).unwrap()).unwrap();
            assert_eq!(r.state(), a.state());
            let mut ahead = a.clone();
            for _ in 0..20 {
                assert_eq!(r.next_batch(), ahead.next_batch());
            }
        }
        assert!(a.epoch() >= 1 && a.state().position > 0);
        let wrong = SamplerState {
            rows: 36,
            ..a.state().clone()
        };
        assert!(BatchSampler::from_state(0..37, 8, wrong).is_err());
    }
}
