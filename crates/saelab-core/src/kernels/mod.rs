//! CPU kernels for the SAE hot loops, kept apart from the maths that calls them.
//!
//! Shapes use the SAELens orientation: `W_enc [d_in, n]`, `W_dec [n, d_out]`. Latents
//! are sparse ([`Latents`]); only the encoder forward is a dense product.
//!
//! [`reference`] holds plain dense versions ("what a framework does") used by tests
//! and by the benchmark's baseline.

pub mod encoder;
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

/// Phase timer for profiling a step: with the environment variable `SAELAB_PROFILE`
/// set, [`Phases::mark`] prints the time since the previous mark to stderr.
pub struct Phases {
    on: bool,
    last: std::time::Instant,
}

impl Phases {
    /// Starts timing (a no-op unless `SAELAB_PROFILE` is set).
    pub fn start() -> Self {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        Phases {
            on: *ON.get_or_init(|| std::env::var_os("SAELAB_PROFILE").is_some()),
            last: std::time::Instant::now(),
        }
    }

    /// Prints `label` and the milliseconds since the previous mark.
    pub fn mark(&mut self, label: &str) {
        if self.on {
            let now = std::time::Instant::now();
            eprintln!(
                "  {label:<28} {:8.2} ms",
                (now - self.last).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}
