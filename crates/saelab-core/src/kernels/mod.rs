//! CPU kernels for the SAE hot loops, kept apart from the maths that calls them.
//!
//! Shapes use the SAELens orientation: `W_enc [d_in, n]`, `W_dec [n, d_out]`. Latents
//! are sparse ([`Latents`]); only the encoder forward is a dense product.
//!
//! An SAE training step is written against one interface, [`engine::StepEngine`], with
//! two implementations: [`cpu::CpuEngine`] (the fast kernels of this module) and
//! [`reference::ReferenceEngine`] (plain dense products and sorts, "what a framework
//! does", the test oracle and the benchmark's baseline).

pub mod cpu;
pub mod encoder;
pub mod engine;
pub mod gemm;
pub mod reference;
pub mod select;
pub mod simd;
pub mod sparse;

use rayon::prelude::*;

use crate::latents::Latents;
use crate::tensor::Matrix;

pub use gemm::{gemm, Transpose};

/// Rows per parallel task in row-parallel kernels. Fixed, so that results do not
/// depend on how rayon schedules the work.
pub const ROW_CHUNK: usize = 64;

/// Dense pre-activations `pre = x · W + b`: `x [B, d]`, `w [d, n]`, `b [n]` → `[B, n]`,
/// computed with the encoder's engine ([`encoder`]), so that the dense and the fused
/// paths give bit-identical pre-activations.
pub fn affine(x: &Matrix, w: &[f32], b: &[f32]) -> Matrix {
    let n = b.len();
    assert_eq!(w.len(), x.cols * n, "affine: weight is not [d, n]");
    let mut out = Matrix::zeros(x.rows, n);
    encoder::dense_product(x, w, b, &mut out);
    out
}

/// Sparse decoder forward `x̂ = f · W_dec + b_dec`: `w_dec [n, d_out]`, `b_dec [d_out]`
/// → `[B, d_out]`. Gathers one decoder row per non-zero latent.
pub fn decode(latents: &Latents, w_dec: &[f32], b_dec: &[f32]) -> Matrix {
    let d = b_dec.len();
    assert_eq!(
        w_dec.len(),
        latents.n * d,
        "decode: W_dec is not [n, d_out]"
    );
    let mut out = Matrix::zeros(latents.rows(), d);
    out.data
        .par_chunks_mut(ROW_CHUNK * d)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_mut(d).enumerate() {
                row.copy_from_slice(b_dec);
                let (idx, val) = latents.row(c * ROW_CHUNK + i);
                for (&j, &v) in idx.iter().zip(val) {
                    axpy(v, &w_dec[j as usize * d..(j as usize + 1) * d], row);
                }
            }
        });
    out
}

/// Backward of [`decode`]. Given `g_out = ∂L/∂x̂` `[B, d_out]`, adds
/// `∂L/∂W_dec[j] = Σ_rows f_rj · g_out[row]` into `g_w_dec` and `Σ_rows g_out` into
/// `g_b_dec`, and returns `∂L/∂f` at every stored latent (aligned with `latents.val`).
pub fn decode_backward(
    latents: &Latents,
    g_out: &Matrix,
    w_dec: &[f32],
    g_w_dec: &mut [f32],
    g_b_dec: &mut [f32],
) -> Vec<f32> {
    let d = g_out.cols;
    // ∂L/∂f: one dot product per stored latent, parallel over rows.
    let mut g_val = vec![0.0f32; latents.nnz()];
    let rows = latents.rows();
    let bounds: Vec<(usize, usize)> = (0..rows)
        .step_by(ROW_CHUNK)
        .map(|s| (s, (s + ROW_CHUNK).min(rows)))
        .collect();
    let parts: Vec<Vec<f32>> = bounds
        .par_iter()
        .map(|&(s, e)| {
            let mut part = Vec::with_capacity(latents.indptr[e] - latents.indptr[s]);
            for r in s..e {
                let (idx, _) = latents.row(r);
                let g = g_out.row(r);
                for &j in idx {
                    part.push(dot(&w_dec[j as usize * d..(j as usize + 1) * d], g));
                }
            }
            part
        })
        .collect();
    let mut pos = 0;
    for p in parts {
        g_val[pos..pos + p.len()].copy_from_slice(&p);
        pos += p.len();
    }
    // ∂L/∂W_dec: grouped by latent, so each decoder row is written by one task.
    let by_latent = ByLatent::new(latents);
    g_w_dec.par_chunks_mut(d).enumerate().for_each(|(j, grow)| {
        for &(r, e) in by_latent.entries(j) {
            axpy(latents.val[e as usize], g_out.row(r as usize), grow);
        }
    });
    for r in 0..rows {
        for (gb, g) in g_b_dec.iter_mut().zip(g_out.row(r)) {
            *gb += g;
        }
    }
    g_val
}

/// Backward of the encoder product at sparse positions. `g_pre` holds `∂L/∂pre` at
/// the positions of `pattern` (aligned with `pattern.val`); `x [B, d_in]` is the
/// encoder input. Adds `∂L/∂W_enc[:, j] = Σ_rows g_pre[row, j] · x[row]` into
/// `g_w_enc [d_in, n]` and `Σ_rows g_pre[row, j]` into `g_b_enc [n]` (if given).
/// Returns `Σ_rows ∂L/∂x[row] = W_enc · colsum(g_pre)` `[d_in]`, which is what a bias
/// subtracted from every input row (b_dec) needs.
pub fn encode_backward(
    pattern: &Latents,
    g_pre: &[f32],
    x: &Matrix,
    w_enc: &[f32],
    g_w_enc: &mut [f32],
    g_b_enc: Option<&mut [f32]>,
) -> Vec<f32> {
    let n = pattern.n;
    let d = x.cols;
    let by_latent = ByLatent::new(pattern);
    // Accumulate each latent's column contiguously, then scatter it into [d, n].
    let cols: Vec<(usize, Vec<f32>, f32)> = (0..n)
        .into_par_iter()
        .filter(|&j| !by_latent.entries(j).is_empty())
        .map(|j| {
            let mut acc = vec![0.0f32; d];
            let mut bsum = 0.0f32;
            for &(r, e) in by_latent.entries(j) {
                let g = g_pre[e as usize];
                bsum += g;
                axpy(g, x.row(r as usize), &mut acc);
            }
            (j, acc, bsum)
        })
        .collect();
    let mut colsum = vec![0.0f32; n];
    for (j, acc, bsum) in &cols {
        colsum[*j] = *bsum;
        for (i, a) in acc.iter().enumerate() {
            g_w_enc[i * n + j] += a;
        }
    }
    if let Some(gb) = g_b_enc {
        for (g, s) in gb.iter_mut().zip(&colsum) {
            *g += s;
        }
    }
    // W_enc [d, n] · colsum [n] → [d]
    (0..d)
        .into_par_iter()
        .map(|i| dot(&w_enc[i * n..(i + 1) * n], &colsum))
        .collect()
}

/// The stored entries of a [`Latents`] grouped by latent index: for latent `j`,
/// a list of `(row, entry position)`. Built by a counting sort, so the order within
/// a latent is by row, independent of thread count.
pub struct ByLatent {
    offsets: Vec<usize>,
    entries: Vec<(u32, u32)>,
}

impl ByLatent {
    /// Groups `latents` by latent index.
    pub fn new(latents: &Latents) -> Self {
        let mut offsets = vec![0usize; latents.n + 1];
        for &j in &latents.idx {
            offsets[j as usize + 1] += 1;
        }
        for j in 0..latents.n {
            offsets[j + 1] += offsets[j];
        }
        let mut fill = offsets.clone();
        let mut entries = vec![(0u32, 0u32); latents.nnz()];
        for r in 0..latents.rows() {
            for e in latents.indptr[r]..latents.indptr[r + 1] {
                let j = latents.idx[e] as usize;
                entries[fill[j]] = (r as u32, e as u32);
                fill[j] += 1;
            }
        }
        ByLatent { offsets, entries }
    }

    /// `(row, entry position)` pairs of latent `j`.
    #[inline]
    pub fn entries(&self, j: usize) -> &[(u32, u32)] {
        &self.entries[self.offsets[j]..self.offsets[j + 1]]
    }
}

pub use simd::{axpy, dot};

/// `∂L/∂f` at every stored latent for `x̂ = f W + b`, given `g_out = ∂L/∂x̂ [B, d]`,
/// without touching any weight gradient (one dot product per stored entry).
pub fn latent_grads(lat: &Latents, g_out: &Matrix, w: &[f32]) -> Vec<f32> {
    let d = g_out.cols;
    let mut out = Vec::with_capacity(lat.nnz());
    for r in 0..lat.rows() {
        let g = g_out.row(r);
        for &j in lat.row(r).0 {
            out.push(dot(&w[j as usize * d..(j as usize + 1) * d], g));
        }
    }
    out
}

/// `x − b`, row by row: `x [B, d]`, `b [d]` (the encoder input `x − b_dec`).
pub fn subtract_bias(x: &Matrix, b: &[f32]) -> Matrix {
    let mut out = x.clone();
    for r in 0..out.rows {
        for (v, bv) in out.row_mut(r).iter_mut().zip(b) {
            *v -= bv;
        }
    }
    out
}

/// `a -= b` elementwise (how `b_dec` receives the gradient of the encoder input
/// `x − b_dec`).
pub fn sub_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x -= y;
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

/// A buffer whose disjoint parts are written by different parallel tasks: the one
/// raw-pointer wrapper of the kernels. It borrows the buffer for its lifetime.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a `SharedMut` only hands out sub-slices through the unsafe `slice`, whose
// callers guarantee that no two live sub-slices overlap; `T: Send` makes writing from
// another thread sound.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Wraps `buf` for writes from several tasks.
    pub fn new(buf: &'a mut [T]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: std::marker::PhantomData,
        }
    }

    /// The elements `[start, start + len)`.
    ///
    /// # Safety
    /// No other live slice obtained from this wrapper may overlap the range (each task
    /// writes only its own part).
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        debug_assert!(
            start + len <= self.len,
            "SharedMut: [{start}, {}) out of {}",
            start + len,
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }

    /// A raw pointer to element `offset`, for kernels that write strided blocks.
    ///
    /// # Safety
    /// `offset` must be in bounds, and what is written through the pointer must not
    /// overlap what other tasks write.
    #[inline]
    pub unsafe fn ptr_at(&self, offset: usize) -> *mut T {
        debug_assert!(
            offset <= self.len,
            "SharedMut: offset {offset} out of {}",
            self.len
        );
        self.ptr.add(offset)
    }
}
