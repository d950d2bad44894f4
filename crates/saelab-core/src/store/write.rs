//! Writing activation matrices as files the store reads back, atomically (for `saelab
//! synth`, examples and tests). The bytes come from [`crate::tensorfile`].

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_file_atomic;
use crate::tensor::Matrix;
use crate::tensorfile::safetensors::{self, TensorOut};
use crate::tensorfile::{npy, DType, Values};

/// The values of `m` stored as `dtype`, after checking the matrix is well formed.
fn values(m: &Matrix, dtype: DType) -> Result<Values<'_>> {
    if m.data.len() != m.rows * m.cols {
        return Err(Error::Shape(format!(
            "matrix [{}, {}] holds {} values",
            m.rows,
            m.cols,
            m.data.len()
        )));
    }
    Values::floats(&m.data, dtype).ok_or_else(|| {
        Error::config(format!(
            "activations are written as F32, F16 or BF16, not {dtype}"
        ))
    })
}

/// Writes `m` to `path` as a C-order `.npy` matrix of `dtype`, atomically: F32 (`<f4`)
/// or F16 (`<f2`, rounded to nearest even); `.npy` has no BF16.
pub fn write_npy(path: &Path, m: &Matrix, dtype: DType) -> Result<()> {
    write_file_atomic(path, &npy::encode(&[m.rows, m.cols], values(m, dtype)?)?)
}

/// Writes `m` to `path` as a float32 `.npy` matrix `[rows, cols]`, atomically.
pub fn write_npy_f32(path: &Path, m: &Matrix) -> Result<()> {
    write_npy(path, m, DType::F32)
}

/// Writes `m` to `path` as a `.safetensors` file with one tensor `name` `[rows, cols]`
/// of `dtype` (F32, or F16 / BF16 rounded to nearest even), atomically.
pub fn write_safetensors(path: &Path, name: &str, m: &Matrix, dtype: DType) -> Result<()> {
    let shape = [m.rows, m.cols];
    let tensor = TensorOut {
        name,
        shape: &shape,
        values: values(m, dtype)?,
    };
    safetensors::write_file(path, &[tensor], &[("format", "pt")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_is_read_by_the_reference_crate() {
        let m = Matrix::from_vec(2, 3, vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            write_safetensors(&path, "acts", &m, dtype).unwrap();
            let bytes = std::fs::read(&path).unwrap();
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
                _ => m
                    .data
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            assert_eq!(t.data(), &want[..]);
            let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            assert_eq!(hlen % 8, 0);
        }
        let npy_path = dir.path().join("x.npy");
        let e = write_npy(&npy_path, &m, DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no BF16"), "{e}");
        assert!(write_npy(&npy_path, &m, DType::I64).is_err());
        assert!(!npy_path.exists());
    }
}
