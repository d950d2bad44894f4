//! Refitting an SAE's codes on its own support: the encoder's share of the error.
//!
//! An SAE's encoder chooses, in one linear step, both which latents are active (the
//! support) and their values. Keeping the support and the decoder but solving for the
//! values by least squares gives the best reconstruction that support and decoder allow;
//! what the SAE's FVU exceeds it by is lost to the one-step encoder (the "amortisation
//! gap", O'Neill et al. 2024), and what remains is the support's and the decoder's.
//! `saelab eval --refit` reports it as `fvu_refit`.

use rayon::prelude::*;

use crate::latents::Latents;
use crate::tensor::Matrix;

/// Rows per parallel task; partial sums are added in task order (deterministic).
const ROWS_PER_TASK: usize = 64;

/// `Σ_r min_c ‖y_r − Σ_{j∈S_r} c_j W_dec[j]‖²`, where `S_r` are the latents of row `r`
/// of `latents` with a non-zero value and the minimum is over real coefficients (least
/// squares, not constrained to be positive). `y` `[B, d]` is the target with everything
/// that does not depend on the latents (`b_dec`, a skip term) already removed; `w_dec`
/// is `[n, d]`.
pub fn refit_sq_err(y: &Matrix, latents: &Latents, w_dec: &[f32]) -> f64 {
    let d = y.cols;
    assert_eq!(
        latents.rows(),
        y.rows,
        "refit: latents and targets differ in rows"
    );
    assert_eq!(w_dec.len(), latents.n * d, "refit: W_dec is not [n, d]");
    let parts: Vec<f64> = (0..y.rows)
        .step_by(ROWS_PER_TASK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            (r0..(r0 + ROWS_PER_TASK).min(y.rows))
                .map(|r| {
                    let (idx, val) = latents.row(r);
                    let rows: Vec<&[f32]> = idx
                        .iter()
                        .zip(val)
                        .filter(|(_, &v)| v != 0.0)
                        .map(|(&j, _)| &w_dec[j as usize * d..(j as usize + 1) * d])
                        .collect();
                    row_sq_err(y.row(r), &rows)
                })
                .sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

/// `min_c ‖y − Σ_a c_a rows[a]‖²` by the normal equations (Cholesky, in f64), with a
/// ridge of 1e-10 of the mean squared row norm, raised until the factorisation succeeds,
/// so that repeated or dependent rows do not break it. The residual is formed explicitly.
fn row_sq_err(y: &[f32], rows: &[&[f32]]) -> f64 {
    let k = rows.len();
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum() };
    if k == 0 {
        return dot(y, y);
    }
    let mut gram = vec![0.0f64; k * k];
    let mut rhs = vec![0.0f64; k];
    for a in 0..k {
        rhs[a] = dot(rows[a], y);
        for b in 0..=a {
            let g = dot(rows[a], rows[b]);
            gram[a * k + b] = g;
            gram[b * k + a] = g;
        }
    }
    let mean_diag = (0..k).map(|a| gram[a * k + a]).sum::<f64>() / k as f64;
    let mut ridge = 1e-10 * mean_diag.max(f64::MIN_POSITIVE);
    let coef = loop {
        if let Some(c) = cholesky_solve(&gram, &rhs, k, ridge) {
            break c;
        }
        ridge *= 100.0;
    };
    let mut resid: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    for (row, &c) in rows.iter().zip(&coef) {
        for (e, &w) in resid.iter_mut().zip(*row) {
            *e -= c * w as f64;
        }
    }
    resid.iter().map(|e| e * e).sum()
}

/// Solves `(G + ridge·I) c = rhs` for symmetric `G` `[k, k]`; `None` if the matrix is
/// not numerically positive definite.
fn cholesky_solve(g: &[f64], rhs: &[f64], k: usize, ridge: f64) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let mut s = g[i * k + j] + if i == j { ridge } else { 0.0 };
            for p in 0..j {
                s -= l[i * k + p] * l[j * k + p];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    // L z = rhs, then Lᵀ c = z.
    let mut z = vec![0.0f64; k];
    for i in 0..k {
        let s: f64 = (0..i).map(|p| l[i * k + p] * z[p]).sum();
        z[i] = (rhs[i] - s) / l[i * k + i];
    }
    let mut c = vec![0.0f64; k];
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|p| l[p * k + i] * c[p]).sum();
        c[i] = (z[i] - s) / l[i * k + i];
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn latents(n: usize, rows: &[&[(u32, f32)]]) -> Latents {
        let mut l = Latents::new(n);
        for r in rows {
            l.push_row(r.iter().copied());
        }
        l
    }

    #[test]
    fn one_latent_is_a_projection() {
        // y = (3, 4), W_dec[1] = (2, 0): best c = 1.5, residual (0, 4).
        let w = [0.0, 1.0, 2.0, 0.0];
        let y = Matrix::from_vec(1, 2, vec![3.0, 4.0]).unwrap();
        let e = refit_sq_err(&y, &latents(2, &[&[(1, 0.7)]]), &w);
        assert!((e - 16.0).abs() < 1e-9, "{e}");
        // No active latent: the whole target is error.
        assert!((refit_sq_err(&y, &latents(2, &[&[]]), &w) - 25.0).abs() < 1e-9);
    }

    #[test]
    fn targets_in_the_span_of_the_support_refit_exactly_and_others_do_no_worse() {
        let (n, d, rows) = (12, 7, 40);
        let mut rng = Rng::new(3);
        let w: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let mut lat = Latents::new(n);
        let mut y_span = Matrix::zeros(rows, d);
        let mut y_noisy = Matrix::zeros(rows, d);
        let mut own_err = 0.0f64;
        for r in 0..rows {
            let support: Vec<(u32, f32)> = (0..3)
                .map(|t| (((r + 4 * t) % n) as u32, 0.5 + rng.uniform() as f32))
                .collect();
            for &(j, v) in &support {
                for (o, &wv) in y_span.row_mut(r).iter_mut().zip(&w[j as usize * d..]) {
                    *o += v * wv;
                }
            }
            let noisy: Vec<f32> = y_span
                .row(r)
                .iter()
                .map(|&v| v + 0.3 * rng.normal() as f32)
                .collect();
            // The SAE's own reconstruction uses the true values: its error is the noise.
            own_err += noisy
                .iter()
                .zip(y_span.row(r))
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            y_noisy.row_mut(r).copy_from_slice(&noisy);
            lat.push_row(support);
        }
        assert!(refit_sq_err(&y_span, &lat, &w) < 1e-6);
        let refit = refit_sq_err(&y_noisy, &lat, &w);
        assert!(refit <= own_err, "{refit} > {own_err}");
        assert!(refit > 0.0);
    }

    #[test]
    fn repeated_decoder_rows_do_not_break_the_solve() {
        // Latents 0 and 1 share a direction: the fit equals the one-row fit.
        let w = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let y = Matrix::from_vec(1, 2, vec![2.0, 5.0]).unwrap();
        let both = refit_sq_err(&y, &latents(3, &[&[(0, 1.0), (1, 1.0)]]), &w);
        let one = refit_sq_err(&y, &latents(3, &[&[(0, 1.0)]]), &w);
        assert!(
            (both - 25.0).abs() < 1e-6 && (one - 25.0).abs() < 1e-9,
            "{both} {one}"
        );
    }
}
