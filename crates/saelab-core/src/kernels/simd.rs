//! Vector primitives of the sparse kernels (`axpy`, `dot`), with an AVX-512 version
//! chosen at run time and a portable one. For a given machine the choice is fixed, so
//! results are reproducible.

use std::sync::OnceLock;

/// The environment variable that, set to `portable`, makes every kernel use its
/// portable code instead of AVX-512 (so that the portable path can be tested and timed
/// on a machine that has AVX-512).
pub const KERNELS_ENV: &str = "SAELAB_KERNELS";

/// Whether the AVX-512 kernels are used: the CPU has AVX-512F and [`KERNELS_ENV`] is not
/// `portable`. Decided once per process, so results are reproducible within a run.
pub fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let portable = std::env::var(KERNELS_ENV).is_ok_and(|v| v == "portable");
        #[cfg(target_arch = "x86_64")]
        {
            !portable && std::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = portable;
            false
        }
    })
}

/// `y += a · x` (over the shorter of the two lengths).
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; both slices hold at least n values.
        unsafe { avx512::axpy(a, x.as_ptr(), y.as_mut_ptr(), n) };
        return;
    }
    for (yi, xi) in y[..n].iter_mut().zip(&x[..n]) {
        *yi += a * xi;
    }
}

/// `Σ a_i b_i` (over the shorter of the two lengths).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; both slices hold at least n values.
        return unsafe { avx512::dot(a.as_ptr(), b.as_ptr(), n) };
    }
    let mut acc = [0.0f32; 8];
    let ca = a[..n].chunks_exact(8);
    let cb = b[..n].chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out += Σ_e c[e] · w[idx[e]]`, where `w` is row-major with rows of length
/// `out.len()` (a sparse row times a matrix: the decoder forward of one token).
#[inline]
pub fn gather_axpy(out: &mut [f32], idx: &[u32], c: &[f32], w: &[f32]) {
    let d = out.len();
    assert_eq!(
        idx.len(),
        c.len(),
        "gather_axpy: idx and c differ in length"
    );
    assert!(
        idx.iter().all(|&j| (j as usize + 1) * d <= w.len()),
        "gather_axpy: index out of range"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; every row idx[e] of w is in bounds (checked above).
        unsafe { avx512::gather_axpy(out.as_mut_ptr(), d, idx, c, w.as_ptr()) };
        return;
    }
    for (&j, &a) in idx.iter().zip(c) {
        let row = &w[j as usize * d..(j as usize + 1) * d];
        for (o, x) in out.iter_mut().zip(row) {
            *o += a * x;
        }
    }
}

/// For every entry `e`: `a += f[e] · ra[rows[e]]` and `b += g[e] · rb[rows[e]]`, where
/// `ra`, `rb` are row-major with rows of length `a.len() == b.len()` (the per-latent
/// decoder-row and encoder-column gradients as sums over the latent's tokens).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dual_scatter(
    a: &mut [f32],
    b: &mut [f32],
    rows: &[u32],
    f: &[f32],
    g: &[f32],
    ra: &[f32],
    rb: &[f32],
) {
    let d = a.len();
    assert_eq!(b.len(), d, "dual_scatter: a and b differ in length");
    assert!(
        rows.len() == f.len() && rows.len() == g.len(),
        "dual_scatter: lengths"
    );
    assert!(
        rows.iter()
            .all(|&r| (r as usize + 1) * d <= ra.len() && (r as usize + 1) * d <= rb.len()),
        "dual_scatter: row out of range"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; all rows in bounds (checked above).
        unsafe {
            avx512::dual_scatter(
                a.as_mut_ptr(),
                b.as_mut_ptr(),
                d,
                rows,
                f,
                g,
                ra.as_ptr(),
                rb.as_ptr(),
            )
        };
        return;
    }
    for ((&r, &fv), &gv) in rows.iter().zip(f).zip(g) {
        let r = r as usize;
        for ((x, y), (p, q)) in a
            .iter_mut()
            .zip(b.iter_mut())
            .zip(ra[r * d..(r + 1) * d].iter().zip(&rb[r * d..(r + 1) * d]))
        {
            *x += fv * p;
            *y += gv * q;
        }
    }
}

/// The AVX-512 lane mask of the first `min(left, 16)` lanes (for the tail of a row).
#[inline]
pub(crate) fn tail_mask(left: usize) -> u16 {
    if left >= 16 {
        0xffff
    } else {
        ((1u32 << left) - 1) as u16
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::tail_mask;
    use std::arch::x86_64::*;

    /// Vectors per column block of the register-accumulating kernels.
    const V: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather_axpy(out: *mut f32, d: usize, idx: &[u32], c: &[f32], w: *const f32) {
        let mut col = 0;
        while col + 16 * V <= d {
            let mut acc = [_mm512_setzero_ps(); V];
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(out.add(col + 16 * v));
            }
            for (&j, &cv) in idx.iter().zip(c) {
                let row = w.add(j as usize * d + col);
                let s = _mm512_set1_ps(cv);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(s, _mm512_loadu_ps(row.add(16 * v)), *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(col + 16 * v), *a);
            }
            col += 16 * V;
        }
        while col < d {
            let m = tail_mask(d - col);
            let mut acc = _mm512_maskz_loadu_ps(m, out.add(col));
            for (&j, &cv) in idx.iter().zip(c) {
                let row = w.add(j as usize * d + col);
                acc = _mm512_fmadd_ps(_mm512_set1_ps(cv), _mm512_maskz_loadu_ps(m, row), acc);
            }
            _mm512_mask_storeu_ps(out.add(col), m, acc);
            col += 16;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dual_scatter(
        a: *mut f32,
        b: *mut f32,
        d: usize,
        rows: &[u32],
        f: &[f32],
        g: &[f32],
        ra: *const f32,
        rb: *const f32,
    ) {
        let mut col = 0;
        while col + 16 * V <= d {
            let mut aa = [_mm512_setzero_ps(); V];
            let mut bb = [_mm512_setzero_ps(); V];
            for v in 0..V {
                aa[v] = _mm512_loadu_ps(a.add(col + 16 * v));
                bb[v] = _mm512_loadu_ps(b.add(col + 16 * v));
            }
            for e in 0..rows.len() {
                let r = *rows.get_unchecked(e) as usize;
                let fa = _mm512_set1_ps(*f.get_unchecked(e));
                let gb = _mm512_set1_ps(*g.get_unchecked(e));
                let pa = ra.add(r * d + col);
                let pb = rb.add(r * d + col);
                for v in 0..V {
                    aa[v] = _mm512_fmadd_ps(fa, _mm512_loadu_ps(pa.add(16 * v)), aa[v]);
                    bb[v] = _mm512_fmadd_ps(gb, _mm512_loadu_ps(pb.add(16 * v)), bb[v]);
                }
            }
            for v in 0..V {
                _mm512_storeu_ps(a.add(col + 16 * v), aa[v]);
                _mm512_storeu_ps(b.add(col + 16 * v), bb[v]);
            }
            col += 16 * V;
        }
        while col < d {
            let m = tail_mask(d - col);
            let mut av = _mm512_maskz_loadu_ps(m, a.add(col));
            let mut bv = _mm512_maskz_loadu_ps(m, b.add(col));
            for e in 0..rows.len() {
                let r = rows[e] as usize;
                av = _mm512_fmadd_ps(
                    _mm512_set1_ps(f[e]),
                    _mm512_maskz_loadu_ps(m, ra.add(r * d + col)),
                    av,
                );
                bv = _mm512_fmadd_ps(
                    _mm512_set1_ps(g[e]),
                    _mm512_maskz_loadu_ps(m, rb.add(r * d + col)),
                    bv,
                );
            }
            _mm512_mask_storeu_ps(a.add(col), m, av);
            _mm512_mask_storeu_ps(b.add(col), m, bv);
            col += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy(a: f32, x: *const f32, y: *mut f32, n: usize) {
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        while i + 64 <= n {
            let y0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(x.add(i)), _mm512_loadu_ps(y.add(i)));
            let y1 = _mm512_fmadd_ps(
                av,
                _mm512_loadu_ps(x.add(i + 16)),
                _mm512_loadu_ps(y.add(i + 16)),
            );
            let y2 = _mm512_fmadd_ps(
                av,
                _mm512_loadu_ps(x.add(i + 32)),
                _mm512_loadu_ps(y.add(i + 32)),
            );
            let y3 = _mm512_fmadd_ps(
                av,
                _mm512_loadu_ps(x.add(i + 48)),
                _mm512_loadu_ps(y.add(i + 48)),
            );
            _mm512_storeu_ps(y.add(i), y0);
            _mm512_storeu_ps(y.add(i + 16), y1);
            _mm512_storeu_ps(y.add(i + 32), y2);
            _mm512_storeu_ps(y.add(i + 48), y3);
            i += 64;
        }
        while i < n {
            let m = tail_mask(n - i);
            let xv = _mm512_maskz_loadu_ps(m, x.add(i));
            let yv = _mm512_maskz_loadu_ps(m, y.add(i));
            _mm512_mask_storeu_ps(y.add(i), m, _mm512_fmadd_ps(av, xv, yv));
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut s2 = _mm512_setzero_ps();
        let mut s3 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 64 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(i + 16)),
                _mm512_loadu_ps(b.add(i + 16)),
                s1,
            );
            s2 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(i + 32)),
                _mm512_loadu_ps(b.add(i + 32)),
                s2,
            );
            s3 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(i + 48)),
                _mm512_loadu_ps(b.add(i + 48)),
                s3,
            );
            i += 64;
        }
        while i < n {
            let m = tail_mask(n - i);
            s0 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, a.add(i)),
                _mm512_maskz_loadu_ps(m, b.add(i)),
                s0,
            );
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the test run with `SAELAB_KERNELS=portable` (scripts/test.sh), the switch must
    /// really select the portable code; otherwise that run would test nothing new.
    #[test]
    fn the_portable_switch_is_honoured() {
        if std::env::var(KERNELS_ENV).is_ok_and(|v| v == "portable") {
            assert!(
                !avx512(),
                "{KERNELS_ENV}=portable but the AVX-512 kernels are on"
            );
            assert_eq!(super::super::encoder::backend_name(), "matrixmultiply");
        }
    }

    #[test]
    fn axpy_and_dot_match_plain_loops_at_every_tail_length() {
        for n in 0..150 {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want_y: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a + 1.5 * b).collect();
            let want_d: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let got_d = dot(&x, &y) as f64;
            assert!(
                (got_d - want_d).abs() < 1e-4 * (1.0 + want_d.abs()),
                "n={n}"
            );
            axpy(1.5, &x, &mut y);
            for (a, b) in y.iter().zip(&want_y) {
                assert!((a - b).abs() < 1e-6, "n={n}");
            }
        }
    }

    #[test]
    fn gather_and_scatter_match_plain_loops() {
        for d in [1usize, 15, 16, 17, 191, 192, 200, 576] {
            let rows = 9;
            let w: Vec<f32> = (0..rows * d).map(|i| ((i * 7) % 19) as f32 - 9.0).collect();
            let w2: Vec<f32> = (0..rows * d).map(|i| ((i * 3) % 11) as f32 - 5.0).collect();
            let idx = [3u32, 0, 8, 3];
            let c = [0.5f32, -1.0, 2.0, 0.25];
            let g = [1.0f32, 2.0, -0.5, 3.0];
            let mut out: Vec<f32> = (0..d).map(|i| i as f32).collect();
            let mut want = out.clone();
            for (&j, &a) in idx.iter().zip(&c) {
                for i in 0..d {
                    want[i] += a * w[j as usize * d + i];
                }
            }
            gather_axpy(&mut out, &idx, &c, &w);
            assert_eq!(out, want, "gather d={d}");
            let mut a = vec![1.0f32; d];
            let mut b = vec![-1.0f32; d];
            let (mut wa, mut wb) = (a.clone(), b.clone());
            for e in 0..4 {
                let r = idx[e] as usize;
                for i in 0..d {
                    wa[i] += c[e] * w[r * d + i];
                    wb[i] += g[e] * w2[r * d + i];
                }
            }
            dual_scatter(&mut a, &mut b, &idx, &c, &g, &w, &w2);
            assert_eq!(a, wa, "scatter a d={d}");
            assert_eq!(b, wb, "scatter b d={d}");
        }
    }
}
