//! The `.safetensors` files of this crate (shard parts, delphi's latent cache, the token
//! matrix), through the `safetensors` crate, which writes the integer dtypes delphi
//! expects (U32 locations, I64 tokens) and F16 activations.
//!
//! Files are written without `__metadata__`, so equal tensors give equal bytes (the
//! resume test compares files byte for byte), and atomically. Reads check every
//! tensor's dtype and shape and name the file in their errors.

use std::path::Path;

use saelab_core::io::write_file_atomic;
use saelab_core::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Values of one tensor to write.
pub enum Data<'a> {
    /// Stored as U32.
    U32(&'a [u32]),
    /// Stored as U64.
    U64(&'a [u64]),
    /// Stored as I64.
    I64(&'a [i64]),
    /// Stored as F32.
    F32(&'a [f32]),
    /// f32 values stored as F16 (rounded to nearest even).
    F16(&'a [f32]),
}

impl Data<'_> {
    fn encode(&self) -> (Dtype, Vec<u8>) {
        fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            v.iter().for_each(|&x| out.extend_from_slice(&f(x)));
            out
        }
        match self {
            Data::U32(v) => (Dtype::U32, le(v, u32::to_le_bytes)),
            Data::U64(v) => (Dtype::U64, le(v, u64::to_le_bytes)),
            Data::I64(v) => (Dtype::I64, le(v, i64::to_le_bytes)),
            Data::F32(v) => (Dtype::F32, le(v, f32::to_le_bytes)),
            Data::F16(v) => (Dtype::F16, le(v, |x| half::f16::from_f32(x).to_le_bytes())),
        }
    }
}

/// Writes `tensors` (name, shape, values) to `path` atomically.
pub fn write(path: &Path, tensors: &[(&str, Vec<usize>, Data<'_>)]) -> Result<()> {
    let encoded: Vec<(Dtype, Vec<u8>)> = tensors.iter().map(|(_, _, d)| d.encode()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), (dtype, bytes)) in tensors.iter().zip(&encoded) {
        let view = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))?;
        views.push((*name, view));
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::bad_file(path, format!("cannot encode: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_file_atomic(path, &bytes)
}

/// A whole `.safetensors` file read into memory.
pub struct File {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl File {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<File> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let f = File {
            path: path.to_path_buf(),
            bytes,
        };
        f.parsed()?;
        Ok(f)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| Error::bad_file(&self.path, format!("not a valid safetensors file: {e}")))
    }

    fn view(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, Vec<u8>)> {
        let st = self.parsed()?;
        let t = st
            .tensor(name)
            .map_err(|_| Error::bad_file(&self.path, format!("missing tensor {name}")))?;
        if t.dtype() != dtype {
            return Err(Error::bad_file(
                &self.path,
                format!(
                    "tensor {name} has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                ),
            ));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    }

    /// Tensor `name`, which must be U32, with its shape.
    pub fn u32(&self, name: &str) -> Result<(Vec<usize>, Vec<u32>)> {
        let (shape, b) = self.view(name, Dtype::U32)?;
        let v = b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((shape, v))
    }

    /// Tensor `name`, which must be U64, with its shape.
    pub fn u64(&self, name: &str) -> Result<(Vec<usize>, Vec<u64>)> {
        let (shape, b) = self.view(name, Dtype::U64)?;
        let v = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok((shape, v))
    }

    /// Tensor `name`, which must be F32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, b) = self.view(name, Dtype::F32)?;
        let v = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((shape, v))
    }

    /// Tensor `name`, which must be I64, with its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (shape, b) = self.view(name, Dtype::I64)?;
        let v = b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok((shape, v))
    }

    /// Tensor `name`, which must be F16, converted to f32, with its shape.
    pub fn f16(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, b) = self.view(name, Dtype::F16)?;
        let v = b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        Ok((shape, v))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An error naming `path` when `shape` is not `want`.
pub fn expect_shape(path: &Path, name: &str, shape: &[usize], want: &[usize]) -> Result<()> {
    if shape != want {
        return Err(Error::bad_file(
            path,
            format!("tensor {name} has shape {shape:?}, expected {want:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype_and_names_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        write(
            &p,
            &[
                ("a", vec![2], Data::U32(&[1, 2])),
                ("b", vec![1], Data::U64(&[7])),
                ("c", vec![1, 2], Data::I64(&[-1, 5])),
                ("d", vec![2], Data::F32(&[0.5, 1.5])),
                ("e", vec![2], Data::F16(&[0.5, 1.0 / 3.0])),
            ],
        )
        .unwrap();
        let f = File::read(&p).unwrap();
        assert_eq!(f.u32("a").unwrap(), (vec![2], vec![1, 2]));
        assert_eq!(f.u64("b").unwrap().1, vec![7]);
        assert_eq!(f.i64("c").unwrap(), (vec![1, 2], vec![-1, 5]));
        assert_eq!(f.f32("d").unwrap().1, vec![0.5, 1.5]);
        assert_eq!(
            f.f16("e").unwrap().1[1],
            half::f16::from_f32(1.0 / 3.0).to_f32()
        );
        let e = f.u32("d").unwrap_err().to_string();
        assert!(e.contains("t.safetensors") && e.contains("dtype"), "{e}");
        let e = f.u32("zz").unwrap_err().to_string();
        assert!(e.contains("missing tensor zz"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        let e = File::read(&p).err().unwrap().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("not a valid"),
            "{e}"
        );
    }
}
