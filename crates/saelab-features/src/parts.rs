//! Stage A's own files: one *shard part* per block of contexts, token-major.
//!
//! A part holds the latents of `contexts` consecutive contexts (sequences
//! `first_seq..first_seq + contexts`) as compressed rows, one row per position (BOS
//! rows are empty), the latents of a row in increasing order:
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `tokens` | U32 | `[contexts, ctx_len]` | token ids |
//! | `indptr` | U64 | `[contexts · ctx_len + 1]` | row `r` is entries `indptr[r]..indptr[r+1]` |
//! | `latents` | U32 | `[nnz]` | latent index of each entry |
//! | `values` | F32 | `[nnz]` | its value (exact, as the SAE computed it) |
//! | `counts` | U32 | `[n_latents]` | active positions per latent in this part |
//!
//! Row `r` is position `r % ctx_len` of sequence `first_seq + r / ctx_len`. Parts are
//! written atomically, each once, and never change; every later stage reads them one
//! at a time (Stage B once per latent range) from a memory map, so memory is bounded by
//! one part plus what the stage keeps.

use std::path::Path;

use saelab_core::tensorfile::safetensors::{SafetensorsFile, TensorOut};
use saelab_core::tensorfile::{DType, Values};
use saelab_core::{Error, Result};

use crate::store::write_tensors;

/// One shard part in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Part {
    /// Tokens per context.
    pub ctx_len: usize,
    /// Width of the SAE.
    pub n_latents: usize,
    /// Token ids, `[contexts · ctx_len]`.
    pub tokens: Vec<u32>,
    /// Row offsets, `[contexts · ctx_len + 1]`.
    pub indptr: Vec<u64>,
    /// Latent of each entry.
    pub latents: Vec<u32>,
    /// Value of each entry.
    pub values: Vec<f32>,
}

impl Part {
    /// An empty part.
    pub fn new(ctx_len: usize, n_latents: usize) -> Self {
        Part {
            ctx_len,
            n_latents,
            indptr: vec![0],
            ..Default::default()
        }
    }

    /// Contexts held.
    pub fn contexts(&self) -> usize {
        self.tokens.len() / self.ctx_len.max(1)
    }

    /// Rows (positions) held.
    pub fn rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Appends one context: its tokens and, per position, its non-zero latents in any
    /// order (sorted here); BOS positions get an empty row.
    pub fn push_context(&mut self, tokens: &[u32], rows: Vec<Vec<(u32, f32)>>) {
        debug_assert_eq!(tokens.len(), self.ctx_len);
        debug_assert_eq!(rows.len(), self.ctx_len);
        self.tokens.extend_from_slice(tokens);
        for mut row in rows {
            row.sort_unstable_by_key(|&(j, _)| j);
            for (j, v) in row {
                self.latents.push(j);
                self.values.push(v);
            }
            self.indptr.push(self.latents.len() as u64);
        }
    }

    /// Row `r` as `(latents, values)`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r] as usize, self.indptr[r + 1] as usize);
        (&self.latents[a..b], &self.values[a..b])
    }

    /// Active positions per latent.
    pub fn counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.n_latents];
        for &j in &self.latents {
            c[j as usize] += 1;
        }
        c
    }

    /// Writes the part to `path` atomically (the U64 row offsets first, so that every
    /// tensor is aligned to its element size).
    pub fn write(&self, path: &Path) -> Result<()> {
        let counts = self.counts();
        write_tensors(
            path,
            &[
                TensorOut::new("indptr", &[self.indptr.len()], Values::U64(&self.indptr)),
                TensorOut::new(
                    "tokens",
                    &[self.contexts(), self.ctx_len],
                    Values::U32(&self.tokens),
                ),
                TensorOut::new("latents", &[self.latents.len()], Values::U32(&self.latents)),
                TensorOut::new("values", &[self.values.len()], Values::F32(&self.values)),
                TensorOut::new("counts", &[self.n_latents], Values::U32(&counts)),
            ],
        )
    }

    /// Reads the part at `path`, which must hold `contexts` contexts of `ctx_len`
    /// tokens over `n_latents` latents; every inconsistency is an error naming the file.
    pub fn read(path: &Path, contexts: usize, ctx_len: usize, n_latents: usize) -> Result<Part> {
        let f = SafetensorsFile::open(path)?;
        let rows = contexts * ctx_len;
        f.expect_shape("tokens", &[contexts, ctx_len])?;
        let tokens = f.read_u32("tokens")?;
        f.expect_shape("indptr", &[rows + 1])?;
        let indptr = f.read_u64("indptr")?;
        let latents = f.read_u32("latents")?;
        let nnz = latents.len();
        f.expect_shape("latents", &[nnz])?;
        f.expect_dtype("values", DType::F32)?;
        f.expect_shape("values", &[nnz])?;
        let values = f.read_f32("values")?.tensor.data;
        f.expect_shape("counts", &[n_latents])?;
        let counts = f.read_u32("counts")?;
        let bad = |m: String| Err(Error::bad_file(path, m));
        if indptr[0] != 0 || indptr[rows] != nnz as u64 || indptr.windows(2).any(|w| w[0] > w[1]) {
            return bad("corrupt: indptr is not a row index of the entries".into());
        }
        let part = Part {
            ctx_len,
            n_latents,
            tokens,
            indptr,
            latents,
            values,
        };
        for r in 0..rows {
            let (l, v) = part.row(r);
            if l.windows(2).any(|w| w[0] >= w[1])
                || l.last().is_some_and(|&j| j as usize >= n_latents)
            {
                return bad(format!(
                    "corrupt: row {r} has unsorted or out-of-range latents"
                ));
            }
            if v.iter().any(|x| !x.is_finite() || *x == 0.0) {
                return bad(format!("corrupt: row {r} holds a zero or non-finite value"));
            }
        }
        if part.counts() != counts {
            return bad("corrupt: counts do not match the entries".into());
        }
        Ok(part)
    }
}

/// The per-latent counts stored in the part at `path` (`[n_latents]`), without
/// checking the rest.
pub fn read_counts(path: &Path, n_latents: usize) -> Result<Vec<u32>> {
    let f = SafetensorsFile::open(path)?;
    f.expect_shape("counts", &[n_latents])?;
    f.read_u32("counts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_corruption_is_named() {
        let mut p = Part::new(3, 5);
        p.push_context(
            &[1, 2, 3],
            vec![vec![], vec![(4, 1.5), (0, 0.5)], vec![(2, 2.0)]],
        );
        p.push_context(&[1, 7, 8], vec![vec![], vec![], vec![(4, 3.0)]]);
        assert_eq!(p.row(1), (&[0u32, 4][..], &[0.5f32, 1.5][..]));
        assert_eq!(p.counts(), vec![1, 0, 1, 0, 2]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000.safetensors");
        p.write(&path).unwrap();
        assert_eq!(Part::read(&path, 2, 3, 5).unwrap(), p);
        assert_eq!(read_counts(&path, 5).unwrap(), vec![1, 0, 1, 0, 2]);
        let e = Part::read(&path, 3, 3, 5).unwrap_err().to_string();
        assert!(
            e.contains("00000.safetensors") && e.contains("tokens"),
            "{e}"
        );
        let e = read_counts(&path, 6).unwrap_err().to_string();
        assert!(
            e.contains("00000.safetensors")
                && e.contains("tensor counts has shape [5], expected [6]"),
            "{e}"
        );
        let mut bad = p.clone();
        bad.values[0] = 0.0;
        bad.write(&path).unwrap();
        let e = Part::read(&path, 2, 3, 5).unwrap_err().to_string();
        assert!(e.contains("zero or non-finite"), "{e}");
        // Values stored as anything but F32 (here F16) are refused, not widened; so are
        // token ids of another integer type.
        let counts = p.counts();
        let write = |values: Values<'_>, tokens: Values<'_>| {
            write_tensors(
                &path,
                &[
                    TensorOut::new("indptr", &[7], Values::U64(&p.indptr)),
                    TensorOut::new("tokens", &[2, 3], tokens),
                    TensorOut::new("latents", &[4], Values::U32(&p.latents)),
                    TensorOut::new("values", &[4], values),
                    TensorOut::new("counts", &[5], Values::U32(&counts)),
                ],
            )
            .unwrap();
            Part::read(&path, 2, 3, 5).unwrap_err().to_string()
        };
        let e = write(Values::F16(&p.values), Values::U32(&p.tokens));
        assert!(
            e.contains("00000.safetensors")
                && e.contains("tensor values has dtype F16; expected F32"),
            "{e}"
        );
        let wide: Vec<i64> = p.tokens.iter().map(|&t| t as i64).collect();
        let e = write(Values::F32(&p.values), Values::I64(&wide));
        assert!(
            e.contains("tensor tokens has dtype I64; expected U32"),
            "{e}"
        );
    }
}
