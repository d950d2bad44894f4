//! One activation matrix inside one file: its bytes (memory-mapped, or owned for an
//! in-memory store), where the values start, its shape and its element type.
//!
//! [`open_npy`] and [`open_safetensors`] check a file with the header parsers of
//! [`crate::tensorfile`] and keep its map; the store then only ever reads rows through
//! [`SourceMatrix::read_row`], converting in place with [`decode_f32`].
//!
//! Accepted: 2-D `[rows, d]` matrices, non-empty, of F32, F16 or BF16 (`.npy`: C
//! order, little-endian `<f4` or `<f2`). A `.safetensors` file may hold other tensors
//! of any dtype beside the one read: only that one is checked.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::tensorfile::safetensors::{SafetensorsFile, TensorEntry};
use crate::tensorfile::{decode_f32, map_file, npy, DType};

/// The tensor name used when the caller names none and the file has one of this name.
pub const DEFAULT_TENSOR: &str = "activations";

/// The dtypes an activation file may hold.
const ACCEPTED: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

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
        decode_f32(self.dtype, &self.bytes[start..start + width], out);
        if out.iter().all(|x| x.is_finite()) {
            None
        } else {
            out.iter().position(|x| !x.is_finite())
        }
    }
}

/// `(rows, cols)` of a 2-D, non-empty `shape`; `what` names the tensor in errors.
fn matrix_shape(path: &Path, what: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape[..] {
        [r, c] if r == 0 || c == 0 => Err(Error::bad_file(
            path,
            format!("{what} is an empty matrix [{r}, {c}]: no activations"),
        )),
        [r, c] => Ok((r, c)),
        _ => Err(Error::bad_file(
            path,
            format!(
                "{what} is {}-D {shape:?}; expected a 2-D [rows, d] matrix (reshape to [tokens, d])",
                shape.len()
            ),
        )),
    }
}

/// Opens the `.npy` file `path` as a memory-mapped 2-D activation matrix.
pub(crate) fn open_npy(path: &Path) -> Result<SourceMatrix> {
    let map = map_file(path)?;
    let h = npy::parse_header(path, &map)?;
    let dtype = h.dtype(&ACCEPTED).map_err(|m| Error::bad_file(path, m))?;
    if h.fortran_order {
        return Err(Error::bad_file(
            path,
            "Fortran-order (column-major) array is not supported; save it in C order (np.ascontiguousarray)",
        ));
    }
    let (rows, cols) = matrix_shape(path, "the array", &h.shape)?;
    h.check_data(dtype, map.len() - h.data_offset, false)
        .map_err(|m| Error::bad_file(path, m))?;
    Ok(SourceMatrix {
        path: path.to_path_buf(),
        tensor: None,
        bytes: Bytes::Map(map),
        offset: h.data_offset,
        rows,
        cols,
        dtype,
    })
}

/// A header's entries as `name [shape] dtype, ...`, for messages.
fn describe(entries: &[TensorEntry]) -> String {
    if entries.is_empty() {
        return "none".into();
    }
    entries
        .iter()
        .map(|e| format!("{} {:?} {}", e.name, e.shape, e.dtype))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tensor to read from a `.safetensors` file: the one called `tensor`, or (when
/// `None`) `activations` if present, else the only 2-D floating-point tensor (or the
/// only tensor).
fn choose<'a>(file: &'a SafetensorsFile, tensor: Option<&str>) -> Result<&'a TensorEntry> {
    let entries = file.entries();
    let refuse = |msg: String| Err(Error::bad_file(file.path(), msg));
    if let Some(name) = tensor {
        return match file.entry(name) {
            Some(e) => Ok(e),
            None => refuse(format!(
                "no tensor named '{name}'; available: {}",
                describe(entries)
            )),
        };
    }
    if let Some(e) = file.entry(DEFAULT_TENSOR) {
        return Ok(e);
    }
    let cands: Vec<&TensorEntry> = entries
        .iter()
        .filter(|e| e.shape.len() == 2 && e.is_float())
        .collect();
    match cands[..] {
        [one] => Ok(one),
        [] if entries.len() == 1 => Ok(&entries[0]),
        [] => refuse(format!(
            "no 2-D floating-point tensor to use; available: {}",
            describe(entries)
        )),
        _ => refuse(format!(
            "several 2-D tensors, name one (--tensor); available: {}",
            describe(entries)
        )),
    }
}

/// Opens the activation matrix in the `.safetensors` file `path`: the tensor called
/// `tensor`, or (when `None`) `activations` if present, else the only 2-D
/// floating-point tensor.
pub(crate) fn open_safetensors(path: &Path, tensor: Option<&str>) -> Result<SourceMatrix> {
    let file = SafetensorsFile::open(path)?;
    let entry = choose(&file, tensor)?;
    let name = &entry.name;
    let dtype = entry
        .known_dtype()
        .filter(|d| ACCEPTED.contains(d))
        .ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "tensor '{name}' has dtype {}; accepted dtypes: F32, F16, BF16",
                    entry.dtype
                ),
            )
        })?;
    let (rows, cols) = matrix_shape(path, &format!("tensor '{name}'"), &entry.shape)?;
    let range = file.locate(entry, dtype)?;
    let name = name.clone();
    Ok(SourceMatrix {
        path: path.to_path_buf(),
        tensor: Some(name),
        bytes: Bytes::Map(file.into_map()),
        offset: range.start,
        rows,
        cols,
        dtype,
    })
}
