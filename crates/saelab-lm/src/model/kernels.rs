//! CPU kernels of the transformer forwards on plain row-major `f32` buffers: linear
//! layers, RMSNorm (over rows, or over the heads of query/key rows), embedding lookup,
//! rotary embeddings, causal grouped-query attention (optionally within a sliding
//! window), SwiGLU, GeGLU and the cross-entropy of logits; and, beside the full-sequence
//! RoPE and attention, their incremental variants (positions from an offset, attention
//! over cached keys and values: [`RopeTable::apply_interleaved_at`],
//! [`cached_attention`]), so that the full forward's kernels stay as they are.
//!
//! Activations are `[N, width]` row-major with `N = B·T` rows, row `b·T + t` holding
//! position `t` of sequence `b`. Work is split over rows (or over `(sequence, head)`
//! pairs for attention) with rayon; matrix products go through `saelab_core`'s GEMM,
//! which splits the output between the rayon threads.

use rayon::prelude::*;
use saelab_core::kernels::SharedMut;

/// Rows per rayon task in the row-wise kernels.
const ROWS_PER_TASK: usize = 32;
/// Query rows per attention tile: keys beyond the tile's last query are skipped.
const QUERY_TILE: usize = 64;

/// Rows of `x` per pass over the weights in [`linear_few_rows`] (they stay in cache).
const FEW_ROWS: usize = 16;
/// Output features per rayon task on the matrix–vector path.
const FEW_ROWS_OUTPUTS_PER_TASK: usize = 128;

/// `y[N, d_out] = x[N, d_in] · wᵀ`, with `w` stored `[d_out, d_in]` (PyTorch layout).
/// Runs on all rayon threads through `saelab_core`'s GEMM (one block of `y` per thread).
pub fn linear(x: &[f32], n: usize, w: &[f32], d_in: usize, d_out: usize, y: &mut [f32]) {
    use saelab_core::kernels::{gemm, Transpose};
    gemm(
        n,
        d_in,
        d_out,
        1.0,
        x,
        Transpose::No,
        w,
        Transpose::Yes,
        0.0,
        y,
    );
}

/// Which kernel a forward's products take: GEMM for whole sequences and prompts, the
/// matrix–vector kernel for the one-token steps of a generation. The choice depends on
/// the kind of forward only, never on how many rows it has, so that every row's values
/// are the same whatever else runs in its batch (the same tokens alone or in a batch;
/// an extraction resumed at another batch boundary, bit for bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// [`linear`].
    Gemm,
    /// [`linear_few_rows`].
    FewRows,
}

impl Product {
    /// [`Product::FewRows`] for an incremental forward of one new token per stream,
    /// else [`Product::Gemm`].
    pub fn for_forward(incremental: bool, seq_len: usize) -> Self {
        if incremental && seq_len == 1 {
            Product::FewRows
        } else {
            Product::Gemm
        }
    }

    /// [`linear`] or [`linear_few_rows`].
    pub fn linear(self, x: &[f32], n: usize, w: &[f32], d_in: usize, d_out: usize, y: &mut [f32]) {
        match self {
            Product::Gemm => linear(x, n, w, d_in, d_out, y),
            Product::FewRows => linear_few_rows(x, n, w, d_in, d_out, y),
        }
    }
}

/// [`linear`] for the few rows of a generation step: every output feature `o` is
/// `dot(x[r], w[o])`, each row of `w` read once per 16 rows of `x` (which stay
/// in cache), the output features split between the rayon threads. A matrix–vector
/// product is bound by reading `w`; GEMM would first copy (pack) all of `w` for one row
/// of output. Each value depends on its own row of `x` only.
pub fn linear_few_rows(x: &[f32], n: usize, w: &[f32], d_in: usize, d_out: usize, y: &mut [f32]) {
    use saelab_core::kernels::dot;
    assert_eq!(x.len(), n * d_in, "linear: x has the wrong size");
    assert_eq!(w.len(), d_out * d_in, "linear: w has the wrong size");
    assert_eq!(y.len(), n * d_out, "linear: y has the wrong size");
    if n == 0 || d_out == 0 || d_in == 0 {
        y.fill(0.0);
        return;
    }
    let per = FEW_ROWS_OUTPUTS_PER_TASK;
    for r0 in (0..n).step_by(FEW_ROWS) {
        let m = FEW_ROWS.min(n - r0);
        let xs = &x[r0 * d_in..(r0 + m) * d_in];
        // Output-major `[d_out, m]`, so that each task writes one contiguous block.
        let mut yt = vec![0f32; d_out * m];
        yt.par_chunks_mut(per * m)
            .zip(w.par_chunks(per * d_in))
            .for_each(|(yc, wc)| {
                for (yo, wo) in yc.chunks_exact_mut(m).zip(wc.chunks_exact(d_in)) {
                    for (r, v) in yo.iter_mut().enumerate() {
                        *v = dot(&xs[r * d_in..(r + 1) * d_in], wo);
                    }
                }
            });
        for (o, yo) in yt.chunks_exact(m).enumerate() {
            for (r, &v) in yo.iter().enumerate() {
                y[(r0 + r) * d_out + o] = v;
            }
        }
    }
}

/// `y[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight` for every row of `x [N, d]`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let d = weight.len();
    x.par_chunks(ROWS_PER_TASK * d)
        .zip(y.par_chunks_mut(ROWS_PER_TASK * d))
        .for_each(|(xs, ys)| {
            for (xr, yr) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
                let scale = 1.0 / (mean_square(xr) + eps).sqrt();
                for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
                    *o = v * scale * w;
                }
            }
        });
}

/// `x[r] = rms_norm(x[r]) · weight` in place for every row of `x [N, d]`: the same
/// values as [`rms_norm`] into another buffer.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    x.par_chunks_mut(ROWS_PER_TASK * d).for_each(|xs| {
        for xr in xs.chunks_exact_mut(d) {
            let scale = 1.0 / (mean_square(xr) + eps).sqrt();
            for (v, &w) in xr.iter_mut().zip(weight) {
                *v = *v * scale * w;
            }
        }
    });
}

/// `y[r] = x[r] / sqrt(mean(x[r]²) + eps)` for every row of `x [N, d]`: RMSNorm without
/// its gain. [`scale_columns`] by the gain afterwards gives [`rms_norm`]'s values
/// exactly.
pub fn rms_normalize(x: &[f32], d: usize, eps: f32, y: &mut [f32]) {
    x.par_chunks(ROWS_PER_TASK * d)
        .zip(y.par_chunks_mut(ROWS_PER_TASK * d))
        .for_each(|(xs, ys)| {
            for (xr, yr) in xs.chunks_exact(d).zip(ys.chunks_exact_mut(d)) {
                let scale = 1.0 / (mean_square(xr) + eps).sqrt();
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = v * scale;
                }
            }
        });
}

/// `y[r][j] *= w[j]` for every row of `y [N, d]`, `d = w.len()`.
pub fn scale_columns(y: &mut [f32], w: &[f32]) {
    let d = w.len();
    y.par_chunks_mut(ROWS_PER_TASK * d).for_each(|ys| {
        for yr in ys.chunks_exact_mut(d) {
            for (o, &g) in yr.iter_mut().zip(w) {
                *o *= g;
            }
        }
    });
}

/// `x[r] = table[tokens[r]]`: rows of `table [V, d]` gathered into `x [N, d]`,
/// `d = x.len() / tokens.len()`.
pub fn gather_rows(table: &[f32], tokens: &[u32], x: &mut [f32]) {
    let d = x.len() / tokens.len().max(1);
    x.par_chunks_mut(d)
        .zip(tokens.par_iter())
        .for_each(|(row, &t)| {
            let t = t as usize;
            row.copy_from_slice(&table[t * d..(t + 1) * d]);
        });
}

/// Mean of squares with eight independent accumulators (vectorisable, and more
/// accurate than one running sum).
fn mean_square(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in rest {
        s += v * v;
    }
    s / x.len() as f32
}

/// Precomputed rotary-embedding tables: `cos[p][i]`, `sin[p][i]` for positions
/// `p < max_len` and frequency index `i < head_dim / 2`, angle `p · base^(−2i/head_dim)`
/// computed in f64.
#[derive(Clone, Debug)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for `max_len` positions of heads `head_dim` wide.
    pub fn new(head_dim: usize, base: f64, max_len: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_len * half);
        let mut sin = Vec::with_capacity(max_len * half);
        for p in 0..max_len {
            for i in 0..half {
                let freq = 1.0 / base.powf((2 * i) as f64 / head_dim as f64);
                let (s, c) = (p as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Number of positions covered.
    pub fn max_len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotate, in place, the first `n_rot_heads` heads of every row of `qkv [N, stride]`
    /// (the query heads followed by the key heads) with the interleaved convention:
    /// pairs `(2i, 2i+1)` of a head are rotated by the angle of position `row % seq_len`.
    pub fn apply_interleaved(
        &self,
        qkv: &mut [f32],
        stride: usize,
        n_rot_heads: usize,
        seq_len: usize,
    ) {
        qkv.par_chunks_mut(ROWS_PER_TASK * stride)
            .enumerate()
            .for_each(|(chunk, rows)| {
                for (j, row) in rows.chunks_exact_mut(stride).enumerate() {
                    let p = (chunk * ROWS_PER_TASK + j) % seq_len;
                    self.rotate_row(row, n_rot_heads, p);
                }
            });
    }

    /// [`RopeTable::apply_interleaved`] for sequences that do not start at position 0:
    /// row `r` of `qkv [B·T, stride]` is rotated by the angle of position
    /// `starts[r / seq_len] + r % seq_len` (`starts` has one entry per sequence, and every
    /// position is below [`RopeTable::max_len`]). The incremental forward's RoPE.
    pub fn apply_interleaved_at(
        &self,
        qkv: &mut [f32],
        stride: usize,
        n_rot_heads: usize,
        seq_len: usize,
        starts: &[usize],
    ) {
        debug_assert_eq!(qkv.len(), starts.len() * seq_len * stride);
        qkv.par_chunks_mut(ROWS_PER_TASK * stride)
            .enumerate()
            .for_each(|(chunk, rows)| {
                for (j, row) in rows.chunks_exact_mut(stride).enumerate() {
                    let r = chunk * ROWS_PER_TASK + j;
                    self.rotate_row(row, n_rot_heads, starts[r / seq_len] + r % seq_len);
                }
            });
    }

    /// Rotates the pairs `(2i, 2i+1)` of the first `n_rot_heads` heads of `row` by the
    /// angles of position `p`.
    #[inline(always)]
    fn rotate_row(&self, row: &mut [f32], n_rot_heads: usize, p: usize) {
        let half = self.half;
        let hd = 2 * half;
        let cos = &self.cos[p * half..(p + 1) * half];
        let sin = &self.sin[p * half..(p + 1) * half];
        for head in row[..n_rot_heads * hd].chunks_exact_mut(hd) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        }
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Positions per sequence.
    pub seq_len: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Sliding window: with `Some(w)`, position `i` attends only to positions `j` with
    /// `i − w < j ≤ i` (its last `w` positions, itself included); `None` attends to
    /// every earlier position.
    pub window: Option<usize>,
}

/// The first key position that query position `p` attends to.
#[inline(always)]
fn first_key(p: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (p + 1).saturating_sub(w))
}

/// Causal grouped-query attention.
///
/// `qkv [B·T, (H + 2·KV)·hd]` holds, per row, the (already rotated) query heads, then the
/// key heads, then the value heads. Writes `out [B·T, H·hd]`, head `h` reading key/value
/// head `h / (H / KV)`, with scores scaled by `1/√hd` and softmax over positions `≤ t`
/// (and within `s.window` of `t`). Keys before a tile's window are not computed at all.
pub fn causal_attention(qkv: &[f32], s: AttnShape, out: &mut [f32]) {
    let AttnShape {
        batch,
        seq_len: t,
        n_heads,
        n_kv_heads,
        head_dim: hd,
        window,
    } = s;
    let stride = (n_heads + 2 * n_kv_heads) * hd;
    let out_stride = n_heads * hd;
    debug_assert_eq!(qkv.len(), batch * t * stride);
    debug_assert_eq!(out.len(), batch * t * out_stride);
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let out_ptr = SharedMut::new(out);
    (0..batch * n_heads).into_par_iter().for_each_init(
        || vec![0f32; QUERY_TILE.min(t) * t],
        |scores, task| {
            let (b, h) = (task / n_heads, task % n_heads);
            let g = h / group;
            let base = b * t * stride;
            let q = &qkv[base + h * hd..];
            let k = &qkv[base + (n_heads + g) * hd..];
            let v = &qkv[base + (n_heads + n_kv_heads + g) * hd..];
            let mut i0 = 0;
            while i0 < t {
                let i1 = (i0 + QUERY_TILE).min(t);
                let rows = i1 - i0;
                // Keys k0..i1: from the first one the tile's first query attends to.
                let k0 = first_key(i0, window);
                let keys = i1 - k0;
                let sc = &mut scores[..rows * keys];
                // SAFETY: q rows i0..i1, k rows k0..i1 and v rows k0..i1 lie inside this
                // sequence's part of `qkv`; the output rows i0..i1 of head h are written
                // by this task only.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        hd,
                        keys,
                        scale,
                        q.as_ptr().add(i0 * stride),
                        stride as isize,
                        1,
                        k.as_ptr().add(k0 * stride),
                        1,
                        stride as isize,
                        0.0,
                        sc.as_mut_ptr(),
                        keys as isize,
                        1,
                    );
                }
                for (r, row) in sc.chunks_exact_mut(keys).enumerate() {
                    let last = i0 + r;
                    softmax_window(row, first_key(last, window) - k0, last + 1 - k0);
                }
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        keys,
                        hd,
                        1.0,
                        sc.as_ptr(),
                        keys as isize,
                        1,
                        v.as_ptr().add(k0 * stride),
                        stride as isize,
                        1,
                        0.0,
                        out_ptr.ptr_at((b * t + i0) * out_stride + h * hd),
                        out_stride as isize,
                        1,
                    );
                }
                i0 = i1;
            }
        },
    );
}

/// The keys and values of one sequence at the positions seen so far, for
/// [`cached_attention`]: `keys` and `values` are `[rows, KV·hd]`, row `r` holding
/// absolute position `first + r` (keys already rotated). `first` is 0 unless the
/// positions before it were dropped, which only a windowed attention allows.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a> {
    /// Keys `[rows, KV·hd]`.
    pub keys: &'a [f32],
    /// Values `[rows, KV·hd]`.
    pub values: &'a [f32],
    /// Absolute position of row 0.
    pub first: usize,
}

/// Grouped-query attention of new positions over all the positions of their sequence:
/// the incremental forward's attention.
///
/// `qkv [B·T, (H + 2·KV)·hd]` is laid out as for [`causal_attention`], but only its
/// (rotated) query heads are read: the keys and values of sequence `b` come from
/// `kv[b]`, whose last `T` rows are the new positions' own. With `len_b` the position
/// after `kv[b]`'s last row, new row `t` is position `p = len_b − T + t` and attends to
/// positions `≤ p` (every cached one, and the new ones up to itself), or, with
/// `s.window = Some(w)`, to positions `p − w < j ≤ p` only; every position attended to
/// must be held (`first ≤ len_b − T + 1 − w` with a window, `first = 0` without).
/// Writes `out [B·T, H·hd]`, scores scaled by `1/√hd`, exactly as [`causal_attention`]
/// computes each row.
pub fn cached_attention(qkv: &[f32], s: AttnShape, kv: &[KvRows<'_>], out: &mut [f32]) {
    let AttnShape {
        batch,
        seq_len: t,
        n_heads,
        n_kv_heads,
        head_dim: hd,
        window,
    } = s;
    let stride = (n_heads + 2 * n_kv_heads) * hd;
    let kv_stride = n_kv_heads * hd;
    let out_stride = n_heads * hd;
    debug_assert_eq!(qkv.len(), batch * t * stride);
    debug_assert_eq!(out.len(), batch * t * out_stride);
    debug_assert_eq!(kv.len(), batch);
    debug_assert!(kv.iter().all(|r| r.keys.len() == r.values.len()
        && r.keys.len() % kv_stride == 0
        && r.keys.len() >= t * kv_stride));
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let max_len = kv
        .iter()
        .map(|r| r.keys.len() / kv_stride)
        .max()
        .unwrap_or(0);
    let out_ptr = SharedMut::new(out);
    (0..batch * n_heads).into_par_iter().for_each_init(
        || vec![0f32; QUERY_TILE.min(t) * max_len],
        |scores, task| {
            let (b, h) = (task / n_heads, task % n_heads);
            let g = h / group;
            let first = kv[b].first;
            let start = first + kv[b].keys.len() / kv_stride - t;
            debug_assert!(first <= first_key(start, window));
            let q = &qkv[b * t * stride + h * hd..];
            let k = &kv[b].keys[g * hd..];
            let v = &kv[b].values[g * hd..];
            let mut i0 = 0;
            while i0 < t {
                let i1 = (i0 + QUERY_TILE).min(t);
                let rows = i1 - i0;
                // Keys k0..start + i1: from the first one the tile's first query sees.
                let k0 = first_key(start + i0, window);
                let keys = start + i1 - k0;
                let sc = &mut scores[..rows * keys];
                // SAFETY: q rows i0..i1 lie inside this sequence's part of `qkv`; k and v
                // rows k0 − first..k0 − first + keys lie inside `kv[b]` (first ≤ k0 and
                // k0 + keys ≤ len_b, and head g's columns end at (g + 1)·hd ≤
                // kv_stride); the output rows i0..i1 of head h of sequence b are written
                // by this task only.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        hd,
                        keys,
                        scale,
                        q.as_ptr().add(i0 * stride),
                        stride as isize,
                        1,
                        k.as_ptr().add((k0 - first) * kv_stride),
                        1,
                        kv_stride as isize,
                        0.0,
                        sc.as_mut_ptr(),
                        keys as isize,
                        1,
                    );
                }
                for (r, row) in sc.chunks_exact_mut(keys).enumerate() {
                    let p = start + i0 + r;
                    softmax_window(row, first_key(p, window) - k0, p + 1 - k0);
                }
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        keys,
                        hd,
                        1.0,
                        sc.as_ptr(),
                        keys as isize,
                        1,
                        v.as_ptr().add((k0 - first) * kv_stride),
                        kv_stride as isize,
                        1,
                        0.0,
                        out_ptr.ptr_at((b * t + i0) * out_stride + h * hd),
                        out_stride as isize,
                        1,
                    );
                }
                i0 = i1;
            }
        },
    );
}

/// Softmax over `row[lo..hi]` in place; the entries outside it are set to 0. With
/// `lo = 0` this is [`softmax_prefix`] of `hi`.
fn softmax_window(row: &mut [f32], lo: usize, hi: usize) {
    let (dead, live) = row.split_at_mut(lo);
    dead.fill(0.0);
    softmax_prefix(live, hi - lo);
}

/// Softmax over `row[..len]` in place; entries from `len` on are set to 0.
fn softmax_prefix(row: &mut [f32], len: usize) {
    let (live, dead) = row.split_at_mut(len);
    dead.fill(0.0);
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum = exp_shift_sum(live, max);
    let inv = 1.0 / sum;
    for v in live.iter_mut() {
        *v *= inv;
    }
}

/// `x[i] = exp(x[i] − shift)` in place; returns the sum.
fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { exp_shift_sum_avx2(x, shift) };
        }
    }
    exp_shift_sum_generic(x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shift_sum_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shift_sum_generic(x, shift)
}

#[inline(always)]
fn exp_shift_sum_generic(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp_f32(*v - shift);
            *a += *v;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - shift);
        s += *v;
    }
    s
}

/// SwiGLU: `act[r][j] = silu(gu[r][j]) · gu[r][F + j]` for `gu [N, 2F]`, `act [N, F]`.
pub fn swiglu(gu: &[f32], f: usize, act: &mut [f32]) {
    gu.par_chunks(ROWS_PER_TASK * 2 * f)
        .zip(act.par_chunks_mut(ROWS_PER_TASK * f))
        .for_each(|(gus, acts)| {
            for (row, a) in gus.chunks_exact(2 * f).zip(acts.chunks_exact_mut(f)) {
                let (g, u) = row.split_at(f);
                silu_mul(g, u, a);
            }
        });
}

fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { silu_mul_avx2(g, u, out) };
        }
    }
    silu_mul_generic(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_generic(g, u, out)
}

#[inline(always)]
fn silu_mul_generic(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &gv), &uv) in out.iter_mut().zip(g).zip(u) {
        *o = gv / (1.0 + exp_f32(-gv)) * uv;
    }
}

/// GeGLU with the tanh GELU: `act[r][j] = gelu_tanh(gu[r][j]) · gu[r][F + j]` for
/// `gu [N, 2F]`, `act [N, F]`, where
/// `gelu_tanh(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715·x³)))`, computed as the equal
/// `x · σ(2·√(2/π) · (x + 0.044715·x³))` with [`exp_f32`] (so that it vectorises).
pub fn geglu_tanh(gu: &[f32], f: usize, act: &mut [f32]) {
    gu.par_chunks(ROWS_PER_TASK * 2 * f)
        .zip(act.par_chunks_mut(ROWS_PER_TASK * f))
        .for_each(|(gus, acts)| {
            for (row, a) in gus.chunks_exact(2 * f).zip(acts.chunks_exact_mut(f)) {
                let (g, u) = row.split_at(f);
                gelu_tanh_mul(g, u, a);
            }
        });
}

fn gelu_tanh_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { gelu_tanh_mul_avx2(g, u, out) };
        }
    }
    gelu_tanh_mul_generic(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_tanh_mul_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    gelu_tanh_mul_generic(g, u, out)
}

#[inline(always)]
fn gelu_tanh_mul_generic(g: &[f32], u: &[f32], out: &mut [f32]) {
    // 2·√(2/π)
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    for ((o, &x), &uv) in out.iter_mut().zip(g).zip(u) {
        let z = TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
        *o = x / (1.0 + exp_f32(-z)) * uv;
    }
}

/// RMSNorm of every head of the heads `first..first + n` of each row of
/// `x [N, stride]` (heads `head_dim = weight.len()` wide, head `h` at columns
/// `h·head_dim..`), in place: `v = v / √(mean(v²) + eps) · weight` per head. Gemma 3's
/// query and key norms, on the fused query/key/value rows.
pub fn rms_norm_heads(
    x: &mut [f32],
    stride: usize,
    first: usize,
    n: usize,
    weight: &[f32],
    eps: f32,
) {
    let hd = weight.len();
    x.par_chunks_mut(ROWS_PER_TASK * stride).for_each(|rows| {
        for row in rows.chunks_exact_mut(stride) {
            for head in row[first * hd..(first + n) * hd].chunks_exact_mut(hd) {
                let s = 1.0 / (mean_square(head) + eps).sqrt();
                for (v, &w) in head.iter_mut().zip(weight) {
                    *v = *v * s * w;
                }
            }
        }
    });
}

/// `x[i] *= c` for every value of `x`.
pub fn scale_all(x: &mut [f32], c: f32) {
    x.par_chunks_mut(1 << 14).for_each(|xs| {
        for v in xs {
            *v *= c;
        }
    });
}

/// `exp(x)` in f32 within about 2 ulp, written so that loops over it vectorise:
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 polynomial for `exp(r)`, and `2ⁿ`
/// built in the exponent bits. Inputs are clamped to `[−87.3, 88.7]` (results in
/// `[2⁻¹²⁶, 3.3·10³⁸]`); NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.7);
    // `t`'s mantissa holds 0x40_0000 + n; reading n from the bits (integer ops) rather
    // than casting the float keeps the whole function vectorisable.
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let bits = (n_int.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `y[r, j] += bias[j]` for every row `r` of `y [N, bias.len()]`: a projection's bias.
pub fn add_row_bias(y: &mut [f32], bias: &[f32]) {
    y.par_chunks_mut(ROWS_PER_TASK * bias.len())
        .for_each(|rows| {
            for row in rows.chunks_exact_mut(bias.len()) {
                for (u, &b) in row.iter_mut().zip(bias) {
                    *u += b;
                }
            }
        });
}

/// `y[r] += x[r]` elementwise.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(a, b)| {
            for (u, &v) in a.iter_mut().zip(b) {
                *u += v;
            }
        });
}

/// Next-token cross-entropy (nats) of one logits row: `logsumexp(row) − row[target]`,
/// computed in f64.
pub fn cross_entropy_row(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) >= 0.0 && exp_f32(-1e4) < 1e-37);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn the_few_rows_path_matches_gemm() {
        let (d_in, d_out) = (37, 300);
        let w = saelab_testkit::lcg_uniform(d_in * d_out, 3, 1.0);
        for n in [1, 3, 16, 21] {
            let x = saelab_testkit::lcg_uniform(n * d_in, 5 + n as u64, 1.0);
            let mut a = vec![0f32; n * d_out];
            let mut b = vec![0f32; n * d_out];
            linear_few_rows(&x, n, &w, d_in, d_out, &mut a);
            saelab_core::kernels::gemm(
                n,
                d_in,
                d_out,
                1.0,
                &x,
                saelab_core::kernels::Transpose::No,
                &w,
                saelab_core::kernels::Transpose::Yes,
                0.0,
                &mut b,
            );
            for (u, v) in a.iter().zip(&b) {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{n} rows: {u} vs {v}"
                );
            }
        }
    }

    #[test]
    fn rms_norm_matches_definition() {
        let d = 13;
        let x: Vec<f32> = (0..3 * d).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let mut y = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut y);
        for r in 0..3 {
            let row = &x[r * d..(r + 1) * d];
            let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = row[j] as f64 / (ms + 1e-5).sqrt() * w[j] as f64;
                assert!((y[r * d + j] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn split_and_in_place_norms_equal_the_fused_one_bit_for_bit() {
        let d = 19;
        let x: Vec<f32> = (0..70 * d)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.3 + i as f32 * 0.07).collect();
        let mut fused = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut fused);
        let mut split = vec![0.0; x.len()];
        rms_normalize(&x, d, 1e-5, &mut split);
        let ms: f64 = x[..d].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        assert!((split[3] as f64 - x[3] as f64 / (ms + 1e-5).sqrt()).abs() < 1e-5);
        scale_columns(&mut split, &w);
        assert_eq!(split, fused);
        let mut inplace = x.clone();
        rms_norm_in_place(&mut inplace, &w, 1e-5);
        assert_eq!(inplace, fused);
    }

    /// Naive attention straight from the definition, one (sequence, head) at a time.
    fn naive_attention(qkv: &[f32], s: AttnShape) -> Vec<f32> {
        let AttnShape {
            batch,
            seq_len: t,
            n_heads,
            n_kv_heads,
            head_dim: hd,
            window,
        } = s;
        let stride = (n_heads + 2 * n_kv_heads) * hd;
        let mut out = vec![0f32; batch * t * n_heads * hd];
        for b in 0..batch {
            for h in 0..n_heads {
                let g = h / (n_heads / n_kv_heads);
                for i in 0..t {
                    let qi = &qkv[(b * t + i) * stride + h * hd..][..hd];
                    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
                    let scores: Vec<f64> = (lo..=i)
                        .map(|j| {
                            let kj = &qkv[(b * t + j) * stride + (n_heads + g) * hd..][..hd];
                            qi.iter()
                                .zip(kj)
                                .map(|(&a, &c)| a as f64 * c as f64)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for c in 0..hd {
                        let mut acc = 0f64;
                        for (s, j) in scores.iter().zip(lo..) {
                            let vj =
                                qkv[(b * t + j) * stride + (n_heads + n_kv_heads + g) * hd + c];
                            acc += (s - m).exp() / z * vj as f64;
                        }
                        out[(b * t + i) * n_heads * hd + h * hd + c] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive_definition_across_tiles() {
        // seq_len 150 spans three query tiles; 6 query heads share 2 kv heads. Windows
        // shorter than a tile, longer than one, and longer than the sequence.
        for window in [None, Some(1), Some(20), Some(100), Some(500)] {
            let s = AttnShape {
                batch: 2,
                seq_len: 150,
                n_heads: 6,
                n_kv_heads: 2,
                head_dim: 8,
                window,
            };
            let stride = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim;
            let n = s.batch * s.seq_len * stride;
            let qkv: Vec<f32> = (0..n)
                .map(|i| (((i as u64 * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0) * 2.0)
                .collect();
            let mut out = vec![0f32; s.batch * s.seq_len * s.n_heads * s.head_dim];
            causal_attention(&qkv, s, &mut out);
            let want = naive_attention(&qkv, s);
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "window {window:?}: max abs diff {worst}");
        }
    }

    #[test]
    fn a_window_longer_than_the_sequence_changes_no_bit() {
        let s = AttnShape {
            batch: 1,
            seq_len: 90,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            window: None,
        };
        let qkv: Vec<f32> = (0..90 * 32)
            .map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0)
            .collect();
        let mut a = vec![0f32; 90 * 16];
        let mut b = a.clone();
        causal_attention(&qkv, s, &mut a);
        causal_attention(
            &qkv,
            AttnShape {
                window: Some(90),
                ..s
            },
            &mut b,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn cached_attention_equals_causal_attention_of_the_whole_sequence() {
        for window in [None, Some(9), Some(40)] {
            cached_equals_causal(window);
        }
    }

    /// 2 sequences of 70 positions; the last `t_new` of each attend over the cache,
    /// within `window`.
    fn cached_equals_causal(window: Option<usize>) {
        let s = AttnShape {
            batch: 2,
            seq_len: 70,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 8,
            window,
        };
        let (hq, hkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
        let stride = (hq + 2 * hkv) * hd;
        let qkv: Vec<f32> = (0..s.batch * s.seq_len * stride)
            .map(|i| (((i as u64 * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0) * 2.0)
            .collect();
        let mut full = vec![0f32; s.batch * s.seq_len * hq * hd];
        causal_attention(&qkv, s, &mut full);
        // With a window, also from caches holding only the positions the first new
        // query sees (the older ones dropped, as `KvCache` does for windowed blocks).
        let firsts = |start: usize| match window {
            None => vec![0],
            Some(_) => vec![0, first_key(start, window)],
        };
        for t_new in [1, 5, 70] {
            let start = s.seq_len - t_new;
            for first in firsts(start) {
                let mut caches = Vec::new();
                let mut new_rows = Vec::new();
                for b in 0..s.batch {
                    let rows = &qkv[b * s.seq_len * stride..(b + 1) * s.seq_len * stride];
                    let part = |from: usize, w: usize| -> Vec<f32> {
                        rows.chunks_exact(stride)
                            .skip(first)
                            .flat_map(|r| r[from..from + w].to_vec())
                            .collect()
                    };
                    caches.push((part(hq * hd, hkv * hd), part((hq + hkv) * hd, hkv * hd)));
                    new_rows.extend_from_slice(&rows[start * stride..]);
                }
                let kv: Vec<KvRows<'_>> = caches
                    .iter()
                    .map(|(k, v)| KvRows {
                        keys: k,
                        values: v,
                        first,
                    })
                    .collect();
                let sn = AttnShape {
                    seq_len: t_new,
                    ..s
                };
                let mut out = vec![0f32; s.batch * t_new * hq * hd];
                cached_attention(&new_rows, sn, &kv, &mut out);
                for b in 0..s.batch {
                    let want =
                        &full[(b * s.seq_len + start) * hq * hd..(b + 1) * s.seq_len * hq * hd];
                    let got = &out[b * t_new * hq * hd..(b + 1) * t_new * hq * hd];
                    let worst = got
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-6,
                        "window {window:?}, t_new {t_new}, first {first}: max abs diff {worst}"
                    );
                }
            }
        }
    }

    #[test]
    fn geglu_matches_the_tanh_definition() {
        let f = 37;
        let gu: Vec<f32> = (0..3 * 2 * f).map(|i| (i as f32 - 111.0) / 9.0).collect();
        let mut act = vec![0f32; 3 * f];
        geglu_tanh(&gu, f, &mut act);
        for (r, a) in act.chunks(f).enumerate() {
            for (j, &got) in a.iter().enumerate() {
                let (x, u) = (gu[r * 2 * f + j] as f64, gu[r * 2 * f + f + j] as f64);
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()) * u;
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{x}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn head_norms_normalise_each_head_with_its_gain() {
        // Rows of 4 heads of width 2; heads 1 and 2 normalised, 0 and 3 untouched.
        let mut x: Vec<f32> = (0..2 * 8).map(|i| i as f32 + 1.0).collect();
        let orig = x.clone();
        rms_norm_heads(&mut x, 8, 1, 2, &[1.0, 2.0], 0.0);
        for r in 0..2 {
            let row = &x[r * 8..(r + 1) * 8];
            let o = &orig[r * 8..(r + 1) * 8];
            assert_eq!((row[0], row[1], row[6], row[7]), (o[0], o[1], o[6], o[7]));
            for h in 1..3 {
                let (a, b) = (o[2 * h], o[2 * h + 1]);
                let rms = ((a * a + b * b) / 2.0).sqrt();
                assert!((row[2 * h] - a / rms).abs() < 1e-6);
                assert!((row[2 * h + 1] - 2.0 * b / rms).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn rope_at_offsets_equals_rope_of_the_whole_sequence() {
        let table = RopeTable::new(8, 100.0, 64);
        let stride = 3 * 8;
        let whole: Vec<f32> = (0..40 * stride).map(|i| (i % 17) as f32 - 8.0).collect();
        let mut want = whole.clone();
        table.apply_interleaved(&mut want, stride, 2, 40);
        // Two sequences: positions 33..40 and 3..10 of the same rows.
        let mut rows = whole[33 * stride..].to_vec();
        rows.extend_from_slice(&whole[3 * stride..10 * stride]);
        table.apply_interleaved_at(&mut rows, stride, 2, 7, &[33, 3]);
        assert_eq!(&rows[..7 * stride], &want[33 * stride..]);
        assert_eq!(&rows[7 * stride..], &want[3 * stride..10 * stride]);
    }

    #[test]
    fn rope_rotates_pairs_by_position_angle() {
        let hd = 4;
        let table = RopeTable::new(hd, 100.0, 8);
        // one row per position 0..3 of a single sequence, one rotated head + one untouched
        let stride = 2 * hd;
        let mut x: Vec<f32> = (0..4 * stride).map(|i| i as f32 + 1.0).collect();
        let orig = x.clone();
        table.apply_interleaved(&mut x, stride, 1, 4);
        for p in 0..4 {
            for i in 0..hd / 2 {
                let ang = p as f64 * 100f64.powf(-(2.0 * i as f64) / hd as f64);
                let (x0, x1) = (
                    orig[p * stride + 2 * i] as f64,
                    orig[p * stride + 2 * i + 1] as f64,
                );
                let want0 = x0 * ang.cos() - x1 * ang.sin();
                let want1 = x0 * ang.sin() + x1 * ang.cos();
                assert!((x[p * stride + 2 * i] as f64 - want0).abs() < 1e-4);
                assert!((x[p * stride + 2 * i + 1] as f64 - want1).abs() < 1e-4);
            }
            assert_eq!(
                &x[p * stride + hd..(p + 1) * stride],
                &orig[p * stride + hd..(p + 1) * stride]
            );
        }
    }
}
