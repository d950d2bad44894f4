//! `.safetensors` files: the one header parser, checked access to the tensors of a
//! memory-mapped file (converted to f32, or read exactly as stored: I64, U32, U64,
//! F16), whole-file reading as f32, and a streaming writer.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON mapping each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative
//! to the end of the header; an optional `"__metadata__"` entry holds strings), then
//! the data. saelab parses the header itself (rather than through the `safetensors`
//! crate) so that every refusal can say exactly what is wrong, and so that tensors of
//! dtypes saelab does not read may sit beside the ones it reads.
//!
//! Two levels of checking: [`SafetensorsFile::locate`] checks one tensor (its span
//! matches its shape and dtype, and lies inside the file), which is all the activation
//! store needs to map rows of one tensor; [`read_f32_file`], which reads a whole file,
//! also checks that the tensors lie back to back and fill the data section exactly.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use super::{
    byte_len, decode_f32_vec, decode_i64, decode_u32, decode_u64, map_file, overflow_msg,
    trailing_msg, truncated_msg, DType, FileTensor, Values,
};
use crate::error::{Error, Result};
use crate::io::write_file_with;
use crate::tensor::Tensor;

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

impl TensorEntry {
    /// The dtype, if saelab handles it (see [`DType::from_name`]).
    pub fn known_dtype(&self) -> Option<DType> {
        DType::from_name(&self.dtype)
    }

    /// Whether the header calls the dtype floating point (`F*`, `BF16`), known or not.
    pub fn is_float(&self) -> bool {
        self.dtype.starts_with('F') || self.dtype == "BF16"
    }
}

/// Message: a header that cannot be parsed.
fn corrupt(detail: impl std::fmt::Display) -> String {
    format!("corrupt .safetensors header (not a valid safetensors file): {detail}")
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
        return Err(bad(corrupt(format_args!(
            "header length {n} is implausible"
        ))));
    }
    let n = n as usize;
    if 8 + n > bytes.len() {
        return Err(bad(format!(
            "truncated: header length is {n} bytes but the file holds {} after the length",
            bytes.len() - 8
        )));
    }
    let text =
        std::str::from_utf8(&bytes[8..8 + n]).map_err(|_| bad(corrupt("not valid UTF-8")))?;
    let json: Value =
        serde_json::from_str(text.trim_end_matches([' ', '\0'])).map_err(|e| bad(corrupt(e)))?;
    let Value::Object(map) = json else {
        return Err(bad(corrupt("not a JSON object")));
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
            bad(corrupt(format_args!(
                "entry '{name}' lacks a valid dtype, shape or data_offsets"
            )))
        })?);
    }
    Ok((entries, 8 + n))
}

/// A `.safetensors` file mapped read-only, with its parsed header. Tensors are read in
/// place: [`SafetensorsFile::locate`] gives the checked byte range of one,
/// [`SafetensorsFile::read_f32`] converts one of any float dtype to f32, and
/// [`SafetensorsFile::read_i64`], [`SafetensorsFile::read_u32`],
/// [`SafetensorsFile::read_u64`] and [`SafetensorsFile::read_f16`] decode one that must
/// be stored exactly as that dtype. Only the tensors read are copied out of the map.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    entries: Vec<TensorEntry>,
    data_start: usize,
}

impl SafetensorsFile {
    /// Maps `path` and parses its header. Errors (naming the file): not a non-empty
    /// regular file, truncated or corrupt header.
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let (entries, data_start) = parse_header(path, &map)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            entries,
            data_start,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's tensors, sorted by name.
    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }

    /// The entry of tensor `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Bytes in the data section.
    fn data_len(&self) -> usize {
        self.map.len() - self.data_start
    }

    /// The byte range of `entry`'s values in the file, read as `dtype`, after checking
    /// that its `data_offsets` span exactly its shape and that the file holds them.
    pub fn locate(&self, entry: &TensorEntry, dtype: DType) -> Result<Range<usize>> {
        let what = format!("tensor '{}'", entry.name);
        let need = byte_len(&entry.shape, dtype)
            .ok_or_else(|| Error::bad_file(&self.path, overflow_msg(&what, &entry.shape)))?;
        let (b, e) = entry.data_offsets;
        if e - b != need {
            return Err(Error::bad_file(
                &self.path,
                corrupt(format_args!(
                    "{what} {:?} {dtype} needs {need} bytes but its data_offsets span {}",
                    entry.shape,
                    e - b
                )),
            ));
        }
        if e > self.data_len() {
            return Err(Error::bad_file(
                &self.path,
                truncated_msg(&what, &entry.shape, dtype, e, self.data_len()),
            ));
        }
        Ok(self.data_start + b..self.data_start + e)
    }

    /// The entry `name`, or an error naming the file and the tensor.
    fn require(&self, name: &str) -> Result<&TensorEntry> {
        self.entry(name)
            .ok_or_else(|| Error::bad_file(&self.path, format!("missing tensor {name}")))
    }

    /// The shape of tensor `name`, outermost first. Errors (naming the file and the
    /// tensor): missing.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.require(name)?.shape)
    }

    /// Checks that tensor `name` has shape `want`, so that a reader that knows the
    /// sizes a file must have (contexts, tokens per context, latents) refuses one of
    /// other sizes. Errors (naming the file and the tensor): missing, other shape.
    pub fn expect_shape(&self, name: &str, want: &[usize]) -> Result<()> {
        let shape = self.shape(name)?;
        if shape != want {
            return Err(Error::bad_file(
                &self.path,
                format!("tensor {name} has shape {shape:?}, expected {want:?}"),
            ));
        }
        Ok(())
    }

    /// The entry of tensor `name` after checking that it is stored exactly as `dtype`
    /// (no conversion: an index or an exact value must not arrive rounded or widened).
    /// Errors (naming the file and the tensor): missing, other dtype.
    pub fn expect_dtype(&self, name: &str, dtype: DType) -> Result<&TensorEntry> {
        let e = self.require(name)?;
        if e.known_dtype() != Some(dtype) {
            return Err(Error::bad_file(
                &self.path,
                format!("tensor {name} has dtype {}; expected {dtype}", e.dtype),
            ));
        }
        Ok(e)
    }

    /// The stored bytes of tensor `name`, which must be `dtype`, after
    /// [`SafetensorsFile::locate`]'s checks.
    fn bytes_as(&self, name: &str, dtype: DType) -> Result<&[u8]> {
        let e = self.expect_dtype(name, dtype)?;
        Ok(&self.map[self.locate(e, dtype)?])
    }

    /// Tensor `name` converted to f32: F32, F16, BF16 or F64. Errors name the file and
    /// the tensor (missing, other dtype, inconsistent header, truncated).
    pub fn read_f32(&self, name: &str) -> Result<FileTensor> {
        let e = self.require(name)?;
        let dtype = e.known_dtype().filter(|d| d.is_float()).ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!(
                    "tensor {name} has dtype {}; saelab reads F32, F16, BF16 and F64",
                    e.dtype
                ),
            )
        })?;
        let range = self.locate(e, dtype)?;
        Ok(FileTensor {
            name: e.name.clone(),
            dtype,
            tensor: Tensor::new(&e.shape, decode_f32_vec(dtype, &self.map[range]))?,
        })
    }

    /// Tensor `name` as i64 values, row-major (it must be I64). Errors name the file and
    /// the tensor (missing, other dtype, inconsistent header, truncated).
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>> {
        Ok(decode_i64(self.bytes_as(name, DType::I64)?))
    }

    /// Tensor `name` as u32 values, row-major (it must be U32). Errors as
    /// [`SafetensorsFile::read_i64`].
    pub fn read_u32(&self, name: &str) -> Result<Vec<u32>> {
        Ok(decode_u32(self.bytes_as(name, DType::U32)?))
    }

    /// Tensor `name` as u64 values, row-major (it must be U64). Errors as
    /// [`SafetensorsFile::read_i64`].
    pub fn read_u64(&self, name: &str) -> Result<Vec<u64>> {
        Ok(decode_u64(self.bytes_as(name, DType::U64)?))
    }

    /// Tensor `name`, which must be F16, widened (exactly) to f32, row-major: unlike
    /// [`SafetensorsFile::read_f32`], a tensor of another float dtype is refused.
    /// Errors as [`SafetensorsFile::read_i64`].
    pub fn read_f16(&self, name: &str) -> Result<Vec<f32>> {
        Ok(decode_f32_vec(DType::F16, self.bytes_as(name, DType::F16)?))
    }

    /// The map itself, for a reader that keeps reading it in place (the activation
    /// store).
    pub(crate) fn into_map(self) -> Mmap {
        self.map
    }
}

/// Reads every tensor of a `.safetensors` file as f32 (F32, F16, BF16 and F64 are
/// converted), in file order, after checking the whole layout: every tensor's span
/// matches its shape, the tensors lie back to back from the start of the data section
/// and fill it exactly. Errors name the file and say what is wrong.
pub fn read_f32_file(path: &Path) -> Result<Vec<FileTensor>> {
    let file = SafetensorsFile::open(path)?;
    let mut order: Vec<&TensorEntry> = file.entries.iter().collect();
    order.sort_by_key(|e| e.data_offsets);
    let mut end = 0;
    for e in &order {
        if e.data_offsets.0 != end {
            return Err(Error::bad_file(
                path,
                corrupt(format_args!(
                    "tensor '{}' starts at data byte {}, where the tensor before it ends at {end}",
                    e.name, e.data_offsets.0
                )),
            ));
        }
        end = e.data_offsets.1;
    }
    let out = order
        .iter()
        .map(|e| file.read_f32(&e.name))
        .collect::<Result<Vec<_>>>()?;
    if end < file.data_len() {
        return Err(Error::bad_file(
            path,
            trailing_msg(file.data_len() - end, end),
        ));
    }
    Ok(out)
}

/// One tensor to write.
#[derive(Clone, Copy, Debug)]
pub struct TensorOut<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its shape, outermost first; the product is the number of values.
    pub shape: &'a [usize],
    /// Its values and stored dtype.
    pub values: Values<'a>,
}

impl<'a> TensorOut<'a> {
    /// Tensor `name` of `shape` holding `values` (of any stored dtype).
    pub fn new(name: &'a str, shape: &'a [usize], values: Values<'a>) -> Self {
        TensorOut {
            name,
            shape,
            values,
        }
    }

    /// An F32 tensor.
    pub fn f32(name: &'a str, shape: &'a [usize], data: &'a [f32]) -> Self {
        TensorOut::new(name, shape, Values::F32(data))
    }
}

/// Checks that every tensor's shape matches its number of values.
fn check_counts(tensors: &[TensorOut<'_>]) -> std::result::Result<(), String> {
    for t in tensors {
        let count: usize = t.shape.iter().product();
        if count != t.values.len() {
            return Err(format!(
                "tensor {}: shape {:?} needs {count} values, got {}",
                t.name,
                t.shape,
                t.values.len()
            ));
        }
    }
    Ok(())
}

/// The header of a file holding `tensors` back to back in the order given, with the
/// `__metadata__` strings `metadata` (left out when empty), padded with spaces to a
/// multiple of 8 bytes as the reference writer does.
fn header(tensors: &[TensorOut<'_>], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut off = 0;
    for t in tensors {
        let len = t.values.byte_len();
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.values.dtype().name(), "shape": t.shape,
                               "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut text = serde_json::to_string(&header)
        .expect("a map of strings and numbers serialises")
        .into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    text
}

/// Streams a `.safetensors` file holding `tensors` (back to back, in the order given)
/// and the `__metadata__` strings `metadata` to `w`. Fails before writing anything if
/// a tensor's shape does not match its number of values. The header is padded to 8
/// bytes, so giving the tensors widest dtype first (8-byte, then 4-, then 2-byte
/// elements), as the reference writer orders them, keeps every tensor aligned to its
/// element size for readers that view the map in place. Equal tensors and metadata
/// give equal bytes.
pub fn write_to(
    w: &mut impl Write,
    tensors: &[TensorOut<'_>],
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    check_counts(tensors).map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
    let h = header(tensors, metadata);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for t in tensors {
        t.values.write_le(w)?;
    }
    Ok(())
}

/// [`write_to`] into a byte buffer.
pub fn encode(tensors: &[TensorOut<'_>], metadata: &[(&str, &str)]) -> Result<Vec<u8>> {
    check_counts(tensors).map_err(Error::Shape)?;
    let mut out = Vec::new();
    write_to(&mut out, tensors, metadata).expect("writing to a Vec cannot fail");
    Ok(out)
}

/// [`write_to`] into `path`, atomically ([`crate::io::write_file_with`]).
pub fn write_file(path: &Path, tensors: &[TensorOut<'_>], metadata: &[(&str, &str)]) -> Result<()> {
    check_counts(tensors).map_err(Error::Shape)?;
    write_file_with(path, |w| write_to(w, tensors, metadata)).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_read_by_the_reference_crate_and_back() {
        let vals = [1.0f32, -2.5, 3.0, 0.0, 1e-3, 7.0];
        let ids = [4i64, -1, 9];
        let offsets = [0u64, 2, u64::MAX];
        let locations = [0u32, 1, 2, 7, u32::MAX, 5];
        let tensors = [
            TensorOut::f32("acts", &[2, 3], &vals),
            TensorOut {
                name: "half",
                shape: &[6],
                values: Values::BF16(&vals),
            },
            TensorOut {
                name: "ids",
                shape: &[3],
                values: Values::I64(&ids),
            },
            TensorOut {
                name: "offsets",
                shape: &[3],
                values: Values::U64(&offsets),
            },
            TensorOut {
                name: "locations",
                shape: &[2, 3],
                values: Values::U32(&locations),
            },
            TensorOut {
                name: "f16",
                shape: &[3, 2],
                values: Values::F16(&vals),
            },
            TensorOut {
                name: "empty",
                shape: &[0, 3],
                values: Values::U32(&[]),
            },
        ];
        let bytes = encode(&tensors, &[("format", "pt")]).unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in &tensors {
            let v = st.tensor(t.name).unwrap();
            assert_eq!(v.shape(), t.shape);
            assert_eq!(format!("{:?}", v.dtype()), t.values.dtype().name());
            let mut want = Vec::new();
            t.values.write_le(&mut want).unwrap();
            assert_eq!(v.data(), &want[..]);
        }
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_file(&path, &tensors, &[]).unwrap();
        // The file is what `encode` gives (with no metadata), and the reference crate
        // reads it.
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written, encode(&tensors, &[]).unwrap());
        let st = ::safetensors::SafeTensors::deserialize(&written).unwrap();
        assert_eq!(st.len(), tensors.len());
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&written).unwrap();
        assert!(meta.metadata().is_none());
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.read_i64("ids").unwrap(), ids);
        assert_eq!(f.read_u64("offsets").unwrap(), offsets);
        assert_eq!(f.read_u32("locations").unwrap(), locations);
        assert_eq!(f.read_u32("empty").unwrap(), Vec::<u32>::new());
        let f16: Vec<f32> = vals
            .iter()
            .map(|x| half::f16::from_f32(*x).to_f32())
            .collect();
        assert_eq!(f.read_f16("f16").unwrap(), f16);
        assert_eq!(f.read_f32("f16").unwrap().tensor.data, f16);
        assert_eq!(f.shape("locations").unwrap(), [2, 3]);
        f.expect_shape("empty", &[0, 3]).unwrap();
        let e = f
            .expect_shape("locations", &[3, 3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.safetensors")
                && e.contains("tensor locations has shape [2, 3], expected [3, 3]")
                && !e.contains('\n'),
            "{e}"
        );
        assert_eq!(f.expect_dtype("acts", DType::F32).unwrap().name, "acts");
        // Typed reads take only their own dtype: no widening, rounding or reinterpreting.
        for (e, want) in [
            (
                f.read_i64("acts").unwrap_err(),
                "tensor acts has dtype F32; expected I64",
            ),
            (
                f.read_u32("offsets").unwrap_err(),
                "tensor offsets has dtype U64; expected U32",
            ),
            (
                f.read_u64("ids").unwrap_err(),
                "tensor ids has dtype I64; expected U64",
            ),
            (
                f.read_f16("half").unwrap_err(),
                "tensor half has dtype BF16; expected F16",
            ),
            (
                f.expect_dtype("f16", DType::F32).unwrap_err(),
                "has dtype F16; expected F32",
            ),
        ] {
            let e = e.to_string();
            assert!(e.contains("t.safetensors") && e.contains(want), "{e}");
        }
        for e in [
            f.read_f32("nope").unwrap_err(),
            f.read_u32("nope").unwrap_err(),
            f.shape("nope").unwrap_err(),
            f.expect_shape("nope", &[1]).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("t.safetensors") && e.contains("missing tensor nope"),
                "{e}"
            );
        }
        // The integer tensors are not activations: read_f32 refuses them.
        let e = f.read_f32("locations").unwrap_err().to_string();
        assert!(e.contains("tensor locations has dtype U32"), "{e}");
        // A whole-file read refuses the integer tensor, and reads the rest in file order.
        let e = read_f32_file(&path).unwrap_err().to_string();
        assert!(e.contains("ids") && e.contains("I64"), "{e}");
        write_file(&path, &tensors[..2], &[]).unwrap();
        let all = read_f32_file(&path).unwrap();
        assert_eq!(
            all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["acts", "half"]
        );
        assert_eq!(all[0].tensor.data, vals);
        assert_eq!(all[1].dtype, DType::BF16);
        // Shapes must match the values.
        let bad = [TensorOut::f32("x", &[4], &vals)];
        assert!(encode(&bad, &[]).is_err());
        assert!(write_file(&path, &bad, &[]).is_err());
        assert_eq!(read_f32_file(&path).unwrap(), all, "left as it was");
    }

    #[test]
    fn typed_reads_check_the_span_of_their_tensor() {
        let dir = tempfile::tempdir().unwrap();
        for (name, header, data, want) in [
            (
                "span",
                r#"{"a":{"dtype":"U32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "tensor 'a' [3] U32 needs 12 bytes but its data_offsets span 8",
            ),
            (
                "short",
                r#"{"a":{"dtype":"U64","shape":[2],"data_offsets":[0,16]}}"#,
                12,
                "truncated: tensor 'a' [2] U64 needs 16 bytes of data, the file holds 12",
            ),
        ] {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.resize(bytes.len() + data, 0);
            let path = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            let f = SafetensorsFile::open(&path).unwrap();
            let e = match name {
                "span" => f.read_u32("a").unwrap_err(),
                _ => f.read_u64("a").unwrap_err(),
            }
            .to_string();
            assert!(
                e.contains(&format!("{name}.safetensors")) && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn whole_file_reads_check_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |name: &str, dtype: &str, n: usize, (b, e): (usize, usize)| {
            format!(r#""{name}":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[{b},{e}]}}"#)
        };
        for (name, entries, data, want) in [
            (
                "gap",
                vec![entry("a", "F32", 1, (0, 4)), entry("b", "F32", 1, (8, 12))],
                12,
                "'b' starts at data byte 8",
            ),
            (
                "extra",
                vec![entry("a", "F16", 2, (0, 4))],
                10,
                "6 bytes after the 4 bytes",
            ),
            (
                "short",
                vec![entry("a", "F64", 2, (0, 16))],
                9,
                "truncated: tensor 'a' [2] F64 needs 16 bytes",
            ),
            ("i32", vec![entry("a", "I32", 2, (0, 8))], 8, "dtype I32"),
        ] {
            let header = format!("{{{}}}", entries.join(","));
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.resize(bytes.len() + data, 0);
            let path = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            let e = read_f32_file(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{name}.safetensors")) && e.contains(want),
                "{e}"
            );
        }
    }
}
