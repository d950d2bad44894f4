//! Pieces several architectures share: tied initialisation, the threshold activation,
//! the norm-weighted L1 penalty, and the borrowing of the four standard gradients.

use crate::config::Dims;
use crate::kernels::{self, engine::EncoderWeights, engine::Grads};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

pub use crate::kernels::subtract_bias;

/// Tied initialisation: `W_dec` rows random directions of norm `dec_row_norm`,
/// `W_enc = W_decᵀ`, `b_enc = 0`, `b_dec = 0`.
/// Returns `W_enc [d_in, n]`, `b_enc [n]`, `W_dec [n, d_out]`, `b_dec [d_out]`.
pub fn init_tied(dims: Dims, dec_row_norm: f32, rng: &mut Rng) -> ParamSet {
    let Dims { d_in, n, d_out } = dims;
    let mut w_dec = Vec::with_capacity(n * d_out);
    for _ in 0..n {
        w_dec.extend(rng.unit_vector(d_out).into_iter().map(|v| v * dec_row_norm));
    }
    // W_enc [d_in, n] = W_decᵀ where the shapes allow (d_in == d_out); transcoders get an
    // independent random encoder with the same row scale.
    let w_enc = if d_in == d_out {
        Matrix::from_vec(n, d_out, w_dec.clone())
            .unwrap()
            .transpose()
            .data
    } else {
        let mut w = Vec::with_capacity(n * d_in);
        for _ in 0..n {
            w.extend(rng.unit_vector(d_in).into_iter().map(|v| v * dec_row_norm));
        }
        Matrix::from_vec(n, d_in, w).unwrap().transpose().data
    };
    let mut p = ParamSet::new();
    p.insert("W_enc", Tensor::new(&[d_in, n], w_enc).unwrap());
    p.insert("b_enc", Tensor::zeros(&[n]));
    p.insert("W_dec", Tensor::new(&[n, d_out], w_dec).unwrap());
    p.insert("b_dec", Tensor::zeros(&[d_out]));
    p
}

/// Euclidean norm of each `[d]` row of `w` (`[n, d]` row-major) → `[n]` (decoder row
/// norms for the norm-weighted sparsity penalties).
pub fn row_norms(w: &[f32], d: usize) -> Vec<f32> {
    w.chunks(d.max(1))
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}

/// The norm-weighted L1 penalty of the April 2024 update, `c Σ_{r,j} f_rj ‖W_dec[j]‖`
/// (ReLU SAEs on their latents, Gated on its gate values), split in two so that a
/// caller can add the decoder part after kernels that overwrite the decoder gradient.
pub struct NormL1 {
    c: f32,
    norms: Vec<f32>,
    sums: Vec<f64>,
    /// The penalty `c Σ f ‖W_dec[j]‖`.
    pub penalty: f64,
}

impl NormL1 {
    /// The penalty over the entries of `lat` with coefficient `c` and decoder `w_dec`
    /// `[n, d]`; adds `c ‖W_dec[j]‖` to each entry's gradient in `g_f` (aligned with
    /// `lat`'s entries).
    pub fn new(lat: &Latents, w_dec: &[f32], d: usize, c: f32, g_f: &mut [f32]) -> Self {
        use rayon::prelude::*;
        assert_eq!(
            g_f.len(),
            lat.nnz(),
            "NormL1: g_f does not match the latents"
        );
        let norms: Vec<f32> = w_dec
            .par_chunks(d.max(1))
            .map(|r| kernels::dot(r, r).sqrt())
            .collect();
        let mut sums = vec![0.0f64; lat.n];
        let mut penalty = 0.0f64;
        for ((&j, &v), g) in lat.idx.iter().zip(&lat.val).zip(g_f.iter_mut()) {
            let j = j as usize;
            penalty += v as f64 * norms[j] as f64;
            sums[j] += v as f64;
            *g += c * norms[j];
        }
        NormL1 {
            c,
            norms,
            sums,
            penalty: c as f64 * penalty,
        }
    }

    /// Adds the decoder part `c (Σ_r f_rj) W_dec[j] / ‖W_dec[j]‖` to `g_w_dec` `[n, d]`.
    pub fn add_decoder_grad(&self, w_dec: &[f32], g_w_dec: &mut [f32]) {
        use rayon::prelude::*;
        let d = w_dec.len() / self.norms.len().max(1);
        g_w_dec
            .par_chunks_mut(d.max(1))
            .zip(w_dec.par_chunks(d.max(1)))
            .zip(self.norms.par_iter().zip(self.sums.par_iter()))
            .for_each(|((grow, row), (&nrm, &s))| {
                if nrm > 0.0 && s > 0.0 {
                    kernels::axpy(self.c * s as f32 / nrm, row, grow);
                }
            });
    }
}

/// The encoder of the standard parameter set `W_enc`, `b_enc`, `b_dec` of `p`.
pub fn encoder(p: &ParamSet) -> EncoderWeights<'_> {
    EncoderWeights {
        w_enc: &p.get("W_enc").data,
        b_enc: &p.get("b_enc").data,
        b_dec: &p.get("b_dec").data,
    }
}

/// The gradients of the standard parameters `W_enc`, `b_enc`, `W_dec`, `b_dec` in `g`.
pub fn sae_grads(g: &mut ParamSet) -> Grads<'_> {
    let [w_enc, b_enc, w_dec, b_dec] = g.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
    Grads {
        w_enc: &mut w_enc.data,
        b_enc: &mut b_enc.data,
        w_dec: &mut w_dec.data,
        b_dec: &mut b_dec.data,
    }
}

/// The file-form tensors of an SAE: `W_enc [d_in, n]`, `W_dec [n, d_out]`,
/// `b_dec [d_out]`, then one `[n]` vector per name in `per_latent` (`b_enc`,
/// `threshold`, ...).
pub fn sae_params(dims: Dims, per_latent: &[&'static str]) -> Vec<(&'static str, Vec<usize>)> {
    let Dims { d_in, n, d_out } = dims;
    let mut v = vec![
        ("W_enc", vec![d_in, n]),
        ("W_dec", vec![n, d_out]),
        ("b_dec", vec![d_out]),
    ];
    v.extend(per_latent.iter().map(|&name| (name, vec![n])));
    v
}

/// Dense pre-activations `x_enc W_enc + b_enc` `[B, n]` from file-form parameters.
pub fn pre_activations(p: &ParamSet, x_enc: &Matrix) -> Matrix {
    kernels::affine(x_enc, &p.get("W_enc").data, &p.get("b_enc").data)
}

/// Inference of a threshold SAE (JumpReLU, BatchTopK's file form): the
/// [`threshold_latents`] of the pre-activations with the file's `threshold [n]`.
pub fn threshold_encode(p: &ParamSet, x_enc: &Matrix) -> Latents {
    threshold_latents(pre_activations(p, x_enc), &p.get("threshold").data)
}

/// The threshold activation of JumpReLU (and of BatchTopK at inference), with SAELens
/// semantics, on dense pre-activations `pre [B, n]` with thresholds `theta [n]`: keeps
/// `pre` where `pre > θ` and `pre > 0`, zeroes the rest, and returns the non-zeros.
pub fn threshold_latents(mut pre: Matrix, theta: &[f32]) -> Latents {
    for row in pre.data.chunks_mut(theta.len().max(1)) {
        for (v, &t) in row.iter_mut().zip(theta) {
            // SAELens: ReLU(pre) · 1[pre > θ]
            if !(*v > t && *v > 0.0) {
                *v = 0.0;
            }
        }
    }
    Latents::from_dense(&pre)
}
