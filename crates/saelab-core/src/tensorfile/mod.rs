//! Tensor files: the bytes of `.safetensors` and `.npy`, written once for every reader
//! and writer in saelab.
//!
//! - [`DType`]: the element types saelab reads and writes, with their names in both
//!   formats;
//! - [`decode_f32`]: the one conversion of stored values to f32 (every reader uses it,
//!   the activation store row by row on its memory map), and [`decode_i64`],
//!   [`decode_u32`], [`decode_u64`] for the integer tensors;
//! - [`Values`]: values to write with the dtype they are stored as (f32 rounded to
//!   F16/BF16 to nearest even, or i64, u32, u64), streamed in blocks;
//! - [`safetensors`]: header parsing, a memory-mapped file with checked access to its
//!   tensors (typed reads that check the dtype exactly), whole-file reading as f32, and
//!   a streaming writer;
//! - [`npy`]: header parsing, whole-array reading as f32 (C or Fortran order) and
//!   encoding.
//!
//! Errors name the file and say what is wrong in one line; the wording of the checks
//! both formats share (truncated data, trailing bytes, overflowing shapes, empty files)
//! is defined here once.
//!
//! Users: the activation store (`crate::store`, which maps files and converts rows in
//! place, with no copy of the file), the SAE formats (`crate::format`), the trainer's
//! checkpoint, in `saelab-lm` the activation cache's shards and the model weights, and
//! in `saelab-features` the shard parts, the token matrix and delphi's latent cache
//! (U32 / U64 / I64 indices, F32 and F16 values).

pub mod npy;
pub mod safetensors;

use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Element types saelab reads or writes. All are little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32 (`F32` in `.safetensors`, `<f4` in `.npy`).
    F32,
    /// IEEE 754 binary16 (`F16`, `<f2`).
    F16,
    /// bfloat16, the upper half of an f32 (`BF16`; `.npy` has none).
    BF16,
    /// IEEE 754 binary64 (`F64`, `<f8`); read (rounded to f32), never written.
    F64,
    /// Signed 64-bit integers (`I64`, `<i8`): the per-row ids of the activation cache,
    /// the token matrix of delphi's latent cache.
    I64,
    /// Unsigned 32-bit integers (`U32`, `<u4`): token ids, latent indices and delphi's
    /// `locations` in the features folder.
    U32,
    /// Unsigned 64-bit integers (`U64`, `<u8`): row offsets of the features pass's
    /// compressed shard parts.
    U64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The name used in `.safetensors` headers and in messages (`F32`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U32 => "U32",
            DType::U64 => "U64",
        }
    }

    /// Every dtype saelab handles, in the order [`DType::from_name`] tries them.
    const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I64,
        DType::U32,
        DType::U64,
    ];

    /// The dtype of a `.safetensors` header name; `None` for the ones saelab does not
    /// handle (`I32`, `U8`, `BOOL`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The `.npy` `descr` of this dtype (`<f4`, ...); `None` for BF16, which NumPy lacks.
    pub fn npy_descr(self) -> Option<&'static str> {
        match self {
            DType::F32 => Some("<f4"),
            DType::F16 => Some("<f2"),
            DType::F64 => Some("<f8"),
            DType::I64 => Some("<i8"),
            DType::U32 => Some("<u4"),
            DType::U64 => Some("<u8"),
            DType::BF16 => None,
        }
    }

    /// Whether values of this type are floating point.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64 | DType::U32 | DType::U64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts the little-endian values of `dtype` in `src` into `out`, which holds
/// `src.len() / dtype.size()` values. F16 and BF16 widen exactly (every value is an
/// f32), F64 and the integer types round to the nearest f32. The only such conversion in saelab: the
/// activation store calls it on every row it reads, so it stays a plain loop per type.
#[inline]
pub fn decode_f32(dtype: DType, src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), out.len() * dtype.size());
    match dtype {
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
        DType::F64 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
        DType::I64 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
        DType::U32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
            }
        }
        DType::U64 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(8)) {
                *o = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
    }
}

/// [`decode_f32`] into a new vector.
pub fn decode_f32_vec(dtype: DType, src: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len() / dtype.size()];
    decode_f32(dtype, src, &mut out);
    out
}

/// The little-endian i64 values in `src`.
pub fn decode_i64(src: &[u8]) -> Vec<i64> {
    src.chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect()
}

/// The little-endian u32 values in `src`.
pub fn decode_u32(src: &[u8]) -> Vec<u32> {
    src.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The little-endian u64 values in `src`.
pub fn decode_u64(src: &[u8]) -> Vec<u64> {
    src.chunks_exact(8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect()
}

/// Values to write, and the dtype they are stored as.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// f32 values stored as F32.
    F32(&'a [f32]),
    /// f32 values stored as F16, rounded to nearest even.
    F16(&'a [f32]),
    /// f32 values stored as BF16, rounded to nearest even.
    BF16(&'a [f32]),
    /// i64 values stored as I64.
    I64(&'a [i64]),
    /// u32 values stored as U32.
    U32(&'a [u32]),
    /// u64 values stored as U64.
    U64(&'a [u64]),
}

/// Values converted per block by [`Values::write_le`] (64 KiB of F32).
const WRITE_BLOCK: usize = 1 << 14;

impl<'a> Values<'a> {
    /// `data` stored as the floating-point `dtype` F32, F16 or BF16; `None` for the
    /// dtypes saelab does not write from f32 (F64 and the integer types).
    pub fn floats(data: &'a [f32], dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(Values::F32(data)),
            DType::F16 => Some(Values::F16(data)),
            DType::BF16 => Some(Values::BF16(data)),
            DType::F64 | DType::I64 | DType::U32 | DType::U64 => None,
        }
    }

    /// The stored dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Values::F32(_) => DType::F32,
            Values::F16(_) => DType::F16,
            Values::BF16(_) => DType::BF16,
            Values::I64(_) => DType::I64,
            Values::U32(_) => DType::U32,
            Values::U64(_) => DType::U64,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) | Values::F16(v) | Values::BF16(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::U32(v) => v.len(),
            Values::U64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the values take when stored.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// Writes the stored little-endian bytes to `w`, converting block by block (so a
    /// large tensor streams through a small buffer).
    pub fn write_le(&self, w: &mut impl Write) -> std::io::Result<()> {
        match *self {
            Values::F32(v) => write_blocks(w, v, |x| x.to_le_bytes()),
            Values::F16(v) => write_blocks(w, v, |x| half::f16::from_f32(x).to_le_bytes()),
            Values::BF16(v) => write_blocks(w, v, |x| half::bf16::from_f32(x).to_le_bytes()),
            Values::I64(v) => write_blocks(w, v, |x| x.to_le_bytes()),
            Values::U32(v) => write_blocks(w, v, |x| x.to_le_bytes()),
            Values::U64(v) => write_blocks(w, v, |x| x.to_le_bytes()),
        }
    }
}

/// Writes `encode(x)` for every `x` of `values` to `w`, [`WRITE_BLOCK`] values at a time.
fn write_blocks<T: Copy, const N: usize>(
    w: &mut impl Write,
    values: &[T],
    encode: impl Fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(values.len().min(WRITE_BLOCK) * N);
    for block in values.chunks(WRITE_BLOCK) {
        buf.clear();
        block
            .iter()
            .for_each(|&x| buf.extend_from_slice(&encode(x)));
        w.write_all(&buf)?;
    }
    Ok(())
}

/// A tensor read from a file and converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct FileTensor {
    /// Its name in the file (the member name, without `.npy`, in a `.npz`).
    pub name: String,
    /// The dtype it was stored as.
    pub dtype: DType,
    /// Shape and f32 values.
    pub tensor: Tensor,
}

/// Memory-maps `path` read-only, after checking it is a non-empty regular file.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::bad_file(path, "is a directory, expected a file"));
    }
    if meta.len() == 0 {
        return Err(Error::bad_file(path, "truncated: empty file (0 bytes)"));
    }
    // SAFETY: the map is read-only. If another process truncates or rewrites the file
    // while it is mapped the contents we read may change (or the process may fault);
    // tensor files are written once (atomically, by rename) and then only read, which
    // is the contract documented on `ActivationStore`.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Bytes that `shape` of `dtype` takes, or `None` if the product overflows.
pub(crate) fn byte_len(shape: &[usize], dtype: DType) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &n| acc.checked_mul(n))
}

/// Message: a shape in a header whose size overflows.
pub(crate) fn overflow_msg(what: &str, shape: &[usize]) -> String {
    format!("corrupt header: {what} has shape {shape:?}, whose size overflows")
}

/// Message: the data of `what` ends past the end of the file.
pub(crate) fn truncated_msg(
    what: &str,
    shape: &[usize],
    dtype: DType,
    need: usize,
    have: usize,
) -> String {
    format!("truncated: {what} {shape:?} {dtype} needs {need} bytes of data, the file holds {have}")
}

/// Message: bytes after the last value of a file that is read whole.
pub(crate) fn trailing_msg(extra: usize, end: usize) -> String {
    format!("corrupt: {extra} bytes after the {end} bytes of tensor data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_through_the_stored_bytes() {
        let xs = [0.0f32, -1.5, 3.0e-3, 65504.0, 1.0e20, -0.0];
        for values in [Values::F32(&xs), Values::F16(&xs), Values::BF16(&xs)] {
            let mut bytes = Vec::new();
            values.write_le(&mut bytes).unwrap();
            assert_eq!(bytes.len(), values.byte_len());
            let back = decode_f32_vec(values.dtype(), &bytes);
            let want: Vec<f32> = match values {
                Values::F16(_) => xs
                    .iter()
                    .map(|x| half::f16::from_f32(*x).to_f32())
                    .collect(),
                Values::BF16(_) => xs
                    .iter()
                    .map(|x| half::bf16::from_f32(*x).to_f32())
                    .collect(),
                _ => xs.to_vec(),
            };
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{values:?}"
            );
        }
        // More values than one write block, and i64.
        let ids: Vec<i64> = (0..3 * WRITE_BLOCK as i64 + 5)
            .map(|i| i * 7 - 11)
            .collect();
        let mut bytes = Vec::new();
        Values::I64(&ids).write_le(&mut bytes).unwrap();
        assert_eq!(decode_i64(&bytes), ids);
        assert_eq!(decode_f32_vec(DType::I64, &bytes)[3], 10.0);
        // u32 and u64, past one write block too, with values above the signed range.
        let small: Vec<u32> = (0..2 * WRITE_BLOCK as u32 + 3)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let mut bytes = Vec::new();
        Values::U32(&small).write_le(&mut bytes).unwrap();
        assert_eq!(bytes.len(), Values::U32(&small).byte_len());
        assert_eq!(decode_u32(&bytes), small);
        assert_eq!(
            decode_f32_vec(DType::U32, &bytes)[1],
            2_654_435_761u32 as f32
        );
        let big: Vec<u64> = (0..WRITE_BLOCK as u64 + 3)
            .map(|i| u64::MAX - i * 3)
            .collect();
        let mut bytes = Vec::new();
        Values::U64(&big).write_le(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 8 * big.len());
        assert_eq!(decode_u64(&bytes), big);
        assert_eq!(decode_f32_vec(DType::U64, &bytes)[0], u64::MAX as f32);
        let f64s: Vec<u8> = [2.5f64, -1e300]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            decode_f32_vec(DType::F64, &f64s),
            vec![2.5, f32::NEG_INFINITY]
        );
    }

    #[test]
    fn names_and_descrs() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(d.to_string(), d.name());
            assert_eq!(d.is_float(), d.name().starts_with(['F', 'B']), "{d}");
        }
        assert_eq!(DType::from_name("I32"), None);
        assert_eq!(DType::from_name("U16"), None);
        assert_eq!(DType::BF16.npy_descr(), None);
        assert_eq!(DType::U32.npy_descr(), Some("<u4"));
        assert_eq!(DType::U64.npy_descr(), Some("<u8"));
        assert_eq!((DType::U32.size(), DType::U64.size()), (4, 8));
        for d in [DType::I64, DType::U32, DType::U64] {
            assert!(Values::floats(&[1.0], d).is_none(), "{d}");
        }
        assert_eq!(byte_len(&[3, 4], DType::F16), Some(24));
        assert_eq!(byte_len(&[usize::MAX, 2], DType::F32), None);
    }
}
