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
    let parts: Vec<Vec<Vec<(u32, f32)>>> = (0..rows)
        .step_by(ROW_CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|s| {
            let e = (s + ROW_CHUNK).min(rows);
            let mut scratch: Vec<(u32, f32)> = Vec::with_capacity(n);
            (s..e)
                .map(|r| {
                    scratch.clear();
                    scratch.extend(
                        pre.row(r)
                            .iter()
                            .enumerate()
                            .filter(|&(j, &v)| v > 0.0 && allowed.is_none_or(|a| a[j]))
                            .map(|(j, &v)| (j as u32, v)),
                    );
                    top_k_of(&mut scratch, k)
                })
                .collect()
        })
        .collect();
    let mut out = Latents::with_capacity(n, rows, k);
    for rows in parts {
        for row in rows {
            out.push_row(row);
        }
    }
    out
}

/// The `k` largest `(index, value)` pairs of `cand` by value (ties: lower index first),
/// sorted by decreasing value.
pub fn top_k_of(cand: &mut [(u32, f32)], k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
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
}
