//! Selecting the active latents from dense pre-activations.

use rayon::prelude::*;

use super::ROW_CHUNK;
use crate::latents::Latents;
use crate::tensor::Matrix;

/// Per row of `pre` `[B, n]`, the `k` largest values among the columns where
/// `allowed(j)` holds, kept only if positive (TopK followed by ReLU). Ties are broken
/// towards the lower index. Entries in a row are sorted by decreasing value.
pub fn topk_rows(pre: &Matrix, k: usize, allowed: Option<&[bool]>) -> Latents {
    let n = pre.cols;
    let rows = pre.rows;
    let cand: Option<Vec<u32>> =
        allowed.map(|a| (0..n as u32).filter(|&j| a[j as usize]).collect());
    let parts: Vec<Latents> = (0..rows)
        .step_by(ROW_CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|s| {
            let e = (s + ROW_CHUNK).min(rows);
            let mut sel = TopKSelector::default();
            let mut out = Latents::with_capacity(n, e - s, k);
            for r in s..e {
                match &cand {
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
        if super::encoder::avx512() {
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
            let m: u16 = if n - i >= 16 {
                0xffff
            } else {
                ((1u32 << (n - i)) - 1) as u16
            };
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
    if super::encoder::avx512() {
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
        let m: u16 = if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as u16
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let allowed = [true, true, false, true, true];
        let l = topk_rows(&pre, 2, Some(&allowed));
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
}
