//! The sparse part of a training step, fused for locality.
//!
//! - [`row_pass`]: per token, the sparse decoder forward `x̂ = f·W_dec + b_dec`, the MSE
//!   gradient `g_out = 2(x̂ − x)/B`, and `∂L/∂f = ⟨W_dec[j], g_out⟩` at every active
//!   latent while the gathered decoder rows are still in cache; optionally the same for
//!   the AuxK reconstruction of the residual `x − x̂`.
//! - [`Grouped`] + [`latent_pass`]: per latent, the decoder-row gradient
//!   `Σ_r f_rj · G[r]` and the encoder-column gradient `Σ_r g_rj · x[r]`, as scatter-adds
//!   over the active (token, latent) pairs only. Pairs are grouped by block of tokens,
//!   then by latent, so that a block's token rows stay in cache while each latent's
//!   accumulators are updated by exactly one task (no races, no atomics).
//! - [`Workspace::backward`]: the main pairs' latent pass fused with writing the
//!   encoder-column gradients into `∂L/∂W_enc [d, n]` chunk by chunk, with the `b_dec`
//!   term of the encoder input `x − b_dec` applied there (so `x − b_dec` is never
//!   stored); AuxK pairs sparse (token-blocked) or dense over the dead set.
//!
//! Every loop is over fixed-size chunks with results combined in a fixed order: the
//! output does not depend on the thread count.

use rayon::prelude::*;
use tracing::debug_span;

use crate::latents::Latents;
use crate::tensor::Matrix;

/// Rows per task in [`row_pass`].
const ROWS_PER_TASK: usize = 32;
/// Latents per task in [`latent_pass`].
const LATENTS_PER_TASK: usize = 32;

use super::engine::Grads;
use super::simd::{dot, dual_scatter, gather_axpy};
use super::SharedMut;

/// The AuxK part of [`row_pass`]: latents reconstructing the residual, and the
/// coefficient of the term.
#[derive(Clone, Copy)]
pub struct AuxInput<'a> {
    /// Latents of the auxiliary reconstruction (decoded without `b_dec`).
    pub latents: &'a Latents,
    /// Coefficient of `mean ‖(x − x̂) − ê‖²`.
    pub coefficient: f32,
}

/// Sums over the batch returned by [`row_pass`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RowSums {
    /// `Σ_r ‖x̂_r − x_r‖²`.
    pub sq_err: f64,
    /// `Σ_r ‖ê_r − (x_r − x̂_r)‖²` (0 without AuxK).
    pub aux_sq: f64,
}

/// Per token `r` of `x [B, d]`: `x̂_r = b_dec + Σ_j f_rj W_dec[j]`,
/// `g_out[r] = 2 (x̂_r − x_r) / B`, `g_f[e] = ⟨W_dec[j_e], g_out[r]⟩` for each stored
/// entry `e` of `main`. With `aux`: `ê_r = Σ_j a_rj W_dec[j]`,
/// `g_aux[r] = c · 2 (ê_r − (x_r − x̂_r)) / B` and `g_f_aux[e] = ⟨W_dec[j_e], g_aux[r]⟩`.
/// Outputs are overwritten (resized as needed). `w_dec` is `[n, d]`.
#[allow(clippy::too_many_arguments)]
pub fn row_pass(
    x: &Matrix,
    w_dec: &[f32],
    b_dec: &[f32],
    main: &Latents,
    aux: Option<AuxInput>,
    g_out: &mut Matrix,
    g_f: &mut Vec<f32>,
    g_aux: &mut Matrix,
    g_f_aux: &mut Vec<f32>,
) -> RowSums {
    let (rows, d) = (x.rows, x.cols);
    assert_eq!(main.rows(), rows, "row_pass: latents and x differ in rows");
    assert_eq!(b_dec.len(), d, "row_pass: b_dec is not [d]");
    assert_eq!(w_dec.len(), main.n * d, "row_pass: W_dec is not [n, d]");
    resize(g_out, rows, d);
    g_f.clear();
    g_f.resize(main.nnz(), 0.0);
    if let Some(a) = aux {
        assert_eq!(
            a.latents.rows(),
            rows,
            "row_pass: aux latents and x differ in rows"
        );
        resize(g_aux, rows, d);
        g_f_aux.clear();
        g_f_aux.resize(a.latents.nnz(), 0.0);
    }
    let scale = 2.0 / rows.max(1) as f32;
    let tasks: Vec<usize> = (0..rows).step_by(ROWS_PER_TASK).collect();
    let g_out_ptr = SharedMut::new(&mut g_out.data);
    let g_f_ptr = SharedMut::new(g_f);
    let g_aux_ptr = SharedMut::new(&mut g_aux.data);
    let g_f_aux_ptr = SharedMut::new(g_f_aux);
    let sums: Vec<RowSums> = tasks
        .into_par_iter()
        .map(|r0| {
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            {
                let mut sums = RowSums::default();
                let mut xh = vec![0.0f32; d];
                let mut eh = vec![0.0f32; d];
                for r in r0..r1 {
                    // SAFETY: row r (and its latent entries) belong to this task only.
                    let go = unsafe { g_out_ptr.slice(r * d, d) };
                    let (lo, hi) = (main.indptr[r], main.indptr[r + 1]);
                    let gf = unsafe { g_f_ptr.slice(lo, hi - lo) };
                    let (idx, val) = main.row(r);
                    xh.copy_from_slice(b_dec);
                    gather_axpy(&mut xh, idx, val, w_dec);
                    let xr = x.row(r);
                    let mut sq = 0.0f32;
                    for ((g, &h), &t) in go.iter_mut().zip(&xh).zip(xr) {
                        let e = h - t;
                        sq += e * e;
                        *g = scale * e;
                        // keep x̂ − x for the residual of AuxK
                    }
                    sums.sq_err += sq as f64;
                    for (g, &j) in gf.iter_mut().zip(idx) {
                        *g = dot(&w_dec[j as usize * d..(j as usize + 1) * d], go);
                    }
                    if let Some(a) = aux {
                        let l = a.latents;
                        let (lo, hi) = (l.indptr[r], l.indptr[r + 1]);
                        let ga = unsafe { g_aux_ptr.slice(r * d, d) };
                        let gfa = unsafe { g_f_aux_ptr.slice(lo, hi - lo) };
                        let (idx, val) = l.row(r);
                        eh.iter_mut().for_each(|v| *v = 0.0);
                        gather_axpy(&mut eh, idx, val, w_dec);
                        // ê − (x − x̂) = ê + (x̂ − x)
                        let c = a.coefficient * scale;
                        let mut asq = 0.0f32;
                        for (((g, &e), &h), &t) in ga.iter_mut().zip(&eh).zip(&xh).zip(xr) {
                            let diff = e + (h - t);
                            asq += diff * diff;
                            *g = c * diff;
                        }
                        sums.aux_sq += asq as f64;
                        for (g, &j) in gfa.iter_mut().zip(idx) {
                            *g = dot(&w_dec[j as usize * d..(j as usize + 1) * d], ga);
                        }
                    }
                }
                sums
            }
        })
        .collect();
    sums.iter().fold(RowSums::default(), |a, s| RowSums {
        sq_err: a.sq_err + s.sq_err,
        aux_sq: a.aux_sq + s.aux_sq,
    })
}

fn resize(m: &mut Matrix, rows: usize, cols: usize) {
    if m.rows != rows || m.cols != cols {
        *m = Matrix::zeros(rows, cols);
    }
}

/// Active (token, latent) pairs grouped by block of tokens, then by latent, each with the
/// latent's value `f` and the gradient `g` at its pre-activation.
#[derive(Default)]
pub struct Grouped {
    n: usize,
    blocks: usize,
    /// `offsets[b·n + j]..offsets[b·n + j + 1]`: pairs of latent j in token block b.
    offsets: Vec<usize>,
    rows: Vec<u32>,
    f: Vec<f32>,
    g: Vec<f32>,
}

impl Grouped {
    /// Groups the entries of `lat` (values `lat.val`, gradients `g_pre`, aligned with
    /// them) by blocks of `block_rows` tokens, then by latent; within a latent, by row.
    pub fn build(&mut self, lat: &Latents, g_pre: &[f32], block_rows: usize) {
        assert_eq!(
            g_pre.len(),
            lat.nnz(),
            "Grouped: g_pre does not match the latents"
        );
        let n = lat.n;
        let rows = lat.rows();
        let block_rows = block_rows.max(1);
        let blocks = rows.div_ceil(block_rows).max(1);
        self.n = n;
        self.blocks = blocks;
        self.offsets.clear();
        self.offsets.resize(blocks * n + 1, 0);
        for r in 0..rows {
            let b = r / block_rows;
            for &j in lat.row(r).0 {
                self.offsets[b * n + j as usize + 1] += 1;
            }
        }
        for i in 0..blocks * n {
            self.offsets[i + 1] += self.offsets[i];
        }
        let nnz = lat.nnz();
        self.rows.resize(nnz, 0);
        self.f.resize(nnz, 0.0);
        self.g.resize(nnz, 0.0);
        let mut fill = self.offsets[..blocks * n].to_vec();
        for r in 0..rows {
            let b = r / block_rows;
            let (lo, hi) = (lat.indptr[r], lat.indptr[r + 1]);
            for ((&j, &f), &g) in lat.idx[lo..hi]
                .iter()
                .zip(&lat.val[lo..hi])
                .zip(&g_pre[lo..hi])
            {
                let key = b * n + j as usize;
                let p = fill[key];
                fill[key] += 1;
                self.rows[p] = r as u32;
                self.f[p] = f;
                self.g[p] = g;
            }
        }
    }
}

/// For every latent `j`, over the pairs of `grouped`: `g_w_dec[j] += Σ f · g_rows[r]`
/// (skipped when `g_rows` is `None`), `gt[j] += Σ g · x[r]` and `colsum[j] += Σ g`.
/// `g_w_dec` and `gt` are `[n, d]`, `colsum` `[n]`.
pub fn latent_pass(
    grouped: &Grouped,
    g_rows: Option<&Matrix>,
    x: &Matrix,
    g_w_dec: &mut [f32],
    gt: &mut [f32],
    colsum: &mut [f32],
) {
    let (n, d) = (grouped.n, x.cols);
    assert_eq!(gt.len(), n * d, "latent_pass: gt is not [n, d]");
    assert_eq!(g_w_dec.len(), n * d, "latent_pass: g_w_dec is not [n, d]");
    assert_eq!(colsum.len(), n, "latent_pass: colsum is not [n]");
    for b in 0..grouped.blocks {
        let off = &grouped.offsets[b * n..(b + 1) * n + 1];
        g_w_dec
            .par_chunks_mut(LATENTS_PER_TASK * d)
            .zip(gt.par_chunks_mut(LATENTS_PER_TASK * d))
            .zip(colsum.par_chunks_mut(LATENTS_PER_TASK))
            .enumerate()
            .for_each(|(t, ((gw, gtc), cs))| {
                let j0 = t * LATENTS_PER_TASK;
                if off[j0] == off[j0 + cs.len()] {
                    return;
                }
                {
                    for (jj, c) in cs.iter_mut().enumerate() {
                        let j = j0 + jj;
                        let (lo, hi) = (off[j], off[j + 1]);
                        if lo == hi {
                            continue;
                        }
                        let gw_j = &mut gw[jj * d..(jj + 1) * d];
                        let gt_j = &mut gtc[jj * d..(jj + 1) * d];
                        let s: f32 = grouped.g[lo..hi].iter().sum();
                        match g_rows {
                            Some(gr) => dual_scatter(
                                gw_j,
                                gt_j,
                                &grouped.rows[lo..hi],
                                &grouped.f[lo..hi],
                                &grouped.g[lo..hi],
                                &gr.data,
                                &x.data,
                            ),
                            None => {
                                for p in lo..hi {
                                    let r = grouped.rows[p] as usize;
                                    super::simd::axpy(grouped.g[p], x.row(r), gt_j);
                                }
                            }
                        }
                        *c += s;
                    }
                }
            });
    }
}

/// Latents per task of [`main_pass`].
const MAIN_CHUNK: usize = 32;

thread_local! {
    static GT_LOCAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The main pairs' latent pass, fused with the encoder-gradient transposition. For
/// each chunk of latents it *writes* (every entry of the chunk's rows and columns):
/// `∂L/∂W_dec[j] = aux_gw[pos[j]] + Σ f · g_out[r]`, the encoder column
/// `c_j = aux_gt[pos[j]] + Σ g · x[r]` (the AuxK terms only for dead latents, whose
/// `pos[j] ≠ u32::MAX`), `colsum[j] += Σ g`, then `∂L/∂W_enc[:, j] = c_j − b_dec ·
/// colsum[j]` as contiguous pieces of the chunk's columns.
#[allow(clippy::too_many_arguments)]
fn main_pass(
    grouped: &Grouped,
    g_out: &Matrix,
    x: &Matrix,
    b_dec: &[f32],
    pos: &[u32],
    (aux_gt, aux_gw): (&[f32], &[f32]),
    g_w_dec: &mut [f32],
    g_w_enc: &mut [f32],
    colsum: &mut [f32],
) {
    let (n, d) = (grouped.n, x.cols);
    assert_eq!(grouped.blocks, 1, "main_pass: pairs must form one block");
    assert_eq!(g_w_enc.len(), d * n, "main_pass: g_w_enc is not [d, n]");
    assert_eq!(g_w_dec.len(), n * d, "main_pass: g_w_dec is not [n, d]");
    let off = &grouped.offsets;
    let gwe = SharedMut::new(g_w_enc);
    g_w_dec
        .par_chunks_mut(MAIN_CHUNK * d)
        .zip(colsum.par_chunks_mut(MAIN_CHUNK))
        .enumerate()
        .for_each(|(t, (gw, cs))| {
            let j0 = t * MAIN_CHUNK;
            let len = cs.len();
            GT_LOCAL.with(|cell| {
                let mut local = cell.borrow_mut();
                local.clear();
                local.resize(len * d, 0.0);
                for (jj, c) in cs.iter_mut().enumerate() {
                    let j = j0 + jj;
                    let gt_j = &mut local[jj * d..(jj + 1) * d];
                    let gw_j = &mut gw[jj * d..(jj + 1) * d];
                    match pos[j] {
                        u32::MAX => gw_j.fill(0.0),
                        p => {
                            let row = p as usize * d..(p as usize + 1) * d;
                            gt_j.copy_from_slice(&aux_gt[row.clone()]);
                            gw_j.copy_from_slice(&aux_gw[row]);
                        }
                    }
                    let (lo, hi) = (off[j], off[j + 1]);
                    if lo == hi {
                        continue;
                    }
                    *c += grouped.g[lo..hi].iter().sum::<f32>();
                    dual_scatter(
                        gw_j,
                        gt_j,
                        &grouped.rows[lo..hi],
                        &grouped.f[lo..hi],
                        &grouped.g[lo..hi],
                        &g_out.data,
                        &x.data,
                    );
                }
                for i in 0..d {
                    // SAFETY: columns j0..j0+len of every row belong to this task only.
                    let dst = unsafe { gwe.slice(i * n + j0, len) };
                    let b = b_dec[i];
                    for (jj, v) in dst.iter_mut().enumerate() {
                        *v = local[jj * d + i] - b * cs[jj];
                    }
                }
            });
        });
}

/// `Σ_rows m[r]` `[cols]`, summed in fixed chunks of rows (deterministic).
pub fn column_sums(m: &Matrix) -> Vec<f32> {
    let cols = m.cols;
    let parts: Vec<Vec<f32>> = m
        .data
        .par_chunks((64 * cols).max(1))
        .map(|c| {
            let mut s = vec![0.0f32; cols];
            for row in c.chunks(cols.max(1)) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            s
        })
        .collect();
    let mut s = vec![0.0f32; cols];
    for p in parts {
        for (a, v) in s.iter_mut().zip(&p) {
            *a += v;
        }
    }
    s
}

/// `W [d, n] · v [n]` → `[d]`, one row per task.
pub fn matvec(w: &[f32], v: &[f32]) -> Vec<f32> {
    let n = v.len();
    if n == 0 {
        return vec![0.0; 0];
    }
    w.par_chunks(n).map(|row| dot(row, v)).collect()
}

/// Buffers a fast training step reuses from one step to the next (the architecture owns
/// one), so that a step allocates no large arrays.
#[derive(Default)]
pub struct Workspace {
    /// The encoder weights in the engine's layout.
    pub encoder: crate::kernels::encoder::Encoder,
    /// `∂L/∂x̂ [B, d]`.
    pub g_out: Matrix,
    /// `∂L/∂ê [B, d]` of the AuxK reconstruction.
    pub g_aux: Matrix,
    /// `∂L/∂f` at the main latents.
    pub g_f: Vec<f32>,
    /// `∂L/∂f` at the AuxK latents.
    pub g_f_aux: Vec<f32>,
    grouped: Grouped,
    grouped_aux: Grouped,
    /// This step's dead latents, increasing (set by [`Workspace::prepare_aux`]).
    dead: Vec<u32>,
    /// `dead_pos[j]`: the position of latent `j` in `dead` (`u32::MAX` if alive).
    dead_pos: Vec<u32>,
    /// Compact AuxK gradients over the dead set: encoder columns `[|dead|, d]` and
    /// decoder rows `[|dead|, d]`; [`main_pass`] starts each dead latent's
    /// accumulators from them.
    aux_gt: Vec<f32>,
    aux_gw: Vec<f32>,
    colsum: Vec<f32>,
    dense: DenseAuxBuffers,
}

#[derive(Default)]
struct DenseAuxBuffers {
    /// `F [B, |dead|]`: the AuxK latents over the dead set.
    f: Vec<f32>,
    /// `W_D [|dead|, d]`: their decoder rows, and `W_Dᵀ [d, |dead|]`.
    w: Vec<f32>,
    wt: Vec<f32>,
    /// `G [B, |dead|]`: `∂L/∂pre` of the AuxK term over the dead set.
    gf: Vec<f32>,
    /// The products `F W_D` and `g_aux W_Dᵀ` on the encoder's engine.
    fwd: crate::kernels::encoder::Encoder,
    bwd: crate::kernels::encoder::Encoder,
}

/// How the AuxK pairs are differentiated in [`Workspace::backward`].
pub enum AuxBackward<'a> {
    /// No AuxK term.
    None,
    /// Sparse: `∂L/∂ê` was computed by [`row_pass`] (in the workspace); the latents and
    /// `∂L/∂pre` at their entries.
    Sparse(&'a Latents, &'a [f32]),
    /// Dense over the dead set: everything (reconstruction, loss, gradients) computed
    /// with matrix products restricted to the dead latents, from the workspace's `F`;
    /// worth it when the AuxK latents fill a good part of `[B, |dead|]`.
    Dense {
        /// Coefficient of the term.
        coefficient: f32,
    },
}

/// Expected density of the AuxK latents within `[B, |dead|]` (`k_aux / |dead|`) above
/// which [`AuxBackward::Dense`] is cheaper than the sparse kernels (a dense product
/// costs `|dead|/k_aux` times the arithmetic, at several times the speed).
pub const AUX_DENSE_ABOVE: f64 = 0.25;

/// Tokens per block when grouping the AuxK pairs (the block's `x` and `g_aux` rows stay
/// in cache while the dead latents' accumulators are updated).
const AUX_BLOCK_ROWS: usize = 256;

/// Writes rows of the dense AuxK matrix `F [B, |dead|]` from inside the encoder's
/// row visits (see [`Workspace::encoder_with_aux`]).
pub struct AuxRows<'a> {
    f: SharedMut<'a, f32>,
    rows: usize,
    pos: &'a [u32],
    nd: usize,
}

impl AuxRows<'_> {
    /// Sets row `r` of `F` to the entries `(latent, value)` (all at dead latents),
    /// zero elsewhere.
    ///
    /// # Safety
    /// No other call may write row `r` at the same time (the encoder visits every row
    /// exactly once, on one task).
    pub unsafe fn write(&self, r: usize, entries: &[(u32, f32)]) {
        assert!(r < self.rows, "AuxRows: row {r} out of range");
        let row = self.f.slice(r * self.nd, self.nd);
        row.fill(0.0);
        for &(j, v) in entries {
            let p = self.pos[j as usize];
            assert!(p != u32::MAX, "AuxK latent {j} is not in the dead set");
            row[p as usize] = v;
        }
    }
}

impl Workspace {
    /// Starts a step's AuxK term over the `dead` latents (increasing; empty: no term)
    /// of `n`, for a batch of `rows` tokens with `k_aux` latents each. Returns whether
    /// the dense-over-the-dead-set route is taken; then `F` must be filled (every row)
    /// before [`Workspace::backward`].
    pub fn prepare_aux(&mut self, n: usize, rows: usize, dead: &[u32], k_aux: usize) -> bool {
        self.dead.clear();
        self.dead.extend_from_slice(dead);
        self.dead_pos.clear();
        self.dead_pos.resize(n, u32::MAX);
        for (p, &j) in dead.iter().enumerate() {
            self.dead_pos[j as usize] = p as u32;
        }
        let nd = dead.len();
        let dense = nd > 0 && k_aux.min(nd) as f64 > AUX_DENSE_ABOVE * nd as f64;
        if dense {
            self.dense.f.resize(rows * nd, 0.0);
        }
        dense
    }

    /// The encoder (loaded) together with a writer of the dense AuxK rows, so that the
    /// encoder's row visits can fill `F` directly. Call after
    /// [`Workspace::prepare_aux`] returned true.
    pub fn encoder_with_aux(&mut self) -> (&crate::kernels::encoder::Encoder, AuxRows<'_>) {
        let nd = self.dead.len();
        let rows = self.dense.f.len().checked_div(nd).unwrap_or(0);
        (
            &self.encoder,
            AuxRows {
                f: SharedMut::new(&mut self.dense.f),
                rows,
                pos: &self.dead_pos,
                nd,
            },
        )
    }

    /// Fills the dense AuxK matrix `F` from sparse latents (all at dead latents).
    pub fn set_dense_aux(&mut self, lat: &Latents) {
        let nd = self.dead.len();
        let pos = &self.dead_pos;
        self.dense.f.clear();
        self.dense.f.resize(lat.rows() * nd, 0.0);
        self.dense
            .f
            .par_chunks_mut(nd.max(1))
            .enumerate()
            .for_each(|(r, frow)| {
                let (idx, val) = lat.row(r);
                for (&j, &v) in idx.iter().zip(val) {
                    let p = pos[j as usize];
                    assert!(p != u32::MAX, "AuxK latent {j} is not in the dead set");
                    frow[p as usize] = v;
                }
            });
    }

    /// The backward pass after [`row_pass`] (whose `g_out`/`g_aux` are in `self`):
    /// `g_pre` is `∂L/∂pre` at the entries of `main` (and, for sparse AuxK, its own
    /// at those of the AuxK latents). *Writes* `∂L/∂W_dec`, `∂L/∂W_enc`, `∂L/∂b_enc`
    /// and `∂L/∂b_dec` (decoder bias and encoder input `x − b_dec`): every entry of
    /// `grads` is overwritten. `x [B, d]` is the raw batch. With AuxK,
    /// [`Workspace::prepare_aux`] must have been called for this step. Returns the
    /// dense AuxK route's `Σ ‖ê − (x − x̂)‖²` (0 otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        x: &Matrix,
        b_dec: &[f32],
        w_enc: &[f32],
        main: &Latents,
        g_pre: &[f32],
        w_dec: &[f32],
        aux: AuxBackward,
        grads: Grads,
    ) -> f64 {
        let (n, d) = (main.n, x.cols);
        if matches!(aux, AuxBackward::None) {
            self.prepare_aux(n, x.rows, &[], 0);
        }
        assert_eq!(
            self.dead_pos.len(),
            n,
            "backward: prepare_aux was not called"
        );
        self.colsum.clear();
        self.colsum.resize(n, 0.0);
        // 1. AuxK: its encoder-column and decoder-row gradients over the dead latents
        //    into the compact `aux_gt`, `aux_gw` (row p for latent dead[p]).
        let nd = self.dead.len();
        self.aux_gt.clear();
        self.aux_gt.resize(nd * d, 0.0);
        self.aux_gw.clear();
        self.aux_gw.resize(nd * d, 0.0);
        let mut aux_sq = 0.0;
        let span = debug_span!("aux").entered();
        match aux {
            AuxBackward::None => {}
            AuxBackward::Sparse(al, ag) => {
                // Re-index the AuxK latents over the dead set, then the token-blocked
                // latent pass into the compact buffers.
                let pos = &self.dead_pos;
                let mut compact = Latents::with_capacity(nd, al.rows(), 0);
                compact.indptr.clone_from(&al.indptr);
                compact.idx.extend(al.idx.iter().map(|&j| pos[j as usize]));
                compact.val.extend_from_slice(&al.val);
                self.grouped_aux.build(&compact, ag, AUX_BLOCK_ROWS);
                let mut cs = vec![0.0f32; nd];
                latent_pass(
                    &self.grouped_aux,
                    Some(&self.g_aux),
                    x,
                    &mut self.aux_gw,
                    &mut self.aux_gt,
                    &mut cs,
                );
                for (&j, c) in self.dead.iter().zip(&cs) {
                    self.colsum[j as usize] += c;
                }
            }
            AuxBackward::Dense { coefficient } => {
                aux_sq = self.aux_dense(x, w_dec, coefficient);
            }
        }
        drop(span);
        // 2. Main pairs, grouped by latent over the whole batch.
        let span = debug_span!("main_pass").entered();
        self.grouped.build(main, g_pre, x.rows);
        main_pass(
            &self.grouped,
            &self.g_out,
            x,
            b_dec,
            &self.dead_pos,
            (&self.aux_gt, &self.aux_gw),
            grads.w_dec,
            grads.w_enc,
            &mut self.colsum,
        );
        drop(span);
        grads.b_enc.copy_from_slice(&self.colsum);
        let gsum = column_sums(&self.g_out);
        let s = matvec(w_enc, &self.colsum);
        for ((g, a), b) in grads.b_dec.iter_mut().zip(&gsum).zip(&s) {
            *g = a - b;
        }
        aux_sq
    }

    /// [`AuxBackward::Dense`]: with `F [B, D]` the AuxK latents over the `D` dead
    /// latents and `W_D [D, d]` their decoder rows, `ê = F W_D`,
    /// `g_aux = c · 2 (ê + x̂ − x) / B` (`x̂ − x` read back from `g_out`),
    /// `G = (g_aux W_Dᵀ) ⊙ 1[F > 0]`, then `aux_gw = Fᵀ g_aux`, `aux_gt = Gᵀ x`,
    /// `colsum[D] += Σ_rows G`. Returns `Σ ‖ê − (x − x̂)‖²`.
    fn aux_dense(&mut self, x: &Matrix, w_dec: &[f32], coefficient: f32) -> f64 {
        use super::gemm::{gemm, Transpose};
        let (b, d, nd) = (x.rows, x.cols, self.dead.len());
        if nd == 0 || b == 0 {
            return 0.0;
        }
        assert_eq!(
            self.dense.f.len(),
            b * nd,
            "aux_dense: F is not [B, |dead|]"
        );
        let _span = debug_span!("aux_dense", dead = nd).entered();
        let bufs = &mut self.dense;
        bufs.w.clear();
        bufs.w.resize(nd * d, 0.0);
        bufs.w
            .par_chunks_mut(d)
            .zip(self.dead.par_iter())
            .for_each(|(row, &j)| {
                row.copy_from_slice(&w_dec[j as usize * d..(j as usize + 1) * d]);
            });
        // ê = F W_D with the encoder's engine, each row turned at once into
        // g_aux = c · (ê + (x̂ − x)) (x̂ − x = g_out / scale) and its squared norm.
        let scale = 2.0 / b as f32;
        let c = coefficient * scale;
        let inv = 1.0 / scale;
        resize(&mut self.g_aux, b, d);
        let f = Matrix {
            rows: b,
            cols: nd,
            data: std::mem::take(&mut bufs.f),
        };
        bufs.fwd.load(&bufs.w, nd, d);
        let g_out = &self.g_out;
        let ga_ptr = SharedMut::new(&mut self.g_aux.data);
        let zeros = vec![0.0f32; d.max(nd)];
        let sq = bufs.fwd.run(
            &bufs.w,
            &f,
            None,
            &zeros[..d],
            || 0.0f64,
            |s, r, e_hat| {
                // SAFETY: the engine visits row r once, on one task.
                let ga = unsafe { ga_ptr.slice(r * d, d) };
                let mut sq = 0.0f32;
                for ((a, &e), &o) in ga.iter_mut().zip(e_hat).zip(g_out.row(r)) {
                    let diff = e + inv * o;
                    sq += diff * diff;
                    *a = c * diff;
                }
                *s += sq as f64;
            },
        );
        let aux_sq = sq.iter().sum();
        // G = (g_aux W_Dᵀ) ⊙ 1[F > 0], each row masked as it comes out of the engine,
        // with per-task column sums of G added in task order (deterministic).
        bufs.wt.resize(d * nd, 0.0);
        for (p, row) in bufs.w.chunks(d).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                bufs.wt[i * nd + p] = v;
            }
        }
        bufs.bwd.load(&bufs.wt, d, nd);
        bufs.gf.resize(b * nd, 0.0);
        let gf_ptr = SharedMut::new(&mut bufs.gf);
        let fm = &f;
        let parts = bufs.bwd.run(
            &bufs.wt,
            &self.g_aux,
            None,
            &zeros[..nd],
            || vec![0.0f32; nd],
            |cs, r, line| {
                // SAFETY: the engine visits row r once, on one task.
                let grow = unsafe { gf_ptr.slice(r * nd, nd) };
                for (((g, &v), &fv), a) in grow.iter_mut().zip(line).zip(fm.row(r)).zip(cs) {
                    let v = if fv > 0.0 { v } else { 0.0 };
                    *g = v;
                    *a += v;
                }
            },
        );
        bufs.f = f.data;
        for part in &parts {
            for (&j, v) in self.dead.iter().zip(part) {
                self.colsum[j as usize] += v;
            }
        }
        // aux_gw = Fᵀ g_aux
        gemm(
            nd,
            b,
            d,
            1.0,
            &bufs.f,
            Transpose::Yes,
            &self.g_aux.data,
            Transpose::No,
            0.0,
            &mut self.aux_gw,
        );
        // aux_gt = Gᵀ x
        gemm(
            nd,
            b,
            d,
            1.0,
            &bufs.gf,
            Transpose::Yes,
            &x.data,
            Transpose::No,
            0.0,
            &mut self.aux_gt,
        );
        aux_sq
    }

    /// [`row_pass`] into this workspace's buffers.
    pub fn rows(
        &mut self,
        x: &Matrix,
        w_dec: &[f32],
        b_dec: &[f32],
        main: &Latents,
        aux: Option<AuxInput>,
    ) -> RowSums {
        row_pass(
            x,
            w_dec,
            b_dec,
            main,
            aux,
            &mut self.g_out,
            &mut self.g_f,
            &mut self.g_aux,
            &mut self.g_f_aux,
        )
    }
}
