//! Memory-mapped `.npy` matrices (NumPy format versions 1.0, 2.0 and 3.0).
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header length
//! (u16 little-endian for 1.0, u32 for 2.0 and 3.0), then an ASCII (3.0: UTF-8) Python
//! dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (1024, 576), }`
//! padded with spaces and a newline, then the raw values.
//!
//! Accepted: 2-D, C order, little-endian `<f4` (float32) or `<f2` (float16). Anything
//! else (Fortran order, big-endian, other dtypes, structured dtypes, 1-D or 3-D arrays)
//! is refused with a message saying what was found and what is accepted.

use std::path::Path;

use super::source::{map_file, Bytes, DType, SourceMatrix};
use crate::error::{Error, Result};
use crate::io::write_file_atomic;
use crate::tensor::Matrix;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version `(major, minor)`.
    pub version: (u8, u8),
    /// The `descr` string, e.g. `<f4`.
    pub descr: String,
    /// Whether the values are stored column-major.
    pub fortran_order: bool,
    /// The array shape.
    pub shape: Vec<usize>,
    /// Byte offset of the first value.
    pub data_offset: usize,
}

/// Parses the header at the start of `bytes` (the whole file or at least its header).
/// `path` is only used to name the file in errors.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let bad = |msg: String| Error::bad_file(path, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        if bytes.len() < 10 && MAGIC.starts_with(&bytes[..bytes.len().min(6)]) {
            return Err(bad(format!(
                "truncated: only {} bytes, no complete .npy header",
                bytes.len()
            )));
        }
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let version = (bytes[6], bytes[7]);
    let (len, start) = match version.0 {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated: no complete .npy header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(bad(format!(
                "unsupported .npy format version {v}.{} (supported: 1.0, 2.0, 3.0)",
                version.1
            )))
        }
    };
    let end = start + len;
    if end > bytes.len() {
        return Err(bad(format!(
            "truncated: header length is {len} bytes but the file holds {} after the preamble",
            bytes.len() - start
        )));
    }
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("corrupt .npy header: not valid text".into()))?;
    let dict =
        parse_dict(text).map_err(|m| bad(format!("corrupt .npy header ({m}): {}", text.trim())))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in dict {
        match (k.as_str(), v) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", Value::List) => {
                return Err(bad("structured dtype is not supported; accepted dtypes: float32 ('<f4'), float16 ('<f2')".into()))
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k @ ("descr" | "fortran_order" | "shape"), _) => {
                return Err(bad(format!("corrupt .npy header: '{k}' has the wrong type")))
            }
            _ => {}
        }
    }
    let (Some(descr), Some(fortran_order), Some(shape)) = (descr, fortran, shape) else {
        return Err(bad(
            "corrupt .npy header: needs 'descr', 'fortran_order' and 'shape'".into(),
        ));
    };
    Ok(NpyHeader {
        version,
        descr,
        fortran_order,
        shape,
        data_offset: end,
    })
}

/// The accepted element type for a `descr`, or a message saying why it is refused.
fn dtype_of(descr: &str) -> std::result::Result<DType, String> {
    const ACCEPTED: &str = "accepted dtypes: float32 ('<f4'), float16 ('<f2')";
    match descr {
        "<f4" => Ok(DType::F32),
        "<f2" => Ok(DType::F16),
        ">f4" | ">f2" => Err(format!(
            "big-endian dtype '{descr}' is not supported; {ACCEPTED}"
        )),
        _ => {
            let name = match descr.trim_start_matches(['<', '>', '|', '=']) {
                "f8" => "float64".to_string(),
                "f16" => "float128".to_string(),
                "e" | "f" | "d" => descr.to_string(),
                s if s.starts_with('i') => {
                    format!("int{}", 8 * s[1..].parse::<usize>().unwrap_or(0))
                }
                s if s.starts_with('u') => {
                    format!("uint{}", 8 * s[1..].parse::<usize>().unwrap_or(0))
                }
                "b1" => "bool".to_string(),
                _ => descr.to_string(),
            };
            Err(format!(
                "dtype {name} ('{descr}') is not supported; {ACCEPTED}"
            ))
        }
    }
}

/// Opens `path` as a memory-mapped 2-D activation matrix.
pub(crate) fn open(path: &Path) -> Result<SourceMatrix> {
    let map = map_file(path)?;
    let h = parse_header(path, &map)?;
    let dtype = dtype_of(&h.descr).map_err(|m| Error::bad_file(path, m))?;
    if h.fortran_order {
        return Err(Error::bad_file(
            path,
            "Fortran-order (column-major) array is not supported; save it in C order (np.ascontiguousarray)",
        ));
    }
    let (rows, cols) = match h.shape[..] {
        [r, c] => (r, c),
        [n] => {
            return Err(Error::bad_file(
                path,
                format!("1-D array of shape ({n},); expected a 2-D [rows, d] matrix"),
            ))
        }
        _ => {
            return Err(Error::bad_file(
                path,
                format!(
                    "{}-D array of shape ({}); expected a 2-D [rows, d] matrix (reshape to [tokens, d])",
                    h.shape.len(),
                    h.shape.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    if rows == 0 || cols == 0 {
        return Err(Error::bad_file(
            path,
            format!("empty matrix [{rows}, {cols}]: no activations"),
        ));
    }
    let src = SourceMatrix {
        path: path.to_path_buf(),
        tensor: None,
        bytes: Bytes::Map(map),
        offset: h.data_offset,
        rows,
        cols,
        dtype,
    };
    src.check_size("array")?;
    Ok(src)
}

/// Encodes `m` as a version-1.0 `.npy` file (2.0 if the header would not fit) with
/// `dtype` F32 (`<f4`) or F16 (`<f2`, rounded to nearest even). The data starts on a
/// 64-byte boundary, as NumPy writes it.
pub fn encode_npy(m: &Matrix, dtype: DType) -> Result<Vec<u8>> {
    let descr = match dtype {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 => {
            return Err(Error::config(
                ".npy has no bfloat16 dtype; use .safetensors for BF16",
            ))
        }
    };
    if m.data.len() != m.rows * m.cols {
        return Err(Error::Shape(format!(
            "matrix [{}, {}] holds {} values",
            m.rows,
            m.cols,
            m.data.len()
        )));
    }
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    let (major, pre) = if dict.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (pre + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - pre;
    let mut out = Vec::with_capacity(total + m.data.len() * dtype.size());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    match dtype {
        DType::F32 => m
            .data
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        _ => m
            .data
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes())),
    }
    Ok(out)
}

/// Writes `m` to `path` as a `.npy` matrix of `dtype` (F32 or F16), atomically.
pub fn write_npy(path: &Path, m: &Matrix, dtype: DType) -> Result<()> {
    write_file_atomic(path, &encode_npy(m, dtype)?)
}

/// Writes `m` to `path` as a float32 `.npy` matrix `[rows, cols]`, atomically.
pub fn write_npy_f32(path: &Path, m: &Matrix) -> Result<()> {
    write_npy(path, m, DType::F32)
}

/// A value in the header dict; only what `.npy` headers use.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// A `[...]` list (structured dtype descr); contents skipped.
    List,
}

/// Parses the Python dict literal of a `.npy` header into `(key, value)` pairs.
fn parse_dict(text: &str) -> std::result::Result<Vec<(String, Value)>, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        let val = p.value()?;
        out.push((key, val));
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("text after the closing brace".into());
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i == self.s.len() {
            return Err("unterminated string".into());
        }
        let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(v)
    }
    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b')') {
                        break;
                    }
                    let start = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    if start == self.i {
                        return Err(format!("expected a dimension at byte {}", self.i));
                    }
                    let n: usize = std::str::from_utf8(&self.s[start..self.i])
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| "dimension too large".to_string())?;
                    self.eat(b'L'); // Python 2 long suffix
                    dims.push(n);
                    self.ws();
                    if !self.eat(b',') {
                        self.ws();
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Value::Tuple(dims))
            }
            Some(b'[') => {
                let mut depth = 0usize;
                while let Some(&c) = self.s.get(self.i) {
                    self.i += 1;
                    match c {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(Value::List);
                            }
                        }
                        _ => {}
                    }
                }
                Err("unterminated list".into())
            }
            _ if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Ok(Value::Bool(true))
            }
            _ if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Ok(Value::Bool(false))
            }
            _ => Err(format!("unexpected value at byte {}", self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_written_headers() {
        let p = Path::new("x.npy");
        // Exactly what numpy 1.x writes for np.zeros((3, 4), np.float32).
        let mut f =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
                .to_vec();
        f.resize(10 + 0x76 - 1, b' ');
        f.push(b'\n');
        let h = parse_header(p, &f).unwrap();
        assert_eq!(h.descr, "<f4");
        assert!(!h.fortran_order);
        assert_eq!(h.shape, vec![3, 4]);
        assert_eq!(h.data_offset, 128);
        // Python 2 style longs, 1-tuple, double quotes, version 3.0.
        let text = "{\"descr\": \"<f2\", \"shape\": (7L,), \"fortran_order\": True}\n";
        let mut g = b"\x93NUMPY\x03\x00".to_vec();
        g.extend_from_slice(&(text.len() as u32).to_le_bytes());
        g.extend_from_slice(text.as_bytes());
        let h = parse_header(p, &g).unwrap();
        assert_eq!(
            (h.version, h.shape.clone(), h.fortran_order),
            ((3, 0), vec![7], true)
        );
    }

    #[test]
    fn encoded_header_is_aligned_and_roundtrips() {
        let m = Matrix::from_vec(2, 3, vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]).unwrap();
        let bytes = encode_npy(&m, DType::F32).unwrap();
        let h = parse_header(Path::new("x"), &bytes).unwrap();
        assert_eq!(h.data_offset % 64, 0);
        assert_eq!(h.shape, vec![2, 3]);
        assert_eq!(bytes.len(), h.data_offset + 24);
        let back: Vec<f32> = bytes[h.data_offset..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(back, m.data);
    }
}
