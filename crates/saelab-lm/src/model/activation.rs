//! The one tensor type at the model's boundary: values at every position of a batch of
//! equal-length sequences, `[B, T, width]` f32, row-major.
//!
//! Captures and all-position logits are owned [`Activation`]s; a patch edits the
//! forward's own buffer in place through an [`ActivationMut`]. Row `b·T + t` holds
//! position `t` of sequence `b`, so an activation is also a `[B·T, width]` matrix:
//! [`Activation::into_matrix`] hands the buffer to a [`saelab_core::Matrix`] without
//! copying it.
//!
//! An activation also says where its sequences sit ([`Placement`]): the stream each one
//! belongs to and the absolute position of its first row. A full forward starts every
//! sequence at position 0 and sequence `b` is stream `b`; an incremental forward
//! ([`crate::model::HookedModel::forward_cached`]) runs only the new positions of
//! some streams of a [`crate::model::KvCache`], so row `(b, t)` is position
//! [`Activation::position`]`(b, t)` of stream [`Activation::stream`]`(b)`. A patch that
//! acts on a set of positions (the prompt, the last one, an explicit list) reads them
//! there.

use std::fmt;
use std::sync::Arc;

use saelab_core::{Error, Matrix, Result};

/// Values `[B, T, width]` (f32, row-major) at every position of a batch of sequences,
/// stored in `S`: a `Vec<f32>` ([`Activation`]) or the forward's buffer, borrowed
/// mutably by a patch ([`ActivationMut`]).
///
/// `width` is `d_model` for a hook activation and the vocabulary size for logits.
#[derive(Clone, PartialEq)]
pub struct Activation<S = Vec<f32>> {
    batch: usize,
    seq_len: usize,
    width: usize,
    data: S,
    /// Where each sequence sits; `None`: sequence `b` is stream `b` from position 0.
    places: Option<Arc<[Placement]>>,
}

/// Where one sequence of an activation sits: the stream (of a
/// [`crate::model::KvCache`]) it continues and the absolute position of its first row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index of the stream in the cache (the prompt's index in a generation).
    pub stream: usize,
    /// Absolute position of the sequence's first row: the tokens the stream held before.
    pub start: usize,
}

/// A hook's activation inside the forward, `[B, T, d_model]`, lent to a patch to edit
/// in place (see [`crate::model::ForwardOptions::patch`]).
pub type ActivationMut<'a> = Activation<&'a mut [f32]>;

impl Activation {
    /// Wraps `data` as `[batch, seq_len, width]`; fails if the length does not match.
    pub fn new(batch: usize, seq_len: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        check(batch, seq_len, width, data.len())?;
        Ok(Activation {
            batch,
            seq_len,
            width,
            data,
            places: None,
        })
    }

    /// The values as a `[B·T, width]` matrix (the buffer moves; nothing is copied).
    pub fn into_matrix(self) -> Matrix {
        Matrix {
            rows: self.batch * self.seq_len,
            cols: self.width,
            data: self.data,
        }
    }

    /// The values, row-major (the buffer moves).
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

impl From<Activation> for Matrix {
    fn from(a: Activation) -> Matrix {
        a.into_matrix()
    }
}

impl<'a> ActivationMut<'a> {
    /// Views `data` as `[batch, seq_len, width]`; fails if the length does not match.
    pub fn from_slice(
        batch: usize,
        seq_len: usize,
        width: usize,
        data: &'a mut [f32],
    ) -> Result<Self> {
        check(batch, seq_len, width, data.len())?;
        Ok(Activation {
            batch,
            seq_len,
            width,
            data,
            places: None,
        })
    }
}

/// Checks that `len` values form `[batch, seq_len, width]`.
fn check(batch: usize, seq_len: usize, width: usize, len: usize) -> Result<()> {
    if batch
        .checked_mul(seq_len)
        .and_then(|n| n.checked_mul(width))
        != Some(len)
    {
        return Err(Error::Shape(format!(
            "{len} values cannot form a [{batch}, {seq_len}, {width}] activation"
        )));
    }
    Ok(())
}

impl<S> Activation<S> {
    /// Sequences `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per sequence `T`.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Values per position (`d_model`, or the vocabulary size for logits).
    pub fn width(&self) -> usize {
        self.width
    }

    /// `[B, T, width]`.
    pub fn dims(&self) -> [usize; 3] {
        [self.batch, self.seq_len, self.width]
    }

    /// Rows `B·T` of the `[B·T, width]` view.
    pub fn rows(&self) -> usize {
        self.batch * self.seq_len
    }

    /// The stream sequence `b` belongs to: `b` in a full forward, the cache stream in
    /// an incremental one.
    pub fn stream(&self, b: usize) -> usize {
        self.places.as_ref().map_or(b, |p| p[b].stream)
    }

    /// Absolute position of sequence `b`'s first row: 0 in a full forward, the
    /// stream's cached length in an incremental one.
    pub fn start(&self, b: usize) -> usize {
        self.places.as_ref().map_or(0, |p| p[b].start)
    }

    /// Absolute position of row `(b, t)` in its stream: `start(b) + t`.
    pub fn position(&self, b: usize, t: usize) -> usize {
        self.start(b) + t
    }

    /// Sets where the sequences sit (one [`Placement`] per sequence; `None` for a full
    /// forward's).
    pub(crate) fn placed(mut self, places: Option<Arc<[Placement]>>) -> Self {
        debug_assert!(places.as_ref().is_none_or(|p| p.len() == self.batch));
        self.places = places;
        self
    }
}

impl<S: AsRef<[f32]>> Activation<S> {
    /// All values, row-major: row `b·T + t` is position `t` of sequence `b`.
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_ref()
    }

    /// Row `r = b·T + t` (`width` values).
    pub fn row(&self, r: usize) -> &[f32] {
        &self.as_slice()[r * self.width..(r + 1) * self.width]
    }

    /// Position `t` of sequence `b` (`width` values).
    pub fn at(&self, b: usize, t: usize) -> &[f32] {
        self.row(b * self.seq_len + t)
    }

    /// Sequence `b`: `[T, width]` values, row-major.
    pub fn sequence(&self, b: usize) -> &[f32] {
        let n = self.seq_len * self.width;
        &self.as_slice()[b * n..(b + 1) * n]
    }

    /// An owned copy of the values.
    pub fn to_activation(&self) -> Activation {
        Activation {
            batch: self.batch,
            seq_len: self.seq_len,
            width: self.width,
            data: self.as_slice().to_vec(),
            places: self.places.clone(),
        }
    }
}

impl<S: AsRef<[f32]> + AsMut<[f32]>> Activation<S> {
    /// All values, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        self.data.as_mut()
    }

    /// Row `r = b·T + t`, mutably.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        let w = self.width;
        &mut self.as_mut_slice()[r * w..(r + 1) * w]
    }

    /// The `B·T` rows in order, mutably.
    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        let w = self.width.max(1);
        self.as_mut_slice().chunks_exact_mut(w)
    }
}

/// Prints the dimensions only (an activation can hold millions of values).
impl<S> fmt::Debug for Activation<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Activation[{}, {}, {}]",
            self.batch, self.seq_len, self.width
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_positions_and_matrix_agree() {
        let a = Activation::new(2, 3, 2, (0..12).map(|v| v as f32).collect()).unwrap();
        assert_eq!(a.dims(), [2, 3, 2]);
        assert_eq!(a.at(1, 0), &[6.0, 7.0]);
        assert_eq!(a.row(4), a.at(1, 1));
        assert_eq!(a.sequence(1), &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        let ptr = a.as_slice().as_ptr();
        let m = a.into_matrix();
        assert_eq!((m.rows, m.cols), (6, 2));
        assert_eq!(m.data.as_ptr(), ptr, "into_matrix must not copy");
        assert!(Activation::new(2, 3, 2, vec![0.0; 11]).is_err());
    }

    #[test]
    fn a_mutable_view_edits_the_buffer_in_place() {
        let mut buf = vec![1.0f32; 8];
        let mut v = ActivationMut::from_slice(1, 4, 2, &mut buf).unwrap();
        v.row_mut(2).fill(5.0);
        for row in v.rows_mut().skip(3) {
            row[1] = -1.0;
        }
        assert_eq!(format!("{v:?}"), "Activation[1, 4, 2]");
        assert_eq!(buf, [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 1.0, -1.0]);
        assert!(ActivationMut::from_slice(2, 4, 2, &mut buf).is_err());
    }

    #[test]
    fn placements_give_streams_and_absolute_positions() {
        let a = Activation::new(2, 3, 1, vec![0.0; 6]).unwrap();
        assert_eq!((a.stream(1), a.position(1, 2)), (1, 2));
        let places = [
            Placement {
                stream: 4,
                start: 10,
            },
            Placement {
                stream: 0,
                start: 7,
            },
        ];
        let a = a.placed(Some(places.into()));
        assert_eq!((a.stream(0), a.start(0), a.position(0, 2)), (4, 10, 12));
        assert_eq!((a.stream(1), a.position(1, 0)), (0, 7));
        assert_eq!(a.to_activation().position(1, 1), 8);
    }
}
