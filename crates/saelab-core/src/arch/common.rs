//! Pieces every architecture shares: tied initialisation, the encoder input, the MSE
//! term, the choice between fast and reference kernels, and the AuxK loss of the
//! TopK family.

use super::StepContext;
use crate::config::Dims;
use crate::kernels::{self, reference, select::topk_rows};
use crate::latents::Latents;
use crate::rng::Rng;
use crate::tensor::{Matrix, ParamSet, Tensor};

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

/// `x − b_dec`, row by row: `x [B, d]`, `b_dec [d]`.
pub fn subtract_bias(x: &Matrix, b_dec: &[f32]) -> Matrix {
    let mut out = x.clone();
    for r in 0..out.rows {
        for (v, b) in out.row_mut(r).iter_mut().zip(b_dec) {
            *v -= b;
        }
    }
    out
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

/// The MSE term `mean over rows of ‖x̂ − x‖²`: returns `(Σ‖x̂ − x‖², ∂term/∂x̂)`,
/// the gradient being `2 (x̂ − x) / B`.
pub fn mse_and_grad(x_hat: &Matrix, x: &Matrix) -> (f64, Matrix) {
    let b = x.rows.max(1) as f32;
    let mut sq = 0.0f64;
    let mut g = Matrix::zeros(x.rows, x.cols);
    for ((gi, &h), &t) in g.data.iter_mut().zip(&x_hat.data).zip(&x.data) {
        let e = h - t;
        sq += (e as f64) * (e as f64);
        *gi = 2.0 * e / b;
    }
    (sq, g)
}

/// The kernel set a step uses: the fast sparse kernels or the dense references.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    /// Use the dense reference kernels.
    pub reference: bool,
}

/// Latent density (stored entries / (rows · n)) above which [`Kernels::for_density`]
/// picks the dense kernels: beyond it a dense product does less work per useful entry
/// than the gather/scatter kernels. A rough CPU crossover, to be tuned with benchmarks.
pub const DENSE_DENSITY: f64 = 1.0 / 16.0;

impl Kernels {
    /// The dense kernels when `reference` is asked for or when `latents` (`[B, n]`) is
    /// denser than `dense_above` (fraction of stored entries); the sparse ones otherwise.
    /// For activations such as ReLU whose sparsity is learned rather than fixed.
    pub fn for_density(reference: bool, latents: &Latents, dense_above: f64) -> Kernels {
        let cells = (latents.rows() * latents.n).max(1) as f64;
        Kernels {
            reference: reference || latents.nnz() as f64 > dense_above * cells,
        }
    }

    /// See [`kernels::decode`].
    pub fn decode(&self, l: &Latents, w_dec: &[f32], b_dec: &[f32]) -> Matrix {
        if self.reference {
            reference::decode(l, w_dec, b_dec)
        } else {
            kernels::decode(l, w_dec, b_dec)
        }
    }

    /// See [`kernels::decode_backward`].
    pub fn decode_backward(
        &self,
        l: &Latents,
        g_out: &Matrix,
        w_dec: &[f32],
        g_w_dec: &mut [f32],
        g_b_dec: &mut [f32],
    ) -> Vec<f32> {
        if self.reference {
            reference::decode_backward(l, g_out, w_dec, g_w_dec, g_b_dec)
        } else {
            kernels::decode_backward(l, g_out, w_dec, g_w_dec, g_b_dec)
        }
    }

    /// See [`kernels::encode_backward`].
    pub fn encode_backward(
        &self,
        pattern: &Latents,
        g_pre: &[f32],
        x: &Matrix,
        w_enc: &[f32],
        g_w_enc: &mut [f32],
        g_b_enc: Option<&mut [f32]>,
    ) -> Vec<f32> {
        if self.reference {
            reference::encode_backward(pattern, g_pre, x, w_enc, g_w_enc, g_b_enc)
        } else {
            kernels::encode_backward(pattern, g_pre, x, w_enc, g_w_enc, g_b_enc)
        }
    }
}

/// `a -= b` elementwise (how `b_dec` receives the gradient of the encoder input
/// `x − b_dec`).
pub fn sub_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x -= y;
    }
}

/// The forward quantities of a TopK-style step that [`AuxK`] reuses.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// Input batch `x [B, d_in]` (normalised, `b_dec` not subtracted).
    pub x: &'a Matrix,
    /// Encoder input `x − b_dec` `[B, d_in]`.
    pub x_enc: &'a Matrix,
    /// Dense pre-activations `[B, n]`.
    pub pre: &'a Matrix,
    /// Reconstruction `x̂ [B, d_out]` of the main path.
    pub x_hat: &'a Matrix,
}

/// The AuxK loss of "Scaling and evaluating sparse autoencoders" (Gao et al. 2024), shared
/// by TopK and BatchTopK: per token, the `k` largest positive pre-activations among the
/// *dead* latents, decoded without `b_dec`, reconstruct the residual `e = x − x̂`:
/// `aux = coefficient · mean_tokens ‖e − ReLU(TopK_k,dead(pre)) W_dec‖²`.
/// The target `e` carries no gradient (it is treated as a constant).
#[derive(Clone, Copy, Debug)]
pub struct AuxK {
    /// Dead latents used per token (0 disables the term).
    pub k: usize,
    /// Coefficient of the term.
    pub coefficient: f32,
}

impl AuxK {
    /// Adds the gradient of the AuxK term into `grads` (names `W_enc`, `b_enc`, `W_dec`,
    /// `b_dec` of `p`; `b_dec` only through the encoder input) and returns the term's
    /// value, or `None` when it is disabled or no latent is dead.
    pub fn add_loss_and_grad(
        &self,
        p: &ParamSet,
        fwd: Forward,
        ctx: &StepContext,
        grads: &mut ParamSet,
    ) -> Option<f64> {
        if self.k == 0 || self.coefficient <= 0.0 || !ctx.dead.iter().any(|&d| d) {
            return None;
        }
        let kern = Kernels {
            reference: ctx.reference,
        };
        let (w_enc, w_dec) = (&p.get("W_enc").data, &p.get("W_dec").data);
        let [g_w_enc, g_b_enc, g_w_dec, g_b_dec] =
            grads.get_many_mut(["W_enc", "b_enc", "W_dec", "b_dec"]);
        let aux = topk_rows(fwd.pre, self.k, Some(ctx.dead));
        let no_bias = vec![0.0f32; fwd.x_hat.cols];
        let e_hat = kern.decode(&aux, w_dec, &no_bias);
        let mut resid = fwd.x.clone();
        for (r, h) in resid.data.iter_mut().zip(&fwd.x_hat.data) {
            *r -= h;
        }
        let (aux_sq, mut g_aux) = mse_and_grad(&e_hat, &resid);
        let c = self.coefficient;
        g_aux.data.iter_mut().for_each(|g| *g *= c);
        let mut unused_bias_grad = no_bias.clone();
        let g_fa = kern.decode_backward(
            &aux,
            &g_aux,
            w_dec,
            &mut g_w_dec.data,
            &mut unused_bias_grad,
        );
        let s = kern.encode_backward(
            &aux,
            &g_fa,
            fwd.x_enc,
            w_enc,
            &mut g_w_enc.data,
            Some(&mut g_b_enc.data),
        );
        sub_assign(&mut g_b_dec.data, &s);
        Some(c as f64 * aux_sq / fwd.x.rows.max(1) as f64)
    }
}
