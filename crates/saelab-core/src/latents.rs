//! Sparse latent activations, one row per token.

use crate::tensor::Matrix;

/// Sparse latent activations for a batch, in compressed-row form.
///
/// Row `r` holds the non-zero latents of token `r`: indices
/// `idx[indptr[r]..indptr[r + 1]]` (each `< n`) with values `val[..]` at the same
/// positions. Within a row, indices are in no particular order unless a producer says so.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latents {
    /// Number of latents `n` (the width of the dense equivalent).
    pub n: usize,
    /// Row offsets, length `rows + 1`, starting at 0.
    pub indptr: Vec<usize>,
    /// Latent indices of the non-zero entries.
    pub idx: Vec<u32>,
    /// Values of the non-zero entries.
    pub val: Vec<f32>,
}

impl Latents {
    /// An empty batch (no rows) over `n` latents.
    pub fn new(n: usize) -> Self {
        Latents {
            n,
            indptr: vec![0],
            idx: Vec::new(),
            val: Vec::new(),
        }
    }

    /// An empty batch over `n` latents with room for `rows` rows of about `per_row` entries.
    pub fn with_capacity(n: usize, rows: usize, per_row: usize) -> Self {
        let mut indptr = Vec::with_capacity(rows + 1);
        indptr.push(0);
        Latents {
            n,
            indptr,
            idx: Vec::with_capacity(rows * per_row),
            val: Vec::with_capacity(rows * per_row),
        }
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Total number of stored entries.
    pub fn nnz(&self) -> usize {
        self.idx.len()
    }

    /// Appends one row given by `(index, value)` pairs.
    pub fn push_row(&mut self, entries: impl IntoIterator<Item = (u32, f32)>) {
        for (i, v) in entries {
            self.idx.push(i);
            self.val.push(v);
        }
        self.indptr.push(self.idx.len());
    }

    /// Row `r` as `(indices, values)`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }

    /// Appends all rows of `other` (same `n`).
    pub fn append(&mut self, other: &Latents) {
        debug_assert_eq!(self.n, other.n);
        let base = self.idx.len();
        self.idx.extend_from_slice(&other.idx);
        self.val.extend_from_slice(&other.val);
        self.indptr
            .extend(other.indptr[1..].iter().map(|&p| p + base));
    }

    /// Drops stored entries whose value is exactly zero.
    pub fn prune_zeros(&mut self) {
        let mut out = Latents::with_capacity(self.n, self.rows(), 0);
        for r in 0..self.rows() {
            let (i, v) = self.row(r);
            out.push_row(
                i.iter()
                    .zip(v)
                    .filter(|(_, &v)| v != 0.0)
                    .map(|(&i, &v)| (i, v)),
            );
        }
        *self = out;
    }

    /// The dense `[rows, n]` equivalent.
    pub fn to_dense(&self) -> Matrix {
        let mut m = Matrix::zeros(self.rows(), self.n);
        for r in 0..self.rows() {
            let (i, v) = self.row(r);
            let row = m.row_mut(r);
            for (&i, &v) in i.iter().zip(v) {
                row[i as usize] += v;
            }
        }
        m
    }

    /// Sparse form of a dense `[rows, n]` matrix (non-zeros only).
    pub fn from_dense(m: &Matrix) -> Self {
        let mut out = Latents::with_capacity(m.cols, m.rows, 0);
        for r in 0..m.rows {
            out.push_row(
                m.row(r)
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0.0)
                    .map(|(i, &v)| (i as u32, v)),
            );
        }
        out
    }
}
