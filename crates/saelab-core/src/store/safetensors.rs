//! Memory-mapped `.safetensors` activation matrices.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON mapping each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative
//! to the end of the header; an optional `"__metadata__"` entry holds strings), then
//! the data. saelab parses the header itself (rather than through the `safetensors`
//! crate) so that every refusal can say exactly what is wrong and so that unrelated
//! tensors of any dtype may sit beside the activations.
//!
//! Tensor choice: the name given by the caller; else `activations` if present; else
//! the only 2-D floating-point tensor. Accepted dtypes: F32, F16, BF16.

use std::path::Path;

use serde_json::Value;

use super::source::{map_file, Bytes, DType, SourceMatrix};
use crate::error::{Error, Result};
use crate::io::write_file_atomic;
use crate::tensor::Matrix;

/// The tensor name used when the caller names none and the file has one of this name.
pub const DEFAULT_TENSOR: &str = "activations";

/// Largest header accepted (the reference implementation's limit).
const MAX_HEADER: u64 = 100_000_000;

/// One entry of a `.safetensors` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Dtype string as written in the header (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// `[begin, end)` byte offsets relative to the start of the data section.
    pub data_offsets: (usize, usize),
}

/// Parses the header of a `.safetensors` file held in `bytes`. Returns the entries
/// sorted by name and the byte offset where the data section starts. `path` only
/// names the file in errors.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Vec<TensorEntry>, usize)> {
    let bad = |msg: String| Error::bad_file(path, msg);
    if bytes.len() < 8 {
        return Err(bad(format!(
            "truncated: {} bytes, too short for a .safetensors header",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(bad(format!(
            "corrupt .safetensors header: header length {n} is implausible (not a .safetensors file?)"
        )));
    }
    let n = n as usize;
    if 8 + n > bytes.len() {
        return Err(bad(format!(
            "truncated: header length is {n} bytes but the file holds {} after the length",
            bytes.len() - 8
        )));
    }
    let text = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|_| bad("corrupt .safetensors header: not valid UTF-8".into()))?;
    let json: Value = serde_json::from_str(text.trim_end_matches([' ', '\0']))
        .map_err(|e| bad(format!("corrupt .safetensors header: {e}")))?;
    let Value::Object(map) = json else {
        return Err(bad("corrupt .safetensors header: not a JSON object".into()));
    };
    let mut entries = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let parse = || -> Option<TensorEntry> {
            let dtype = v.get("dtype")?.as_str()?.to_string();
            let shape = v
                .get("shape")?
                .as_array()?
                .iter()
                .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                .collect::<Option<Vec<_>>>()?;
            let off = v.get("data_offsets")?.as_array()?;
            if off.len() != 2 {
                return None;
            }
            let b = usize::try_from(off[0].as_u64()?).ok()?;
            let e = usize::try_from(off[1].as_u64()?).ok()?;
            (b <= e).then_some(TensorEntry {
                name: name.clone(),
                dtype,
                shape,
                data_offsets: (b, e),
            })
        };
        entries.push(parse().ok_or_else(|| {
            bad(format!(
                "corrupt .safetensors header: entry '{name}' lacks a valid dtype, shape or data_offsets"
            ))
        })?);
    }
    Ok((entries, 8 + n))
}

fn is_float(dtype: &str) -> bool {
    dtype.starts_with('F') || dtype == "BF16"
}

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

/// Opens the activation matrix in `path`: the tensor called `tensor`, or (when `None`)
/// `activations` if present, else the only 2-D floating-point tensor.
pub(crate) fn open(path: &Path, tensor: Option<&str>) -> Result<SourceMatrix> {
    let map = map_file(path)?;
    let (entries, data_start) = parse_header(path, &map)?;
    let entry = match tensor {
        Some(name) => entries.iter().find(|e| e.name == name).ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "no tensor named '{name}'; available: {}",
                    describe(&entries)
                ),
            )
        })?,
        None => match entries.iter().find(|e| e.name == DEFAULT_TENSOR) {
            Some(e) => e,
            None => {
                let cands: Vec<&TensorEntry> = entries
                    .iter()
                    .filter(|e| e.shape.len() == 2 && is_float(&e.dtype))
                    .collect();
                match cands[..] {
                    [one] => one,
                    [] if entries.len() == 1 => &entries[0],
                    [] => {
                        return Err(Error::bad_file(
                            path,
                            format!(
                                "no 2-D floating-point tensor to use; available: {}",
                                describe(&entries)
                            ),
                        ))
                    }
                    _ => {
                        return Err(Error::bad_file(
                            path,
                            format!(
                                "several 2-D tensors, name one (--tensor); available: {}",
                                describe(&entries)
                            ),
                        ))
                    }
                }
            }
        },
    };
    let name = &entry.name;
    let dtype = match entry.dtype.as_str() {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        other => {
            return Err(Error::bad_file(
                path,
                format!("tensor '{name}' has dtype {other}; accepted dtypes: F32, F16, BF16"),
            ))
        }
    };
    let (rows, cols) = match entry.shape[..] {
        [r, c] => (r, c),
        _ => {
            return Err(Error::bad_file(
                path,
                format!(
                    "tensor '{name}' is {}-D {:?}; expected a 2-D [rows, d] matrix",
                    entry.shape.len(),
                    entry.shape
                ),
            ))
        }
    };
    if rows == 0 || cols == 0 {
        return Err(Error::bad_file(
            path,
            format!("tensor '{name}' is an empty matrix [{rows}, {cols}]: no activations"),
        ));
    }
    let (b, e) = entry.data_offsets;
    let need = rows
        .checked_mul(cols)
        .and_then(|x| x.checked_mul(dtype.size()))
        .ok_or_else(|| Error::bad_file(path, "corrupt .safetensors header: shape overflows"))?;
    if e - b != need {
        return Err(Error::bad_file(
            path,
            format!(
                "corrupt .safetensors header: tensor '{name}' [{rows}, {cols}] {} needs {need} bytes but its data_offsets span {}",
                dtype.name(),
                e - b
            ),
        ));
    }
    let available = map.len() - data_start;
    if e > available {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated: header says tensor '{name}' ends at data byte {e}, the file holds {available} bytes of data"
            ),
        ));
    }
    Ok(SourceMatrix {
        path: path.to_path_buf(),
        tensor: Some(name.clone()),
        bytes: Bytes::Map(map),
        offset: data_start + b,
        rows,
        cols,
        dtype,
    })
}

/// Encodes `m` as a `.safetensors` file holding the single tensor `name` `[rows, cols]`
/// of `dtype` (F16 and BF16 rounded to nearest even). The header is padded with
/// spaces to a multiple of 8 bytes, as the reference writer does.
pub fn encode_safetensors(name: &str, m: &Matrix, dtype: DType) -> Result<Vec<u8>> {
    if m.data.len() != m.rows * m.cols {
        return Err(Error::Shape(format!(
            "matrix [{}, {}] holds {} values",
            m.rows,
            m.cols,
            m.data.len()
        )));
    }
    let nbytes = m.data.len() * dtype.size();
    let header = serde_json::json!({
        "__metadata__": { "format": "pt" },
        name: { "dtype": dtype.name(), "shape": [m.rows, m.cols], "data_offsets": [0, nbytes] },
    })
    .to_string();
    let mut h = header.into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + h.len() + nbytes);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    match dtype {
        DType::F32 => m
            .data
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        DType::F16 => m
            .data
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes())),
        DType::BF16 => m
            .data
            .iter()
            .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes())),
    }
    Ok(out)
}

/// Writes `m` to `path` as a `.safetensors` file with one tensor `name` of `dtype`,
/// atomically.
pub fn write_safetensors(path: &Path, name: &str, m: &Matrix, dtype: DType) -> Result<()> {
    write_file_atomic(path, &encode_safetensors(name, m, dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_is_read_by_the_reference_crate() {
        let m = Matrix::from_vec(2, 3, vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let bytes = encode_safetensors("acts", &m, dtype).unwrap();
            let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let t = st.tensor("acts").unwrap();
            assert_eq!(t.shape(), &[2, 3]);
            assert_eq!(format!("{:?}", t.dtype()), dtype.name());
            let want: Vec<u8> = match dtype {
                DType::F32 => m.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::F16 => m
                    .data
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                DType::BF16 => m
                    .data
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            assert_eq!(t.data(), &want[..]);
            let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            assert_eq!(hlen % 8, 0);
        }
    }
}
