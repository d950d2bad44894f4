//! The encoder forward `pre = (x − b_dec) · W_enc + b_enc`, computed a block of rows at a
//! time so that a block's pre-activations stay in cache while the caller selects the
//! active latents from them: the full `[B, n]` matrix is never materialised.
//!
//! Two engines:
//! - on x86-64 with AVX-512F (detected at run time), a 12×32 register-blocked kernel on a
//!   copy of `W_enc` packed once per step into 32-column panels ([`Encoder::load`]); the
//!   input block is packed with `b_dec` subtracted on the way, so `x − b_dec` is never
//!   stored either;
//! - elsewhere, `matrixmultiply` on the block.
//!
//! Each block's rows are handed to the caller's `visit` in order; blocks are fixed-size
//! tasks run under rayon and their results returned in block order, so the output does
//! not depend on the thread count or on scheduling.

use std::cell::RefCell;

use rayon::prelude::*;

use super::SharedMut;
use crate::tensor::Matrix;

/// Rows per register block of the AVX-512 kernel.
const MR: usize = 12;
/// Columns per register block (two 16-lane vectors).
const NR: usize = 32;
/// Rows per task (a multiple of the register block `MR`): its pre-activations, `TASK_ROWS × n` floats,
/// are what stays in cache.
pub const TASK_ROWS: usize = 96;

/// 64-byte aligned storage unit.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

pub use super::simd::avx512;

/// Name of the engine in use (for benchmark reports).
pub fn backend_name() -> &'static str {
    if avx512() {
        "saelab avx512 12x32 (packed W_enc)"
    } else {
        "matrixmultiply"
    }
}

/// The encoder weights in the form the engine wants, reused across steps.
#[derive(Default)]
pub struct Encoder {
    packed: Vec<Line>,
    d: usize,
    n: usize,
    /// Whether `packed` holds the current weights (AVX-512 engine).
    ready: bool,
}

impl Encoder {
    /// An empty encoder; call [`Encoder::load`] before [`Encoder::run`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepares `w_enc` `[d, n]` for [`Encoder::run`] (packs it into 32-column panels
    /// when the AVX-512 engine is used; the buffer is reused between calls).
    pub fn load(&mut self, w_enc: &[f32], d: usize, n: usize) {
        assert_eq!(w_enc.len(), d * n, "encoder: W_enc is not [d, n]");
        self.d = d;
        self.n = n;
        self.ready = false;
        if !avx512() || d == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        let lines = panels * d * 2;
        if self.packed.len() != lines {
            self.packed = vec![Line([0.0; 16]); lines];
        }
        // Panel p, input row i: lines 2(p·d + i) and 2(p·d + i) + 1 hold W[i, 32p..32p+32].
        self.packed
            .par_chunks_mut(2 * d)
            .enumerate()
            .for_each(|(p, panel)| {
                let c0 = p * NR;
                let w = (n - c0).min(NR);
                for (i, pair) in panel.chunks_exact_mut(2).enumerate() {
                    let src = &w_enc[i * n + c0..i * n + c0 + w];
                    if w == NR {
                        pair[0].0.copy_from_slice(&src[..16]);
                        pair[1].0.copy_from_slice(&src[16..]);
                    } else {
                        // The last, partial panel: zero-padded.
                        pair[0].0 = [0.0; 16];
                        pair[1].0 = [0.0; 16];
                        for (c, &v) in src.iter().enumerate() {
                            pair[c / 16].0[c % 16] = v;
                        }
                    }
                }
            });
        self.ready = true;
    }

    /// Runs the encoder on `x` `[B, d]`: for every row `r`, `visit(state, r, pre_r)` with
    /// `pre_r = (x_r − b_dec) · W_enc + b_enc` (`[n]`; `b_dec` skipped when `None`).
    /// Rows are visited in order within blocks of [`TASK_ROWS`]; each block gets a fresh
    /// `make()` state, and the states are returned in block order. `w_enc` must be the
    /// matrix last given to [`Encoder::load`].
    pub fn run<S, M, V>(
        &self,
        w_enc: &[f32],
        x: &Matrix,
        b_dec: Option<&[f32]>,
        b_enc: &[f32],
        make: M,
        visit: V,
    ) -> Vec<S>
    where
        S: Send,
        M: Fn() -> S + Sync,
        V: Fn(&mut S, usize, &[f32]) + Sync,
    {
        let (d, n) = (self.d, self.n);
        assert_eq!(x.cols, d, "encoder: input width is not d");
        assert_eq!(w_enc.len(), d * n, "encoder: W_enc is not [d, n]");
        assert_eq!(b_enc.len(), n, "encoder: b_enc is not [n]");
        if let Some(b) = b_dec {
            assert_eq!(b.len(), d, "encoder: b_dec is not [d]");
        }
        let rows = x.rows;
        let tasks: Vec<usize> = (0..rows).step_by(TASK_ROWS).collect();
        tasks
            .into_par_iter()
            .map(|r0| {
                let r1 = (r0 + TASK_ROWS).min(rows);
                let mut state = make();
                SCRATCH.with(|cell| {
                    let mut scratch = cell.borrow_mut();
                    let Scratch { out, apack, xenc } = &mut *scratch;
                    let stride = self.block(w_enc, x, b_dec, b_enc, r0, r1, out, apack, xenc);
                    for r in r0..r1 {
                        let o = (r - r0) * stride;
                        visit(&mut state, r, &out[o..o + n]);
                    }
                });
                state
            })
            .collect()
    }

    /// Computes the pre-activations of rows `r0..r1` into `out` (row stride returned).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        w_enc: &[f32],
        x: &Matrix,
        b_dec: Option<&[f32]>,
        b_enc: &[f32],
        r0: usize,
        r1: usize,
        out: &mut Vec<f32>,
        apack: &mut Vec<f32>,
        xenc: &mut Vec<f32>,
    ) -> usize {
        let (d, n) = (self.d, self.n);
        let rows = r1 - r0;
        #[cfg(target_arch = "x86_64")]
        if self.ready {
            let stride = n.div_ceil(NR) * NR;
            if out.len() < TASK_ROWS * stride {
                out.resize(TASK_ROWS * stride, 0.0);
            }
            let mpanels = rows.div_ceil(MR);
            if apack.len() < mpanels * MR * d {
                apack.resize(mpanels * MR * d, 0.0);
            }
            // Pack A: micro-panel m, input column i: MR consecutive values x[r, i] − b_dec[i].
            for m in 0..mpanels {
                let dst = &mut apack[m * MR * d..(m + 1) * MR * d];
                for rr in 0..MR {
                    let r = r0 + m * MR + rr;
                    if r < r1 {
                        let src = x.row(r);
                        match b_dec {
                            Some(b) => {
                                for i in 0..d {
                                    dst[i * MR + rr] = src[i] - b[i];
                                }
                            }
                            None => {
                                for i in 0..d {
                                    dst[i * MR + rr] = src[i];
                                }
                            }
                        }
                    } else {
                        for i in 0..d {
                            dst[i * MR + rr] = 0.0;
                        }
                    }
                }
            }
            // SAFETY: AVX-512F was detected (`ready` is only set then); all pointers and
            // extents are within `apack`, `packed`, `b_enc` and `out` as sized above.
            unsafe {
                avx512::block(
                    d,
                    n,
                    rows,
                    apack.as_ptr(),
                    self.packed.as_ptr() as *const f32,
                    b_enc.as_ptr(),
                    out.as_mut_ptr(),
                    stride,
                );
            }
            return stride;
        }
        // Portable engine: materialise the block of x − b_dec and call matrixmultiply.
        let _ = apack;
        if out.len() < rows * n {
            out.resize(rows * n, 0.0);
        }
        if xenc.len() < rows * d {
            xenc.resize(rows * d, 0.0);
        }
        for r in r0..r1 {
            let dst = &mut xenc[(r - r0) * d..(r - r0 + 1) * d];
            dst.copy_from_slice(x.row(r));
            if let Some(b) = b_dec {
                dst.iter_mut().zip(b).for_each(|(v, b)| *v -= b);
            }
            out[(r - r0) * n..(r - r0 + 1) * n].copy_from_slice(b_enc);
        }
        if rows > 0 && n > 0 && d > 0 {
            // SAFETY: `xenc` holds rows×d, `w_enc` d×n and `out` rows×n, row-major.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    d,
                    n,
                    1.0,
                    xenc.as_ptr(),
                    d as isize,
                    1,
                    w_enc.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        n
    }
}

#[derive(Default)]
struct Scratch {
    out: Vec<f32>,
    apack: Vec<f32>,
    xenc: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The dense product `out = x · w + bias` (`x [B, d]`, `w [d, n]`, `bias [n]`,
/// `out [B, n]`) with the encoder's engine, packing included: the benchmark's peak.
/// Up to [`FEW_ROWS`] rows skip the packing (bit-identical values, see
/// [`FEW_ROWS`]).
pub fn dense_product(x: &Matrix, w: &[f32], bias: &[f32], out: &mut Matrix) {
    let n = bias.len();
    assert_eq!(
        (out.rows, out.cols),
        (x.rows, n),
        "dense_product: out is not [B, n]"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512() && x.rows <= FEW_ROWS {
        few_rows_product(x, w, bias, &mut out.data);
        return;
    }
    let mut enc = Encoder::new();
    enc.load(w, x.cols, n);
    let rows = SharedMut::new(&mut out.data);
    enc.run(
        w,
        x,
        None,
        bias,
        || (),
        // SAFETY: each row r is visited exactly once, so the writes do not overlap.
        |_, r, pre| unsafe { rows.slice(r * n, n) }.copy_from_slice(pre),
    );
}

/// Rows up to which [`dense_product`] reads `W_enc` as it is instead of packing it: for a
/// handful of rows (one generation step of a steered model) packing the whole matrix
/// costs more than the product, and a block of 96 rows would run on one core.
pub const FEW_ROWS: usize = 16;

/// Columns per task of the few-rows product.
#[cfg(target_arch = "x86_64")]
const FEW_TASK_COLS: usize = 512;

/// `out[r, :] = x_r · w + bias` for at most [`FEW_ROWS`] rows with the AVX-512
/// engine, `w` read in place and the columns split over threads. Every output is the
/// same chain of fused multiply-adds as the packed kernel (start from the bias, then
/// `i = 0..d` in order), so the two engines give bit-identical values and a row's
/// pre-activations do not depend on how many rows came with it.
#[cfg(target_arch = "x86_64")]
fn few_rows_product(x: &Matrix, w: &[f32], bias: &[f32], out: &mut [f32]) {
    let (rows, d, n) = (x.rows, x.cols, bias.len());
    debug_assert!(avx512() && rows <= FEW_ROWS && out.len() == rows * n);
    let shared = SharedMut::new(out);
    (0..n.div_ceil(FEW_TASK_COLS))
        .into_par_iter()
        .for_each(|t| {
            let c0 = t * FEW_TASK_COLS;
            let c1 = (c0 + FEW_TASK_COLS).min(n);
            // SAFETY: AVX-512F was detected; this task reads rows·d values of `x`, d·n of
            // `w`, n of `bias`, and writes only columns c0..c1 of each output row, which no
            // other task writes.
            unsafe { few_rows::columns(&x.data, rows, d, n, w, bias, &shared, c0, c1) }
        });
}

#[cfg(target_arch = "x86_64")]
mod few_rows {
    use super::SharedMut;
    use crate::kernels::simd::tail_mask;
    use std::arch::x86_64::*;

    /// Columns per register tile (four 16-lane vectors).
    const TILE: usize = 64;

    /// Columns `c0..c1` of every row, in tiles of 64 columns and up to 4 rows.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn columns(
        x: &[f32],
        rows: usize,
        d: usize,
        n: usize,
        w: &[f32],
        bias: &[f32],
        out: &SharedMut<'_, f32>,
        c0: usize,
        c1: usize,
    ) {
        let mut c = c0;
        while c < c1 {
            let width = (c1 - c).min(TILE);
            let mut r = 0;
            while r < rows {
                let xr = x.as_ptr().add(r * d);
                let o = out.ptr_at(r * n + c);
                match (rows - r).min(4) {
                    4 => tile::<4>(xr, d, n, w.as_ptr().add(c), bias.as_ptr().add(c), o, width),
                    3 => tile::<3>(xr, d, n, w.as_ptr().add(c), bias.as_ptr().add(c), o, width),
                    2 => tile::<2>(xr, d, n, w.as_ptr().add(c), bias.as_ptr().add(c), o, width),
                    _ => tile::<1>(xr, d, n, w.as_ptr().add(c), bias.as_ptr().add(c), o, width),
                }
                r += 4;
            }
            c += TILE;
        }
    }

    /// `R` rows × `width` (≤ 64) columns: `acc = bias; acc = fma(x[r, i], w[i, :], acc)`
    /// for `i = 0..d`; `x` rows are `d` apart, `w` and `out` rows `n` apart.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        d: usize,
        n: usize,
        w: *const f32,
        bias: *const f32,
        out: *mut f32,
        width: usize,
    ) {
        let mut masks = [0u16; 4];
        let mut b = [_mm512_setzero_ps(); 4];
        for j in 0..4 {
            masks[j] = tail_mask(width.saturating_sub(16 * j));
            // Lanes past `width` are masked off, so nothing beyond the row is read.
            b[j] = _mm512_maskz_loadu_ps(masks[j], bias.wrapping_add(16 * j));
        }
        let mut acc = [b; R];
        for i in 0..d {
            let wi = w.add(i * n);
            let mut wv = [_mm512_setzero_ps(); 4];
            for j in 0..4 {
                wv[j] = _mm512_maskz_loadu_ps(masks[j], wi.wrapping_add(16 * j));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * d + i));
                for j in 0..4 {
                    a[j] = _mm512_fmadd_ps(xv, wv[j], a[j]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for j in 0..4 {
                _mm512_mask_storeu_ps(out.wrapping_add(r * n + 16 * j), masks[j], a[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `out[r, :] = apack-rows · packed + bias` for `rows` rows (≤ TASK_ROWS).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(
        d: usize,
        n: usize,
        rows: usize,
        apack: *const f32,
        packed: *const f32,
        bias: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        let panels = n.div_ceil(NR);
        let mpanels = rows.div_ceil(MR);
        for p in 0..panels {
            let b = packed.add(p * d * NR);
            let c0 = p * NR;
            let w = (n - c0).min(NR);
            let (bias0, bias1) = if w == NR {
                (
                    _mm512_loadu_ps(bias.add(c0)),
                    _mm512_loadu_ps(bias.add(c0 + 16)),
                )
            } else {
                let m0 = crate::kernels::simd::tail_mask(w);
                let m1 = crate::kernels::simd::tail_mask(w.saturating_sub(16));
                (
                    _mm512_maskz_loadu_ps(m0, bias.add(c0)),
                    _mm512_maskz_loadu_ps(m1, bias.add(c0 + 16)),
                )
            };
            for m in 0..mpanels {
                let live = (rows - m * MR).min(MR);
                kernel(
                    d,
                    apack.add(m * MR * d),
                    b,
                    bias0,
                    bias1,
                    out.add(m * MR * stride + c0),
                    stride,
                    live,
                );
            }
        }
    }

    /// One 12×32 tile: `c[r, 0..32] = Σ_i a[i·12 + r] · b[i·32 + 0..32] + bias`, rows
    /// `r < live` stored.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(
        k: usize,
        a: *const f32,
        b: *const f32,
        bias0: __m512,
        bias1: __m512,
        c: *mut f32,
        ldc: usize,
        live: usize,
    ) {
        let mut c00 = bias0;
        let mut c01 = bias1;
        let mut c10 = bias0;
        let mut c11 = bias1;
        let mut c20 = bias0;
        let mut c21 = bias1;
        let mut c30 = bias0;
        let mut c31 = bias1;
        let mut c40 = bias0;
        let mut c41 = bias1;
        let mut c50 = bias0;
        let mut c51 = bias1;
        let mut c60 = bias0;
        let mut c61 = bias1;
        let mut c70 = bias0;
        let mut c71 = bias1;
        let mut c80 = bias0;
        let mut c81 = bias1;
        let mut c90 = bias0;
        let mut c91 = bias1;
        let mut ca0 = bias0;
        let mut ca1 = bias1;
        let mut cb0 = bias0;
        let mut cb1 = bias1;
        let mut ap = a;
        let mut bp = b;
        for _ in 0..k {
            let b0 = _mm512_load_ps(bp);
            let b1 = _mm512_load_ps(bp.add(16));
            macro_rules! row {
                ($i:expr, $x0:ident, $x1:ident) => {
                    let av = _mm512_set1_ps(*ap.add($i));
                    $x0 = _mm512_fmadd_ps(av, b0, $x0);
                    $x1 = _mm512_fmadd_ps(av, b1, $x1);
                };
            }
            row!(0, c00, c01);
            row!(1, c10, c11);
            row!(2, c20, c21);
            row!(3, c30, c31);
            row!(4, c40, c41);
            row!(5, c50, c51);
            row!(6, c60, c61);
            row!(7, c70, c71);
            row!(8, c80, c81);
            row!(9, c90, c91);
            row!(10, ca0, ca1);
            row!(11, cb0, cb1);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        let acc = [
            (c00, c01),
            (c10, c11),
            (c20, c21),
            (c30, c31),
            (c40, c41),
            (c50, c51),
            (c60, c61),
            (c70, c71),
            (c80, c81),
            (c90, c91),
            (ca0, ca1),
            (cb0, cb1),
        ];
        for (r, &(v0, v1)) in acc.iter().enumerate().take(live) {
            let dst = c.add(r * ldc);
            _mm512_storeu_ps(dst, v0);
            _mm512_storeu_ps(dst.add(16), v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(x: &Matrix, b_dec: Option<&[f32]>, w: &[f32], b: &[f32]) -> Vec<f64> {
        let (d, n) = (x.cols, b.len());
        let mut out = vec![0.0f64; x.rows * n];
        for r in 0..x.rows {
            for j in 0..n {
                let mut s = b[j] as f64;
                for i in 0..d {
                    let xi = x.row(r)[i] - b_dec.map_or(0.0, |v| v[i]);
                    s += xi as f64 * w[i * n + j] as f64;
                }
                out[r * n + j] = s;
            }
        }
        out
    }

    #[test]
    fn blocks_match_a_naive_product_on_awkward_sizes() {
        let mut rng = Rng::new(3);
        for &(rows, d, n) in &[
            (1, 5, 7),
            (13, 17, 33),
            (61, 9, 70),
            (97, 40, 64),
            (49, 3, 1),
        ] {
            let x = Matrix::from_vec(
                rows,
                d,
                (0..rows * d).map(|_| rng.normal() as f32).collect(),
            )
            .unwrap();
            let w: Vec<f32> = (0..d * n).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let bd: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
            for b_dec in [None, Some(&bd[..])] {
                let want = naive(&x, b_dec, &w, &b);
                let mut enc = Encoder::new();
                enc.load(&w, d, n);
                let parts = enc.run(
                    &w,
                    &x,
                    b_dec,
                    &b,
                    Vec::new,
                    |s: &mut Vec<(usize, Vec<f32>)>, r, pre| s.push((r, pre.to_vec())),
                );
                let got: Vec<(usize, Vec<f32>)> = parts.into_iter().flatten().collect();
                assert_eq!(got.len(), rows);
                for (k, (r, pre)) in got.iter().enumerate() {
                    assert_eq!(*r, k, "rows visited out of order");
                    for j in 0..n {
                        let e = want[r * n + j];
                        assert!(
                            (pre[j] as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "[{rows},{d},{n}] row {r} col {j}: {} vs {e}",
                            pre[j]
                        );
                    }
                }
                let mut out = Matrix::zeros(rows, n);
                dense_product(&x, &w, &b, &mut out);
                let want0 = naive(&x, None, &w, &b);
                for (g, e) in out.data.iter().zip(&want0) {
                    assert!((*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()));
                }
            }
        }
    }

    #[test]
    fn few_rows_are_bit_identical_to_the_packed_kernel() {
        let mut rng = Rng::new(11);
        for &(rows, d, n) in &[
            (1, 5, 7),
            (3, 17, 33),
            (4, 9, 70),
            (7, 40, 130),
            (13, 576, 200),
            (FEW_ROWS, 33, 577),
        ] {
            let x = Matrix::from_vec(
                rows,
                d,
                (0..rows * d).map(|_| rng.normal() as f32).collect(),
            )
            .unwrap();
            let w: Vec<f32> = (0..d * n).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let mut enc = Encoder::new();
            enc.load(&w, d, n);
            let packed: Vec<f32> = enc
                .run(&w, &x, None, &b, Vec::new, |s: &mut Vec<f32>, _, pre| {
                    s.extend_from_slice(pre)
                })
                .concat();
            let mut out = Matrix::zeros(rows, n);
            dense_product(&x, &w, &b, &mut out);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out.data), bits(&packed), "[{rows},{d},{n}]");
            // A row alone gets the values it gets in a batch.
            for r in 0..rows {
                let one = Matrix::from_vec(1, d, x.row(r).to_vec()).unwrap();
                let mut o = Matrix::zeros(1, n);
                dense_product(&one, &w, &b, &mut o);
                assert_eq!(bits(&o.data), bits(out.row(r)), "[{rows},{d},{n}] row {r}");
            }
        }
    }
}
