//! Pieces every architecture shares: tied initialisation, the encoder input, the MSE
//! term, and the choice between fast and reference kernels.

use crate::config::Dims;
use crate::kernels::{self, reference};
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

impl Kernels {
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
