//! `.npy` arrays (NumPy format versions 1.0, 2.0 and 3.0): the one header parser,
//! whole-array reading as f32, and encoding.
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header length
//! (u16 little-endian for 1.0, u32 for 2.0 and 3.0), then an ASCII (3.0: UTF-8) Python
//! dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (1024, 576), }`
//! padded with spaces and a newline, then the raw values.
//!
//! Each reader says which dtypes it accepts ([`NpyHeader::dtype`]); anything else
//! (big-endian, other or structured dtypes) is refused with a message saying what was
//! found and what is accepted.

use std::path::Path;

use super::{byte_len, decode_f32_vec, overflow_msg, trailing_msg, truncated_msg, DType, Values};
use crate::error::{Error, Result};

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
    header(bytes).map_err(|m| Error::bad_file(path, m))
}

/// [`parse_header`] with the problem as a bare message, for callers that name the
/// place themselves (a member of a `.npz`).
pub(crate) fn header(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        if bytes.len() < 10 && MAGIC.starts_with(&bytes[..bytes.len().min(6)]) {
            return Err(format!(
                "truncated: only {} bytes, no complete .npy header",
                bytes.len()
            ));
        }
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let version = (bytes[6], bytes[7]);
    let (len, start) = match version.0 {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated: no complete .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(format!(
                "unsupported .npy format version {v}.{} (supported: 1.0, 2.0, 3.0)",
                version.1
            ))
        }
    };
    let end = start + len;
    if end > bytes.len() {
        return Err(format!(
            "truncated: header length is {len} bytes but the file holds {} after the preamble",
            bytes.len() - start
        ));
    }
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "corrupt .npy header: not valid text".to_string())?;
    let dict =
        parse_dict(text).map_err(|m| format!("corrupt .npy header ({m}): {}", text.trim()))?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in dict {
        match (k.as_str(), v) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", Value::List) => {
                return Err("structured dtype is not supported; save a plain numeric array".into())
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k @ ("descr" | "fortran_order" | "shape"), _) => {
                return Err(format!("corrupt .npy header: '{k}' has the wrong type"))
            }
            _ => {}
        }
    }
    let (Some(descr), Some(fortran_order), Some(shape)) = (descr, fortran, shape) else {
        return Err("corrupt .npy header: needs 'descr', 'fortran_order' and 'shape'".into());
    };
    Ok(NpyHeader {
        version,
        descr,
        fortran_order,
        shape,
        data_offset: end,
    })
}

impl NpyHeader {
    /// The element type, if it is one of `accepted`; otherwise a message naming the
    /// dtype found (as NumPy calls it) and the accepted ones.
    pub fn dtype(&self, accepted: &[DType]) -> std::result::Result<DType, String> {
        let descr = self.descr.as_str();
        if let Some(&d) = accepted.iter().find(|d| d.npy_descr() == Some(descr)) {
            return Ok(d);
        }
        let list = accepted
            .iter()
            .filter_map(|d| {
                Some(format!(
                    "{} ('{}')",
                    numpy_name(d.npy_descr()?),
                    d.npy_descr()?
                ))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let list = format!("accepted dtypes: {list}");
        if descr.starts_with('>')
            && accepted
                .iter()
                .any(|d| d.npy_descr().map(|a| &a[1..]) == Some(&descr[1..]))
        {
            return Err(format!(
                "big-endian dtype '{descr}' is not supported; {list}"
            ));
        }
        Err(format!(
            "dtype {} ('{descr}') is not supported; {list}",
            numpy_name(descr)
        ))
    }

    /// Bytes of data the header promises, checked for overflow.
    fn data_len(&self, dtype: DType) -> std::result::Result<usize, String> {
        byte_len(&self.shape, dtype).ok_or_else(|| overflow_msg("the array", &self.shape))
    }

    /// Checks that `have` bytes after the header hold the array's data; with `exact`,
    /// also that nothing follows it. Returns the data length.
    pub(crate) fn check_data(
        &self,
        dtype: DType,
        have: usize,
        exact: bool,
    ) -> std::result::Result<usize, String> {
        let need = self.data_len(dtype)?;
        if need > have {
            return Err(truncated_msg("the array", &self.shape, dtype, need, have));
        }
        if exact && have > need {
            return Err(trailing_msg(have - need, need));
        }
        Ok(need)
    }
}

/// NumPy's name of a `descr` (`float32`, `int64`, ...), or the `descr` itself.
fn numpy_name(descr: &str) -> String {
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let bits = |s: &str| s.parse::<usize>().map(|n| 8 * n).unwrap_or(0);
    match code {
        "f2" => "float16".into(),
        "f4" => "float32".into(),
        "f8" => "float64".into(),
        "f16" => "float128".into(),
        "b1" => "bool".into(),
        s if s.starts_with('i') => format!("int{}", bits(&s[1..])),
        s if s.starts_with('u') => format!("uint{}", bits(&s[1..])),
        _ => descr.to_string(),
    }
}

/// A whole `.npy` array as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Its header.
    pub header: NpyHeader,
    /// The stored dtype (F16, F32 or F64).
    pub dtype: DType,
    /// The values in row-major (C) order, whatever the stored order.
    pub data: Vec<f32>,
}

/// Reads a whole `.npy` buffer as f32: little-endian f2 / f4 / f8, C order, or Fortran
/// order for up to two dimensions (transposed into C order). The buffer must hold
/// exactly the values its header promises. Errors are bare messages; the caller names
/// the file (or the `.npz` member).
pub fn read_f32(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    let header = header(bytes)?;
    let dtype = header.dtype(&[DType::F32, DType::F16, DType::F64])?;
    let body = &bytes[header.data_offset..];
    header.check_data(dtype, body.len(), true)?;
    let mut data = decode_f32_vec(dtype, body);
    if header.fortran_order && header.shape.len() >= 2 {
        let [r, c] = header.shape[..] else {
            return Err(
                "Fortran-ordered arrays of more than 2 dimensions are not supported".into(),
            );
        };
        let mut out = vec![0.0f32; r * c];
        for j in 0..c {
            for i in 0..r {
                out[i * c + j] = data[j * r + i];
            }
        }
        data = out;
    }
    Ok(NpyArray {
        header,
        dtype,
        data,
    })
}

/// Encodes `values` with `shape` as a C-order `.npy` file: format version 1.0 (2.0 if
/// the header would not fit), the data starting on a 64-byte boundary, as NumPy writes
/// it. BF16 has no `.npy` dtype and is refused.
pub fn encode(shape: &[usize], values: Values<'_>) -> Result<Vec<u8>> {
    let dtype = values.dtype();
    let descr = dtype.npy_descr().ok_or_else(|| {
        Error::config(format!(
            ".npy has no {dtype} dtype; use .safetensors for {dtype}"
        ))
    })?;
    if shape.iter().product::<usize>() != values.len() {
        return Err(Error::Shape(format!(
            "shape {shape:?} needs {} values, got {}",
            shape.iter().product::<usize>(),
            values.len()
        )));
    }
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let (major, pre) = if dict.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (pre + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - pre;
    let mut out = Vec::with_capacity(total + values.byte_len());
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
    values
        .write_le(&mut out)
        .expect("writing to a Vec cannot fail");
    Ok(out)
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

    /// A version-1.0 `.npy` buffer with the header text `header`, then `body`.
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
    fn parses_c_and_fortran_order() {
        let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &vals,
        );
        let a = read_f32(&c).unwrap();
        assert_eq!(
            (a.header.shape, a.header.descr.as_str(), a.data),
            (vec![2, 3], "<f4", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        let f = npy(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &vals,
        );
        // column-major [[1,3,5],[2,4,6]]
        assert_eq!(
            read_f32(&f).unwrap().data,
            vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
        );
        let one = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
            &2.5f64.to_le_bytes(),
        );
        assert_eq!(read_f32(&one).unwrap().data, vec![2.5]);
    }

    #[test]
    fn rejects_truncated_and_unsupported() {
        for (descr, fortran, shape, body, want) in [
            ("<f4", "False", "(2, 3)", 20, &["truncated"][..]),
            ("<f4", "False", "(2, 3)", 28, &["corrupt", "4 bytes after"]),
            ("<i8", "False", "(1,)", 8, &["<i8", "int64", "'<f8'"]),
            (">f8", "False", "(1,)", 8, &["big-endian"]),
            ("<f4", "True", "(1, 1, 1)", 4, &["more than 2"]),
        ] {
            let dict =
                format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
            let e = read_f32(&npy(&dict, &vec![0u8; body])).unwrap_err();
            assert!(want.iter().all(|w| e.contains(w)), "{dict}: {e}");
        }
        assert!(read_f32(b"hello world").unwrap_err().contains("magic"));
    }

    #[test]
    fn encoded_header_is_aligned_and_roundtrips() {
        let vals = [1.0f32, -2.5, 3.0, 0.0, 1e-3, 7.0];
        for (shape, values) in [
            (&[2usize, 3][..], Values::F32(&vals)),
            (&[6][..], Values::F16(&vals)),
            (&[1, 2, 3][..], Values::F32(&vals)),
        ] {
            let bytes = encode(shape, values).unwrap();
            let h = parse_header(Path::new("x"), &bytes).unwrap();
            assert_eq!(h.data_offset % 64, 0);
            assert_eq!(h.shape, shape);
            assert_eq!(bytes.len(), h.data_offset + values.byte_len());
            let a = read_f32(&bytes).unwrap();
            assert_eq!(a.dtype, values.dtype());
            let want: Vec<f32> = match values {
                Values::F16(_) => vals
                    .iter()
                    .map(|x| half::f16::from_f32(*x).to_f32())
                    .collect(),
                _ => vals.to_vec(),
            };
            assert_eq!(a.data, want);
        }
        let ids = [3i64, -1];
        let bytes = encode(&[2], Values::I64(&ids)).unwrap();
        let h = header(&bytes).unwrap();
        assert_eq!(h.dtype(&[DType::I64]).unwrap(), DType::I64);
        assert!(encode(&[6], Values::BF16(&vals))
            .unwrap_err()
            .to_string()
            .contains("no BF16"));
        assert!(encode(&[5], Values::F32(&vals)).is_err());
    }
}
