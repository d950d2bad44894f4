//! Reading named tensors from `.safetensors` and `.npz` files into f32, and writing f32
//! `.safetensors`. Private to [`crate::format`]; the activation store has its own readers.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensorError, SafeTensors};

use super::TensorInfo;
use crate::error::{Error, Result};
use crate::tensor::{ParamSet, Tensor};

/// One tensor as found in a file, converted to f32.
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype as stored (`F32`, `BF16`, `<f4`, ...).
    pub dtype: String,
    pub data: Vec<f32>,
}

/// All tensors of one file.
#[derive(Clone, Debug)]
pub(crate) struct RawFile {
    pub path: PathBuf,
    pub tensors: Vec<RawTensor>,
}

impl RawFile {
    /// Removes and returns the first tensor whose name is one of `names`.
    pub fn take(&mut self, names: &[&str]) -> Option<RawTensor> {
        let i = self
            .tensors
            .iter()
            .position(|t| names.contains(&t.name.as_str()))?;
        Some(self.tensors.remove(i))
    }

    /// Like [`RawFile::take`], but a missing tensor is an error naming the file.
    pub fn require(&mut self, names: &[&str]) -> Result<RawTensor> {
        self.take(names)
            .ok_or_else(|| Error::bad_file(&self.path, format!("missing tensor {}", names[0])))
    }

    /// Name, shape and dtype of every tensor (taken or not, call before taking).
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.clone(),
            })
            .collect()
    }

    /// Fails if any tensor is left (one SAE file must not hold tensors saelab ignores).
    pub fn expect_empty(&self, arch: &str) -> Result<()> {
        match self.tensors.first() {
            None => Ok(()),
            Some(t) => Err(Error::bad_file(
                &self.path,
                format!("unexpected tensor {} for architecture {arch}", t.name),
            )),
        }
    }
}

impl RawTensor {
    /// The tensor as a saelab [`Tensor`] after checking it has `want` as shape; when the
    /// stored 2-D shape is the transpose of `want` (and `want` is not square) it is
    /// transposed. `saelab_name` is used in messages.
    pub fn oriented(self, want: &[usize], file: &Path, saelab_name: &str) -> Result<Tensor> {
        if self.shape == want {
            return Tensor::new(want, self.data);
        }
        if want.len() == 2 && want[0] != want[1] && self.shape == [want[1], want[0]] {
            let (r, c) = (self.shape[0], self.shape[1]);
            let mut out = vec![0.0f32; r * c];
            for i in 0..r {
                for j in 0..c {
                    out[j * r + i] = self.data[i * c + j];
                }
            }
            return Tensor::new(want, out);
        }
        let stored = if self.name == saelab_name {
            String::new()
        } else {
            format!(" (stored as {})", self.name)
        };
        Err(Error::bad_file(
            file,
            format!(
                "{saelab_name}{stored} has shape {:?}, expected {want:?}",
                self.shape
            ),
        ))
    }

    /// The tensor as a 1-D vector of length `len`.
    pub fn vector(self, len: usize, file: &Path, saelab_name: &str) -> Result<Tensor> {
        self.oriented(&[len], file, saelab_name)
    }
}

/// Reads every tensor of a `.safetensors` file, converting F32 / F16 / BF16 / F64 to
/// f32. Truncated or corrupt files give a one-line error naming the file.
pub(crate) fn read_safetensors(path: &Path) -> Result<RawFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; if another
    // process truncates the file meanwhile we may read garbage, never write memory.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let bytes: &[u8] = &map;
    let st = SafeTensors::deserialize(bytes).map_err(|e| describe_st_error(path, bytes, e))?;
    let mut tensors = Vec::new();
    for (name, view) in st.iter() {
        let data = convert(view.dtype(), view.data()).ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "tensor {name} has dtype {:?}; saelab reads F32, F16, BF16 and F64",
                    view.dtype()
                ),
            )
        })?;
        tensors.push(RawTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            dtype: format!("{:?}", view.dtype()),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RawFile {
        path: path.to_path_buf(),
        tensors,
    })
}

fn convert(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        _ => return None,
    })
}

/// Turns a safetensors parse error into a message a user can act on.
fn describe_st_error(path: &Path, bytes: &[u8], e: SafeTensorError) -> Error {
    let len = bytes.len();
    let msg = if len < 8 {
        format!("truncated: {len} bytes, too short for a safetensors header")
    } else {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        if n.saturating_add(8) > len as u64 && n < 100_000_000 {
            format!(
                "truncated: the header says {n} bytes of JSON, the file holds {len} bytes in all"
            )
        } else {
            match e {
                SafeTensorError::MetadataIncompleteBuffer => {
                    match data_end(&bytes[8..8 + n as usize]) {
                        Some(end) if 8 + n as usize + end > len => format!(
                            "truncated: the tensors need {end} bytes of data, the file holds {}",
                            len - 8 - n as usize
                        ),
                        Some(end) => format!(
                            "corrupt: {} bytes after the {end} bytes of tensor data",
                            len - 8 - n as usize - end
                        ),
                        None => "corrupt: tensor offsets do not cover the file".to_string(),
                    }
                }
                other => format!("not a valid safetensors file: {other}"),
            }
        }
    };
    Error::bad_file(path, msg)
}

/// The largest end offset declared in a safetensors JSON header.
fn data_end(header: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .map(|m| m as usize)
}

/// Serialises `tensors` as an f32 `.safetensors` byte buffer.
pub(crate) fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.to_string(), t.shape.clone(), bytes)
        })
        .collect();
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, SafeTensorError>>()
        .map_err(|e| Error::config(format!("cannot serialise tensors: {e}")))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::config(format!("cannot serialise tensors: {e}")))
}

/// Converts a parameter set to `(name, tensor)` pairs for [`safetensors_bytes`].
pub(crate) fn param_pairs(p: &ParamSet) -> Vec<(&str, &Tensor)> {
    p.iter().collect()
}

// ---------------------------------------------------------------------------------
// .npz / .npy

/// Reads every `.npy` member of a `.npz` archive (stored or deflated) into f32.
pub(crate) fn read_npz(path: &Path) -> Result<RawFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::bad_file(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::bad_file(path, format!("corrupt .npz member #{i}: {e}")))?;
        let member = entry
            .name()
            .map_err(|e| Error::bad_file(path, format!("corrupt .npz member name #{i}: {e}")))?
            .to_string();
        let Some(name) = member.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::bad_file(path, format!("cannot read member {member}: {e}")))?;
        let (shape, dtype, data) = parse_npy(&bytes)
            .map_err(|msg| Error::bad_file(path, format!("member {member}: {msg}")))?;
        tensors.push(RawTensor {
            name: name.to_string(),
            shape,
            dtype,
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RawFile {
        path: path.to_path_buf(),
        tensors,
    })
}

/// Parses a whole `.npy` buffer: `(shape, descr, values as f32 in row-major order)`.
/// Supports little-endian f2 / f4 / f8, C or Fortran order, format versions 1–3.
pub(crate) fn parse_npy(b: &[u8]) -> std::result::Result<(Vec<usize>, String, Vec<f32>), String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = b.get(start..start + hlen).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let descr = dict_value(header, "descr").ok_or("no 'descr' in .npy header")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran = dict_value(header, "fortran_order").ok_or("no 'fortran_order' in .npy header")?;
    let fortran = match fortran {
        "True" => true,
        "False" => false,
        other => return Err(format!("bad fortran_order {other}")),
    };
    let shape_s = dict_value(header, "shape").ok_or("no 'shape' in .npy header")?;
    let shape: Vec<usize> = shape_s
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_s}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let size = match descr.as_str() {
        "<f2" => 2,
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype {other} not supported (little-endian f2, f4, f8 only)"
            ))
        }
    };
    let count: usize = shape.iter().product();
    let body = &b[start + hlen..];
    if body.len() != count * size {
        return Err(format!(
            "{} data: shape {shape:?} of {descr} needs {} bytes, found {}",
            if body.len() < count * size {
                "truncated"
            } else {
                "corrupt"
            },
            count * size,
            body.len()
        ));
    }
    let mut data: Vec<f32> = match size {
        2 => body
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        4 => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
    };
    if fortran && shape.len() >= 2 {
        if shape.len() > 2 {
            return Err(
                "Fortran-ordered arrays of more than 2 dimensions are not supported".into(),
            );
        }
        let (r, c) = (shape[0], shape[1]);
        let mut out = vec![0.0f32; r * c];
        for j in 0..c {
            for i in 0..r {
                out[i * c + j] = data[j * r + i];
            }
        }
        data = out;
    }
    Ok((shape, descr, data))
}

/// The raw text of `key`'s value in a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (16, 64), }`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}'");
    let pat_b = format!("\"{key}\"");
    let pos = header
        .find(&pat_a)
        .map(|p| p + pat_a.len())
        .or_else(|| header.find(&pat_b).map(|p| p + pat_b.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
        rest[1..].find(q)? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((h.len() as u16).to_le_bytes());
        v.extend(h.as_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn parses_c_and_fortran_order() {
        let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &vals,
        );
        let (s, d, x) = parse_npy(&c).unwrap();
        assert_eq!(
            (s, d.as_str(), x),
            (vec![2, 3], "<f4", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        let f = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &vals,
        );
        let (_, _, x) = parse_npy(&f).unwrap();
        // column-major [[1,3,5],[2,4,6]]
        assert_eq!(x, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let one = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            &2.5f64.to_le_bytes(),
        );
        assert_eq!(parse_npy(&one).unwrap().2, vec![2.5]);
    }

    #[test]
    fn rejects_truncated_and_unsupported() {
        let c = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &[0u8; 20],
        );
        assert!(parse_npy(&c).unwrap_err().contains("truncated"));
        let i = npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
            &[0u8; 8],
        );
        assert!(parse_npy(&i).unwrap_err().contains("<i8"));
        assert!(parse_npy(b"hello world").unwrap_err().contains("magic"));
    }
}
