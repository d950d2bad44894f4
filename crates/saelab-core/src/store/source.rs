//! One activation matrix inside one file: its bytes (memory-mapped, or owned for an
//! in-memory store), where the values start, its shape and its element type.
//!
//! The `.npy` and `.safetensors` readers both produce a [`SourceMatrix`]; the store
//! only ever reads rows through it, converting to f32 on the way.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element types an activation file may hold. All are read little-endian and
/// converted exactly to f32 (every f16 and bf16 value is representable in f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// IEEE 754 binary32 (`<f4` in `.npy`, `F32` in `.safetensors`).
    F32,
    /// IEEE 754 binary16 (`<f2` in `.npy`, `F16` in `.safetensors`).
    F16,
    /// bfloat16, the upper half of an f32 (`BF16` in `.safetensors`; `.npy` has none).
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used in messages and in `.safetensors` headers (`F32`, `F16`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// The bytes behind a [`SourceMatrix`].
pub(crate) enum Bytes {
    /// A read-only memory map of the whole file.
    Map(Mmap),
    /// Bytes held in memory (an in-memory store).
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A `[rows, cols]` row-major matrix stored at `offset` in `bytes`.
pub(crate) struct SourceMatrix {
    pub path: PathBuf,
    /// Name of the tensor inside a `.safetensors` file; `None` for `.npy`.
    pub tensor: Option<String>,
    pub bytes: Bytes,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
}

impl SourceMatrix {
    /// Converts row `r` into `out` (length `cols`). Returns the first column holding a
    /// NaN or ±Inf, if any (the row is converted completely either way).
    #[inline]
    pub fn read_row(&self, r: usize, out: &mut [f32]) -> Option<usize> {
        debug_assert!(r < self.rows && out.len() == self.cols);
        let width = self.cols * self.dtype.size();
        let start = self.offset + r * width;
        let src = &self.bytes[start..start + width];
        match self.dtype {
            DType::F32 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DType::F16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            DType::BF16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    // bf16 is the top 16 bits of an f32: widening is exact.
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
        }
        if out.iter().all(|x| x.is_finite()) {
            None
        } else {
            out.iter().position(|x| !x.is_finite())
        }
    }

    /// Checks that the file holds the `rows * cols` values its header promises.
    pub fn check_size(&self, what: &str) -> Result<()> {
        let need = self
            .rows
            .checked_mul(self.cols)
            .and_then(|n| n.checked_mul(self.dtype.size()))
            .ok_or_else(|| Error::bad_file(&self.path, "corrupt header: shape overflows"))?;
        let have = self.bytes.len().saturating_sub(self.offset);
        if need > have {
            return Err(Error::bad_file(
                &self.path,
                format!(
                    "truncated: {what} [{}, {}] {} needs {need} bytes of data, the file holds {have}",
                    self.rows,
                    self.cols,
                    self.dtype.name()
                ),
            ));
        }
        Ok(())
    }
}

/// Memory-maps `path` read-only, after checking it is a non-empty regular file.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::bad_file(path, "is a directory, expected a file"));
    }
    if meta.len() == 0 {
        return Err(Error::bad_file(path, "empty file (0 bytes)"));
    }
    // SAFETY: the map is read-only. If another process truncates or rewrites the file
    // while it is mapped the contents we read may change (or the process may fault);
    // activation files are written once (atomically, by rename) and then only read,
    // which is the contract documented on `ActivationStore`.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}
