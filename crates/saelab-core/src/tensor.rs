//! Dense row-major f32 matrices and named parameter tensors.

use crate::error::{Error, Result};

/// A dense row-major `[rows, cols]` matrix of f32.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A `[rows, cols]` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data` as a `[rows, cols]` matrix; fails if the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{} values cannot form a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `i` as a slice of length `cols`.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i` as a mutable slice of length `cols`.
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The transpose, `[cols, rows]`.
    pub fn transpose(&self) -> Matrix {
        let mut out = Matrix::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                out.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        out
    }

    /// Rows `start..end` copied into a new matrix.
    pub fn slice_rows(&self, start: usize, end: usize) -> Matrix {
        Matrix {
            rows: end - start,
            cols: self.cols,
            data: self.data[start * self.cols..end * self.cols].to_vec(),
        }
    }
}

/// A named parameter tensor: a shape (1-D or 2-D) and its values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major; `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros with the given shape.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Wraps `data` with `shape`; fails if the length does not match.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let want: usize = shape.iter().product();
        if data.len() != want {
            return Err(Error::Shape(format!(
                "{} values cannot form a tensor of shape {shape:?}",
                data.len()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Number of columns of a 2-D tensor (the length of a 1-D one).
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
}

/// An ordered set of named tensors: the parameters of an SAE (or their gradients,
/// or optimizer moments, which share the same names and shapes).
///
/// Names follow SAELens (`W_enc [d_in, n]`, `b_enc [n]`, `W_dec [n, d_out]`,
/// `b_dec [d_out]`, `threshold [n]`, `b_gate`, `r_mag`, `b_mag`, `W_skip [d_out, d_in]`),
/// plus `log_threshold [n]` for JumpReLU training.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSet {
    entries: Vec<(String, Tensor)>,
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        ParamSet::default()
    }

    /// Adds (or replaces) the tensor called `name`.
    pub fn insert(&mut self, name: &str, t: Tensor) {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = t,
            None => self.entries.push((name.to_string(), t)),
        }
    }

    /// The tensor called `name`, if present.
    pub fn try_get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The tensor called `name`. Panics if absent: architectures only ask for the
    /// tensors they declared, so absence is a programming error.
    pub fn get(&self, name: &str) -> &Tensor {
        self.try_get(name)
            .unwrap_or_else(|| panic!("parameter {name} missing"))
    }

    /// The tensor called `name`, mutably. Panics if absent.
    pub fn get_mut(&mut self, name: &str) -> &mut Tensor {
        self.entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("parameter {name} missing"))
    }

    /// Several distinct tensors, mutably at once, in the order of `names`.
    /// Panics if a name is absent or repeated.
    pub fn get_many_mut<const N: usize>(&mut self, names: [&str; N]) -> [&mut Tensor; N] {
        let mut out: [Option<&mut Tensor>; N] = std::array::from_fn(|_| None);
        for (n, t) in self.entries.iter_mut() {
            if let Some(i) = names.iter().position(|x| x == n) {
                out[i] = Some(t);
            }
        }
        out.map(|t| t.expect("parameter missing or repeated in get_many_mut"))
    }

    /// Removes and returns the tensor called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(i).1)
    }

    /// Whether a tensor called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.try_get(name).is_some()
    }

    /// `(name, tensor)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// `(name, tensor)` pairs in insertion order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.entries.iter_mut().map(|(n, t)| (n.as_str(), t))
    }

    /// A set with the same names and shapes, all zeros (gradients, Adam moments).
    pub fn zeros_like(&self) -> ParamSet {
        ParamSet {
            entries: self
                .entries
                .iter()
                .map(|(n, t)| (n.clone(), Tensor::zeros(&t.shape)))
                .collect(),
        }
    }

    /// Sets every value to zero, keeping names and shapes (in parallel: the gradients of
    /// a 16× SAE are tens of MB, zeroed each step by the training routes that accumulate).
    pub fn fill_zero(&mut self) {
        use rayon::prelude::*;
        for (_, t) in self.entries.iter_mut() {
            t.data.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        }
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
