//! Selecting the active latents from dense pre-activations.

use rayon::prelude::*;

use super::ROW_CHUNK;
use crate::latents::Latents;
use crate::tensor::Matrix;

/// Per row of `pre` `[B, n]`, the `k` largest values among `columns` (increasing
/// indices; all columns when `None`), kept only if positive (TopK followed by ReLU).
/// Ties are broken towards the lower index. Entries in a row are sorted by decreasing
/// value.
pub fn topk_rows(pre: &Matrix, k: usize, columns: Option<&[u32]>) -> Latents {
    let n = pre.cols;
    let rows = pre.rows;
    let cand = columns;
    let parts: Vec<Latents> = (0..rows)
        .step_by(ROW_CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|s| {
            let e = (s + ROW_CHUNK).min(rows);
            let mut sel = TopKSelector::default();
            let mut out = Latents::with_capacity(n, e - s, k);
            for r in s..e {
                match cand {
                    None => sel.row(pre.row(r), k),
                    Some(c) => sel.among(pre.row(r), c, k),
                }
                out.push_row(sel.result().iter().copied());
            }
            out
        })
        .collect();
    let mut out = Latents::with_capacity(n, rows, k);
    for p in &parts {
        out.append(p);
    }
    out
}

/// Reusable per-thread state for selecting the `k` largest positive values of a row
/// without sorting it: values above a running threshold are collected, and whenever the
/// buffer fills it is cut back to the best `k`, which raises the threshold. Typical cost
/// is one comparison per value plus `O(k log(n/k))` insertions.
#[derive(Default, Clone, Debug)]
pub struct TopKSelector {
    buf: Vec<(u32, f32)>,
}

/// Order: larger value first, then lower index.
#[inline]
fn order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl TopKSelector {
    /// Selects over the whole row: the `k` largest positive values of `row`.
    pub fn row(&mut self, row: &[f32], k: usize) {
        self.buf.clear();
        if k == 0 {
            return;
        }
        let cap = (4 * k).max(64);
        #[cfg(target_arch = "x86_64")]
        if super::simd::avx512() {
            // SAFETY: AVX-512F detected.
            unsafe { self.row_avx512(row, k, cap) };
            self.finish(k);
            return;
        }
        let mut t = 0.0f32;
        const L: usize = 16;
        let chunks = row.chunks_exact(L);
        let rem = chunks.remainder();
        for (c, chunk) in chunks.enumerate() {
            let mut m = f32::NEG_INFINITY;
            for &v in chunk {
                m = m.max(v);
            }
            if m > t {
                let base = c * L;
                for (l, &v) in chunk.iter().enumerate() {
                    if v > t {
                        self.buf.push(((base + l) as u32, v));
                    }
                }
                if self.buf.len() >= cap {
                    t = self.shrink(k);
                }
            }
        }
        let base = row.len() - rem.len();
        for (l, &v) in rem.iter().enumerate() {
            if v > t {
                self.buf.push(((base + l) as u32, v));
            }
        }
        self.finish(k);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_avx512(&mut self, row: &[f32], k: usize, cap: usize) {
        use std::arch::x86_64::*;
        let n = row.len();
        let p = row.as_ptr();
        let mut t = 0.0f32;
        let mut tv = _mm512_set1_ps(t);
        let mut i = 0;
        while i < n {
            let m = super::simd::tail_mask(n - i);
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            let mut hit = _mm512_mask_cmp_ps_mask(m, v, tv, _CMP_GT_OQ);
            if hit != 0 {
                while hit != 0 {
                    let l = hit.trailing_zeros() as usize;
                    hit &= hit - 1;
                    self.buf.push(((i + l) as u32, *p.add(i + l)));
                }
                if self.buf.len() >= cap {
                    t = self.shrink(k);
                    tv = _mm512_set1_ps(t);
                }
            }
            i += 16;
        }
    }

    /// Selects among the columns listed in `cand` (increasing): the `k` largest positive
    /// values of `row` at those columns.
    pub fn among(&mut self, row: &[f32], cand: &[u32], k: usize) {
        self.among_inner(row, cand, k);
        self.finish(k);
    }

    /// As [`TopKSelector::among`], leaving the selected entries in no particular order.
    pub fn among_unordered(&mut self, row: &[f32], cand: &[u32], k: usize) {
        self.among_inner(row, cand, k);
        if self.buf.len() > k {
            self.buf.select_nth_unstable_by(k - 1, order);
            self.buf.truncate(k);
        }
    }

    fn among_inner(&mut self, row: &[f32], cand: &[u32], k: usize) {
        self.buf.clear();
        if k == 0 {
            return;
        }
        let cap = (4 * k).max(64);
        let mut t = 0.0f32;
        for &j in cand {
            let v = row[j as usize];
            if v > t {
                self.buf.push((j, v));
                if self.buf.len() >= cap {
                    t = self.shrink(k);
                }
            }
        }
    }

    /// Cuts the buffer to its best `k` entries; returns the smallest kept value (the new
    /// threshold: a later value equal to it has a higher index and loses the tie).
    fn shrink(&mut self, k: usize) -> f32 {
        self.buf.select_nth_unstable_by(k - 1, order);
        self.buf.truncate(k);
        self.buf.iter().map(|e| e.1).fold(f32::INFINITY, f32::min)
    }

    fn finish(&mut self, k: usize) {
        if self.buf.len() > k {
            self.buf.select_nth_unstable_by(k - 1, order);
            self.buf.truncate(k);
        }
        self.buf.sort_unstable_by(order);
    }

    /// The selected `(index, value)` pairs, by decreasing value (ties: lower index first).
    pub fn result(&self) -> &[(u32, f32)] {
        &self.buf
    }
}

/// Calls `f(j, row[j])` for every column `j` (in increasing order) where
/// `row[j] > thr[j]` (`thr` per column) — the filter behind the ReLU, JumpReLU and
/// BatchTopK selections. Vectorised with AVX-512 where available.
#[inline]
pub fn for_each_above(row: &[f32], thr: &[f32], mut f: impl FnMut(usize, f32)) {
    assert_eq!(
        row.len(),
        thr.len(),
        "for_each_above: row and thresholds differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: AVX-512F detected; both slices have row.len() values.
        unsafe { above_avx512(row, thr, &mut f) };
        return;
    }
    for (j, (&v, &t)) in row.iter().zip(thr).enumerate() {
        if v > t {
            f(j, v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn above_avx512(row: &[f32], thr: &[f32], f: &mut impl FnMut(usize, f32)) {
    use std::arch::x86_64::*;
    let n = row.len();
    let (p, q) = (row.as_ptr(), thr.as_ptr());
    let mut i = 0;
    while i < n {
        let m = super::simd::tail_mask(n - i);
        let v = _mm512_maskz_loadu_ps(m, p.add(i));
        let t = _mm512_maskz_loadu_ps(m, q.add(i));
        let mut hit = _mm512_mask_cmp_ps_mask(m, v, t, _CMP_GT_OQ);
        while hit != 0 {
            let l = hit.trailing_zeros() as usize;
            hit &= hit - 1;
            f(i + l, *p.add(i + l));
        }
        i += 16;
    }
}

/// The `k` largest `(index, value)` pairs of `cand` by value (ties: lower index first),
/// sorted by decreasing value.
pub fn top_k_of(cand: &mut [(u32, f32)], k: usize) -> Vec<(u32, f32)> {
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, order);
    }
    let keep = k.min(cand.len());
    let kept = &mut cand[..keep];
    kept.sort_unstable_by(order);
    kept.to_vec()
}

// ---------------------------------------------------------------------------------
// Batch-wide selection (BatchTopK).

/// Number of histogram bins per radix pass (16 bits of an f32 at a time).
const BINS: usize = 1 << 16;

/// Counts, over the positive entries of `pre`, the bins `bin(bits)` (`None`: skip).
fn histogram(pre: &Matrix, bin: impl Fn(u32) -> Option<usize> + Sync) -> Vec<u64> {
    pre.data
        .par_chunks(ROW_CHUNK * pre.cols.max(1))
        .fold(
            || vec![0u64; BINS],
            |mut h, chunk| {
                for &v in chunk {
                    if v > 0.0 {
                        if let Some(b) = bin(v.to_bits()) {
                            h[b] += 1;
                        }
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Scanning `hist` from the top bin down, the bin where the running count first
/// reaches `want` (≥ 1), and how many entries lie in higher bins.
fn bin_of_rank(hist: &[u64], want: u64) -> (usize, u64) {
    let mut above = 0u64;
    for b in (0..hist.len()).rev() {
        if above + hist[b] >= want {
            return (b, above);
        }
        above += hist[b];
    }
    unreachable!("fewer entries than the rank asked for")
}

/// The `m` largest positive entries of `pre` `[B, n]` across all rows (ties: earlier
/// row, then lower column, first), as [`Latents`] with each row's entries in increasing
/// latent order. Fewer than `m` if fewer are positive.
///
/// Exact and O(B·n): positive f32 values order like their bit patterns, so the m-th
/// largest value is found by two 16-bit radix histograms rather than a sort.
pub fn batch_topk(pre: &Matrix, m: usize) -> Latents {
    let n = pre.cols;
    let positive = pre.data.par_iter().filter(|&&v| v > 0.0).count();
    // Cut: keep values with bits > cut, and the first `ties` entries with bits == cut.
    let (cut, ties) = if m == 0 {
        (u32::MAX, 0)
    } else if positive <= m {
        (0, 0) // every positive value has bits > 0
    } else {
        let m = m as u64;
        let hi_hist = histogram(pre, |b| Some((b >> 16) as usize));
        let (hi, above_hi) = bin_of_rank(&hi_hist, m);
        let lo_hist = histogram(pre, |b| {
            ((b >> 16) as usize == hi).then_some((b & 0xffff) as usize)
        });
        let (lo, above_lo) = bin_of_rank(&lo_hist, m - above_hi);
        (
            ((hi as u32) << 16) | lo as u32,
            (m - above_hi - above_lo) as usize,
        )
    };
    // Tie budget per chunk of rows, in row-major order.
    let chunks: Vec<&[f32]> = pre.data.chunks(ROW_CHUNK * n.max(1)).collect();
    let tie_counts: Vec<usize> = chunks
        .par_iter()
        .map(|c| c.iter().filter(|v| **v > 0.0 && v.to_bits() == cut).count())
        .collect();
    let mut left = ties;
    let budgets: Vec<usize> = tie_counts
        .iter()
        .map(|&c| {
            let b = c.min(left);
            left -= b;
            b
        })
        .collect();
    let parts: Vec<Latents> = chunks
        .par_iter()
        .zip(&budgets)
        .map(|(c, &budget)| {
            let mut budget = budget;
            let mut out = Latents::new(n);
            for row in c.chunks(n.max(1)) {
                out.push_row(row.iter().enumerate().filter_map(|(j, &v)| {
                    if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                        return None; // not positive (or NaN)
                    }
                    let bits = v.to_bits();
                    let keep = bits > cut
                        || (bits == cut && budget > 0 && {
                            budget -= 1;
                            true
                        });
                    keep.then_some((j as u32, v))
                }));
            }
            out
        })
        .collect();
    let mut out = Latents::with_capacity(n, pre.rows, 0);
    for p in &parts {
        out.append(p);
    }
    out
}

/// The `m` largest of the candidate entries of `cand` `[B, n]` (all positive), ties
/// broken towards the earlier row, then the lower column — the rule of [`batch_topk`] —
/// as [`Latents`] with each row's entries in increasing latent order (the order of
/// `cand`'s rows).
pub fn select_candidates(cand: &Latents, m: usize) -> Latents {
    let rows = cand.rows();
    let mut out = Latents::with_capacity(cand.n, rows, m / rows.max(1));
    let (cut, mut ties) = if m == 0 {
        (f32::INFINITY, 0)
    } else if cand.nnz() <= m {
        (0.0, 0)
    } else {
        let mut vals = cand.val.clone();
        let (_, &mut cut, _) = vals.select_nth_unstable_by(m - 1, |a, b| b.total_cmp(a));
        let above = cand.val.iter().filter(|&&v| v > cut).count();
        (cut, m - above)
    };
    for r in 0..rows {
        let (idx, val) = cand.row(r);
        for (&j, &v) in idx.iter().zip(val) {
            if v > cut
                || (v == cut && ties > 0 && {
                    ties -= 1;
                    true
                })
            {
                out.idx.push(j);
                out.val.push(v);
            }
        }
        out.indptr.push(out.idx.len());
    }
    out
}

/// Plain references for the selection tests here and in the architectures.
#[cfg(test)]
pub(crate) mod testing {
    use crate::latents::Latents;
    use crate::tensor::Matrix;

    /// Direct selection: sort every positive entry by (value desc, row, column) and keep
    /// the first `m`; returned as sorted (row, column, value) triples.
    pub fn naive_select(pre: &Matrix, m: usize) -> Vec<(usize, usize, f32)> {
        let mut all: Vec<(usize, usize, f32)> = (0..pre.rows)
            .flat_map(|r| (0..pre.cols).map(move |j| (r, j)))
            .map(|(r, j)| (r, j, pre.row(r)[j]))
            .filter(|e| e.2 > 0.0)
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        all.truncate(m);
        all.sort_by_key(|e| (e.0, e.1));
        all
    }

    pub fn triples(l: &Latents) -> Vec<(usize, usize, f32)> {
        let mut out = Vec::new();
        for r in 0..l.rows() {
            let (idx, val) = l.row(r);
            for (&j, &v) in idx.iter().zip(val) {
                out.push((r, j as usize, v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{naive_select, triples};
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn keeps_k_largest_positive_values() {
        let pre = Matrix::from_vec(
            2,
            5,
            vec![0.5, -1.0, 3.0, 2.0, 0.1, -1.0, -2.0, 0.0, 4.0, -3.0],
        )
        .unwrap();
        let l = topk_rows(&pre, 2, None);
        assert_eq!(l.row(0), (&[2u32, 3][..], &[3.0f32, 2.0][..]));
        // only one positive value: fewer than k survive the ReLU
        assert_eq!(l.row(1), (&[3u32][..], &[4.0f32][..]));
        let columns = [0, 1, 3, 4];
        let l = topk_rows(&pre, 2, Some(&columns));
        assert_eq!(l.row(0).0, &[3u32, 0]);
    }

    #[test]
    fn selector_matches_a_full_sort_with_ties_and_short_rows() {
        let mut rng = crate::rng::Rng::new(4);
        let mut sel = TopKSelector::default();
        for &(n, k) in &[
            (1usize, 1usize),
            (7, 3),
            (37, 40),
            (300, 5),
            (1000, 32),
            (2049, 256),
        ] {
            for _ in 0..5 {
                // Coarse values so that ties are frequent; about half negative.
                let row: Vec<f32> = (0..n)
                    .map(|_| (rng.below(41) as f32 - 20.0) * 0.25)
                    .collect();
                let mut all: Vec<(u32, f32)> = row
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v > 0.0)
                    .map(|(j, &v)| (j as u32, v))
                    .collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                sel.row(&row, k);
                assert_eq!(sel.result(), &all[..], "n={n} k={k}");
                let cand: Vec<u32> = (0..n as u32).filter(|j| j % 3 != 1).collect();
                let mut want: Vec<(u32, f32)> = all_among(&row, &cand);
                want.truncate(k);
                sel.among(&row, &cand, k);
                assert_eq!(sel.result(), &want[..], "among n={n} k={k}");
                sel.among_unordered(&row, &cand, k);
                let mut got = sel.result().to_vec();
                got.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                assert_eq!(got, want, "among_unordered n={n} k={k}");
            }
        }
    }

    #[test]
    fn above_filter_matches_a_plain_comparison() {
        let mut rng = crate::rng::Rng::new(9);
        for n in [0usize, 1, 15, 16, 17, 100] {
            let row: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let thr: Vec<f32> = (0..n).map(|_| 0.5 * rng.normal() as f32).collect();
            let mut got = Vec::new();
            for_each_above(&row, &thr, |j, v| got.push((j, v)));
            let want: Vec<(usize, f32)> = (0..n)
                .filter(|&j| row[j] > thr[j])
                .map(|j| (j, row[j]))
                .collect();
            assert_eq!(got, want);
        }
    }

    fn all_among(row: &[f32], cand: &[u32]) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = cand
            .iter()
            .map(|&j| (j, row[j as usize]))
            .filter(|e| e.1 > 0.0)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    #[test]
    fn selection_matches_a_full_sort_including_ties() {
        let mut rng = Rng::new(7);
        // Values on a coarse grid, so that many ties straddle the cut; several rows,
        // more than one row chunk, negatives and zeros.
        let (rows, n) = (150, 37);
        let data: Vec<f32> = (0..rows * n)
            .map(|_| (rng.below(41) as f32 - 20.0) * 0.25)
            .collect();
        let pre = Matrix::from_vec(rows, n, data).unwrap();
        let positive = pre.data.iter().filter(|&&v| v > 0.0).count();
        for m in [
            0,
            1,
            5,
            149,
            150 * 3,
            2000,
            positive - 1,
            positive,
            positive + 10,
        ] {
            let got = batch_topk(&pre, m);
            assert_eq!(got.rows(), rows);
            assert_eq!(triples(&got), naive_select(&pre, m), "m = {m}");
        }
        // Continuous values spanning many binades.
        let data: Vec<f32> = (0..rows * n)
            .map(|_| {
                (rng.normal() * 3.0).exp() as f32 * if rng.uniform() < 0.3 { -1.0 } else { 1.0 }
            })
            .collect();
        let pre = Matrix::from_vec(rows, n, data).unwrap();
        for m in [1, 7, 300, 1111, 4000] {
            assert_eq!(
                triples(&batch_topk(&pre, m)),
                naive_select(&pre, m),
                "m = {m}"
            );
        }
    }
}
