//! Dense matrix product on the CPU: `matrixmultiply`'s single-threaded kernel, run on
//! one block of `C` per rayon thread (split along its longer side, so that each call
//! packs as little of the operands as possible). Every element of `C` is computed the
//! same way whatever the split, so results do not depend on the thread count.

use rayon::prelude::*;

use super::SharedMut;

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transpose {
    /// Use the row-major matrix as stored.
    No,
    /// Use its transpose.
    Yes,
}

/// Smallest block side worth a task of its own.
const MIN_BLOCK: usize = 64;

/// `C = alpha · op(A) · op(B) + beta · C`, all row-major.
///
/// `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]`. With `Transpose::Yes`
/// the stored matrix is `[k, m]` (for A) or `[n, k]` (for B).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    ta: Transpose,
    b: &[f32],
    tb: Transpose,
    beta: f32,
    c: &mut [f32],
) {
    assert_eq!(a.len(), m * k, "gemm: A has the wrong size");
    assert_eq!(b.len(), k * n, "gemm: B has the wrong size");
    assert_eq!(c.len(), m * n, "gemm: C has the wrong size");
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = match ta {
        Transpose::No => (k as isize, 1),
        Transpose::Yes => (1, m as isize),
    };
    let (rsb, csb) = match tb {
        Transpose::No => (n as isize, 1),
        Transpose::Yes => (1, k as isize),
    };
    let threads = rayon::current_num_threads().max(1);
    let split_rows = m >= n;
    let side = if split_rows { m } else { n };
    let block = side.div_ceil(threads).max(MIN_BLOCK);
    let starts: Vec<usize> = (0..side).step_by(block).collect();
    let cptr = SharedMut::new(c);
    starts.into_par_iter().for_each(|s0| {
        let len = block.min(side - s0);
        let (rows, cols, a_off, b_off, c_off) = if split_rows {
            (len, n, s0 as isize * rsa, 0, s0 * n)
        } else {
            (m, len, 0, s0 as isize * csb, s0)
        };
        // SAFETY: the pointers and strides describe in-bounds sub-matrices of `a`, `b` and
        // `c` (sizes asserted above); the blocks of `c` of different tasks are disjoint.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                alpha,
                a.as_ptr().offset(a_off),
                rsa,
                csa,
                b.as_ptr().offset(b_off),
                rsb,
                csb,
                beta,
                cptr.ptr_at(c_off),
                n as isize,
                1,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    fn transpose(r: usize, c: usize, x: &[f32]) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = x[i * c + j];
            }
        }
        t
    }

    #[test]
    fn matches_naive_product_in_every_orientation() {
        for &(m, k, n) in &[(301usize, 17usize, 9usize), (5, 13, 700)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
            let want = naive(m, k, n, &a, &b);
            let at = transpose(m, k, &a);
            let bt = transpose(k, n, &b);
            for (aa, ta) in [(&a, Transpose::No), (&at, Transpose::Yes)] {
                for (bb, tb) in [(&b, Transpose::No), (&bt, Transpose::Yes)] {
                    let mut c = vec![1.0; m * n];
                    gemm(m, k, n, 1.0, aa, ta, bb, tb, 0.0, &mut c);
                    assert_eq!(c, want);
                }
            }
        }
    }
}
