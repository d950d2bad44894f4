//! Dense reference versions of the sparse kernels: every product is a full matrix
//! product over all `n` latents, the way a plain tensor framework computes an SAE step.
//! Slow on purpose; used to check the fast kernels and as the benchmark baseline.

use super::gemm::{gemm, Transpose};
use crate::latents::Latents;
use crate::tensor::Matrix;

/// `x̂ = F · W_dec + b_dec` with `F` dense `[B, n]`.
pub fn decode(latents: &Latents, w_dec: &[f32], b_dec: &[f32]) -> Matrix {
    let f = latents.to_dense();
    let d = b_dec.len();
    let mut out = Matrix::zeros(f.rows, d);
    for r in 0..f.rows {
        out.row_mut(r).copy_from_slice(b_dec);
    }
    gemm(
        f.rows,
        f.cols,
        d,
        1.0,
        &f.data,
        Transpose::No,
        w_dec,
        Transpose::No,
        1.0,
        &mut out.data,
    );
    out
}

/// Dense backward of [`decode`]: `∂L/∂W_dec += Fᵀ · G`, `∂L/∂b_dec += Σ_rows G`, and
/// `∂L/∂F = G · W_decᵀ` returned at the positions stored in `latents`.
pub fn decode_backward(
    latents: &Latents,
    g_out: &Matrix,
    w_dec: &[f32],
    g_w_dec: &mut [f32],
    g_b_dec: &mut [f32],
) -> Vec<f32> {
    let f = latents.to_dense();
    let (b, n, d) = (f.rows, f.cols, g_out.cols);
    gemm(
        n,
        b,
        d,
        1.0,
        &f.data,
        Transpose::Yes,
        &g_out.data,
        Transpose::No,
        1.0,
        g_w_dec,
    );
    for r in 0..b {
        for (gb, g) in g_b_dec.iter_mut().zip(g_out.row(r)) {
            *gb += g;
        }
    }
    let mut g_f = vec![0.0f32; b * n];
    gemm(
        b,
        d,
        n,
        1.0,
        &g_out.data,
        Transpose::No,
        w_dec,
        Transpose::Yes,
        0.0,
        &mut g_f,
    );
    gather(latents, &g_f)
}

/// Dense backward of the encoder product: `∂L/∂W_enc += Xᵀ · G_pre`,
/// `∂L/∂b_enc += Σ_rows G_pre`, and `Σ_rows G_pre · W_encᵀ` returned.
pub fn encode_backward(
    pattern: &Latents,
    g_pre: &[f32],
    x: &Matrix,
    w_enc: &[f32],
    g_w_enc: &mut [f32],
    g_b_enc: Option<&mut [f32]>,
) -> Vec<f32> {
    let mut dense = Latents {
        val: g_pre.to_vec(),
        ..pattern.clone()
    }
    .to_dense();
    let (b, n, d) = (x.rows, pattern.n, x.cols);
    gemm(
        d,
        b,
        n,
        1.0,
        &x.data,
        Transpose::Yes,
        &dense.data,
        Transpose::No,
        1.0,
        g_w_enc,
    );
    let mut g_x = vec![0.0f32; b * d];
    gemm(
        b,
        n,
        d,
        1.0,
        &dense.data,
        Transpose::No,
        w_enc,
        Transpose::Yes,
        0.0,
        &mut g_x,
    );
    if let Some(gb) = g_b_enc {
        for r in 0..b {
            for (g, v) in gb.iter_mut().zip(dense.row(r)) {
                *g += v;
            }
        }
    }
    dense.data.clear();
    let mut sum = vec![0.0f32; d];
    for r in 0..b {
        for (s, v) in sum.iter_mut().zip(&g_x[r * d..(r + 1) * d]) {
            *s += v;
        }
    }
    sum
}

/// Values of dense `[B, n]` `m` at the positions stored in `pattern`.
fn gather(pattern: &Latents, m: &[f32]) -> Vec<f32> {
    let n = pattern.n;
    let mut out = Vec::with_capacity(pattern.nnz());
    for r in 0..pattern.rows() {
        for &j in pattern.row(r).0 {
            out.push(m[r * n + j as usize]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;
    use crate::rng::Rng;

    fn random_latents(rng: &mut Rng, rows: usize, n: usize, k: usize) -> Latents {
        let mut l = Latents::new(n);
        for _ in 0..rows {
            let mut idx: Vec<u32> = (0..n as u32).collect();
            rng.shuffle(&mut idx);
            let kk = rng.below(k as u64 + 1) as usize;
            l.push_row(idx[..kk].iter().map(|&i| (i, rng.normal() as f32)));
        }
        l
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + x.abs().max(y.abs())),
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn sparse_kernels_match_dense_reference_on_awkward_sizes() {
        let mut rng = Rng::new(11);
        for &(b, n, d, k) in &[(1, 13, 5, 3), (67, 37, 11, 9), (130, 129, 7, 40)] {
            let lat = random_latents(&mut rng, b, n, k);
            let w_dec: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
            let w_enc: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
            let b_dec: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
            let x =
                Matrix::from_vec(b, d, (0..b * d).map(|_| rng.normal() as f32).collect()).unwrap();
            close(
                &kernels::decode(&lat, &w_dec, &b_dec).data,
                &decode(&lat, &w_dec, &b_dec).data,
            );
            let (mut gw1, mut gb1) = (vec![0.0; n * d], vec![0.0; d]);
            let (mut gw2, mut gb2) = (vec![0.0; n * d], vec![0.0; d]);
            let gf1 = kernels::decode_backward(&lat, &x, &w_dec, &mut gw1, &mut gb1);
            let gf2 = decode_backward(&lat, &x, &w_dec, &mut gw2, &mut gb2);
            close(&gf1, &gf2);
            close(&gw1, &gw2);
            close(&gb1, &gb2);
            let (mut ge1, mut be1) = (vec![0.0; n * d], vec![0.0; n]);
            let (mut ge2, mut be2) = (vec![0.0; n * d], vec![0.0; n]);
            let s1 = kernels::encode_backward(&lat, &lat.val, &x, &w_enc, &mut ge1, Some(&mut be1));
            let s2 = encode_backward(&lat, &lat.val, &x, &w_enc, &mut ge2, Some(&mut be2));
            close(&s1, &s2);
            close(&ge1, &ge2);
            close(&be1, &be2);
        }
    }
}
