//! The reference step engine: dense products over all `n` latents and plain sorts, the
//! way a tensor framework computes an SAE step. Slow on purpose; used to check the fast
//! engine ([`super::cpu::CpuEngine`]) and as the benchmark's baseline.
//!
//! Written apart from the fast kernels: its pre-activations come from `matrixmultiply`
//! (not the blocked encoder engine), its selections from sorting (not
//! [`super::select::TopKSelector`] or the radix batch selection), its decoder and
//! gradients from dense products. What it shares with the fast engine is the data
//! layout ([`Latents`], [`Matrix`]) and the dense product ([`gemm`]), which the fast
//! engine uses only on its dense route and for the AuxK dense products.

use rayon::prelude::*;

use super::engine::{
    AuxLatents, AuxSelect, EncoderWeights, EngineKind, Grads, Reconstruction, Select, Selected,
    StepEngine,
};
use super::gemm::{gemm, Transpose};
use super::{mse_and_grad, sub_assign, subtract_bias};
use crate::latents::Latents;
use crate::tensor::Matrix;

/// The reference engine (see the module docs). Keeps the step's encoder input and
/// output gradients between [`StepEngine::reconstruct`] and [`StepEngine::backward`].
#[derive(Default)]
pub struct ReferenceEngine {
    x_enc: Matrix,
    g_out: Matrix,
    g_aux: Matrix,
}

/// `x W + b` with `matrixmultiply`: `x [B, d]`, `w [d, n]`, `b [n]` → `[B, n]`.
pub fn affine(x: &Matrix, w: &[f32], b: &[f32]) -> Matrix {
    let n = b.len();
    assert_eq!(w.len(), x.cols * n, "affine: weight is not [d, n]");
    let mut out = Matrix::zeros(x.rows, n);
    for r in 0..x.rows {
        out.row_mut(r).copy_from_slice(b);
    }
    gemm(
        x.rows,
        x.cols,
        n,
        1.0,
        &x.data,
        Transpose::No,
        w,
        Transpose::No,
        1.0,
        &mut out.data,
    );
    out
}

/// Larger value first, then lower index.
fn by_value(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` largest positive `(index, value)` entries of `cand`, by decreasing value.
fn largest_positive(mut cand: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    cand.retain(|e| e.1 > 0.0);
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, by_value);
    }
    cand.truncate(k);
    cand.sort_unstable_by(by_value);
    cand
}

/// Per row of `pre`, the `k` largest positive values among `columns` (all when `None`).
fn topk_per_row(pre: &Matrix, k: usize, columns: Option<&[u32]>) -> Latents {
    let rows: Vec<Vec<(u32, f32)>> = (0..pre.rows)
        .into_par_iter()
        .map(|r| {
            let row = pre.row(r);
            let cand = match columns {
                None => row
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| (j as u32, v))
                    .collect(),
                Some(c) => c.iter().map(|&j| (j, row[j as usize])).collect(),
            };
            largest_positive(cand, k)
        })
        .collect();
    let mut out = Latents::with_capacity(pre.cols, pre.rows, k);
    for r in rows {
        out.push_row(r);
    }
    out
}

/// The `total` largest positive entries of `pre` across all rows (ties: earlier row,
/// then lower column), each row's entries in increasing column order.
fn batch_topk_by_sort(pre: &Matrix, total: usize) -> Latents {
    let n = pre.cols;
    let mut all: Vec<(u32, u32, f32)> = Vec::new();
    for r in 0..pre.rows {
        for (j, &v) in pre.row(r).iter().enumerate() {
            if v > 0.0 {
                all.push((r as u32, j as u32, v));
            }
        }
    }
    if all.len() > total {
        let order = |a: &(u32, u32, f32), b: &(u32, u32, f32)| {
            b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
        };
        if total > 0 {
            all.select_nth_unstable_by(total - 1, order);
        }
        all.truncate(total);
        all.sort_unstable_by_key(|e| (e.0, e.1));
    }
    let mut out = Latents::with_capacity(n, pre.rows, 0);
    let mut e = 0;
    for r in 0..pre.rows as u32 {
        let start = e;
        while e < all.len() && all[e].0 == r {
            e += 1;
        }
        out.push_row(all[start..e].iter().map(|&(_, j, v)| (j, v)));
    }
    out
}

impl StepEngine for ReferenceEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Reference
    }

    fn encode(
        &mut self,
        x: &Matrix,
        enc: EncoderWeights,
        select: Select,
        aux: AuxSelect,
    ) -> Selected {
        self.x_enc = subtract_bias(x, enc.b_dec);
        let pre = affine(&self.x_enc, enc.w_enc, enc.b_enc);
        let latents = match select {
            Select::TopK(k) => topk_per_row(&pre, k, None),
            Select::Above(lower) => {
                let mut l = Latents::with_capacity(pre.cols, pre.rows, 0);
                for r in 0..pre.rows {
                    l.push_row(
                        pre.row(r)
                            .iter()
                            .zip(lower)
                            .enumerate()
                            .filter(|(_, (v, t))| v > t)
                            .map(|(j, (&v, _))| (j as u32, v)),
                    );
                }
                l
            }
            Select::BatchTopK { total, .. } => batch_topk_by_sort(&pre, total),
        };
        let aux_lat = if aux.on() {
            AuxLatents::Sparse(topk_per_row(&pre, aux.k, Some(aux.dead)))
        } else {
            AuxLatents::Off
        };
        Selected {
            latents,
            aux: aux_lat,
            aux_coefficient: aux.coefficient,
            dense: false,
        }
    }

    fn reconstruct(
        &mut self,
        x: &Matrix,
        w_dec: &[f32],
        b_dec: &[f32],
        sel: &Selected,
    ) -> Reconstruction {
        let x_hat = decode(&sel.latents, w_dec, b_dec);
        let (sq_err, g_out) = mse_and_grad(&x_hat, x);
        let g_f = latent_grads(&sel.latents, &g_out, w_dec);
        let (mut aux_sq, mut g_f_aux) = (0.0, Vec::new());
        if let AuxLatents::Sparse(a) = &sel.aux {
            // ê = a W_dec (no bias) reconstructs the residual e = x − x̂, a constant.
            let e_hat = decode(a, w_dec, &vec![0.0; b_dec.len()]);
            let mut resid = x.clone();
            for (r, h) in resid.data.iter_mut().zip(&x_hat.data) {
                *r -= h;
            }
            let (sq, mut g_aux) = mse_and_grad(&e_hat, &resid);
            g_aux
                .data
                .iter_mut()
                .for_each(|g| *g *= sel.aux_coefficient);
            g_f_aux = latent_grads(a, &g_aux, w_dec);
            aux_sq = sq;
            self.g_aux = g_aux;
        }
        self.g_out = g_out;
        Reconstruction {
            sq_err,
            g_f,
            aux_sq,
            g_f_aux,
        }
    }

    fn backward(
        &mut self,
        _x: &Matrix,
        enc: EncoderWeights,
        _w_dec: &[f32],
        sel: &Selected,
        rec: Reconstruction,
        grads: Grads,
    ) -> f64 {
        for g in [&mut *grads.w_enc, grads.b_enc, grads.w_dec, grads.b_dec] {
            g.fill(0.0);
        }
        // Reconstruction path.
        decode_weight_grads(&sel.latents, &self.g_out, grads.w_dec, grads.b_dec);
        let s = encode_backward(
            &sel.latents,
            &rec.g_f,
            &self.x_enc,
            enc.w_enc,
            grads.w_enc,
            Some(grads.b_enc),
        );
        sub_assign(grads.b_dec, &s);
        // AuxK: its decoder has no bias; b_dec gets its gradient through x − b_dec only.
        if let AuxLatents::Sparse(a) = &sel.aux {
            let mut no_bias = vec![0.0f32; grads.b_dec.len()];
            decode_weight_grads(a, &self.g_aux, grads.w_dec, &mut no_bias);
            let s = encode_backward(
                a,
                &rec.g_f_aux,
                &self.x_enc,
                enc.w_enc,
                grads.w_enc,
                Some(grads.b_enc),
            );
            sub_assign(grads.b_dec, &s);
        }
        rec.aux_sq
    }

    fn pre_activations(&mut self, x: &Matrix, w: &[f32], b: &[f32]) -> Matrix {
        affine(x, w, b)
    }

    fn decode(&mut self, l: &Latents, w: &[f32], b: &[f32]) -> Matrix {
        decode(l, w, b)
    }

    fn decode_backward(
        &mut self,
        l: &Latents,
        g_out: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: &mut [f32],
    ) -> Vec<f32> {
        decode_backward(l, g_out, w, g_w, g_b)
    }

    fn latent_grads(&mut self, l: &Latents, g_out: &Matrix, w: &[f32]) -> Vec<f32> {
        latent_grads(l, g_out, w)
    }

    fn encode_backward(
        &mut self,
        pattern: &Latents,
        g_pre: &[f32],
        x: &Matrix,
        w: &[f32],
        g_w: &mut [f32],
        g_b: Option<&mut [f32]>,
    ) -> Vec<f32> {
        encode_backward(pattern, g_pre, x, w, g_w, g_b)
    }
}

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
    decode_weight_grads(latents, g_out, g_w_dec, g_b_dec);
    latent_grads(latents, g_out, w_dec)
}

/// The weight part of [`decode_backward`]: `∂L/∂W_dec += Fᵀ · G`, `∂L/∂b_dec += Σ_rows G`.
pub fn decode_weight_grads(
    latents: &Latents,
    g_out: &Matrix,
    g_w_dec: &mut [f32],
    g_b_dec: &mut [f32],
) {
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
}

/// The latent part of [`decode_backward`]: `∂L/∂F = G · W_decᵀ` at the positions stored
/// in `latents`.
pub fn latent_grads(latents: &Latents, g_out: &Matrix, w_dec: &[f32]) -> Vec<f32> {
    let (b, n, d) = (latents.rows(), latents.n, g_out.cols);
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
